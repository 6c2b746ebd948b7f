#include "annforge/index/hnsw.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "annforge/simd/kernels.h"
#include "annforge/util/splitmix64.h"
#include "hnsw_internal.h"

// The rest of HNSWIndex: hnsw_build.cpp (insertion, repair), hnsw_search.cpp (queries),
// hnsw_filter_plan.cpp (filtered queries), hnsw_io.cpp (files).

namespace annforge {

using util::splitmix64;

HnswStorage parse_hnsw_storage(const std::string& name) {
  if (name == "f32") return HnswStorage::F32;
  if (name == "f16") return HnswStorage::F16;
  if (name == "sq8") return HnswStorage::SQ8;
  if (name == "rabitq") return HnswStorage::RABITQ;
  if (name == "rabitq-f16") return HnswStorage::RABITQ_F16;
  fail(ErrorKind::Value, "storage must be 'f32', 'f16', 'sq8', 'rabitq' or 'rabitq-f16', got '", name, "'");
}

const char* hnsw_storage_name(HnswStorage s) {
  switch (s) {
    case HnswStorage::F32: return "f32";
    case HnswStorage::F16: return "f16";
    case HnswStorage::SQ8: return "sq8";
    case HnswStorage::RABITQ: return "rabitq";
    case HnswStorage::RABITQ_F16: return "rabitq-f16";
  }
  return "?";
}

// ---------------------------------------------------------------------------------------------------
// Construction and parameters

HNSWIndex::HNSWIndex(std::size_t dim, Metric metric, std::size_t M, std::size_t ef_construction, std::uint64_t seed,
                     HnswStorage storage, codec::RaBitQ::Rotation code_rotation)
    : VectorIndex(dim, metric), M_(M), ef_construction_(ef_construction), seed_(seed), storage_(storage),
      code_rotation_(code_rotation), codec_(codec_kind(storage), dim, metric) {
  ANNFORGE_CHECK(M >= 2 && M <= 2048, ErrorKind::Value, "M must be in [2, 2048], got ", M);
  ANNFORGE_CHECK(ef_construction >= 1 && ef_construction <= (1u << 20), ErrorKind::Value,
                 "ef_construction must be in [1, 1048576], got ", ef_construction);
  level_mult_ = 1.0 / std::log(static_cast<double>(M));
  code_bytes_ = codec_.code_bytes();
  links_bytes_ = sizeof(std::uint32_t) * 2 * M_;
  std::size_t block_bytes = 0;
  if (storage == HnswStorage::RABITQ || storage == HnswStorage::RABITQ_F16) {
    // 1-bit codes: the sign stage is what the walk uses; the exact re-rank does the rest.
    rabitq_ = std::make_unique<codec::RaBitQ>(dim, metric, 1, splitmix64(seed ^ 0x5241425154514731ULL), code_rotation);
    rq_bytes_ = rabitq_->record_bytes();
    block_bytes = 2 * M_ * rq_bytes_;
  }
  const RecordLayout layout = record_layout(links_bytes_ + block_bytes, code_bytes_);
  vector_offset_ = layout.vector_offset;
  record_bytes_ = layout.record_bytes;
  node_locks_ = std::make_unique<std::mutex[]>(kLockStripes);
}

void HNSWIndex::set_default_ef(std::size_t ef) {
  ANNFORGE_CHECK(ef >= 1 && ef <= (1u << 24), ErrorKind::Value, "ef must be in [1, 16777216], got ", ef);
  default_ef_.store(ef);
}

std::size_t HNSWIndex::size() const {
  std::shared_lock<std::shared_mutex> lock(rw_mutex_);
  return live_;
}

std::size_t HNSWIndex::slot_count() const {
  std::shared_lock<std::shared_mutex> lock(rw_mutex_);
  return slot_count_;
}

int HNSWIndex::max_level() const {
  const std::uint64_t e = entry_.load();
  return (e & 0xffffffffu) == kNoSlot ? -1 : static_cast<int>(e >> 32);
}

std::vector<idx_t> HNSWIndex::unreachable_ids() const {
  std::lock_guard<std::mutex> writer(update_mutex_);  // a settled graph: no insertion in flight
  std::shared_lock<std::shared_mutex> lock(rw_mutex_);
  std::vector<idx_t> out;
  const Slot entry = static_cast<Slot>(entry_.load() & 0xffffffffu);
  if (entry == kNoSlot) return out;
  std::vector<char> seen(slot_count_, 0);
  std::vector<Slot> stack{entry};
  seen[entry] = 1;
  while (!stack.empty()) {
    const Slot s = stack.back();
    stack.pop_back();
    const std::uint32_t* list = links0(s);
    const std::size_t count = std::min<std::size_t>(load_acquire(header0(s)) & kCountMask, 2 * M_);
    for (std::size_t i = 0; i < count; ++i) {
      const Slot n = list[i];
      if (n < slot_count_ && !seen[n]) {
        seen[n] = 1;
        stack.push_back(n);
      }
    }
  }
  for (std::size_t s = 0; s < slot_count_; ++s)
    if (!seen[s] && !is_deleted(static_cast<Slot>(s))) out.push_back(slot_ids_[s]);
  return out;
}

bool HNSWIndex::contains(idx_t id) const {
  std::shared_lock<std::shared_mutex> lock(rw_mutex_);
  return slot_of_.contains(id);
}

std::vector<idx_t> HNSWIndex::ids() const {
  std::shared_lock<std::shared_mutex> lock(rw_mutex_);
  std::vector<idx_t> out;
  out.reserve(live_);
  for (std::size_t s = 0; s < slot_count_; ++s)
    if (!is_deleted(static_cast<Slot>(s))) out.push_back(slot_ids_[s]);
  return out;
}

std::size_t HNSWIndex::memory_bytes() const {
  std::shared_lock<std::shared_mutex> lock(rw_mutex_);
  std::size_t upper = upper_.capacity() * sizeof(std::vector<std::uint32_t>);
  for (const auto& u : upper_) upper += u.capacity() * sizeof(std::uint32_t);
  const std::size_t quantized = self_codes_.heap_bytes() + rq_centre_.capacity() * sizeof(float) +
                                (rabitq_ ? rabitq_->rotation_bytes() : 0);
  return records_.heap_bytes() + headers_.heap_bytes() + exact_.heap_bytes() + codec_.memory_bytes() + upper + quantized +
         levels_.capacity() + slot_ids_.heap_bytes() + slot_of_.memory_bytes() + free_slots_.capacity() * sizeof(Slot);
}

int HNSWIndex::draw_level(std::uint64_t salt) const {
  const std::uint64_t r = splitmix64(seed_ * 0x9e3779b97f4a7c15ULL + salt);
  const double u = (static_cast<double>(r >> 11) + 1.0) * (1.0 / 9007199254740993.0);  // (0, 1]
  const double level = -std::log(u) * level_mult_;
  return level >= kMaxLevel ? kMaxLevel : static_cast<int>(level);
}

// ---------------------------------------------------------------------------------------------------
// Stored representation and distances

void HNSWIndex::decode(Slot s, float* out) const {
  if (storage_ == HnswStorage::SQ8)  // the f32 copy, not the codes
    std::memcpy(out, exact_.data() + static_cast<std::size_t>(s) * dim_, dim_ * sizeof(float));
  else
    codec_.decode(vec(s), out);
}

const float* HNSWIndex::node_as_query(Slot s, std::vector<float>& buffer) const {
  if (codec_.kind() == RefineKind::F32) return reinterpret_cast<const float*>(vec(s));  // no copy needed
  buffer.resize(dim_);
  decode(s, buffer.data());
  return buffer.data();
}

float HNSWIndex::exact_distance(const float* q, Slot s) const {
  const auto& K = simd::kernels();
  const bool l2 = metric_ == Metric::L2;
  if (storage_ == HnswStorage::SQ8) {
    const float* x = exact_.data() + static_cast<std::size_t>(s) * dim_;
    return l2 ? K.l2_sqr(q, x, dim_) : 1.0f - K.dot(q, x, dim_);
  }
  Query query;
  query.raw = q;  // f32 / f16 scoring reads only the raw query
  return distance(query, s);
}

}  // namespace annforge
