// MinHash LSH (banding) and LSH Forest (prefix trees) over uint64 signatures with int64 keys.
//
// Both keep every live signature (num_perm values per key) so that removal, scored queries and
// saving need nothing else. Python-side key mappings travel as an opaque "user metadata" section
// that the Python layer encodes (JSON only, never pickle, so loading a file cannot run code).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "annforge/common.h"
#include "annforge/io/format.h"
#include "annforge/parallel/shared_mutex.h"
#include "annforge/storage/prefetch.h"

namespace annforge::minhash {

// (bands, rows) minimising fp_weight * FP + fn_weight * FN, where FP = integral over [0, t] and FN =
// integral over [t, 1] of the banding collision curve (Simpson's rule, no scipy).
std::pair<std::size_t, std::size_t> optimal_bands_rows(double threshold, std::size_t num_perm, double fp_weight,
                                                       double fn_weight);

// Candidates of many queries in CSR form: query i owns keys[lims[i]:lims[i+1]] (and scores, if asked).
struct QueryResult {
  std::vector<std::int64_t> lims{0};
  std::vector<idx_t> keys;
  std::vector<float> scores;
};

// Pairs of keys (first < second by slot order) with their estimated Jaccard.
struct PairResult {
  std::vector<idx_t> first, second;
  std::vector<float> scores;
};

// Storage shared by both indexes: signatures per slot, key per slot, key -> slot.
class SignatureStore {
 public:
  explicit SignatureStore(std::size_t num_perm) : num_perm_(num_perm) {}
  std::size_t num_perm() const noexcept { return num_perm_; }
  std::size_t size() const noexcept { return slot_of_.size(); }
  std::size_t slots() const noexcept { return keys_.size(); }
  bool alive(std::size_t slot) const noexcept { return alive_[slot] != 0; }
  idx_t key(std::size_t slot) const noexcept { return keys_[slot]; }
  const std::uint64_t* sig(std::size_t slot) const noexcept { return sigs_.data() + slot * num_perm_; }
  bool contains(idx_t key) const { return slot_of_.count(key) != 0; }
  std::int64_t slot_of(idx_t key) const;  // -1 when absent (not `long`: 32 bits on Windows)
  // Fails with ValueError (changing nothing) when a key exists or repeats inside the batch.
  void check_new(const idx_t* keys, std::size_t n) const;
  // Room for `n` more entries.
  void reserve(std::size_t n);
  std::size_t append(idx_t key, const std::uint64_t* sig);
  void kill(std::size_t slot);
  std::vector<idx_t> live_keys() const;
  std::size_t memory_bytes() const noexcept;
  // Live signatures and keys, compacted (for saving).
  void compact_live(std::vector<std::uint64_t>& sigs, std::vector<idx_t>& keys) const;

 private:
  std::size_t num_perm_;
  std::vector<std::uint64_t> sigs_;
  std::vector<idx_t> keys_;
  std::vector<unsigned char> alive_;
  std::unordered_map<idx_t, std::size_t> slot_of_;
};

using Shared = std::shared_lock<parallel::WriterPreferringMutex>;

// One band's buckets, keyed by the 64-bit hash of the band's values: open addressing with linear
// probing (one cache line per probe instead of unordered_map's bucket -> node -> vector chain). A bucket
// with one member keeps it inline; a larger one owns a run of `pool_`: a header word with the run's
// capacity, then its members in ascending slot order. After compact() the runs lie back to back with no
// spare room (CSR); an append that outgrows its run moves the run to the end of the pool (doubling), and
// the abandoned words are reclaimed by the next compact().
class BandTable {
 public:
  struct Members {
    const std::uint32_t* data;
    std::uint32_t size;
  };
  Members find(std::uint64_t hash) const noexcept {
    if (buckets_.empty()) return {nullptr, 0};
    for (std::size_t i = hash & mask_;; i = (i + 1) & mask_) {
      const Bucket& b = buckets_[i];
      if (b.size == 0) return {nullptr, 0};
      if (b.hash == hash) return {b.size == 1 ? &b.data : pool_.data() + b.data + 1, b.size};
    }
  }
  void prefetch(std::uint64_t hash) const noexcept {
    if (!buckets_.empty()) annforge::prefetch(&buckets_[hash & mask_]);
  }
  // Room for `n` more buckets without rehashing.
  void reserve(std::size_t n);
  // Adds `slot`, which must be larger than every slot already in the table.
  void add(std::uint64_t hash, std::uint32_t slot);
  // Removes `slot` from bucket `hash`; false when it was not there.
  bool erase(std::uint64_t hash, std::uint32_t slot);
  // Lays the runs out back to back again when more than half of the pool is abandoned (or `force`).
  void compact(bool force = false);
  std::size_t memory_bytes() const noexcept { return buckets_.capacity() * sizeof(Bucket) + pool_.capacity() * 4; }
  // fn(Members) for every bucket with at least two members (the self-join).
  template <typename Fn>
  void for_each_shared_bucket(Fn&& fn) const {
    for (const Bucket& b : buckets_)
      if (b.size >= 2) fn(Members{pool_.data() + b.data + 1, b.size});
  }

 private:
  struct Bucket {
    std::uint64_t hash;
    std::uint32_t size;  // 0: empty
    std::uint32_t data;  // size 1: the member; otherwise the run's offset in pool_ (header word first)
  };
  void rehash(std::size_t capacity);
  std::uint32_t new_run(std::uint32_t capacity);

  std::vector<Bucket> buckets_;
  std::size_t mask_ = 0, used_ = 0;
  std::vector<std::uint32_t> pool_;
  std::size_t abandoned_ = 0;  // pool words no bucket uses any more
};

class MinHashLSH {
 public:
  MinHashLSH(std::size_t num_perm, std::size_t bands, std::size_t rows, double threshold);

  std::size_t num_perm() const noexcept { return store_.num_perm(); }
  std::size_t bands() const noexcept { return bands_; }
  std::size_t rows() const noexcept { return rows_; }
  double threshold() const noexcept { return threshold_; }
  std::size_t size() const {
    Shared lock(mutex_);
    return store_.size();
  }
  bool contains(idx_t key) const {
    Shared lock(mutex_);
    return store_.contains(key);
  }
  std::vector<idx_t> keys() const {
    Shared lock(mutex_);
    return store_.live_keys();
  }
  std::size_t memory_bytes() const;
  // The stored signature of `key` (ValueError when absent).
  std::vector<std::uint64_t> signature(idx_t key) const;

  void insert(const idx_t* keys, const std::uint64_t* sigs, std::size_t n, int num_threads);
  std::size_t remove(const idx_t* keys, std::size_t n);
  // Candidates of each query; with_scores adds the estimated Jaccard and sorts best first; min_score
  // (with scores) drops weaker candidates.
  QueryResult query(const std::uint64_t* sigs, std::size_t n, bool with_scores, double min_score,
                    int num_threads) const;
  // Candidate keys of one query, appended to `out` (the allocation-light path for one-at-a-time queries).
  // With `min_score`: only candidates whose estimated Jaccard is >= it, best first (verified queries).
  void query_one(const std::uint64_t* sig, std::vector<std::uint32_t>& scratch, std::vector<idx_t>& out,
                 std::optional<double> min_score = std::nullopt) const;
  // The same without waiting: false (and nothing appended) when a writer holds or waits for the lock.
  // Lets a caller holding the GIL skip releasing it for a sub-microsecond query.
  bool try_query_one(const std::uint64_t* sig, std::vector<std::uint32_t>& scratch, std::vector<idx_t>& out,
                     std::optional<double> min_score = std::nullopt) const;
  // Every pair of indexed keys sharing a bucket in at least one band (the self-join), optionally only
  // those whose estimated Jaccard is >= min_score.
  PairResult pairs(double min_score, int num_threads) const;

  std::string user_meta;  // Python layer's JSON (key mapping, hasher settings), saved verbatim
  void write(io::FileWriter& w) const;
  static std::unique_ptr<MinHashLSH> read(const std::shared_ptr<io::FileReader>& reader);

 private:
  std::uint64_t band_key(const std::uint64_t* sig, std::size_t band) const noexcept;
  // Sorted, distinct slots sharing a band with `q` (replaces the contents of `cand`).
  void collect_candidates(const std::uint64_t* q, std::vector<std::uint32_t>& cand) const;
  void query_one_locked(const std::uint64_t* sig, std::vector<std::uint32_t>& scratch, std::vector<idx_t>& out,
                        std::optional<double> min_score) const;
  // Indexes slots [first, first + n) in every band (one task per band); band_keys (band-major, n per
  // band) when the caller computed them already.
  void index_slots(std::size_t first, std::size_t n, int num_threads, const std::uint64_t* band_keys = nullptr);

  // Queries share it; insert/remove take it exclusively (queries run with the GIL released).
  mutable parallel::WriterPreferringMutex mutex_;
  std::size_t bands_, rows_;
  double threshold_;
  SignatureStore store_;
  std::vector<BandTable> tables_;
};

class MinHashLSHForest {
 public:
  MinHashLSHForest(std::size_t num_perm, std::size_t trees);

  std::size_t num_perm() const noexcept { return store_.num_perm(); }
  std::size_t trees() const noexcept { return trees_; }
  std::size_t depth() const noexcept { return depth_; }
  std::size_t size() const {
    Shared lock(mutex_);
    return store_.size();
  }
  bool contains(idx_t key) const {
    Shared lock(mutex_);
    return store_.contains(key);
  }
  std::vector<idx_t> keys() const {
    Shared lock(mutex_);
    return store_.live_keys();
  }
  std::size_t memory_bytes() const;
  bool dirty() const noexcept { return dirty_.load(); }

  void insert(const idx_t* keys, const std::uint64_t* sigs, std::size_t n);
  std::size_t remove(const idx_t* keys, std::size_t n);
  // Sorts every tree (after inserts or removals; query() does it itself when needed).
  void index(int num_threads);
  // Top-k keys by estimated Jaccard per query (fewer when fewer are indexed): CSR with scores.
  QueryResult query(const std::uint64_t* sigs, std::size_t n, std::size_t k, int num_threads);

  std::string user_meta;
  void write(io::FileWriter& w) const;
  static std::unique_ptr<MinHashLSHForest> read(const std::shared_ptr<io::FileReader>& reader);

 private:
  void index_locked(int num_threads);

  mutable parallel::WriterPreferringMutex mutex_;
  std::size_t trees_, depth_;
  SignatureStore store_;
  std::vector<std::vector<std::uint32_t>> sorted_;  // per tree: live slots ordered by their prefix
  std::atomic<bool> dirty_{false};
};

}  // namespace annforge::minhash
