// HNSW serialization: the sections written and read back, the legacy record layout (REC0) converted on
// load, and the structural checks a loaded graph must pass.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "hnsw_internal.h"

namespace annforge {

void HNSWIndex::hold_unchanged(const std::function<void()>& fn) const {
  // The writer lock keeps add/remove out; the shared lock waits for a running remove's exclusive part.
  std::lock_guard<std::mutex> writer(update_mutex_);
  std::shared_lock<std::shared_mutex> lock(rw_mutex_);
  fn();
}

void HNSWIndex::write(io::FileWriter& w) const {
  // Runs under hold_unchanged (VectorIndex::serialise), so nothing changes while the file is written.
  io::ByteWriter meta;
  write_common(meta);
  meta.put(static_cast<std::uint64_t>(M_))
      .put(static_cast<std::uint64_t>(ef_construction_))
      .put(seed_)
      .put(static_cast<std::uint8_t>(storage_))
      .put(static_cast<std::uint64_t>(default_ef_.load()))
      .put(static_cast<std::uint64_t>(slot_count_))
      .put(static_cast<std::uint64_t>(record_bytes_))
      .put(entry_.load())
      .put(static_cast<std::uint8_t>(storage_ == HnswStorage::SQ8 && codec_.trained() ? 1 : 0));
  w.add_owned(kTagMeta, meta.take());
  w.add(kTagRecords, records_.data(), slot_count_ * record_bytes_);
  w.add(kTagHeaders, headers_.data(), slot_count_ * sizeof(std::uint32_t));
  w.add(kTagIds, slot_ids_.data(), slot_count_ * sizeof(idx_t));
  w.add(kTagLevels, levels_.data(), slot_count_);
  w.add(kTagUpper, nullptr, 0);
  for (std::size_t s = 0; s < slot_count_; ++s)
    if (!upper_[s].empty()) w.add_chunk(upper_[s].data(), upper_[s].size() * sizeof(std::uint32_t));
  if (storage_ == HnswStorage::SQ8) {
    w.add(kTagExact, exact_.data(), slot_count_ * dim_ * sizeof(float));
    w.add(kTagSq8, codec_.sq8_offset().data(), codec_.sq8_offset().size() * sizeof(float));
    w.add_chunk(codec_.sq8_scale().data(), codec_.sq8_scale().size() * sizeof(float));
  }
  if (rabitq_) write_quantized(w);
}

std::unique_ptr<HNSWIndex> HNSWIndex::read(const std::shared_ptr<io::FileReader>& reader) {
  reader->expect_kind(io::Kind::HNSW);
  const std::string& origin = reader->origin();
  io::ByteReader meta(reader->section(kTagMeta), "HNSWIndex metadata");
  // Parameters first, so the index is constructed with the right record layout.
  auto probe = std::make_unique<HNSWIndex>(1, Metric::L2);
  probe->read_common(meta);
  const auto M = meta.read<std::uint64_t>();
  const auto efc = meta.read<std::uint64_t>();
  const auto seed = meta.read<std::uint64_t>();
  const auto storage = meta.read<std::uint8_t>();
  const auto default_ef = meta.read<std::uint64_t>();
  const auto slots = meta.read<std::uint64_t>();
  const auto record_bytes = meta.read<std::uint64_t>();
  const auto entry = meta.read<std::uint64_t>();
  const auto trained = meta.read<std::uint8_t>();
  meta.expect_end();
  auto bad = [&](const auto&... why) { fail(ErrorKind::IO, origin, ": corrupted HNSWIndex: ", why...); };
  if (M < 2 || M > 2048) bad("M out of range");
  if (efc < 1 || efc > (1u << 20)) bad("ef_construction out of range");
  if (storage > static_cast<std::uint8_t>(HnswStorage::RABITQ_F16)) bad("unknown storage code");
  if (default_ef < 1 || default_ef > (1u << 24)) bad("default ef out of range");
  if (slots >= kNoSlot - 1) bad("slot count out of range");
  auto rotation = codec::RaBitQ::Rotation::Dense;
  if (reader->has(kTagCodeRotation)) {
    io::ByteReader r(reader->section(kTagCodeRotation), "HNSWIndex code rotation");
    const auto kind = r.read<std::uint32_t>();
    r.expect_end();
    if (kind > static_cast<std::uint32_t>(codec::RaBitQ::Rotation::Hadamard)) bad("unknown code rotation ", kind);
    rotation = static_cast<codec::RaBitQ::Rotation>(kind);
  }
  auto index = std::make_unique<HNSWIndex>(probe->dim_, probe->metric_, M, efc, seed, static_cast<HnswStorage>(storage),
                                           rotation);
  index->next_id_ = probe->next_id_;
  index->default_ef_.store(default_ef);
  const std::size_t n = slots, d = index->dim_;
  const io::Bytes ids = reader->section(kTagIds), lv = reader->section(kTagLevels), up = reader->section(kTagUpper);
  if (ids.size != n * sizeof(idx_t)) bad("id section size");
  if (lv.size != n) bad("level section size");

  // Files from before the headers moved out of the records hold [header][links][pad][vector] per slot.
  const bool legacy = !reader->has(kTagRecords);
  if (legacy && index->rabitq_) bad("quantized graph in the legacy record layout");
  const RecordLayout legacy_layout = record_layout(sizeof(std::uint32_t) * (1 + 2 * index->M_), index->code_bytes_);
  if (record_bytes != (legacy ? legacy_layout.record_bytes : index->record_bytes_))
    bad("record size does not match the parameters");
  const io::Bytes rec = reader->section(legacy ? kTagLegacyRecords : kTagRecords);
  if (n && rec.size / n != record_bytes) bad("record section size");
  if (rec.size != n * record_bytes) bad("record section size");
  if (!legacy) {
    const io::Bytes hdr = reader->section(kTagHeaders);
    if (hdr.size != n * sizeof(std::uint32_t)) bad("header section size");
    const auto* hdr_words = reinterpret_cast<const std::uint32_t*>(hdr.data);
    if (reader->mapped()) {
      index->records_ = AlignedBuffer<unsigned char>::view(rec.data, rec.size, reader->keepalive());
      index->headers_ = AlignedBuffer<std::uint32_t>::view(hdr_words, n, reader->keepalive());
    } else {
      index->records_.append(rec.data, rec.size);
      index->headers_.append(hdr_words, n);
    }
  } else {
    // Split each legacy record into the current layout (a copy, so such files are never memory-mapped).
    index->records_.resize(n * index->record_bytes_);
    index->headers_.resize(n);
    unsigned char* out = index->records_.mutable_data();
    std::uint32_t* headers = index->headers_.mutable_data();
    for (std::size_t s = 0; s < n; ++s) {
      const unsigned char* old = rec.data + s * legacy_layout.record_bytes;
      unsigned char* fresh = out + s * index->record_bytes_;
      std::memcpy(&headers[s], old, sizeof(std::uint32_t));
      std::memcpy(fresh, old + sizeof(std::uint32_t), index->links_bytes_);
      std::memcpy(fresh + index->vector_offset_, old + legacy_layout.vector_offset, index->code_bytes_);
    }
  }
  index->slot_count_ = n;
  index->slot_ids_.resize(n);
  if (n) std::memcpy(index->slot_ids_.mutable_data(), ids.data, n * sizeof(idx_t));
  index->levels_.assign(lv.data, lv.data + n);
  index->upper_.resize(n);

  // Upper levels: sizes follow from the levels; every count and link is checked below.
  std::size_t pos = 0;
  const std::size_t words_per_level = M + 1;
  for (std::size_t s = 0; s < n; ++s) {
    const std::size_t level = index->levels_[s];
    if (level > kMaxLevel) bad("node level out of range");
    const std::size_t words = level * words_per_level;
    if (words * sizeof(std::uint32_t) > up.size - pos) bad("upper-level section too short");
    index->upper_[s].resize(words);
    if (words) std::memcpy(index->upper_[s].data(), up.data + pos, words * sizeof(std::uint32_t));
    pos += words * sizeof(std::uint32_t);
  }
  if (pos != up.size) bad("upper-level section has trailing bytes");

  if (index->storage_ == HnswStorage::SQ8) {
    const io::Bytes ex = reader->section(kTagExact), sq = reader->section(kTagSq8);
    if (ex.size != n * d * sizeof(float)) bad("exact-vector section size");
    // The quantizer is trained by the first add(): an index that never held a vector has none.
    if (trained > 1 || (trained == 0 && n != 0)) bad("sq8 trained flag");
    if (sq.size != (trained ? 2 * d * sizeof(float) : 0)) bad("sq8 parameter section size");
    const auto* ex_ptr = reinterpret_cast<const float*>(ex.data);
    if (reader->mapped())
      index->exact_ = AlignedBuffer<float>::view(ex_ptr, n * d, reader->keepalive());
    else
      index->exact_.append(ex_ptr, n * d);
    if (trained) {
      std::vector<float> both(2 * d);  // offsets, then scales
      std::memcpy(both.data(), sq.data, both.size() * sizeof(float));
      if (!index->codec_.load_sq8(both.data(), both.data() + d)) bad(VectorCodec::kBadSq8);
    }
  }

  // Stored vectors: finite (a NaN distance would break the ordering every search and sort relies on),
  // f32 ones also small enough that distances cannot overflow.
  for (std::size_t s = 0; s < n; ++s) {
    const unsigned char* v = index->vec(static_cast<Slot>(s));
    if (index->codec_.kind() == RefineKind::F32)
      check_loaded_rows(reinterpret_cast<const float*>(v), 1, d, origin, "HNSWIndex vectors");
    else if (index->codec_.kind() == RefineKind::F16)
      check_loaded_finite_f16(reinterpret_cast<const std::uint16_t*>(v), d, origin, "HNSWIndex vectors");
  }
  if (index->storage_ == HnswStorage::SQ8)
    check_loaded_rows(index->exact_.data(), n, d, origin, "HNSWIndex exact vectors");

  // Entry point.
  const Slot entry_slot = static_cast<Slot>(entry & 0xffffffffu);
  const std::uint64_t entry_level = entry >> 32;
  if (n == 0) {
    if (entry_slot != kNoSlot) bad("entry point in an empty graph");
    index->entry_.store(kNoSlot);
  } else {
    if (entry_slot >= n) bad("entry point out of range");
    if (entry_level != index->levels_[entry_slot]) bad("entry point level mismatch");
    index->entry_.store(pack_entry(static_cast<int>(entry_level), entry_slot));
  }
  index->validate_loaded();
  if (index->rabitq_) index->read_quantized(*reader, origin);

  // Id map and free slots.
  index->slot_of_.reserve(n);
  for (std::size_t s = 0; s < n; ++s) {
    const idx_t id = index->slot_ids_[s];
    const bool deleted = index->is_deleted(static_cast<Slot>(s));
    if (deleted) {
      if (id != -1) bad("removed slot ", s, " still carries an id");
      index->free_slots_.push_back(static_cast<Slot>(s));
      continue;
    }
    if (!index->id_below_next(id) || index->slot_of_.contains(id)) bad("invalid or repeated id ", id);
    index->slot_of_.set(id, static_cast<idx_t>(s));
    ++index->live_;
  }
  index->has_tombstones_.store(!index->free_slots_.empty());
  return index;
}

void HNSWIndex::validate_loaded() const {
  // A file can pass its checksums yet hold a bad graph: every count, link and level is checked so a
  // search can never read outside the arrays.
  const std::size_t n = slot_count_;
  int top = -1;
  for (std::size_t s = 0; s < n; ++s) {
    top = std::max<int>(top, levels_[s]);
    const std::uint32_t* list = links0(static_cast<Slot>(s));
    const std::uint32_t header = *header0(static_cast<Slot>(s));
    if ((header & ~(kCountMask | kDeletedBit)) != 0 || (header & kCountMask) > 2 * M_)
      fail(ErrorKind::IO, "corrupted HNSWIndex: bad level-0 header at slot ", s);
    for (std::uint32_t i = 0; i < (header & kCountMask); ++i)
      if (list[i] >= n) fail(ErrorKind::IO, "corrupted HNSWIndex: level-0 link out of range at slot ", s);
    for (int level = 1; level <= levels_[s]; ++level) {
      const std::uint32_t* up = link_header(static_cast<Slot>(s), level);
      if (up[0] > M_) fail(ErrorKind::IO, "corrupted HNSWIndex: bad link count at slot ", s, " level ", level);
      for (std::uint32_t i = 0; i < up[0]; ++i)
        if (up[1 + i] >= n || levels_[up[1 + i]] < level)
          fail(ErrorKind::IO, "corrupted HNSWIndex: upper link out of range at slot ", s, " level ", level);
    }
  }
  const std::uint64_t e = entry_.load();
  if (n && static_cast<int>(e >> 32) != top)
    fail(ErrorKind::IO, "corrupted HNSWIndex: entry point is not on the top level");
}

}  // namespace annforge
