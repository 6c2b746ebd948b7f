// The quantized graph (storage "rabitq" / "rabitq-f16", see hnsw.h): the neighbour code blocks kept in
// step with the level-0 links, the level-0 search they steer, and their file sections.
//
// Codes are relative to one global centre (the mean of the first add batch), so a node's code is the
// same in every block that holds it: a block entry is a copy of the node's own code (self_codes_),
// a link change is a memcpy, and the query is rotated and quantized once per search. Per-node centres
// (SymphonyQG) give tighter estimates but cost a query adjustment per expansion and a re-encode per
// link change; not done here.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "annforge/parallel/executor.h"
#include "annforge/simd/rabitq_kernels.h"
#include "hnsw_internal.h"

namespace annforge {

void HNSWIndex::set_code_centre(const float* rows, std::size_t n) {
  std::vector<double> sum(dim_, 0.0);
  for (std::size_t i = 0; i < n; ++i)
    for (std::size_t j = 0; j < dim_; ++j) sum[j] += rows[i * dim_ + j];
  rq_centre_.resize(dim_);
  for (std::size_t j = 0; j < dim_; ++j) rq_centre_[j] = static_cast<float>(sum[j] / static_cast<double>(n));
}

void HNSWIndex::encode_self_codes(const float* rows, const std::vector<Slot>& slots, std::size_t threads) {
  // In chunks through the codec's batched (GEMM) rotation rather than one row at a time; the slots of a
  // batch need not be contiguous (reused ones), so each chunk is encoded aside and copied into place.
  constexpr std::size_t kChunk = 256;
  const std::size_t n = slots.size(), chunks = (n + kChunk - 1) / kChunk;
  parallel::parallel_for(chunks, static_cast<int>(threads), [&](std::size_t c, std::size_t) {
    const std::size_t begin = c * kChunk, m = std::min(kChunk, n - begin);
    std::vector<std::uint8_t> codes(m * rq_bytes_);
    rabitq_->encode(rows + begin * dim_, m, rq_centre_.data(), codes.data());
    for (std::size_t i = 0; i < m; ++i) std::memcpy(self_code(slots[begin + i]), codes.data() + i * rq_bytes_, rq_bytes_);
  });
}

void HNSWIndex::sync_code_block(Slot s) {
  if (!rabitq_) return;
  const std::size_t count = std::min<std::size_t>(load_acquire(header0(s)) & kCountMask, 2 * M_);
  const std::uint32_t* links = links0(s);
  unsigned char* block = code_block(s);
  for (std::size_t i = 0; i < count; ++i) {
    const Slot n = links[i];
    if (n < slot_count_) std::memcpy(block + i * rq_bytes_, self_code(n), rq_bytes_);
  }
}

void HNSWIndex::refresh_codes_of(const std::vector<Slot>& reused) {
  // A reused slot got a new vector, hence a new code, but nodes that linked to its old occupant (and
  // were not among its old neighbours, which repair_before_reuse re-linked) still hold the old code.
  std::vector<char> changed(slot_count_, 0);
  for (Slot s : reused) changed[s] = 1;
  for (std::size_t s = 0; s < slot_count_; ++s) {
    const Slot node = static_cast<Slot>(s);
    std::lock_guard<std::mutex> lock(node_lock(node));
    const std::size_t count = std::min<std::size_t>(load_acquire(header0(node)) & kCountMask, 2 * M_);
    const std::uint32_t* links = links0(node);
    for (std::size_t i = 0; i < count; ++i) {
      const Slot n = links[i];
      if (n < slot_count_ && changed[n]) std::memcpy(code_block(node) + i * rq_bytes_, self_code(n), rq_bytes_);
    }
  }
}

bool HNSWIndex::code_blocks_in_sync() const {
  ANNFORGE_CHECK(rabitq_ != nullptr, ErrorKind::Value, "code_blocks_in_sync: not a quantized graph");
  std::lock_guard<std::mutex> writer(update_mutex_);
  std::shared_lock<std::shared_mutex> lock(rw_mutex_);
  for (std::size_t s = 0; s < slot_count_; ++s) {
    const Slot node = static_cast<Slot>(s);
    const std::size_t count = std::min<std::size_t>(load_acquire(header0(node)) & kCountMask, 2 * M_);
    for (std::size_t i = 0; i < count; ++i) {
      const Slot n = links0(node)[i];
      if (n < slot_count_ && std::memcmp(code_block(node) + i * rq_bytes_, self_code(n), rq_bytes_) != 0) return false;
    }
  }
  return true;
}

// ---------------------------------------------------------------------------------------------------
// Search

template <typename Accept>
void HNSWIndex::search_quantized(const codec::RaBitQ::Query& rq, Slot entry, std::size_t ef, float bound,
                                 Accept&& accept, Scratch& scratch, std::vector<Cand>& results) const {
  std::decay_t<Accept> accepts(std::forward<Accept>(accept));
  const Query& q = scratch.query;  // prepared for the exact distances by search_one
  const simd::RaBitQKernels& kernels = simd::rabitq_kernels();

  // The 1-bit estimator of codec/rabitq.h, folded for this query: <r, v> ~= inv_a * 2/sqrt(D) *
  // (delta * dot + lo * popcount(code) - qsum / 2); distance = l2: |r|^2 + |v|^2 - 2 <r, v>,
  // ip / cosine: 1 - <c, q> - <r, c> - <r, v>; bound half-width eps0 * sqrt(err^2 |v|^2 / (D - 1) +
  // inv_a^2 delta^2 / 4) (twice that for l2).
  const bool l2 = metric_ == Metric::L2;
  const float D = static_cast<float>(rabitq_->padded_dim());
  const float sign_scale = 2.0f / std::sqrt(D);
  const float delta = static_cast<float>(rq.delta) * sign_scale, lo = static_cast<float>(rq.lo) * sign_scale;
  const float half_qsum = static_cast<float>(0.5 * rq.qsum) * sign_scale;
  const float base = l2 ? static_cast<float>(rq.base) : static_cast<float>(1.0 - rq.base);
  const float ip_weight = l2 ? -2.0f : -1.0f, add_weight = l2 ? 1.0f : -1.0f;
  const float eps = l2 ? 2.0f * bound : bound;
  const float rot_var = static_cast<float>(rq.vnorm * rq.vnorm / (rabitq_->padded_dim() - 1.0)) * eps * eps;
  const float round_var = static_cast<float>(rq.delta * rq.delta / 4.0) * eps * eps;
  const std::size_t factor_offset = rabitq_->code_words() * 8, stride_words = rq_bytes_ / 8;
  const std::size_t words = rabitq_->words();

  auto& cand = scratch.candidates;  // min-heap by the lower bound of the estimated distance
  auto& top = scratch.top;          // max-heap by exact distance, accepted nodes only
  cand.clear();
  top.clear();
  const std::size_t limit = 2 * M_, nslots = slot_count_;
  if (scratch.dots.size() < limit) scratch.dots.resize(limit);
  std::uint32_t* dots = scratch.dots.data();
  if (scratch.code_rows.size() < limit) scratch.code_rows.resize(limit);
  if (scratch.batch.size() < limit) scratch.batch.resize(limit);
  if (scratch.estimates.size() < limit) scratch.estimates.resize(limit);
  std::uint32_t* rows = scratch.code_rows.data();  // block rows of the neighbours scored at this node
  float* lower = scratch.estimates.data();          // their lower bounds
  Slot* fresh_ids = scratch.batch.data();
  const std::uint16_t epoch = scratch.epoch;
  std::uint16_t* visited = scratch.visited.data();

  // What an expansion of `s` reads: its links, the codes of its `count` neighbours (not the whole
  // 2M-entry block: nodes hold ~2/3 of 2M links) and its vector. Into L2 (prefetcht1), not L1: at ef 32
  // on MiniLM, 87 -> 77 us/query against prefetcht0 of the same lines (AMD EPYC, contended), which
  // stalled on the prefetches themselves. The header array is small and stays cached. Requesting only
  // the codes of unvisited neighbours (reading the links first) measured slower.
  auto request_record = [&](Slot s) {
    const std::size_t n = std::min<std::size_t>(load_acquire(header0(s)) & kCountMask, limit);
    prefetch_range_l2(links0(s), links_bytes_ + n * rq_bytes_);
    prefetch_range_l2(vec(s), code_bytes_);
  };
  visited[entry] = epoch;
  cand.emplace_back(0.0f, entry);
  float worst = std::numeric_limits<float>::infinity();  // the ef-th exact distance once top is full
  while (!cand.empty()) {
    const Cand current = cand.front();
    if (top.size() >= ef && current.first > worst) break;
    std::pop_heap(cand.begin(), cand.end(), CandGreater());
    cand.pop_back();
    const Slot c = current.second;
    // The node expanded next is the queue's new front unless this node pushes a better one (80% of
    // expansions at ef 32 on MiniLM, 69% at ef 10 did not): its record is requested now, a whole
    // expansion ahead, and the true next one below only when the guess was wrong.
    const Slot guess = cand.empty() ? kNoSlot : cand.front().second;
    if (guess != kNoSlot) request_record(guess);
    const std::size_t count = std::min<std::size_t>(load_acquire(header0(c)) & kCountMask, limit);
    const std::uint32_t* links = links0(c);
    const unsigned char* block = code_block(c);
    // The neighbours not scored yet (about a third were, at ef 32 on MiniLM) and their rows in the block:
    // only those codes are read. Branch-free, as visited or not is a coin flip to the predictor; a link
    // at or past the slot count is skipped, marking the spare entry visited[nslots] (see next_epoch).
    std::size_t fresh = 0;
    for (std::size_t i = 0; i < count; ++i) {
      const Slot n = links[i];
      const Slot mark = n < nslots ? n : static_cast<Slot>(nslots);
      const bool unseen = (n < nslots) & (visited[mark] != epoch);
      visited[mark] = epoch;  // the estimate does not depend on where n is reached from: decided once
      rows[fresh] = static_cast<std::uint32_t>(i);
      fresh_ids[fresh] = n;
      fresh += unseen;
    }
    if (fresh) kernels.binary_dot_rows(reinterpret_cast<const std::uint64_t*>(block), rows, fresh, stride_words, words,
                                       rq.planes.data(), rq.query_bits, dots);
    // Lower bounds first, then the survivors, then the pushes: with the test inside one loop its branch
    // (about half the neighbours survive) mispredicted behind the estimate's latency chain.
    for (std::size_t j = 0; j < fresh; ++j) {
      float f[4];
      std::memcpy(f, block + rows[j] * rq_bytes_ + factor_offset, sizeof(f));
      const float ip = f[codec::RaBitQ::kSignInvA] *
                       (delta * static_cast<float>(dots[j]) + lo * f[codec::RaBitQ::kSignSum] - half_qsum);
      const float est = base + add_weight * f[codec::RaBitQ::kAdd] + ip_weight * ip;
      const float err = f[codec::RaBitQ::kSignErr], inv_a = f[codec::RaBitQ::kSignInvA];
      lower[j] = est - std::sqrt(err * err * rot_var + inv_a * inv_a * round_var);
    }
    std::size_t kept = 0;
    for (std::size_t j = 0; j < fresh; ++j) {
      rows[kept] = static_cast<std::uint32_t>(j);
      kept += lower[j] < worst;  // cannot beat the results otherwise (worst is infinite until they are full)
    }
    for (std::size_t k = 0; k < kept; ++k) {
      // Keyed by the lower bound, not the estimate: the walk expands a node while it might still beat
      // the results, and stops once no candidate can. Measured (MiniLM 20k, ip): at equal QPS this
      // gains 0.03 recall over estimate keys; on clustered data with a distant centre, where 1-bit
      // estimates are poor, estimate keys lost 0.15 recall against an exact walk and bound keys none.
      cand.emplace_back(lower[rows[k]], fresh_ids[rows[k]]);
      std::push_heap(cand.begin(), cand.end(), CandGreater());
    }
    // The next node's record is requested before the exact distance of this one is computed, so its
    // fetch overlaps that work (measured: ~10% more QPS than re-ranking first, at equal recall).
    if (!cand.empty() && cand.front().second != guess) request_record(cand.front().second);
    // Re-rank: the expanded node's exact distance (its vector shares the record with the block).
    if (accepts(c)) {
      const float d = distance(q, c);
      if (top.size() < ef || d < worst) {
        top.emplace_back(d, c);
        std::push_heap(top.begin(), top.end(), CandLess());
        if (top.size() > ef) {
          std::pop_heap(top.begin(), top.end(), CandLess());
          top.pop_back();
        }
        if (top.size() >= ef) worst = top.front().first;
      }
    }
  }
  results.assign(top.begin(), top.end());
  std::sort(results.begin(), results.end(), CandLess());
}

void HNSWIndex::search_level0_quantized(const codec::RaBitQ::Query& q, Slot entry, std::size_t ef, float bound,
                                        const IdSelector* filter,
                                        const std::uint64_t* allowed_bits, bool tombstones, Scratch& scratch,
                                        std::vector<Cand>& results) const {
  if (filter && allowed_bits) {
    search_quantized(q, entry, ef, bound, [this, tombstones, allowed_bits](Slot n) {
      return (!tombstones || !is_deleted(n)) && ((allowed_bits[n >> 6] >> (n & 63)) & 1u) != 0;
    }, scratch, results);
  } else if (filter) {
    search_quantized(q, entry, ef, bound, [this, tombstones, filter](Slot n) {
      return (!tombstones || !is_deleted(n)) && filter->contains(slot_ids_[n]);
    }, scratch, results);
  } else if (tombstones) {
    search_quantized(q, entry, ef, bound, [this](Slot n) { return !is_deleted(n); }, scratch, results);
  } else {
    search_quantized(q, entry, ef, bound, [](Slot) { return true; }, scratch, results);
  }
}

void HNSWIndex::prepare_code_queries(const float* q, std::size_t nq, std::vector<codec::RaBitQ::Query>& out) const {
  out.resize(nq);
  rabitq_->prepare_queries(q, nq, rq_centre_.data(), rabitq_->default_query_bits(), out.data());
}

// ---------------------------------------------------------------------------------------------------
// Files

void HNSWIndex::write_quantized(io::FileWriter& w) const {
  w.add(kTagCodeCentre, rq_centre_.data(), rq_centre_.size() * sizeof(float));
  w.add(kTagSelfCodes, self_codes_.data(), slot_count_ * rq_bytes_);
  io::ByteWriter rotation;
  rotation.put(static_cast<std::uint32_t>(code_rotation_));
  w.add_owned(kTagCodeRotation, rotation.take());
}

void HNSWIndex::read_quantized(const io::FileReader& reader, const std::string& origin) {
  auto bad = [&](const auto&... why) { fail(ErrorKind::IO, origin, ": corrupted HNSWIndex: ", why...); };
  const std::size_t n = slot_count_;
  const io::Bytes centre = reader.section(kTagCodeCentre), codes = reader.section(kTagSelfCodes);
  if (centre.size != (n ? dim_ * sizeof(float) : 0)) bad("code centre section size");
  rq_centre_.resize(centre.size / sizeof(float));
  if (centre.size) std::memcpy(rq_centre_.data(), centre.data, centre.size);
  for (float v : rq_centre_)
    if (!std::isfinite(v) || std::fabs(v) > 1e18f) bad("code centre not finite");
  if (codes.size != n * rq_bytes_) bad("code section size");
  if (reader.mapped())
    self_codes_ = AlignedBuffer<unsigned char>::view(codes.data, codes.size, reader.keepalive());
  else
    self_codes_.append(codes.data, codes.size);
  // Factors must be finite (a NaN estimate would break the candidate heap's ordering) and every block
  // entry a copy of its target's code: then no block can hold a factor the first check missed.
  const std::size_t factor_offset = rabitq_->code_words() * 8;
  const std::size_t nf = codec::RaBitQ::num_factors(rabitq_->bits());
  for (std::size_t s = 0; s < n; ++s) {
    float f[8];
    std::memcpy(f, self_code(static_cast<Slot>(s)) + factor_offset, nf * sizeof(float));
    for (std::size_t j = 0; j < nf; ++j)
      if (!std::isfinite(f[j]) || std::fabs(f[j]) > 1e18f) bad("code factors out of range at slot ", s);
  }
  for (std::size_t s = 0; s < n; ++s) {
    const Slot node = static_cast<Slot>(s);
    const std::size_t count = std::min<std::size_t>(*header0(node) & kCountMask, 2 * M_);
    for (std::size_t i = 0; i < count; ++i)
      if (std::memcmp(code_block(node) + i * rq_bytes_, self_code(links0(node)[i]), rq_bytes_) != 0)
        bad("neighbour code block out of step with the links at slot ", s);
  }
}

}  // namespace annforge
