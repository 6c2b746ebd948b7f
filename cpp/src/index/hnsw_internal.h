// Private to the HNSW sources (hnsw*.cpp): file tags, link-word access, the per-thread scratch, the
// filter plan, and the one beam search (search_layer) with its neighbour-expansion policies. The
// search and build files both instantiate search_layer with their own acceptance lambdas, so it lives
// here rather than in one .cpp.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "annforge/index/hnsw.h"
#include "annforge/storage/prefetch.h"

namespace annforge {

namespace hnsw_internal {

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
// Quantized graph: the centre of the codes (dim floats; empty before the first add) and every slot's
// own code record (the neighbour blocks in REC1 copy them).
constexpr std::uint32_t kTagCodeCentre = io::make_tag("RQCT");
constexpr std::uint32_t kTagSelfCodes = io::make_tag("RQSC");
// The codes' rotation kind (u32, codec::RaBitQ::Rotation); absent in older files: dense.
constexpr std::uint32_t kTagCodeRotation = io::make_tag("RQRT");
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

// Where the vector starts in a level-0 record and the record's size, for `links_bytes` of links ahead
// of `code_bytes` of stored vector. Vectors of a cache line or more start on a cache line (the records
// are 64-byte aligned then), so a visit touches the fewest lines; small vectors pack tightly instead.
struct RecordLayout {
  std::size_t vector_offset, record_bytes;
};
inline RecordLayout record_layout(std::size_t links_bytes, std::size_t code_bytes) {
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

// The codec of each storage byte (HNSW files keep their own numbering: f32 0, f16 1, sq8 2).
inline RefineKind codec_kind(HnswStorage s) {
  switch (s) {
    case HnswStorage::F32: return RefineKind::F32;
    case HnswStorage::F16: return RefineKind::F16;
    case HnswStorage::SQ8: return RefineKind::SQ8;
    case HnswStorage::RABITQ: return RefineKind::F32;
    case HnswStorage::RABITQ_F16: return RefineKind::F16;
  }
  return RefineKind::F32;
}

}  // namespace hnsw_internal

using namespace hnsw_internal;  // NOLINT: private header of the HNSW sources only

// Per-thread, reused across calls: no allocation per search once warm.
struct HNSWIndex::Scratch {
  std::vector<std::uint16_t> visited;
  std::uint16_t epoch = 0;
  std::vector<Cand> candidates, top, results, pruned;
  std::vector<std::uint32_t> batch, hops;
  std::vector<float> decoded_a, decoded_b;
  Query query, node_query;
  std::vector<std::uint32_t> dots;       // quantized graph: neighbour code dot products
  std::vector<std::uint32_t> code_rows;  // quantized graph: block rows of the neighbours being scored
  std::vector<float> estimates;
  std::vector<std::uint64_t> gathered;  // quantized graph: codes of one upper-level neighbour list
  // Marks for slots [0, n] (one spare past the last slot: the quantized walk's branch-free checks use it).
  std::uint16_t next_epoch(std::size_t n) {
    if (visited.size() <= n) visited.resize(n + n / 4 + 1024, 0);
    if (++epoch == 0) {
      std::fill(visited.begin(), visited.end(), 0);
      epoch = 1;
    }
    return epoch;
  }
};

// What search() decided for a filter (hnsw_filter_plan.cpp): scan an explicit allowed set exactly, or
// walk the graph (one or two hops), with an id list turned into a slot bitmap.
struct HNSWIndex::FilterPlan {
  std::vector<Slot> allowed;                // use_allowed: the live slots that pass, sorted
  std::vector<std::uint64_t> allowed_bits;  // graph walk over an id list: one bit per slot
  bool use_allowed = false;
  bool two_hop = false;  // callables stay on the plain walk: two hops would call them far more often
};

// ---------------------------------------------------------------------------------------------------
// Link words and tombstones (inline: every beam-search step reads them)

inline bool HNSWIndex::is_deleted(Slot s) const { return (load_acquire(header0(s)) & kDeletedBit) != 0; }

inline std::uint32_t* HNSWIndex::link_header(Slot s, int level) {
  if (level == 0) return header0(s);
  return upper_[s].data() + static_cast<std::size_t>(level - 1) * (M_ + 1);
}
inline const std::uint32_t* HNSWIndex::link_header(Slot s, int level) const {
  if (level == 0) return header0(s);
  return upper_[s].data() + static_cast<std::size_t>(level - 1) * (M_ + 1);
}
inline std::uint32_t* HNSWIndex::link_ids(Slot s, int level) {
  if (level == 0) return links0(s);
  return upper_[s].data() + static_cast<std::size_t>(level - 1) * (M_ + 1) + 1;
}
inline const std::uint32_t* HNSWIndex::link_ids(Slot s, int level) const {
  if (level == 0) return links0(s);
  return upper_[s].data() + static_cast<std::size_t>(level - 1) * (M_ + 1) + 1;
}

inline void HNSWIndex::prefetch_vector_tail(Slot s) const {
  if (code_bytes_ > 64) prefetch_range(vec(s) + 64, code_bytes_ - 64);
}

// ---------------------------------------------------------------------------------------------------
// Beam search and its neighbour-expansion policies
//
// A policy's gather() marks as visited (visited[n] = epoch) and writes to scratch.batch the neighbours of
// `node` whose distances the search computes, prefetching the first cache line of each, and returns
// their count. reserve() sizes the scratch buffers it needs for `limit` links per node.

// Every unvisited neighbour is measured; accept() decides which of them may enter the results.
struct HNSWIndex::OneHop {
  static constexpr bool kGatheredAccepted = false;
  static void reserve(Scratch& scratch, std::size_t limit) {
    if (scratch.batch.size() < limit) scratch.batch.resize(limit);
  }
  template <typename Accept>
  static std::size_t gather(const HNSWIndex& g, Slot node, int level, std::size_t limit, std::size_t nslots,
                            std::uint16_t* visited, std::uint16_t epoch, Accept&, Scratch& scratch) {
    const std::size_t count = std::min<std::size_t>(load_acquire(g.link_header(node, level)) & kCountMask, limit);
    const std::uint32_t* links = g.link_ids(node, level);
    Slot* batch = scratch.batch.data();
    std::size_t fresh = 0;
    for (std::size_t i = 0; i < count; ++i) {
      const Slot n = links[i];
      if (n >= nslots || visited[n] == epoch) continue;
      visited[n] = epoch;
      batch[fresh++] = n;
      prefetch(g.vec(n));
    }
    return fresh;
  }
};

// Level 0 under a selective filter (ACORN-style two-hop expansion): only allowed nodes are measured; a
// filtered-out neighbour is not, but its allowed neighbours are taken in, so the walk stays on the
// allowed subgraph without losing connectivity through the rest.
struct HNSWIndex::TwoHop {
  static constexpr bool kGatheredAccepted = true;
  static void reserve(Scratch& scratch, std::size_t limit) {
    if (scratch.batch.size() < limit * (limit + 1)) scratch.batch.resize(limit * (limit + 1));
    if (scratch.hops.size() < limit) scratch.hops.resize(limit);
  }
  template <typename Allowed>
  static std::size_t gather(const HNSWIndex& g, Slot node, int /*level: always 0*/, std::size_t limit,
                            std::size_t nslots, std::uint16_t* visited, std::uint16_t epoch, Allowed& allowed,
                            Scratch& scratch) {
    const std::uint32_t* list = g.links0(node);
    const std::size_t count = std::min<std::size_t>(load_acquire(g.header0(node)) & kCountMask, limit);
    Slot* batch = scratch.batch.data();
    Slot* hops = scratch.hops.data();
    std::size_t fresh = 0, nhops = 0;
    for (std::size_t i = 0; i < count; ++i) {
      const Slot n = list[i];
      if (n >= nslots || visited[n] == epoch) continue;
      visited[n] = epoch;
      if (allowed(n)) {
        batch[fresh++] = n;
        prefetch(g.vec(n));  // the first line now, the rest a few places ahead of the distance loop
      } else {
        hops[nhops++] = n;
        prefetch(g.record(n));
      }
    }
    for (std::size_t h = 0; h < nhops; ++h) {
      const std::uint32_t* second = g.links0(hops[h]);
      const std::size_t c2 = std::min<std::size_t>(load_acquire(g.header0(hops[h])) & kCountMask, limit);
      for (std::size_t j = 0; j < c2; ++j) {
        const Slot m = second[j];
        if (m >= nslots || visited[m] == epoch || !allowed(m)) continue;
        visited[m] = epoch;
        batch[fresh++] = m;
        prefetch(g.vec(m));
      }
    }
    return fresh;
  }
};

template <typename Expansion, typename Accept>
void HNSWIndex::search_layer(const Query& q, Slot entry, std::size_t ef, int level, Accept&& accept,
                             Scratch& scratch, std::vector<Cand>& results) const {
  // `scratch.visited` must hold the current epoch's marks (the caller may pre-mark slots to skip).
  // A local copy of the acceptance test, so that what it captured by value stays in registers.
  std::decay_t<Accept> accepts(std::forward<Accept>(accept));
  auto& cand = scratch.candidates;  // min-heap by distance (CandGreater)
  auto& top = scratch.top;          // max-heap of accepted results
  cand.clear();
  top.clear();
  const std::uint16_t epoch = scratch.epoch;
  std::uint16_t* visited = scratch.visited.data();
  const std::size_t limit = max_links(level);
  const std::size_t nslots = slot_count_;
  Expansion::reserve(scratch, limit);

  const float d0 = distance(q, entry);
  visited[entry] = epoch;
  cand.emplace_back(d0, entry);
  float lower = std::numeric_limits<float>::infinity();
  if (accepts(entry)) {
    top.emplace_back(d0, entry);
    lower = d0;
  }
  while (!cand.empty()) {
    const Cand current = cand.front();
    if (current.first > lower && top.size() >= ef) break;
    std::pop_heap(cand.begin(), cand.end(), CandGreater());
    cand.pop_back();

    // Gather the neighbours to measure first, prefetching the first line of each vector, then compute
    // the distances while prefetching the rest of the vector kPrefetchAhead places ahead: the loads
    // overlap instead of being paid one after another, without flooding the line-fill buffers (whole
    // vectors for every neighbour at once stalled on the prefetches; this is ~10% faster at 384-d f32).
    const std::size_t fresh =
        Expansion::gather(*this, current.second, level, limit, nslots, visited, epoch, accepts, scratch);
    const Slot* batch = scratch.batch.data();
    for (std::size_t j = 0; j < kPrefetchAhead && j < fresh; ++j) prefetch_vector_tail(batch[j]);
    for (std::size_t i = 0; i < fresh; ++i) {
      const Slot n = batch[i];
      if (i + kPrefetchAhead < fresh) prefetch_vector_tail(batch[i + kPrefetchAhead]);
      const float d = distance(q, n);
      if (top.size() < ef || d < lower) {
        cand.emplace_back(d, n);
        std::push_heap(cand.begin(), cand.end(), CandGreater());
        if (Expansion::kGatheredAccepted || accepts(n)) {
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

}  // namespace annforge
