// HNSW queries: greedy descent through the upper levels, the level-0 beam search (search_layer, in
// hnsw_internal.h) with the acceptance the filter plan asks for, exact fallbacks and sq8 re-ranking.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "annforge/parallel/executor.h"
#include "annforge/simd/rabitq_kernels.h"
#include "annforge/util/topk.h"
#include "hnsw_internal.h"

namespace annforge {

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

HNSWIndex::Slot HNSWIndex::greedy_descent_quantized(const codec::RaBitQ::Query& rq, Slot entry, int top_level,
                                                    Scratch& scratch) const {
  const simd::RaBitQKernels& kernels = simd::rabitq_kernels();
  const std::size_t words = rq_bytes_ / 8;
  auto& gathered = scratch.gathered;
  auto& est = scratch.estimates;
  auto& live = scratch.batch;
  gathered.resize(M_ * words);
  est.resize(M_);
  live.resize(M_);
  // The codes of a neighbour list are copied side by side so the codec scores them in one call.
  auto estimate = [&](const Slot* slots, std::size_t n) {
    for (std::size_t i = 0; i < n; ++i) std::memcpy(gathered.data() + i * words, self_code(slots[i]), rq_bytes_);
    rabitq_->estimate(rq, reinterpret_cast<const std::uint8_t*>(gathered.data()), n, 1, 0.0, kernels, est.data(),
                      nullptr, nullptr);
  };
  Slot cur = entry;
  estimate(&cur, 1);
  float cur_dist = est[0];
  for (int level = top_level; level > 0; --level) {
    bool changed = true;
    while (changed) {
      changed = false;
      const std::uint32_t* list = link_ids(cur, level);
      const std::uint32_t count = std::min<std::uint32_t>(load_acquire(link_header(cur, level)) & kCountMask, M_);
      std::size_t n = 0;
      for (std::uint32_t i = 0; i < count; ++i)
        if (list[i] < slot_count_) {
          live[n++] = list[i];
          prefetch(self_code(list[i]));
        }
      estimate(live.data(), n);
      const Slot before = cur;
      for (std::size_t i = 0; i < n; ++i)
        if (est[i] < cur_dist) {
          cur_dist = est[i];
          cur = live[i];
        }
      changed = cur != before;
    }
  }
  return cur;
}

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
                           const codec::RaBitQ::Query* code_query, float bound, idx_t* out_ids,
                           float* out_dist, Scratch& scratch) const {
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
    const Slot start = code_query && !two_hop ? greedy_descent_quantized(*code_query, entry, top, scratch)
                                              : greedy_descent(q, entry, top, 0);
    scratch.next_epoch(slot_count_);
    // Without tombstones (no removed or half-inserted slot) the deleted bit needs no look-up.
    const bool tombstones = has_tombstones_.load(std::memory_order_acquire);
    // An id-list filter comes as a bitmap over slots: one bit test per neighbour instead of an id
    // look-up plus a virtual call (the two-hop walk tests ~2M^2 neighbours per expansion).
    // The acceptance lambdas capture by value: search_layer copies them, so the walk keeps this state in
    // registers (a by-reference capture is reloaded for every neighbour the two-hop walk checks).
    auto slot_allowed = [this, tombstones, allowed_bits](Slot n) {
      return (!tombstones || !is_deleted(n)) && ((allowed_bits[n >> 6] >> (n & 63)) & 1u) != 0;
    };
    auto selector_allows = [this, tombstones, filter](Slot n) {
      return (!tombstones || !is_deleted(n)) && filter->contains(slot_ids_[n]);
    };
    if (code_query && !two_hop) {
      search_level0_quantized(*code_query, start, std::max(ef, k), bound, filter, allowed_bits, tombstones, scratch, results);
    } else if (filter && allowed_bits && two_hop) {
      search_layer<TwoHop>(q, start, std::max(ef, k), 0, slot_allowed, scratch, results);
    } else if (filter && allowed_bits) {
      search_layer(q, start, std::max(ef, k), 0, slot_allowed, scratch, results);
    } else if (filter && two_hop) {
      search_layer<TwoHop>(q, start, std::max(ef, k), 0, selector_allows, scratch, results);
    } else if (filter) {
      search_layer(q, start, std::max(ef, k), 0, selector_allows, scratch, results);
    } else if (tombstones) {
      search_layer(q, start, std::max(ef, k), 0, [this](Slot n) { return !is_deleted(n); }, scratch, results);
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
  double bound = kDefaultBound;
  if (rabitq_) {
    bound = opt.knobs.take("bound", kDefaultBound);
    ANNFORGE_CHECK(std::isfinite(bound) && bound >= 0 && bound <= 16, ErrorKind::Value,
                   "search parameter 'bound' must be in [0, 16], got ", bound);
  }
  opt.knobs.reject_unknown("HNSWIndex", rabitq_ ? "ef, bound" : "ef");
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

  FilterPlan plan;
  if (filter && live_ > 0) plan = plan_filter(*filter, ef, k);
  const std::vector<Slot>& allowed = plan.allowed;
  const std::vector<std::uint64_t>& allowed_bits = plan.allowed_bits;
  const bool use_allowed = plan.use_allowed, two_hop = plan.two_hop;
  const std::vector<Slot>* allowed_ptr = use_allowed ? &allowed : nullptr;
  if (use_allowed && allowed.empty()) {
    for (std::size_t i = 0; i < nq * k; ++i) {
      out_ids[i] = -1;
      out_dist[i] = std::numeric_limits<float>::infinity();
    }
    return;
  }
  // Quantized graph: all queries rotated and quantized up front, in one pass over the rotation matrix.
  std::vector<codec::RaBitQ::Query> code_queries;
  if (rabitq_ && live_ > 0 && !use_allowed && !two_hop) prepare_code_queries(queries, nq, code_queries);
  auto run = [&](std::size_t qi, std::size_t) {
    thread_local Scratch scratch;
    search_one(queries + qi * dim_, k, ef, use_allowed ? nullptr : filter, allowed_ptr,
               allowed_bits.empty() ? nullptr : allowed_bits.data(), two_hop,
               code_queries.empty() ? nullptr : &code_queries[qi], static_cast<float>(bound), out_ids + qi * k,
               out_dist + qi * k, scratch);
  };
  if (nq == 1 || threads == 1) {
    for (std::size_t qi = 0; qi < nq; ++qi) run(qi, 0);
  } else {
    parallel::parallel_for(nq, static_cast<int>(threads), run);
  }
}

}  // namespace annforge
