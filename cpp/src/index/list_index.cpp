#include "annforge/index/list_index.h"

#include <mutex>
#include <shared_mutex>

#include "annforge/parallel/executor.h"

namespace annforge {

bool ListIndex::is_trained() const {
  std::shared_lock<parallel::WriterPreferringMutex> lock(mutex_);
  return trained_;
}

void ListIndex::check_trained() const {
  ANNFORGE_CHECK(trained_, ErrorKind::State, "index is not trained: call train(x) before add or search");
}

std::size_t ListIndex::size() const {
  std::shared_lock<parallel::WriterPreferringMutex> lock(mutex_);
  return lists_.size();
}

std::size_t ListIndex::remove(const idx_t* ids, std::size_t n) {
  std::unique_lock<parallel::WriterPreferringMutex> lock(mutex_);
  std::size_t removed = 0;
  for (std::size_t i = 0; i < n; ++i) removed += lists_.remove(ids[i]) ? 1 : 0;
  return removed;
}

bool ListIndex::contains(idx_t id) const {
  std::shared_lock<parallel::WriterPreferringMutex> lock(mutex_);
  return lists_.contains(id);
}

std::vector<idx_t> ListIndex::ids() const {
  std::shared_lock<parallel::WriterPreferringMutex> lock(mutex_);
  return lists_.ids();
}

void ListIndex::reconstruct(const idx_t* ids, std::size_t n, float* out) const {
  std::shared_lock<parallel::WriterPreferringMutex> lock(mutex_);
  std::vector<std::uint8_t> code(lists_.m());
  for (std::size_t i = 0; i < n; ++i) {
    const idx_t loc = lists_.find(ids[i]);
    ANNFORGE_CHECK(loc != IdMap::kMissing, ErrorKind::Value, "id ", ids[i], " is not in the index");
    decode_entry(loc, out + i * dim_, code.data());
  }
}

ListIndex::ReadLock ListIndex::begin_search(const float* q, std::size_t nq, const SearchOptions& opt,
                                            std::vector<float>& prepared, std::size_t& threads) const {
  check_storable(q, nq, "queries");
  threads = parallel::resolve_threads(opt.num_threads);
  if (opt.filter && !opt.filter->thread_safe()) threads = 1;
  {
    ReadLock lock(mutex_);
    check_trained();
  }
  prepare_queries(q, nq, prepared);
  ReadLock lock(mutex_);
  check_trained();
  return lock;
}

cluster::KMeansResult ListIndex::train_partition(const float* x, std::size_t n, std::size_t d, std::size_t lists,
                                                 std::uint64_t seed, bool spherical, int num_threads,
                                                 cluster::KMeansAccelerator* accelerator) {
  cluster::KMeansOptions opt;
  opt.niter = 10;  // as faiss (IndexIVF: cp.niter = 10) and ScaNN's tree
  opt.seed = seed;
  opt.max_points_per_centroid = 256;
  opt.spherical = spherical;
  opt.num_threads = num_threads;
  opt.assign_all = false;
  opt.accelerator = accelerator;
  return cluster::kmeans(x, n, d, lists, opt);
}

}  // namespace annforge
