// Bounded "k smallest" selection shared by the index families and k-means (util/: no dependency on
// any layer, so every layer may use it).
#pragma once

#include <algorithm>
#include <cstddef>
#include <limits>
#include <utility>
#include <vector>

#include "annforge/common.h"

namespace annforge {

// A max-heap of the k best (distance, label) pairs seen so far; ties broken by the smaller label so
// results are deterministic. `label` is whatever the caller tracks (slot or id).
class TopK {
 public:
  explicit TopK(std::size_t k = 0) { reset(k); }
  void reset(std::size_t k) {
    k_ = k;
    heap_.clear();
    heap_.reserve(k);
  }
  std::size_t k() const noexcept { return k_; }
  std::size_t size() const noexcept { return heap_.size(); }
  bool full() const noexcept { return heap_.size() == k_; }
  // Anything at or above this cannot enter (until full: +inf).
  float threshold() const noexcept { return full() ? heap_.front().first : std::numeric_limits<float>::infinity(); }

  void push(float dist, idx_t label) {
    if (!full()) {
      heap_.emplace_back(dist, label);
      std::push_heap(heap_.begin(), heap_.end(), Less());
    } else if (Less()(Entry(dist, label), heap_.front())) {
      replace_top(Entry(dist, label));
    }
  }
  // Sorted best first; the heap is emptied.
  std::vector<std::pair<float, idx_t>>& sorted() {
    std::sort_heap(heap_.begin(), heap_.end(), Less());
    return heap_;
  }

 private:
  using Entry = std::pair<float, idx_t>;
  struct Less {  // a function object (not a function pointer) so the heap algorithms inline it
    bool operator()(const Entry& a, const Entry& b) const {
      return a.first < b.first || (a.first == b.first && a.second < b.second);
    }
  };
  // The root leaves and `e` (smaller than the root) enters with one sift-down: half the work of
  // pop_heap + push_heap, and the same set of entries.
  void replace_top(const Entry& e) {
    Entry* h = heap_.data();
    const std::size_t n = heap_.size();
    std::size_t i = 0;
    for (;;) {
      std::size_t child = 2 * i + 1;
      if (child >= n) break;
      if (child + 1 < n && Less()(h[child], h[child + 1])) ++child;
      if (!Less()(e, h[child])) break;
      h[i] = h[child];
      i = child;
    }
    h[i] = e;
  }

  std::size_t k_ = 0;
  std::vector<Entry> heap_;
};

// The k-th smallest (0-based, k < n) of v[0, n): quickselect with branch-free partitions (each value
// is stored on both sides and the side's end moves by the comparison), which on short, random input
// runs several times faster than std::nth_element's data-dependent branches. Reorders v; `scratch`
// holds n floats.
inline float kth_smallest(float* v, float* scratch, std::size_t n, std::size_t k) {
  std::size_t lo = 0, hi = n;
  while (hi - lo > 24) {
    const std::size_t len = hi - lo;
    const float a = v[lo], b = v[lo + len / 2], c = v[hi - 1];
    const float pivot = std::max(std::min(a, b), std::min(std::max(a, b), c));  // median of three
    auto split = [&](auto goes_left) {
      std::size_t left = 0, right = 0;
      for (std::size_t i = lo; i < hi; ++i) {
        const float x = v[i];
        const bool l = goes_left(x);
        scratch[left] = x;
        scratch[len - 1 - right] = x;
        left += l;
        right += !l;
      }
      std::copy(scratch, scratch + len, v + lo);  // [lo, lo + left): left side; the rest reversed
      return left;
    };
    const std::size_t below = split([pivot](float x) { return x < pivot; });
    if (k < lo + below) {
      hi = lo + below;
      continue;
    }
    lo += below;
    if (below == 0) {  // pivot is the range's minimum: step over every copy of it
      const std::size_t equal = split([pivot](float x) { return x <= pivot; });
      if (k < lo + equal) return pivot;
      lo += equal;
    }
  }
  std::nth_element(v + lo, v + k, v + hi);
  return v[k];
}

// The k best (distance, label) pairs, kept lazily for scans that offer many candidates: pushes
// append to a buffer, and only when it fills (or tighten() is called) is it cut back to the k best
// with one selection pass. Much cheaper per candidate than a heap's sift, at the price of a
// threshold that lags between cuts. The result is the same set as TopK's (ties by label included)
// as long as every candidate with distance <= threshold() is pushed.
class TopKBuffer {
 public:
  explicit TopKBuffer(std::size_t k = 0) { reset(k); }
  void reset(std::size_t k) {
    k_ = k;
    capacity_ = capacity_for(k);
    buf_.clear();
    buf_.reserve(capacity_);
    threshold_ = std::numeric_limits<float>::infinity();
  }
  std::size_t k() const noexcept { return k_; }
  // Entries a buffer for k holds at the most: room for 3k more, within reason.
  static std::size_t capacity_for(std::size_t k) noexcept { return k + std::clamp<std::size_t>(3 * k, 32, 65536); }
  // Candidates farther than this cannot be among the k best (ties can: push those too).
  float threshold() const noexcept { return threshold_; }
  void push(float dist, idx_t label) {
    buf_.emplace_back(dist, label);
    if (buf_.size() == capacity_) tighten();
  }
  // Cuts the buffer back to the k best (and any entries tied with the k-th), so threshold() is exact.
  void tighten() {
    if (k_ == 0) {
      buf_.clear();
      return;
    }
    if (buf_.size() <= k_) return;
    // Select on the distances alone (plain float compares), then keep every entry at or below the
    // k-th: ties stay, sorted() settles them by label.
    const std::size_t n = buf_.size();
    dists_.resize(2 * n);
    for (std::size_t i = 0; i < n; ++i) dists_[i] = buf_[i].first;
    const float kth = kth_smallest(dists_.data(), dists_.data() + n, n, k_ - 1);
    std::size_t kept = 0;
    for (std::size_t i = 0; i < buf_.size(); ++i)
      if (buf_[i].first <= kth) buf_[kept++] = buf_[i];
    buf_.resize(kept);
    threshold_ = kth;
    if (kept >= capacity_) {  // nearly all tied: cut to exactly k by label
      std::nth_element(buf_.begin(), buf_.begin() + static_cast<std::ptrdiff_t>(k_ - 1), buf_.end(), Less());
      buf_.resize(k_);
    }
  }
  // The k best, sorted best first (the buffer is consumed).
  std::vector<std::pair<float, idx_t>>& sorted() {
    tighten();
    std::sort(buf_.begin(), buf_.end(), Less());
    if (buf_.size() > k_) buf_.resize(k_);
    return buf_;
  }

 private:
  using Entry = std::pair<float, idx_t>;
  struct Less {
    bool operator()(const Entry& a, const Entry& b) const {
      return a.first < b.first || (a.first == b.first && a.second < b.second);
    }
  };
  std::size_t k_ = 0, capacity_ = 0;
  std::vector<Entry> buf_;
  std::vector<float> dists_;  // selection scratch
  float threshold_ = std::numeric_limits<float>::infinity();
};

// Writes one result row (ids + distances), padding with -1 / +inf.
inline void write_row(const std::vector<std::pair<float, idx_t>>& best, std::size_t k, idx_t* ids, float* dist) {
  std::size_t i = 0;
  for (; i < best.size() && i < k; ++i) {
    ids[i] = best[i].second;
    dist[i] = best[i].first;
  }
  for (; i < k; ++i) {
    ids[i] = -1;
    dist[i] = std::numeric_limits<float>::infinity();
  }
}

// Candidates labelled by location -> one result row by id: relabels them with id_of(label), orders
// them by (distance, id) and writes the row.
template <class IdOf>
void write_row_by_id(std::vector<std::pair<float, idx_t>>& found, IdOf id_of, std::size_t k, idx_t* ids,
                     float* dist) {
  for (auto& e : found) e.second = id_of(e.second);
  std::sort(found.begin(), found.end(), [](const auto& a, const auto& b) {
    return a.first < b.first || (a.first == b.first && a.second < b.second);
  });
  write_row(found, k, ids, dist);
}

}  // namespace annforge
