// What IVF-PQ and ScaNN share around their inverted lists (faiss's IndexIVF: a coarse partition, the list
// store, the probe scan; each family adds its codes, tables and re-ranking): the lock, the trained flag,
// the store, the VectorIndex methods that need only the store, and the tail of a search call.
#pragma once

#include <cstddef>
#include <cstdint>
#include <shared_mutex>
#include <vector>

#include "annforge/cluster/kmeans.h"
#include "annforge/index/vector_index.h"
#include "annforge/invlists/inverted_lists.h"
#include "annforge/invlists/probe_scan.h"
#include "annforge/parallel/shared_mutex.h"

namespace annforge {

// The probes of one search call: nq queries (as the family prepared them), each with nprobe lists
// (lists[qi * nprobe + p], nearest first, negative for none) and their coarse scores.
struct ListProbes {
  const float* queries = nullptr;
  const std::int32_t* lists = nullptr;
  const float* scores = nullptr;
  std::size_t nq = 0, nprobe = 0;
};

class ListIndex : public VectorIndex {
 public:
  bool is_trained() const;
  std::size_t size() const override;
  std::size_t remove(const idx_t* ids, std::size_t n) override;
  bool contains(idx_t id) const override;
  std::vector<idx_t> ids() const override;
  // Each id's entry as decode_entry gives it; ValueError for an id that is not stored.
  void reconstruct(const idx_t* ids, std::size_t n, float* out) const override;

 protected:
  using ReadLock = std::shared_lock<parallel::WriterPreferringMutex>;
  ListIndex(std::size_t dim, Metric metric) : VectorIndex(dim, metric) {}
  void check_trained() const;  // State error unless trained (the caller holds the lock)
  // Serialisation holds the read lock: searches go on, add / remove / train wait.
  void hold_unchanged(const std::function<void()>& fn) const override;

  // The entry at `location` as a vector in the caller's space (its stored copy, or its decoded code);
  // `code` is scratch of m bytes. The read lock is held.
  virtual void decode_entry(idx_t location, float* row, std::uint8_t* code) const = 0;
  // The queries as the lists see them (metric normalisation, rotation).
  virtual void prepare_queries(const float* q, std::size_t nq, std::vector<float>& out) const = 0;

  // The start of a search call, once the family has taken its knobs: checks the queries and that the
  // index is trained, resolves `threads` (one for a filter that is not thread-safe), prepares the
  // queries into `prepared` and returns the read lock that the scan holds.
  ReadLock begin_search(const float* q, std::size_t nq, const SearchOptions& opt, std::vector<float>& prepared,
                        std::size_t& threads) const;

  // The coarse partition of n training rows into `lists` centres: k-means as faiss's IVF and ScaNN's tree
  // train it (10 iterations, at most 256 points per centre; spherical for inner-product leaves).
  static cluster::KMeansResult train_partition(const float* x, std::size_t n, std::size_t d, std::size_t lists,
                                               std::uint64_t seed, bool spherical, int num_threads,
                                               cluster::KMeansAccelerator* accelerator);

  // Scans the probed lists and writes nq rows of k results (the caller holds the read lock). Family
  // supplies, per query, the look-up table and the distance's constant part, and the re-ranking:
  //   struct QueryScratch;  (per-worker buffers, default-constructible)
  //   void prepare_query(const float* q, QueryScratch&, float* lut, float& query_term) const;
  //   float list_offset(const float* q, std::size_t list, float coarse_score, float query_term) const;
  //   void finish_query(const float* q, std::size_t k, QueryScratch&, std::vector<std::pair<float, idx_t>>& found,
  //                     idx_t* ids, float* dist) const;
  // (see invlists::ProbeFamily for what they mean).
  template <class Family>
  void scan_probes(const Family& family, const ListProbes& probes, std::size_t k, std::size_t candidates,
                   std::size_t threads, const IdSelector* filter, idx_t* out_ids, float* out_dist) const;

  mutable parallel::WriterPreferringMutex mutex_;
  bool trained_ = false;
  invlists::InvertedLists lists_;
};

namespace detail {

// invlists::ProbeFamily over a family's three methods, with its per-worker scratch.
template <class Family>
class ProbeAdaptor final : public invlists::ProbeFamily {
 public:
  ProbeAdaptor(const Family& family, const ListProbes& probes, std::size_t k, std::size_t threads, idx_t* ids,
               float* dist)
      : family_(family), probes_(probes), k_(k), ids_(ids), dist_(dist), scratch_(threads) {}
  void prepare_query(std::size_t w, std::size_t qi, float* lut, invlists::ProbeQuery& q) const override {
    family_.prepare_query(query(qi), scratch_[w], lut, q.query_term);
  }
  float list_offset(std::size_t qi, std::size_t p, const invlists::ProbeQuery& q) const override {
    const std::size_t at = qi * probes_.nprobe + p;
    return family_.list_offset(query(qi), static_cast<std::size_t>(probes_.lists[at]), probes_.scores[at],
                               q.query_term);
  }
  void finish_query(std::size_t w, std::size_t qi, invlists::ProbeQuery& q) const override {
    family_.finish_query(query(qi), k_, scratch_[w], q.heap.sorted(), ids_ + qi * k_, dist_ + qi * k_);
  }

 private:
  const float* query(std::size_t qi) const { return probes_.queries + qi * family_.dim(); }
  const Family& family_;
  ListProbes probes_;
  std::size_t k_;
  idx_t* ids_;
  float* dist_;
  mutable std::vector<typename Family::QueryScratch> scratch_;  // per worker
};

}  // namespace detail

template <class Family>
void ListIndex::scan_probes(const Family& family, const ListProbes& probes, std::size_t k, std::size_t candidates,
                            std::size_t threads, const IdSelector* filter, idx_t* out_ids, float* out_dist) const {
  invlists::ProbePlan plan;
  plan.probe = probes.lists;
  plan.nq = probes.nq;
  plan.nprobe = probes.nprobe;
  plan.threads = threads;
  plan.candidates = candidates;
  plan.filter = filter;
  invlists::search_probed_lists(lists_, plan, detail::ProbeAdaptor<Family>(family, probes, k, threads, out_ids, out_dist));
}

}  // namespace annforge
