#include "annforge/index/hnsw.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "annforge/parallel/executor.h"
#include "annforge/simd/kernels.h"
#include "annforge/storage/prefetch.h"
#include "annforge/util/splitmix64.h"
#include "annforge/util/topk.h"

namespace annforge {

namespace {

constexpr std::uint32_t kTagMeta = io::make_tag("META");
// REC0: records with the header word inside (files written before the headers moved out; read and
// converted on load). REC1 + HDR0: records without it, and the headers.
constexpr std::uint32_t kTagLegacyRecords = io::make_tag("REC0");
constexpr std::uint32_t kTagRecords = io::make_tag("REC1");
constexpr std::uint32_t kTagHeaders = io::make_tag("HDR0");
constexpr std::uint32_t kTagIds = io::make_tag("IDS ");
constexpr std::uint32_t kTagLevels = io::make_tag("LVLS");
constexpr std::uint32_t kTagUpper = io::make_tag("UPPR");
constexpr std::uint32_t kTagExact = io::make_tag("EXAC");
constexpr std::uint32_t kTagSq8 = io::make_tag("SQ8P");
constexpr int kMaxLevel = 31;
// Below this fraction of allowed vectors a filtered graph walk expands two hops through filtered-out
// nodes (measured on 384-d embeddings: at 10% it beats the plain walk, at 50% it does not matter).
constexpr double kTwoHopSelectivity = 0.3;


// Link words are read by searches while an insertion writes them under the node's lock: the header
// (count) is published with release order after the links it covers.
inline std::uint32_t load_acquire(const std::uint32_t* p) {
  return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}
inline void store_release(std::uint32_t* p, std::uint32_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }

using util::splitmix64;

// Where the vector starts in a level-0 record and the record's size, for `links_bytes` of links ahead
// of `code_bytes` of stored vector. Vectors of a cache line or more start on a cache line (the records
// are 64-byte aligned then), so a visit touches the fewest lines; small vectors pack tightly instead.
struct RecordLayout {
  std::size_t vector_offset, record_bytes;
};
RecordLayout record_layout(std::size_t links_bytes, std::size_t code_bytes) {
  const std::size_t align = code_bytes >= 256 ? 64 : 16;
  const std::size_t offset = (links_bytes + align - 1) / align * align;
  return {offset, (offset + code_bytes + align - 1) / align * align};
}

inline std::uint64_t pack_entry(int level, std::uint32_t slot) {
  return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(level)) << 32) | slot;
}

struct CandGreater {
  bool operator()(const std::pair<float, std::uint32_t>& a, const std::pair<float, std::uint32_t>& b) const {
    return a.first > b.first;
  }
};
struct CandLess {
  bool operator()(const std::pair<float, std::uint32_t>& a, const std::pair<float, std::uint32_t>& b) const {
    return a.first < b.first;
  }
};

}  // namespace

HnswStorage parse_hnsw_storage(const std::string& name) {
  if (name == "f32") return HnswStorage::F32;
  if (name == "f16") return HnswStorage::F16;
  if (name == "sq8") return HnswStorage::SQ8;
  fail(ErrorKind::Value, "storage must be 'f32', 'f16' or 'sq8', got '", name, "'");
}

const char* hnsw_storage_name(HnswStorage s) {
  switch (s) {
    case HnswStorage::F32: return "f32";
    case HnswStorage::F16: return "f16";
    case HnswStorage::SQ8: return "sq8";
  }
  return "?";
}

// A query in the form the stored representation wants (sq8 folds offset/scale in once per query).
struct HNSWIndex::Query {
  const float* raw = nullptr;  // f32 query (normalised for cosine)
  std::vector<float> folded;   // sq8: q - offset (l2) or q * scale (ip)
  float base = 0.0f;           // sq8 ip: <q, offset>
};

// Per-thread, reused across calls: no allocation per search once warm.
struct HNSWIndex::Scratch {
  std::vector<std::uint16_t> visited;
  std::uint16_t epoch = 0;
  std::vector<Cand> candidates, top, results, pruned;
  std::vector<std::uint32_t> batch, hops;
  std::vector<float> decoded_a, decoded_b;
  Query query, node_query;
  std::uint16_t next_epoch(std::size_t n) {
    if (visited.size() < n) visited.resize(n + n / 4 + 1024, 0);
    if (++epoch == 0) {
      std::fill(visited.begin(), visited.end(), 0);
      epoch = 1;
    }
    return epoch;
  }
};

// ---------------------------------------------------------------------------------------------------
// Construction and parameters

HNSWIndex::HNSWIndex(std::size_t dim, Metric metric, std::size_t M, std::size_t ef_construction, std::uint64_t seed,
                     HnswStorage storage)
    : VectorIndex(dim, metric), M_(M), ef_construction_(ef_construction), seed_(seed), storage_(storage) {
  ANNFORGE_CHECK(M >= 2 && M <= 2048, ErrorKind::Value, "M must be in [2, 2048], got ", M);
  ANNFORGE_CHECK(ef_construction >= 1 && ef_construction <= (1u << 20), ErrorKind::Value,
                 "ef_construction must be in [1, 1048576], got ", ef_construction);
  level_mult_ = 1.0 / std::log(static_cast<double>(M));
  switch (storage_) {
    case HnswStorage::F32: code_bytes_ = dim * sizeof(float); break;
    case HnswStorage::F16: code_bytes_ = dim * sizeof(std::uint16_t); break;
    case HnswStorage::SQ8: code_bytes_ = dim; break;
  }
  links_bytes_ = sizeof(std::uint32_t) * 2 * M_;
  const RecordLayout layout = record_layout(links_bytes_, code_bytes_);
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
  return records_.heap_bytes() + headers_.heap_bytes() + exact_.heap_bytes() + sq8_offset_.heap_bytes() + sq8_scale_.heap_bytes() + upper +
         levels_.capacity() + slot_ids_.heap_bytes() + slot_of_.memory_bytes() + free_slots_.capacity() * sizeof(Slot);
}

bool HNSWIndex::is_deleted(Slot s) const { return (load_acquire(header0(s)) & kDeletedBit) != 0; }

std::uint32_t* HNSWIndex::link_header(Slot s, int level) {
  if (level == 0) return header0(s);
  return upper_[s].data() + static_cast<std::size_t>(level - 1) * (M_ + 1);
}
const std::uint32_t* HNSWIndex::link_header(Slot s, int level) const {
  if (level == 0) return header0(s);
  return upper_[s].data() + static_cast<std::size_t>(level - 1) * (M_ + 1);
}
std::uint32_t* HNSWIndex::link_ids(Slot s, int level) {
  if (level == 0) return links0(s);
  return upper_[s].data() + static_cast<std::size_t>(level - 1) * (M_ + 1) + 1;
}
const std::uint32_t* HNSWIndex::link_ids(Slot s, int level) const {
  if (level == 0) return links0(s);
  return upper_[s].data() + static_cast<std::size_t>(level - 1) * (M_ + 1) + 1;
}

int HNSWIndex::draw_level(std::uint64_t salt) const {
  const std::uint64_t r = splitmix64(seed_ * 0x9e3779b97f4a7c15ULL + salt);
  const double u = (static_cast<double>(r >> 11) + 1.0) * (1.0 / 9007199254740993.0);  // (0, 1]
  const double level = -std::log(u) * level_mult_;
  return level >= kMaxLevel ? kMaxLevel : static_cast<int>(level);
}

// ---------------------------------------------------------------------------------------------------
// Stored representation and distances

void HNSWIndex::train_sq8(const float* rows, std::size_t n) {
  // Per-dimension [min, max] of the first batch; later values outside it are clamped (documented).
  sq8_offset_.resize(dim_);
  sq8_scale_.resize(dim_);
  float* off = sq8_offset_.mutable_data();
  float* scale = sq8_scale_.mutable_data();
  for (std::size_t j = 0; j < dim_; ++j) {
    float lo = std::numeric_limits<float>::infinity(), hi = -lo;
    for (std::size_t i = 0; i < n; ++i) {
      lo = std::min(lo, rows[i * dim_ + j]);
      hi = std::max(hi, rows[i * dim_ + j]);
    }
    if (n == 0) lo = hi = 0.0f;
    const float range = hi - lo;
    off[j] = lo;
    scale[j] = range > 0.0f && std::isfinite(range) ? range / 255.0f : 1.0f;
  }
  sq8_trained_ = true;
}

void HNSWIndex::encode(const float* row, unsigned char* out) const {
  switch (storage_) {
    case HnswStorage::F32: std::memcpy(out, row, dim_ * sizeof(float)); break;
    case HnswStorage::F16: {
      std::vector<std::uint16_t> tmp(dim_);
      simd::kernels().f32_to_f16(row, tmp.data(), dim_);
      std::memcpy(out, tmp.data(), dim_ * sizeof(std::uint16_t));
      break;
    }
    case HnswStorage::SQ8: {
      const float* off = sq8_offset_.data();
      const float* scale = sq8_scale_.data();
      for (std::size_t j = 0; j < dim_; ++j) {
        const float v = std::nearbyint((row[j] - off[j]) / scale[j]);
        out[j] = static_cast<unsigned char>(v < 0.0f ? 0.0f : (v > 255.0f ? 255.0f : v));
      }
      break;
    }
  }
}

void HNSWIndex::decode(Slot s, float* out) const {
  const unsigned char* v = vec(s);
  switch (storage_) {
    case HnswStorage::F32: std::memcpy(out, v, dim_ * sizeof(float)); break;
    case HnswStorage::F16: simd::kernels().f16_to_f32(reinterpret_cast<const std::uint16_t*>(v), out, dim_); break;
    case HnswStorage::SQ8: std::memcpy(out, exact_.data() + static_cast<std::size_t>(s) * dim_, dim_ * sizeof(float));
  }
}

const float* HNSWIndex::node_as_query(Slot s, std::vector<float>& buffer) const {
  if (storage_ == HnswStorage::F32) return reinterpret_cast<const float*>(vec(s));  // no copy needed
  buffer.resize(dim_);
  decode(s, buffer.data());
  return buffer.data();
}

void HNSWIndex::prepare_query(const float* q, Query& out) const {
  out.raw = q;
  if (storage_ != HnswStorage::SQ8) return;
  out.folded.resize(dim_);
  const float* off = sq8_offset_.data();
  const float* scale = sq8_scale_.data();
  if (metric_ == Metric::L2) {
    for (std::size_t j = 0; j < dim_; ++j) out.folded[j] = q[j] - off[j];
  } else {
    float base = 0.0f;
    for (std::size_t j = 0; j < dim_; ++j) {
      out.folded[j] = q[j] * scale[j];
      base += q[j] * off[j];
    }
    out.base = base;
  }
}

float HNSWIndex::distance(const Query& q, Slot s) const {
  const auto& K = simd::kernels();
  const unsigned char* v = vec(s);
  const bool l2 = metric_ == Metric::L2;
  switch (storage_) {
    case HnswStorage::F32: {
      const auto* x = reinterpret_cast<const float*>(v);
      return l2 ? K.l2_sqr(q.raw, x, dim_) : 1.0f - K.dot(q.raw, x, dim_);
    }
    case HnswStorage::F16: {
      const auto* x = reinterpret_cast<const std::uint16_t*>(v);
      return l2 ? K.l2_sqr_f16(q.raw, x, dim_) : 1.0f - K.dot_f16(q.raw, x, dim_);
    }
    case HnswStorage::SQ8:
      return l2 ? K.l2_sqr_sq8(q.folded.data(), v, sq8_scale_.data(), dim_)
                : 1.0f - (q.base + K.dot_u8(q.folded.data(), v, dim_));
  }
  return 0.0f;
}

float HNSWIndex::exact_distance(const float* q, Slot s) const {
  const auto& K = simd::kernels();
  const bool l2 = metric_ == Metric::L2;
  if (storage_ == HnswStorage::SQ8) {
    const float* x = exact_.data() + static_cast<std::size_t>(s) * dim_;
    return l2 ? K.l2_sqr(q, x, dim_) : 1.0f - K.dot(q, x, dim_);
  }
  Query query;
  query.raw = q;
  return distance(query, s);
}

// ---------------------------------------------------------------------------------------------------
// Graph search

void HNSWIndex::prefetch_vector_tail(Slot s) const {
  if (code_bytes_ > 64) prefetch_range(vec(s) + 64, code_bytes_ - 64);
}

HNSWIndex::Slot HNSWIndex::greedy_descent(const Query& q, Slot entry, int top_level, int stop_level) const {
  // Walks down from top_level to stop_level + 1, moving to the closest neighbour while one improves.
  Slot cur = entry;
  float cur_dist = distance(q, cur);
  for (int level = top_level; level > stop_level; --level) {
    bool changed = true;
    while (changed) {
      changed = false;
      const std::uint32_t* list = link_ids(cur, level);
      const std::uint32_t count = std::min<std::uint32_t>(load_acquire(link_header(cur, level)) & kCountMask, M_);
      for (std::uint32_t i = 0; i < count; ++i) {
        const Slot n = list[i];
        if (n >= slot_count_) continue;
        const float d = distance(q, n);
        if (d < cur_dist) {
          cur_dist = d;
          cur = n;
          changed = true;
        }
      }
    }
  }
  return cur;
}

template <typename Accept>
void HNSWIndex::search_layer(const Query& q, Slot entry, std::size_t ef, int level, Accept&& accept,
                             Scratch& scratch, std::vector<Cand>& results) const {
  // `scratch.visited` must hold the current epoch's marks (the caller may pre-mark slots to skip).
  auto& cand = scratch.candidates;  // min-heap by distance (CandGreater)
  auto& top = scratch.top;          // max-heap of accepted results
  cand.clear();
  top.clear();
  const std::uint16_t epoch = scratch.epoch;
  std::uint16_t* visited = scratch.visited.data();
  const std::size_t limit = max_links(level);
  const std::size_t nslots = slot_count_;

  if (scratch.batch.size() < limit) scratch.batch.resize(limit);
  const float d0 = distance(q, entry);
  visited[entry] = epoch;
  cand.emplace_back(d0, entry);
  float lower = std::numeric_limits<float>::infinity();
  if (accept(entry)) {
    top.emplace_back(d0, entry);
    lower = d0;
  }
  while (!cand.empty()) {
    const Cand current = cand.front();
    if (current.first > lower && top.size() >= ef) break;
    std::pop_heap(cand.begin(), cand.end(), CandGreater());
    cand.pop_back();

    // Gather the unvisited neighbours first, prefetching the first line of each vector, then compute
    // the distances while prefetching the rest of the vector kPrefetchAhead places ahead: the loads
    // overlap instead of being paid one after another, without flooding the line-fill buffers (whole
    // vectors for every neighbour at once stalled on the prefetches; this is ~10% faster at 384-d f32).
    const std::size_t count =
        std::min<std::size_t>(load_acquire(link_header(current.second, level)) & kCountMask, limit);
    const std::uint32_t* links = link_ids(current.second, level);
    Slot* batch = scratch.batch.data();
    std::size_t fresh = 0;
    for (std::size_t i = 0; i < count; ++i) {
      const Slot n = links[i];
      if (n >= nslots || visited[n] == epoch) continue;
      visited[n] = epoch;
      batch[fresh++] = n;
      prefetch(vec(n));
    }
    for (std::size_t j = 0; j < kPrefetchAhead && j < fresh; ++j) prefetch_vector_tail(batch[j]);
    for (std::size_t i = 0; i < fresh; ++i) {
      const Slot n = batch[i];
      if (i + kPrefetchAhead < fresh) prefetch_vector_tail(batch[i + kPrefetchAhead]);
      const float d = distance(q, n);
      if (top.size() < ef || d < lower) {
        cand.emplace_back(d, n);
        std::push_heap(cand.begin(), cand.end(), CandGreater());
        if (accept(n)) {
          top.emplace_back(d, n);
          std::push_heap(top.begin(), top.end(), CandLess());
          if (top.size() > ef) {
            std::pop_heap(top.begin(), top.end(), CandLess());
            top.pop_back();
          }
          lower = top.front().first;
        }
      }
    }
    if (!cand.empty()) prefetch(record(cand.front().second));
  }
  results.assign(top.begin(), top.end());
  std::sort(results.begin(), results.end(), CandLess());
}

template <typename Allowed>
void HNSWIndex::search_layer_filtered(const Query& q, Slot entry, std::size_t ef, Allowed&& allowed,
                                      Scratch& scratch, std::vector<Cand>& results) const {
  // Level-0 search for selective filters (ACORN-style two-hop expansion): distances are computed only
  // for allowed nodes; a filtered-out neighbour is not measured but its allowed neighbours are taken
  // in, so the walk stays on the allowed subgraph without losing connectivity through the rest.
  auto& cand = scratch.candidates;
  auto& top = scratch.top;
  cand.clear();
  top.clear();
  const std::uint16_t epoch = scratch.epoch;
  std::uint16_t* visited = scratch.visited.data();
  const std::size_t limit = 2 * M_;
  const std::size_t nslots = slot_count_;
  if (scratch.batch.size() < limit * (limit + 1)) scratch.batch.resize(limit * (limit + 1));
  if (scratch.hops.size() < limit) scratch.hops.resize(limit);

  const float d0 = distance(q, entry);
  visited[entry] = epoch;
  cand.emplace_back(d0, entry);
  float lower = std::numeric_limits<float>::infinity();
  if (allowed(entry)) {
    top.emplace_back(d0, entry);
    lower = d0;
  }
  while (!cand.empty()) {
    const Cand current = cand.front();
    if (current.first > lower && top.size() >= ef) break;
    std::pop_heap(cand.begin(), cand.end(), CandGreater());
    cand.pop_back();

    const std::uint32_t* list = links0(current.second);
    const std::size_t count = std::min<std::size_t>(load_acquire(header0(current.second)) & kCountMask, limit);
    Slot* batch = scratch.batch.data();
    Slot* hops = scratch.hops.data();
    std::size_t fresh = 0, nhops = 0;
    for (std::size_t i = 0; i < count; ++i) {
      const Slot n = list[i];
      if (n >= nslots || visited[n] == epoch) continue;
      visited[n] = epoch;
      if (allowed(n)) {
        batch[fresh++] = n;
        prefetch(vec(n));  // the first line now, the rest a few places ahead of the distance loop
      } else {
        hops[nhops++] = n;
        prefetch(record(n));
      }
    }
    for (std::size_t h = 0; h < nhops; ++h) {
      const std::uint32_t* second = links0(hops[h]);
      const std::size_t c2 = std::min<std::size_t>(load_acquire(header0(hops[h])) & kCountMask, limit);
      for (std::size_t j = 0; j < c2; ++j) {
        const Slot m = second[j];
        if (m >= nslots || visited[m] == epoch || !allowed(m)) continue;
        visited[m] = epoch;
        batch[fresh++] = m;
        prefetch(vec(m));
      }
    }
    for (std::size_t j = 0; j < kPrefetchAhead && j < fresh; ++j) prefetch_vector_tail(batch[j]);
    for (std::size_t i = 0; i < fresh; ++i) {
      const Slot n = batch[i];
      if (i + kPrefetchAhead < fresh) prefetch_vector_tail(batch[i + kPrefetchAhead]);
      const float d = distance(q, n);
      if (top.size() < ef || d < lower) {
        cand.emplace_back(d, n);
        std::push_heap(cand.begin(), cand.end(), CandGreater());
        top.emplace_back(d, n);
        std::push_heap(top.begin(), top.end(), CandLess());
        if (top.size() > ef) {
          std::pop_heap(top.begin(), top.end(), CandLess());
          top.pop_back();
        }
        lower = top.front().first;
      }
    }
    if (!cand.empty()) prefetch(record(cand.front().second));
  }
  results.assign(top.begin(), top.end());
  std::sort(results.begin(), results.end(), CandLess());
}

void HNSWIndex::select_heuristic(std::vector<Cand>& candidates, std::size_t m) const {
  // hnswlib's getNeighborsByHeuristic2: keep a candidate only if it is closer to the new node than to
  // every neighbour already kept, which spreads the links over directions. `candidates` is sorted.
  if (candidates.size() <= m) return;
  const auto& K = simd::kernels();
  const bool l2 = metric_ == Metric::L2;
  thread_local std::vector<float> a, b;
  std::vector<Cand> kept;
  kept.reserve(m);
  for (const Cand& c : candidates) {
    if (kept.size() >= m) break;
    bool good = true;
    const float* cv;
    if (storage_ == HnswStorage::F32) {
      cv = reinterpret_cast<const float*>(vec(c.second));
    } else {
      a.resize(dim_);
      decode(c.second, a.data());
      cv = a.data();
    }
    for (const Cand& r : kept) {
      float d;
      if (storage_ == HnswStorage::F32) {
        const auto* rv = reinterpret_cast<const float*>(vec(r.second));
        d = l2 ? K.l2_sqr(cv, rv, dim_) : 1.0f - K.dot(cv, rv, dim_);
      } else {
        b.resize(dim_);
        decode(r.second, b.data());
        d = l2 ? K.l2_sqr(cv, b.data(), dim_) : 1.0f - K.dot(cv, b.data(), dim_);
      }
      if (d < c.first) {
        good = false;
        break;
      }
    }
    if (good) kept.push_back(c);
  }
  candidates.swap(kept);
}

void HNSWIndex::connect(Slot s, int level, const std::vector<Cand>& neighbours, Scratch& scratch) {
  const std::size_t limit = max_links(level);
  {
    std::lock_guard<std::mutex> lock(node_lock(s));
    std::uint32_t* head = link_header(s, level);
    std::uint32_t* list = link_ids(s, level);
    const std::uint32_t header = load_acquire(head);
    const std::size_t existing = std::min<std::size_t>(header & kCountMask, limit);
    if (existing == 0) {
      const std::size_t count = std::min(limit, neighbours.size());
      for (std::size_t i = 0; i < count; ++i) list[i] = neighbours[i].second;
      store_release(head, (header & ~kCountMask) | static_cast<std::uint32_t>(count));
    } else {
      // s became reachable on an upper level before this one was connected, so a concurrent insertion
      // already linked itself here (its back-link to s). Overwriting would drop that link and could
      // leave the other node with no in-link at all: merge it with s's own choice instead.
      auto& pool = scratch.pruned;
      pool.assign(neighbours.begin(), neighbours.end());
      Query& qs = scratch.node_query;
      prepare_query(node_as_query(s, scratch.decoded_a), qs);
      for (std::size_t i = 0; i < existing; ++i) {
        const Slot o = list[i];
        if (o >= slot_count_ || o == s) continue;
        bool present = false;
        for (const Cand& c : neighbours) present = present || c.second == o;
        if (!present) pool.emplace_back(distance(qs, o), o);
      }
      std::sort(pool.begin(), pool.end(), CandLess());
      select_heuristic(pool, limit);
      for (std::size_t i = 0; i < pool.size(); ++i) list[i] = pool[i].second;
      store_release(head, (header & ~kCountMask) | static_cast<std::uint32_t>(pool.size()));
    }
  }
  for (const Cand& nb : neighbours) {
    const Slot n = nb.second;
    std::lock_guard<std::mutex> lock(node_lock(n));
    std::uint32_t* head = link_header(n, level);
    std::uint32_t* list = link_ids(n, level);
    const std::uint32_t header = load_acquire(head);
    const std::size_t count = std::min<std::size_t>(header & kCountMask, limit);
    bool present = false;
    for (std::size_t i = 0; i < count && !present; ++i) present = list[i] == s;
    if (present) continue;
    if (count < limit) {
      list[count] = s;
      store_release(head, (header & ~kCountMask) | static_cast<std::uint32_t>(count + 1));
      continue;
    }
    // Full: re-select n's links among its current ones plus s, by distance to n.
    auto& pool = scratch.pruned;
    pool.clear();
    Query& qn = scratch.node_query;
    prepare_query(node_as_query(n, scratch.decoded_a), qn);
    pool.emplace_back(nb.first, s);
    for (std::size_t i = 0; i < count; ++i) {
      const Slot o = list[i];
      if (o < slot_count_) pool.emplace_back(distance(qn, o), o);
    }
    std::sort(pool.begin(), pool.end(), CandLess());
    select_heuristic(pool, limit);
    for (std::size_t i = 0; i < pool.size(); ++i) list[i] = pool[i].second;
    store_release(head, (header & ~kCountMask) | static_cast<std::uint32_t>(pool.size()));
  }
}

void HNSWIndex::repair_before_reuse(Slot s, Scratch& scratch) {
  // Slot s held a removed node; its old neighbours are re-linked among themselves (hnswlib's
  // updatePoint idea) so that dropping s from their lists does not leave holes in the graph.
  const int top = levels_[s];
  std::vector<Slot> old;
  for (int level = 0; level <= top; ++level) {
    const std::size_t limit = max_links(level);
    {
      std::lock_guard<std::mutex> lock(node_lock(s));
      const std::uint32_t* list = link_ids(s, level);
      const std::size_t count = std::min<std::size_t>(load_acquire(link_header(s, level)) & kCountMask, limit);
      old.assign(list, list + count);
    }
    for (Slot n : old) {
      if (n == s || n >= slot_count_ || levels_[n] < level) continue;
      Query& qn = scratch.node_query;
      prepare_query(node_as_query(n, scratch.decoded_a), qn);
      std::lock_guard<std::mutex> lock(node_lock(n));
      std::uint32_t* head = link_header(n, level);
      std::uint32_t* list = link_ids(n, level);
      const std::uint32_t header = load_acquire(head);
      const std::size_t count = std::min<std::size_t>(header & kCountMask, limit);
      auto& pool = scratch.pruned;
      pool.clear();
      auto add_candidate = [&](Slot c) {
        if (c == n || c == s || c >= slot_count_ || levels_[c] < level) return;
        for (const Cand& p : pool)
          if (p.second == c) return;
        pool.emplace_back(distance(qn, c), c);
      };
      for (std::size_t i = 0; i < count; ++i) add_candidate(list[i]);
      for (Slot c : old) add_candidate(c);
      std::sort(pool.begin(), pool.end(), CandLess());
      select_heuristic(pool, limit);
      for (std::size_t i = 0; i < pool.size(); ++i) list[i] = pool[i].second;
      store_release(head, (header & ~kCountMask) | static_cast<std::uint32_t>(pool.size()));
    }
  }
  // s's old links describe another place: start empty, so connect() only merges links that concurrent
  // insertions add to s from now on.
  std::lock_guard<std::mutex> lock(node_lock(s));
  for (int level = 0; level <= top; ++level) {
    std::uint32_t* head = link_header(s, level);
    store_release(head, load_acquire(head) & ~kCountMask);
  }
}

void HNSWIndex::reconnect_unreachable(Scratch& scratch) {
  // The neighbour heuristic can prune a node out of every list that pointed to it: on strongly
  // anisotropic data (embeddings whose pairwise cosines are all near 1) outlying nodes often end up
  // with no in-link on level 0, and no search can return them at any ef. Give each such node one
  // in-link from its nearest reachable node; a full list gives up its farthest link whose target
  // keeps another in-link, so the repair never orphans anything else.
  const Slot entry = static_cast<Slot>(entry_.load() & 0xffffffffu);
  if (entry == kNoSlot) return;
  const int top = static_cast<int>(entry_.load() >> 32);
  // A replaced link may have been a target's only in-link from the reachable part: repeat until a
  // pass finds nothing to fix (each pass is one scan of the links; usually one or two suffice).
  for (int pass = 0; pass < 8 && reconnect_pass(entry, top, scratch) > 0; ++pass) {
  }
}

std::size_t HNSWIndex::reconnect_pass(Slot entry, int top, Scratch& scratch) {
  const std::size_t n = slot_count_, limit = 2 * M_;
  std::size_t fixed = 0;
  // in_degree counts links from reached nodes only: a target with two of them stays reachable when
  // one is given up.
  std::vector<std::uint32_t> in_degree(n, 0);
  std::vector<char> reached(n, 0);
  std::vector<Slot> stack;
  auto walk = [&](Slot from) {
    reached[from] = 1;
    stack.assign(1, from);
    while (!stack.empty()) {
      const Slot s = stack.back();
      const std::uint32_t* list = links0(s);
      stack.pop_back();
      const std::size_t count = std::min<std::size_t>(load_acquire(header0(s)) & kCountMask, limit);
      for (std::size_t i = 0; i < count; ++i) {
        const Slot m = list[i];
        if (m >= n || m == s) continue;
        ++in_degree[m];
        if (!reached[m]) {
          reached[m] = 1;
          stack.push_back(m);
        }
      }
    }
  };
  walk(entry);
  std::vector<Cand> found;
  for (Slot o = 0; o < n; ++o) {
    if (reached[o] || is_deleted(o)) continue;
    Query& q = scratch.query;
    prepare_query(node_as_query(o, scratch.decoded_b), q);
    Slot start = greedy_descent(q, entry, top, 0);
    if (!reached[start]) start = entry;  // the descent may pass through o's unreachable part
    scratch.next_epoch(n);
    scratch.visited[o] = scratch.epoch;
    // Every node this walk visits is reachable: it starts at a reachable node and follows links.
    search_layer(q, start, ef_construction_, 0, [](Slot) { return true; }, scratch, found);
    // Prefer the nearest node with a free link, which needs no replacement: a replaced link might
    // have been on the only path to the target's other in-link (the next pass catches that).
    std::stable_partition(found.begin(), found.end(), [&](const Cand& c) {
      return (load_acquire(header0(c.second)) & kCountMask) < limit;
    });
    for (const Cand& c : found) {
      const Slot t = c.second;
      if (t == o || !reached[t] || is_deleted(t)) continue;  // a removed t may soon be reused
      Query& qt = scratch.node_query;
      prepare_query(node_as_query(t, scratch.decoded_a), qt);
      std::lock_guard<std::mutex> lock(node_lock(t));
      std::uint32_t* head = header0(t);
      std::uint32_t* list = links0(t);
      const std::uint32_t header = load_acquire(head);
      const std::size_t count = std::min<std::size_t>(header & kCountMask, limit);
      if (count < limit) {
        list[count] = o;
        store_release(head, (header & ~kCountMask) | static_cast<std::uint32_t>(count + 1));
      } else {
        std::size_t victim = limit;
        float farthest = -std::numeric_limits<float>::infinity();
        for (std::size_t i = 0; i < count; ++i) {
          const Slot m = list[i];
          if (m >= n || in_degree[m] < 2) continue;
          const float d = distance(qt, m);
          if (d > farthest) {
            farthest = d;
            victim = i;
          }
        }
        if (victim == limit) continue;  // every target depends on this link: try the next candidate
        --in_degree[list[victim]];
        __atomic_store_n(&list[victim], o, __ATOMIC_RELEASE);
      }
      ++in_degree[o];
      ++fixed;
      walk(o);
      break;
    }
  }
  return fixed;
}

void HNSWIndex::insert(Slot s, const float* row, Scratch& scratch) {
  const int level = levels_[s];
  Query& q = scratch.query;
  prepare_query(row, q);

  // A node that becomes the new top holds entry_mutex_ for its whole insertion (as in hnswlib), so
  // no other insertion can publish a different top meanwhile.
  std::unique_lock<std::mutex> top_lock(entry_mutex_, std::defer_lock);
  std::uint64_t e = entry_.load();
  if (level > static_cast<int>(e >> 32) || (e & 0xffffffffu) == kNoSlot) {
    top_lock.lock();
    e = entry_.load();
    if (level <= static_cast<int>(e >> 32) && (e & 0xffffffffu) != kNoSlot) top_lock.unlock();
  }
  const Slot entry = static_cast<Slot>(e & 0xffffffffu);
  const int top = static_cast<int>(e >> 32);

  if (entry != kNoSlot && entry != s) {
    Slot cur = entry;
    if (top > level) {
      // Greedy descent, never stepping onto s itself (its old links describe another place).
      float cur_dist = distance(q, cur);
      for (int l = top; l > level; --l) {
        bool changed = true;
        while (changed) {
          changed = false;
          const std::uint32_t* list = link_ids(cur, l);
          const std::uint32_t count = std::min<std::uint32_t>(load_acquire(link_header(cur, l)) & kCountMask, M_);
          for (std::uint32_t i = 0; i < count; ++i) {
            const Slot n = list[i];
            if (n >= slot_count_ || n == s) continue;
            const float d = distance(q, n);
            if (d < cur_dist) {
              cur_dist = d;
              cur = n;
              changed = true;
            }
          }
        }
      }
    }
    std::vector<Cand> found;
    for (int l = std::min(level, top); l >= 0; --l) {
      scratch.next_epoch(slot_count_);
      scratch.visited[s] = scratch.epoch;  // never traverse s itself
      if (skip_removed_in_build_) {
        search_layer(q, cur, ef_construction_, l, [&](Slot n) { return !is_deleted(n); }, scratch, found);
      } else {  // only nodes of this batch carry the deleted bit, and they are fine to link to
        search_layer(q, cur, ef_construction_, l, [](Slot) { return true; }, scratch, found);
      }
      if (found.empty()) {  // only removed nodes nearby: link to them rather than to nothing
        scratch.next_epoch(slot_count_);
        scratch.visited[s] = scratch.epoch;
        search_layer(q, cur, ef_construction_, l, [](Slot) { return true; }, scratch, found);
      }
      if (found.empty()) continue;
      cur = found.front().second;
      select_heuristic(found, M_);
      connect(s, l, found, scratch);
    }
  }
  if (entry == kNoSlot || level > top) entry_.store(pack_entry(level, s));
  std::lock_guard<std::mutex> lock(node_lock(s));
  std::uint32_t* header = header0(s);
  store_release(header, load_acquire(header) & ~kDeletedBit);  // published: searches may return it now
}

void HNSWIndex::grow_to(std::size_t slots) {
  records_.resize(slots * record_bytes_);
  headers_.resize(slots);
  if (storage_ == HnswStorage::SQ8) exact_.resize(slots * dim_);
  slot_ids_.resize(slots);
  levels_.resize(slots, 0);
  upper_.resize(slots);
}

void HNSWIndex::add(const float* x, std::size_t n, const idx_t* ids, int num_threads, idx_t* out_ids) {
  const std::size_t threads = parallel::resolve_threads(num_threads);
  check_storable(x, n, "vectors");
  if (ids) validate_new_ids(ids, n);
  if (n == 0) return;
  std::vector<float> rows;
  prepare_rows(x, n, rows);

  std::lock_guard<std::mutex> writer(update_mutex_);
  std::vector<Slot> slots(n);
  std::vector<char> reused(n, 0);
  {
    std::unique_lock<std::shared_mutex> lock(rw_mutex_);
    ANNFORGE_CHECK(slot_count_ + n < kNoSlot - 1, ErrorKind::Value, "HNSWIndex holds at most 4294967293 vectors");
    assign_ids(ids, n, out_ids);
    has_tombstones_.store(true, std::memory_order_release);  // new slots are hidden until inserted
    if (storage_ == HnswStorage::SQ8 && !sq8_trained_) train_sq8(rows.data(), n);
    // Upsert: the old slot is removed now (never returned again) and becomes reusable.
    for (std::size_t i = 0; i < n; ++i) {
      const idx_t old = slot_of_.erase(out_ids[i]);
      if (old == IdMap::kMissing) continue;
      const auto s = static_cast<Slot>(old);
      std::uint32_t* header = header0(s);  // detaches an mmap view first
      store_release(header, load_acquire(header) | kDeletedBit);
      slot_ids_.at_mut(s) = -1;
      free_slots_.push_back(s);
      --live_;
    }
    // Slots: reuse removed ones first (except the entry point, which must stay navigable).
    const Slot entry = static_cast<Slot>(entry_.load() & 0xffffffffu);
    std::size_t fresh = 0;
    std::vector<Slot> kept_free;
    for (std::size_t i = 0; i < n; ++i) {
      while (!free_slots_.empty() && free_slots_.back() == entry) {
        kept_free.push_back(free_slots_.back());
        free_slots_.pop_back();
      }
      if (!free_slots_.empty()) {
        slots[i] = free_slots_.back();
        free_slots_.pop_back();
        reused[i] = 1;
      } else {
        slots[i] = static_cast<Slot>(slot_count_ + fresh++);
      }
    }
    free_slots_.insert(free_slots_.end(), kept_free.begin(), kept_free.end());
    skip_removed_in_build_ = !free_slots_.empty();
    grow_to(slot_count_ + fresh);
    slot_count_ += fresh;
    (void)records_.mutable_data();  // detach mmap views before writing
    (void)headers_.mutable_data();
    for (std::size_t i = 0; i < n; ++i) {
      const Slot s = slots[i];
      if (!reused[i]) {
        const int level = draw_level(s);
        levels_[s] = static_cast<std::uint8_t>(level);
        upper_[s].assign(static_cast<std::size_t>(level) * (M_ + 1), 0u);
        std::memset(record(s), 0, record_bytes_);
        store_release(header0(s), kDeletedBit);
      }
      encode(rows.data() + i * dim_, record(s) + vector_offset_);
      if (storage_ == HnswStorage::SQ8)
        std::memcpy(exact_.mutable_data() + static_cast<std::size_t>(s) * dim_, rows.data() + i * dim_,
                    dim_ * sizeof(float));
      slot_ids_.at_mut(s) = out_ids[i];
    }
  }
  {
    // Parallel insertion: searches may run meanwhile (shared lock); links change under node locks.
    std::shared_lock<std::shared_mutex> lock(rw_mutex_);
    std::size_t start = 0;
    if ((entry_.load() & 0xffffffffu) == kNoSlot) {
      Scratch scratch;
      insert(slots[0], rows.data(), scratch);
      start = 1;
    }
    parallel::parallel_for(n - start, static_cast<int>(threads), [&](std::size_t task, std::size_t) {
      thread_local Scratch scratch;
      const std::size_t i = start + task;
      if (reused[i]) repair_before_reuse(slots[i], scratch);
      insert(slots[i], rows.data() + i * dim_, scratch);
    });
    inserts_since_repair_ += n;
    if (inserts_since_repair_ * 8 >= slot_count_) {
      Scratch scratch;
      reconnect_unreachable(scratch);
      inserts_since_repair_ = 0;
    }
  }
  {
    std::unique_lock<std::shared_mutex> lock(rw_mutex_);
    slot_of_.reserve(live_ + n);
    for (std::size_t i = 0; i < n; ++i) slot_of_.set(out_ids[i], static_cast<idx_t>(slots[i]));
    live_ += n;
    has_tombstones_.store(!free_slots_.empty(), std::memory_order_release);
  }
}

std::size_t HNSWIndex::remove(const idx_t* ids, std::size_t n) {
  std::lock_guard<std::mutex> writer(update_mutex_);
  std::unique_lock<std::shared_mutex> lock(rw_mutex_);
  std::size_t removed = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const idx_t old = slot_of_.erase(ids[i]);
    if (old == IdMap::kMissing) continue;
    const auto s = static_cast<Slot>(old);
    std::uint32_t* header = header0(s);  // detaches an mmap view first
    store_release(header, load_acquire(header) | kDeletedBit);
    slot_ids_.at_mut(s) = -1;
    free_slots_.push_back(s);
    --live_;
    ++removed;
  }
  if (removed) has_tombstones_.store(true, std::memory_order_release);
  return removed;
}

void HNSWIndex::reconstruct(const idx_t* ids, std::size_t n, float* out) const {
  std::shared_lock<std::shared_mutex> lock(rw_mutex_);
  for (std::size_t i = 0; i < n; ++i) {
    const idx_t slot = slot_of_.find(ids[i]);
    ANNFORGE_CHECK(slot != IdMap::kMissing, ErrorKind::Value, "id ", ids[i], " is not in the index");
    decode(static_cast<Slot>(slot), out + i * dim_);
  }
}

// ---------------------------------------------------------------------------------------------------
// Search

void HNSWIndex::brute_force(const Query& q, const float* raw, std::size_t k, const std::vector<Slot>& slots,
                            const IdSelector* filter, std::vector<Cand>& out) const {
  // Exact scan of `slots` (known live: resolved from the id map under the shared lock, which no
  // remove can take meanwhile) or, when empty, of every live slot that passes `filter`.
  TopK heap(k);
  constexpr std::size_t kAhead = 8;  // slots are scattered: prefetch a few vectors ahead
  if (!slots.empty()) {
    const std::size_t n = slots.size();
    auto exact_row = [&](Slot s) -> const unsigned char* {
      return storage_ == HnswStorage::SQ8
                 ? reinterpret_cast<const unsigned char*>(exact_.data() + static_cast<std::size_t>(s) * dim_)
                 : vec(s);
    };
    for (std::size_t i = 0; i < std::min(n, kAhead); ++i) prefetch(exact_row(slots[i]));
    for (std::size_t i = 0; i < n; ++i) {
      if (i + kAhead < n) {
        const unsigned char* v = exact_row(slots[i + kAhead]);
        prefetch(v);
        prefetch(v + 64);
      }
      const float d = exact_distance(raw, slots[i]);
      if (d <= heap.threshold()) heap.push(d, static_cast<idx_t>(slots[i]));
    }
  } else {
    for (std::size_t s = 0; s < slot_count_; ++s) {
      if (is_deleted(static_cast<Slot>(s))) continue;
      const float d = exact_distance(raw, static_cast<Slot>(s));
      if (d > heap.threshold()) continue;
      if (filter && !filter->contains(slot_ids_[s])) continue;
      heap.push(d, static_cast<idx_t>(s));
    }
  }
  (void)q;
  out.clear();
  for (const auto& e : heap.sorted()) out.emplace_back(e.first, static_cast<Slot>(e.second));
}

void HNSWIndex::search_one(const float* qv, std::size_t k, std::size_t ef, const IdSelector* filter,
                           const std::vector<Slot>* allowed, const std::uint64_t* allowed_bits, bool two_hop,
                           idx_t* out_ids, float* out_dist, Scratch& scratch) const {
  auto& results = scratch.results;
  results.clear();
  if (live_ == 0) {  // nothing to find (and an empty sq8 index has no quantizer to fold the query with)
    for (std::size_t i = 0; i < k; ++i) {
      out_ids[i] = -1;
      out_dist[i] = std::numeric_limits<float>::infinity();
    }
    return;
  }
  Query& q = scratch.query;
  prepare_query(qv, q);
  const std::uint64_t e = entry_.load();
  const Slot entry = static_cast<Slot>(e & 0xffffffffu);
  if (allowed) {
    brute_force(q, qv, k, *allowed, nullptr, results);
  } else if (entry != kNoSlot && live_ > 0) {
    const int top = static_cast<int>(e >> 32);
    const Slot start = greedy_descent(q, entry, top, 0);
    scratch.next_epoch(slot_count_);
    // Without tombstones (no removed or half-inserted slot) the deleted bit needs no look-up.
    const bool tombstones = has_tombstones_.load(std::memory_order_acquire);
    // An id-list filter comes as a bitmap over slots: one bit test per neighbour instead of an id
    // look-up plus a virtual call (the two-hop walk tests ~2M^2 neighbours per expansion).
    auto slot_allowed = [&](Slot n) {
      return (!tombstones || !is_deleted(n)) && ((allowed_bits[n >> 6] >> (n & 63)) & 1u) != 0;
    };
    if (filter && allowed_bits && two_hop) {
      search_layer_filtered(q, start, std::max(ef, k), slot_allowed, scratch, results);
    } else if (filter && allowed_bits) {
      search_layer(q, start, std::max(ef, k), 0, slot_allowed, scratch, results);
    } else if (filter && two_hop) {
      search_layer_filtered(q, start, std::max(ef, k),
                            [&](Slot n) { return (!tombstones || !is_deleted(n)) && filter->contains(slot_ids_[n]); },
                            scratch, results);
    } else if (filter) {
      search_layer(q, start, std::max(ef, k), 0,
                   [&](Slot n) { return (!tombstones || !is_deleted(n)) && filter->contains(slot_ids_[n]); },
                   scratch, results);
    } else if (tombstones) {
      search_layer(q, start, std::max(ef, k), 0, [&](Slot n) { return !is_deleted(n); }, scratch, results);
    } else {
      search_layer(q, start, std::max(ef, k), 0, [](Slot) { return true; }, scratch, results);
    }
    if (results.size() < std::min(k, live_)) {
      // The graph did not reach k acceptable nodes (very selective filter, or removals cut it):
      // fall back to an exact scan, which is complete by construction.
      static const std::vector<Slot> all;
      brute_force(q, qv, k, all, filter, results);
    } else if (storage_ == HnswStorage::SQ8) {
      for (auto& r : results) r.first = exact_distance(qv, r.second);
      std::sort(results.begin(), results.end(), CandLess());
    }
  }
  std::size_t i = 0;
  for (; i < results.size() && i < k; ++i) {
    out_ids[i] = slot_ids_[results[i].second];
    out_dist[i] = results[i].first;
  }
  for (; i < k; ++i) {
    out_ids[i] = -1;
    out_dist[i] = std::numeric_limits<float>::infinity();
  }
}

void HNSWIndex::search(const float* q, std::size_t nq, std::size_t k, SearchOptions& opt, idx_t* out_ids,
                       float* out_dist) const {
  check_k(k);
  const auto ef = static_cast<std::size_t>(opt.knobs.take_int("ef", static_cast<long long>(default_ef_.load()), 1));
  ANNFORGE_CHECK(ef <= (1u << 24), ErrorKind::Value, "search parameter 'ef' must be <= 16777216, got ", ef);
  opt.knobs.reject_unknown("HNSWIndex", "ef");
  std::size_t threads = parallel::resolve_threads(opt.num_threads);
  check_storable(q, nq, "queries");
  if (nq == 0) return;
  std::vector<float> prepared;
  const float* queries = q;
  if (metric_ == Metric::Cosine) {
    prepare_rows(q, nq, prepared);
    queries = prepared.data();
  }
  std::shared_lock<std::shared_mutex> lock(rw_mutex_);
  const IdSelector* filter = opt.filter;
  if (filter && !filter->thread_safe()) threads = 1;

  // Filters: estimate how many live vectors pass. Exploring the graph costs about ef * 2M / selectivity
  // distance evaluations, scanning the allowed set costs one per allowed vector: pick the cheaper.
  std::vector<Slot> allowed;
  std::vector<std::uint64_t> allowed_bits;  // the id list as slots, when the graph is walked
  bool use_allowed = false;
  bool two_hop = false;  // callables stay on the plain walk: two hops would call them far more often
  if (filter && live_ > 0) {
    const double graph_cost = static_cast<double>(std::max(ef, k)) * 2.0 * static_cast<double>(M_);
    if (const auto* list = filter->id_list()) {
      for (idx_t id : *list) {
        const idx_t s = slot_of_.find(id);
        if (s != IdMap::kMissing) allowed.push_back(static_cast<Slot>(s));
      }
      const double count = static_cast<double>(allowed.size());
      two_hop = count < kTwoHopSelectivity * static_cast<double>(live_);
      // The two-hop walk measures only allowed nodes, but the sparser they are the more link lists it
      // reads and the more nodes it expands before the results settle: measured on 384-d embeddings,
      // about ef * 2M * max(3, 0.4 / selectivity) distance-equivalents (x4 at 10%, x40 at 1%, where
      // it was also far less accurate than the exact scan it is compared with).
      const double selectivity = std::max(count, 1.0) / static_cast<double>(live_);
      const double walk_cost = two_hop ? std::max(3.0, 0.4 / selectivity) * graph_cost : graph_cost / selectivity;
      use_allowed = count <= walk_cost || allowed.size() <= k;
      if (!use_allowed) {
        allowed_bits.assign((slot_count_ + 63) / 64, 0);
        for (Slot s : allowed) allowed_bits[s >> 6] |= std::uint64_t{1} << (s & 63);
        allowed.clear();
      }
      std::sort(allowed.begin(), allowed.end());
    } else {
      // A callable: sample live slots to estimate the selectivity.
      const std::size_t samples = std::min<std::size_t>(live_, 128);
      std::size_t hits = 0, seen = 0;
      std::uint64_t r = 0x1234567ULL;
      for (std::size_t tries = 0; seen < samples && tries < samples * 64; ++tries) {
        r = splitmix64(r);
        const Slot s = static_cast<Slot>(r % slot_count_);
        if (is_deleted(s)) continue;
        ++seen;
        hits += filter->contains(slot_ids_[s]) ? 1 : 0;
      }
      const double est = seen ? static_cast<double>(hits) / seen * static_cast<double>(live_) : 0.0;
      if (est * est <= graph_cost * static_cast<double>(live_)) {
        use_allowed = true;
        for (std::size_t s = 0; s < slot_count_; ++s)
          if (!is_deleted(static_cast<Slot>(s)) && filter->contains(slot_ids_[s]))
            allowed.push_back(static_cast<Slot>(s));
      }
    }
  }
  const std::vector<Slot>* allowed_ptr = use_allowed ? &allowed : nullptr;
  if (use_allowed && allowed.empty()) {
    for (std::size_t i = 0; i < nq * k; ++i) {
      out_ids[i] = -1;
      out_dist[i] = std::numeric_limits<float>::infinity();
    }
    return;
  }
  auto run = [&](std::size_t qi, std::size_t) {
    thread_local Scratch scratch;
    search_one(queries + qi * dim_, k, ef, use_allowed ? nullptr : filter, allowed_ptr,
               allowed_bits.empty() ? nullptr : allowed_bits.data(), two_hop, out_ids + qi * k,
               out_dist + qi * k, scratch);
  };
  if (nq == 1 || threads == 1) {
    for (std::size_t qi = 0; qi < nq; ++qi) run(qi, 0);
  } else {
    parallel::parallel_for(nq, static_cast<int>(threads), run);
  }
}

// ---------------------------------------------------------------------------------------------------
// Serialization

void HNSWIndex::write(io::FileWriter& w) const {
  // Callers hold update_mutex_ (save/to_bytes below), so nothing changes while the file is written.
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
      .put(static_cast<std::uint8_t>(sq8_trained_ ? 1 : 0));
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
    w.add(kTagSq8, sq8_offset_.data(), sq8_offset_.size() * sizeof(float));
    w.add_chunk(sq8_scale_.data(), sq8_scale_.size() * sizeof(float));
  }
}

void HNSWIndex::save(const std::string& path) const {
  std::lock_guard<std::mutex> writer(update_mutex_);
  std::shared_lock<std::shared_mutex> lock(rw_mutex_);
  io::FileWriter w(kind());
  write(w);
  w.write_file(path);
}

std::vector<unsigned char> HNSWIndex::to_bytes() const {
  std::lock_guard<std::mutex> writer(update_mutex_);
  std::shared_lock<std::shared_mutex> lock(rw_mutex_);
  io::FileWriter w(kind());
  write(w);
  return w.to_bytes();
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
  if (storage > 2) bad("unknown storage code");
  if (default_ef < 1 || default_ef > (1u << 24)) bad("default ef out of range");
  if (slots >= kNoSlot - 1) bad("slot count out of range");
  auto index = std::make_unique<HNSWIndex>(probe->dim_, probe->metric_, M, efc, seed, static_cast<HnswStorage>(storage));
  index->next_id_ = probe->next_id_;
  index->default_ef_.store(default_ef);
  const std::size_t n = slots, d = index->dim_;
  const io::Bytes ids = reader->section(kTagIds), lv = reader->section(kTagLevels), up = reader->section(kTagUpper);
  if (ids.size != n * sizeof(idx_t)) bad("id section size");
  if (lv.size != n) bad("level section size");

  // Files from before the headers moved out of the records hold [header][links][pad][vector] per slot.
  const bool legacy = !reader->has(kTagRecords);
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
      index->sq8_offset_.resize(d);
      index->sq8_scale_.resize(d);
      std::memcpy(index->sq8_offset_.mutable_data(), sq.data, d * sizeof(float));
      std::memcpy(index->sq8_scale_.mutable_data(), sq.data + d * sizeof(float), d * sizeof(float));
      for (std::size_t j = 0; j < d; ++j)
        if (!(std::fabs(index->sq8_offset_[j]) < 1e18f) || !(index->sq8_scale_[j] > 0) ||
            !(index->sq8_scale_[j] < 1e16f))  // bounded so folded queries and sums stay finite
          bad("sq8 parameters out of range (scales must be positive, values below 1e18)");
    }
    index->sq8_trained_ = trained != 0;
  }

  // Stored vectors: finite (a NaN distance would break the ordering every search and sort relies on),
  // f32 ones also small enough that distances cannot overflow.
  for (std::size_t s = 0; s < n; ++s) {
    const unsigned char* v = index->vec(static_cast<Slot>(s));
    if (index->storage_ == HnswStorage::F32)
      check_loaded_rows(reinterpret_cast<const float*>(v), 1, d, origin, "HNSWIndex vectors");
    else if (index->storage_ == HnswStorage::F16)
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
