// HNSW graph construction and repair: neighbour selection, linking, insertion (parallel), slot reuse
// after removals, and the reachability repair.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "annforge/parallel/executor.h"
#include "annforge/simd/kernels.h"
#include "hnsw_internal.h"

namespace annforge {

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
    if (codec_.kind() == RefineKind::F32) {
      cv = reinterpret_cast<const float*>(vec(c.second));
    } else {
      a.resize(dim_);
      decode(c.second, a.data());
      cv = a.data();
    }
    for (const Cand& r : kept) {
      float d;
      if (codec_.kind() == RefineKind::F32) {
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
      if (level == 0) sync_code_block(s);
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
      if (level == 0) sync_code_block(s);
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
      // One new entry: copy its code alone (not the whole block), before the count makes it visible.
      if (level == 0 && rabitq_) std::memcpy(code_block(n) + count * rq_bytes_, self_code(s), rq_bytes_);
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
    if (level == 0) sync_code_block(n);
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
      if (level == 0) sync_code_block(n);
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
        sync_code_block(t);
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
        sync_code_block(t);
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
  if (rabitq_) self_codes_.resize(slots * rq_bytes_);
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
    if (!codec_.trained()) codec_.train(rows.data(), n);  // sq8: ranges of the first batch
    if (rabitq_ && rq_centre_.empty()) set_code_centre(rows.data(), n);
    // Upsert: the old slot is removed now (never returned again) and becomes reusable.
    for (std::size_t i = 0; i < n; ++i) tombstone(out_ids[i]);
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
    if (rabitq_) (void)self_codes_.mutable_data();
    for (std::size_t i = 0; i < n; ++i) {
      const Slot s = slots[i];
      if (!reused[i]) {
        const int level = draw_level(s);
        levels_[s] = static_cast<std::uint8_t>(level);
        upper_[s].assign(static_cast<std::size_t>(level) * (M_ + 1), 0u);
        std::memset(record(s), 0, record_bytes_);
        store_release(header0(s), kDeletedBit);
      }
      codec_.encode(rows.data() + i * dim_, record(s) + vector_offset_);
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
    if (rabitq_) encode_self_codes(rows.data(), slots, threads);  // before anything links to them
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
    if (rabitq_) {
      std::vector<Slot> reused_slots;
      for (std::size_t i = 0; i < n; ++i)
        if (reused[i]) reused_slots.push_back(slots[i]);
      if (!reused_slots.empty()) refresh_codes_of(reused_slots);
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

bool HNSWIndex::tombstone(idx_t id) {
  const idx_t old = slot_of_.erase(id);
  if (old == IdMap::kMissing) return false;
  const auto s = static_cast<Slot>(old);
  std::uint32_t* header = header0(s);  // detaches an mmap view first
  store_release(header, load_acquire(header) | kDeletedBit);
  slot_ids_.at_mut(s) = -1;
  free_slots_.push_back(s);
  --live_;
  return true;
}

std::size_t HNSWIndex::remove(const idx_t* ids, std::size_t n) {
  std::lock_guard<std::mutex> writer(update_mutex_);
  std::unique_lock<std::shared_mutex> lock(rw_mutex_);
  std::size_t removed = 0;
  for (std::size_t i = 0; i < n; ++i) removed += tombstone(ids[i]) ? 1 : 0;
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

}  // namespace annforge
