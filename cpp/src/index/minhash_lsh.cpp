// MinHash LSH (banding), LSH Forest (sorted prefixes), their parameters and their files.
#include "annforge/index/minhash_lsh.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "annforge/index/minhash.h"
#include "annforge/parallel/executor.h"
#include "annforge/util/fold_mul.h"

namespace annforge::minhash {
namespace {

constexpr std::uint32_t kTagParams = io::make_tag("MHLP");
constexpr std::uint32_t kTagForestParams = io::make_tag("MHFP");
constexpr std::uint32_t kTagSigs = io::make_tag("MHSG");
constexpr std::uint32_t kTagKeys = io::make_tag("MHKY");
constexpr std::uint32_t kTagUserMeta = io::make_tag("MHUM");

// Simpson's rule with an even number of intervals; the integrands are smooth polynomials in s.
template <typename F>
double simpson(F f, double lo, double hi, int intervals = 256) {
  if (hi <= lo) return 0.0;
  const double h = (hi - lo) / intervals;
  double sum = f(lo) + f(hi);
  for (int i = 1; i < intervals; ++i) sum += f(lo + i * h) * (i % 2 ? 4.0 : 2.0);
  return sum * h / 3.0;
}

// Sorts and de-duplicates slots. Candidate lists are mostly a handful of slots (the same few found in
// several bands), where insertion sort beats std::sort's set-up.
void sort_unique(std::vector<std::uint32_t>& v) {
  if (v.size() <= 32) {
    for (std::size_t i = 1; i < v.size(); ++i) {
      const std::uint32_t x = v[i];
      std::size_t j = i;
      for (; j > 0 && v[j - 1] > x; --j) v[j] = v[j - 1];
      v[j] = x;
    }
  } else {
    std::sort(v.begin(), v.end());
  }
  v.erase(std::unique(v.begin(), v.end()), v.end());
}

// Sorted, distinct candidates -> (keys, scores) appended to `keys` / `scores`.
void emit_candidates(const SignatureStore& store, const std::uint64_t* query, const std::vector<std::uint32_t>& cand,
                     bool with_scores, double min_score, std::size_t top_k, std::vector<idx_t>& keys,
                     std::vector<float>& scores) {
  if (!with_scores) {
    for (std::uint32_t s : cand) keys.push_back(store.key(s));
    return;
  }
  std::vector<std::pair<float, std::uint32_t>> scored;
  scored.reserve(cand.size());
  for (std::uint32_t s : cand) {
    const double j = jaccard(query, store.sig(s), store.num_perm());
    if (j >= min_score) scored.emplace_back(static_cast<float>(j), s);
  }
  auto better = [](const std::pair<float, std::uint32_t>& x, const std::pair<float, std::uint32_t>& y) {
    return x.first != y.first ? x.first > y.first : x.second < y.second;
  };
  if (top_k < scored.size()) {
    std::partial_sort(scored.begin(), scored.begin() + static_cast<std::ptrdiff_t>(top_k), scored.end(), better);
    scored.resize(top_k);
  } else {
    std::sort(scored.begin(), scored.end(), better);
  }
  for (const auto& p : scored) {
    keys.push_back(store.key(p.second));
    scores.push_back(p.first);
  }
}

// Runs `per_query(i, keys, scores, scratch)` (appending query i's results) in parallel over chunks of
// queries and stitches the chunks into CSR: a few allocations per chunk rather than per query.
template <typename Fn>
QueryResult run_queries(std::size_t n, int num_threads, Fn per_query) {
  constexpr std::size_t kChunk = 64;
  struct Part {
    std::vector<idx_t> keys;
    std::vector<float> scores;
  };
  const std::size_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<Part> parts(chunks);
  QueryResult r;
  r.lims.assign(n + 1, 0);
  parallel::parallel_for(chunks, num_threads, [&](std::size_t chunk, std::size_t) {
    Part& part = parts[chunk];
    std::vector<std::uint32_t> scratch;
    for (std::size_t i = chunk * kChunk; i < std::min(n, (chunk + 1) * kChunk); ++i) {
      const std::size_t before = part.keys.size();
      per_query(i, part.keys, part.scores, scratch);
      r.lims[i + 1] = static_cast<std::int64_t>(part.keys.size() - before);  // count for now
    }
  });
  for (std::size_t i = 0; i < n; ++i) r.lims[i + 1] += r.lims[i];
  r.keys.reserve(static_cast<std::size_t>(r.lims[n]));
  for (auto& part : parts) {
    r.keys.insert(r.keys.end(), part.keys.begin(), part.keys.end());
    r.scores.insert(r.scores.end(), part.scores.begin(), part.scores.end());
  }
  return r;
}

// Writes the live signatures, their keys and the user metadata (what read_store reads back). The
// compacted copies must outlive the writer's emit: they go in owned sections.
void write_store(io::FileWriter& w, const SignatureStore& store, const std::string& meta) {
  std::vector<std::uint64_t> sigs;
  std::vector<idx_t> keys;
  store.compact_live(sigs, keys);
  const auto* sb = reinterpret_cast<const unsigned char*>(sigs.data());
  const auto* kb = reinterpret_cast<const unsigned char*>(keys.data());
  w.add_owned(kTagSigs, std::vector<unsigned char>(sb, sb + sigs.size() * 8));
  w.add_owned(kTagKeys, std::vector<unsigned char>(kb, kb + keys.size() * 8));
  w.add_owned(kTagUserMeta, std::vector<unsigned char>(meta.begin(), meta.end()));
}

// Reads signatures, keys and user metadata after the caller validated num_perm and the count.
void read_store(const io::FileReader& r, std::size_t num_perm, std::size_t count, std::string& meta,
                std::vector<std::uint64_t>& sigs, std::vector<idx_t>& keys) {
  io::Bytes sb = r.section(kTagSigs);
  io::Bytes kb = r.section(kTagKeys);
  if (count != 0 && num_perm > std::numeric_limits<std::size_t>::max() / 8 / count)
    fail(ErrorKind::IO, r.origin(), ": signature count overflows");
  if (sb.size != count * num_perm * 8 || kb.size != count * 8)
    fail(ErrorKind::IO, r.origin(), ": signature or key section size does not match ", count, " entries of ",
         num_perm, " values");
  sigs.resize(count * num_perm);
  keys.resize(count);
  if (count) {
    std::memcpy(sigs.data(), sb.data, sb.size);
    std::memcpy(keys.data(), kb.data, kb.size);
  }
  io::Bytes mb = r.section(kTagUserMeta);
  meta.assign(reinterpret_cast<const char*>(mb.data), mb.size);
}

}  // namespace

std::pair<std::size_t, std::size_t> optimal_bands_rows(double threshold, std::size_t num_perm, double fp_weight,
                                                       double fn_weight) {
  ANNFORGE_CHECK(threshold >= 0.0 && threshold <= 1.0, ErrorKind::Value, "threshold must be in [0, 1], got ",
                 threshold);
  ANNFORGE_CHECK(fp_weight >= 0.0 && fn_weight >= 0.0 && std::isfinite(fp_weight) && std::isfinite(fn_weight) &&
                     std::abs(fp_weight + fn_weight - 1.0) < 1e-9,
                 ErrorKind::Value, "weights must be two non-negative numbers that sum to 1, got (", fp_weight, ", ",
                 fn_weight, ")");
  ANNFORGE_CHECK(num_perm >= 1, ErrorKind::Value, "num_perm must be >= 1, got ", num_perm);
  double best = std::numeric_limits<double>::infinity();
  std::pair<std::size_t, std::size_t> opt{1, 1};
  for (std::size_t b = 1; b <= num_perm; ++b) {
    for (std::size_t r = 1; r <= num_perm / b; ++r) {
      const double bd = static_cast<double>(b), rd = static_cast<double>(r);
      auto collide = [&](double s) { return 1.0 - std::pow(1.0 - std::pow(s, rd), bd); };
      const double fp = simpson(collide, 0.0, threshold);
      const double fn = simpson([&](double s) { return 1.0 - collide(s); }, threshold, 1.0);
      const double err = fp * fp_weight + fn * fn_weight;
      if (err < best) {
        best = err;
        opt = {b, r};
      }
    }
  }
  return opt;
}

// --- SignatureStore ---------------------------------------------------------------------------------
std::int64_t SignatureStore::slot_of(idx_t key) const {
  auto it = slot_of_.find(key);
  return it == slot_of_.end() ? -1 : static_cast<std::int64_t>(it->second);
}

void SignatureStore::check_new(const idx_t* keys, std::size_t n) const {
  std::vector<idx_t> sorted(keys, keys + n);
  std::sort(sorted.begin(), sorted.end());
  for (std::size_t i = 1; i < n; ++i)
    ANNFORGE_CHECK(sorted[i] != sorted[i - 1], ErrorKind::Value, "key ", sorted[i], " appears twice in one call");
  for (std::size_t i = 0; i < n; ++i)
    ANNFORGE_CHECK(!contains(keys[i]), ErrorKind::Value, "key ", keys[i], " is already in the index (remove it first)");
  ANNFORGE_CHECK(keys_.size() + n < std::numeric_limits<std::uint32_t>::max(), ErrorKind::Value,
                 "too many entries (limit 2^32 - 1)");
}

namespace {
// Large batches fault in the signature buffer 4 KiB at a time (a third of a bulk insert's time went to
// page faults); where transparent huge pages are opt-in, ask for them on the buffer. Advice only.
void advise_huge_pages(void* data, std::size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr std::uintptr_t kHuge = std::uintptr_t{1} << 21;
  if (bytes < 4 * kHuge) return;
  const auto begin = (reinterpret_cast<std::uintptr_t>(data) + kHuge - 1) & ~(kHuge - 1);
  const auto end = (reinterpret_cast<std::uintptr_t>(data) + bytes) & ~(kHuge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)data;
  (void)bytes;
#endif
}
}  // namespace

void SignatureStore::reserve(std::size_t n) {
  // Growth by doubling would copy the signatures several times during one large batch.
  const std::uint64_t* before = sigs_.data();
  sigs_.reserve(sigs_.size() + n * num_perm_);
  if (sigs_.data() != before) advise_huge_pages(sigs_.data(), sigs_.capacity() * sizeof(std::uint64_t));
  keys_.reserve(keys_.size() + n);
  alive_.reserve(alive_.size() + n);
  slot_of_.reserve(slot_of_.size() + n);
}

std::size_t SignatureStore::append(idx_t key, const std::uint64_t* sig) {
  const std::size_t slot = keys_.size();
  sigs_.insert(sigs_.end(), sig, sig + num_perm_);
  keys_.push_back(key);
  alive_.push_back(1);
  slot_of_[key] = slot;
  return slot;
}

void SignatureStore::kill(std::size_t slot) {
  slot_of_.erase(keys_[slot]);
  alive_[slot] = 0;
}

std::vector<idx_t> SignatureStore::live_keys() const {
  std::vector<idx_t> out;
  out.reserve(size());
  for (std::size_t s = 0; s < keys_.size(); ++s)
    if (alive_[s]) out.push_back(keys_[s]);
  return out;
}

std::size_t SignatureStore::memory_bytes() const noexcept {
  return sigs_.capacity() * 8 + keys_.capacity() * 8 + alive_.capacity() + slot_of_.size() * 32;
}

void SignatureStore::compact_live(std::vector<std::uint64_t>& sigs, std::vector<idx_t>& keys) const {
  sigs.clear();
  keys.clear();
  sigs.reserve(size() * num_perm_);
  keys.reserve(size());
  for (std::size_t s = 0; s < keys_.size(); ++s) {
    if (!alive_[s]) continue;
    sigs.insert(sigs.end(), sig(s), sig(s) + num_perm_);
    keys.push_back(keys_[s]);
  }
}

// --- BandTable --------------------------------------------------------------------------------------
void BandTable::rehash(std::size_t capacity) {
  std::vector<Bucket> old(capacity, Bucket{0, 0, 0});
  old.swap(buckets_);
  mask_ = capacity - 1;
  for (const Bucket& b : old) {
    if (b.size == 0) continue;
    std::size_t i = b.hash & mask_;
    while (buckets_[i].size != 0) i = (i + 1) & mask_;
    buckets_[i] = b;
  }
}

void BandTable::reserve(std::size_t n) {
  const std::size_t need = 2 * (used_ + n);  // load factor <= 1/2: short probe runs
  if (need <= buckets_.size()) return;
  std::size_t capacity = 16;
  while (capacity < need) capacity *= 2;
  rehash(capacity);
}

std::uint32_t BandTable::new_run(std::uint32_t capacity) {
  ANNFORGE_CHECK(pool_.size() + capacity + 1 < std::numeric_limits<std::uint32_t>::max(), ErrorKind::Value,
                 "too many bucket members in one band (limit 2^32 - 1)");
  const auto offset = static_cast<std::uint32_t>(pool_.size());
  pool_.resize(pool_.size() + capacity + 1);
  pool_[offset] = capacity;
  return offset;
}

void BandTable::add(std::uint64_t hash, std::uint32_t slot) {
  if (2 * (used_ + 1) > buckets_.size()) reserve(std::max<std::size_t>(used_ + 1, used_ * 2) - used_);
  for (std::size_t i = hash & mask_;; i = (i + 1) & mask_) {
    Bucket& b = buckets_[i];
    if (b.size == 0) {
      b = Bucket{hash, 1, slot};
      ++used_;
      return;
    }
    if (b.hash != hash) continue;
    if (b.size == 1) {
      const std::uint32_t run = new_run(2);
      pool_[run + 1] = b.data;
      pool_[run + 2] = slot;
      b.data = run;
      b.size = 2;
      return;
    }
    const std::uint32_t capacity = pool_[b.data];
    if (b.size == capacity) {  // full: move the run to the end of the pool with twice the room
      const std::uint32_t run = new_run(capacity * 2);
      std::copy_n(pool_.begin() + b.data + 1, b.size, pool_.begin() + run + 1);
      abandoned_ += capacity + 1;
      b.data = run;
    }
    pool_[b.data + 1 + b.size] = slot;
    ++b.size;
    return;
  }
}

bool BandTable::erase(std::uint64_t hash, std::uint32_t slot) {
  if (buckets_.empty()) return false;
  std::size_t i = hash & mask_;
  for (;; i = (i + 1) & mask_) {
    if (buckets_[i].size == 0) return false;
    if (buckets_[i].hash == hash) break;
  }
  Bucket& b = buckets_[i];
  if (b.size >= 2) {
    std::uint32_t* members = pool_.data() + b.data + 1;
    std::uint32_t* it = std::lower_bound(members, members + b.size, slot);
    if (it == members + b.size || *it != slot) return false;
    std::copy(it + 1, members + b.size, it);
    if (--b.size == 1) {  // back inline
      abandoned_ += pool_[b.data] + 1;
      b.data = members[0];
    }
    return true;
  }
  if (b.data != slot) return false;
  // Backward-shift deletion: pull later members of the probe run into the hole, so no tombstones.
  for (std::size_t j = (i + 1) & mask_; buckets_[j].size != 0; j = (j + 1) & mask_) {
    const std::size_t home = buckets_[j].hash & mask_;
    const bool movable = i <= j ? (home <= i || home > j) : (home <= i && home > j);
    if (movable) {
      buckets_[i] = buckets_[j];
      i = j;
    }
  }
  buckets_[i].size = 0;
  --used_;
  return true;
}

void BandTable::compact(bool force) {
  if (!force && 2 * abandoned_ <= pool_.size()) return;
  std::vector<std::uint32_t> packed;
  packed.reserve(pool_.size() - abandoned_);
  for (Bucket& b : buckets_) {
    if (b.size < 2) continue;
    const auto offset = static_cast<std::uint32_t>(packed.size());
    packed.push_back(b.size);
    packed.insert(packed.end(), pool_.begin() + b.data + 1, pool_.begin() + b.data + 1 + b.size);
    b.data = offset;
  }
  pool_.swap(packed);
  abandoned_ = 0;
}

// --- MinHashLSH -------------------------------------------------------------------------------------
MinHashLSH::MinHashLSH(std::size_t num_perm, std::size_t bands, std::size_t rows, double threshold)
    : bands_(bands), rows_(rows), threshold_(threshold), store_(num_perm) {
  ANNFORGE_CHECK(num_perm >= 1, ErrorKind::Value, "num_perm must be >= 1, got ", num_perm);
  ANNFORGE_CHECK(bands >= 1 && rows >= 1 && bands * rows <= num_perm, ErrorKind::Value,
                 "bands * rows must be between 1 and num_perm (", num_perm, "), got ", bands, " * ", rows);
  tables_.resize(bands);
}

// The bucket key of one band: values are taken in pairs, each pair mixed by one 128-bit multiply of the
// two values keyed by secrets of their positions (independent multiplies, so they pipeline); the sum is
// mixed once more with the band. Buckets match on all 64 bits, so two different bands share a bucket
// only with probability ~2^-64; half a multiply per value (band keys are not saved: a file rebuilds
// its tables, so this may change between versions).
std::uint64_t MinHashLSH::band_key(const std::uint64_t* sig, std::size_t band) const noexcept {
  constexpr std::uint64_t kSecret = 0xa0761d6478bd642full, kSecret2 = 0xe7037ed1a0b428dbull,
                          kFinal = 0x8ebc6af09c88c6e3ull;
  const std::uint64_t* values = sig + band * rows_;
  std::uint64_t sum = rows_;
  std::size_t i = 0;
  for (; i + 1 < rows_; i += 2)
    sum += util::fold_mul(values[i] ^ (kSecret * (i + 1)), values[i + 1] ^ (kSecret2 * (i + 2)));
  if (i < rows_) sum += util::fold_mul(values[i] ^ (kSecret * (i + 1)), kSecret2);
  return util::fold_mul(sum ^ (kFinal * (band + 1)), kFinal);
}

std::size_t MinHashLSH::memory_bytes() const {
  Shared lock(mutex_);
  std::size_t bytes = store_.memory_bytes();
  for (const auto& t : tables_) bytes += t.memory_bytes();
  return bytes;
}

std::vector<std::uint64_t> MinHashLSH::signature(idx_t key) const {
  Shared lock(mutex_);
  const long slot = store_.slot_of(key);
  ANNFORGE_CHECK(slot >= 0, ErrorKind::Value, "unknown key ", key);
  const std::uint64_t* p = store_.sig(static_cast<std::size_t>(slot));
  return std::vector<std::uint64_t>(p, p + num_perm());
}

void MinHashLSH::insert(const idx_t* keys, const std::uint64_t* sigs, std::size_t n, int num_threads) {
  std::unique_lock<parallel::WriterPreferringMutex> lock(mutex_);
  store_.check_new(keys, n);
  const std::size_t first = store_.slots();
  store_.reserve(n);
  // Band keys are computed while each signature is in cache (one pass over the batch, slot-major),
  // then every band's table is filled from its own contiguous key array.
  std::vector<std::uint64_t> band_keys(n * bands_);
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint64_t* sig = sigs + i * num_perm();
    store_.append(keys[i], sig);
    for (std::size_t band = 0; band < bands_; ++band) band_keys[band * n + i] = band_key(sig, band);
  }
  index_slots(first, n, num_threads, band_keys.data());
}

void MinHashLSH::index_slots(std::size_t first, std::size_t n, int num_threads, const std::uint64_t* band_keys) {
  // Bands are independent tables: one task per band.
  parallel::parallel_for(bands_, num_threads, [&](std::size_t band, std::size_t) {
    BandTable& table = tables_[band];
    table.reserve(n);
    // Bulk path: keys of a block of slots first, then the adds with each bucket prefetched a block
    // ahead, so the table's cache misses overlap instead of coming one after another.
    constexpr std::size_t kBlock = 64;
    std::uint64_t hashes[2][kBlock];
    const std::size_t end = first + n;
    auto fill = [&](std::size_t start, std::uint64_t* h) {
      for (std::size_t s = start; s < std::min(end, start + kBlock); ++s) {
        h[s - start] = band_keys ? band_keys[band * n + (s - first)] : band_key(store_.sig(s), band);
        table.prefetch(h[s - start]);
      }
    };
    if (n) fill(first, hashes[0]);
    for (std::size_t start = first, b = 0; start < end; start += kBlock, b ^= 1) {
      if (start + kBlock < end) fill(start + kBlock, hashes[b ^ 1]);
      for (std::size_t s = start; s < std::min(end, start + kBlock); ++s)
        table.add(hashes[b][s - start], static_cast<std::uint32_t>(s));
    }
    table.compact();
  });
}

std::size_t MinHashLSH::remove(const idx_t* keys, std::size_t n) {
  std::unique_lock<parallel::WriterPreferringMutex> lock(mutex_);
  std::size_t removed = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const std::int64_t slot = store_.slot_of(keys[i]);
    if (slot < 0) continue;
    for (std::size_t band = 0; band < bands_; ++band)
      tables_[band].erase(band_key(store_.sig(static_cast<std::size_t>(slot)), band), static_cast<std::uint32_t>(slot));
    store_.kill(static_cast<std::size_t>(slot));
    ++removed;
  }
  if (removed)
    for (auto& table : tables_) table.compact();
  return removed;
}

QueryResult MinHashLSH::query(const std::uint64_t* sigs, std::size_t n, bool with_scores, double min_score,
                              int num_threads) const {
  Shared lock(mutex_);
  return run_queries(n, num_threads,
                     [&](std::size_t i, std::vector<idx_t>& keys, std::vector<float>& scores,
                         std::vector<std::uint32_t>& cand) {
                       const std::uint64_t* q = sigs + i * num_perm();
                       collect_candidates(q, cand);
                       emit_candidates(store_, q, cand, with_scores, min_score, cand.size(), keys, scores);
                     });
}

void MinHashLSH::collect_candidates(const std::uint64_t* q, std::vector<std::uint32_t>& cand) const {
  cand.clear();
  // Hash a group of bands and prefetch their buckets first, so the probes' cache misses overlap.
  constexpr std::size_t kGroup = 32;
  std::uint64_t hashes[kGroup];
  for (std::size_t start = 0; start < bands_; start += kGroup) {
    const std::size_t end = std::min(bands_, start + kGroup);
    for (std::size_t band = start; band < end; ++band) {
      hashes[band - start] = band_key(q, band);
      tables_[band].prefetch(hashes[band - start]);
    }
    for (std::size_t band = start; band < end; ++band) {
      const BandTable::Members m = tables_[band].find(hashes[band - start]);
      cand.insert(cand.end(), m.data, m.data + m.size);
    }
  }
  sort_unique(cand);
}

void MinHashLSH::query_one_locked(const std::uint64_t* sig, std::vector<std::uint32_t>& scratch,
                                  std::vector<idx_t>& out, std::optional<double> min_score) const {
  collect_candidates(sig, scratch);
  if (!min_score) {
    for (std::uint32_t slot : scratch) out.push_back(store_.key(slot));
    return;
  }
  thread_local std::vector<float> scores;  // emit_candidates wants them; the caller only takes keys
  scores.clear();
  emit_candidates(store_, sig, scratch, true, *min_score, scratch.size(), out, scores);
}

void MinHashLSH::query_one(const std::uint64_t* sig, std::vector<std::uint32_t>& scratch, std::vector<idx_t>& out,
                           std::optional<double> min_score) const {
  Shared lock(mutex_);
  query_one_locked(sig, scratch, out, min_score);
}

bool MinHashLSH::try_query_one(const std::uint64_t* sig, std::vector<std::uint32_t>& scratch,
                               std::vector<idx_t>& out, std::optional<double> min_score) const {
  Shared lock(mutex_, std::try_to_lock);
  if (!lock.owns_lock()) return false;
  query_one_locked(sig, scratch, out, min_score);
  return true;
}

PairResult MinHashLSH::pairs(double min_score, int num_threads) const {
  Shared lock(mutex_);
  const bool filter = min_score > 0.0;
  std::vector<std::vector<std::uint64_t>> per_band(bands_);  // (low slot << 32) | high slot
  parallel::parallel_for(bands_, num_threads, [&](std::size_t band, std::size_t) {
    auto& out = per_band[band];
    tables_[band].for_each_shared_bucket([&](BandTable::Members m) {
      for (std::uint32_t x = 0; x < m.size; ++x)  // members ascend: m.data[x] < m.data[y]
        for (std::uint32_t y = x + 1; y < m.size; ++y)
          out.push_back((static_cast<std::uint64_t>(m.data[x]) << 32) | m.data[y]);
    });
    std::sort(out.begin(), out.end());
    out.erase(std::unique(out.begin(), out.end()), out.end());
  });
  std::vector<std::uint64_t> all;
  for (auto& v : per_band) {
    all.insert(all.end(), v.begin(), v.end());
    std::vector<std::uint64_t>().swap(v);
  }
  std::sort(all.begin(), all.end());
  all.erase(std::unique(all.begin(), all.end()), all.end());
  std::vector<float> score(all.size());
  parallel::parallel_for((all.size() + 4095) / 4096, num_threads, [&](std::size_t task, std::size_t) {
    const std::size_t end = std::min(all.size(), (task + 1) * 4096);
    for (std::size_t i = task * 4096; i < end; ++i)
      score[i] = static_cast<float>(jaccard(store_.sig(all[i] >> 32), store_.sig(all[i] & 0xffffffffu), num_perm()));
  });
  PairResult r;
  for (std::size_t i = 0; i < all.size(); ++i) {
    if (filter && score[i] < min_score) continue;
    r.first.push_back(store_.key(all[i] >> 32));
    r.second.push_back(store_.key(all[i] & 0xffffffffu));
    r.scores.push_back(score[i]);
  }
  return r;
}

void MinHashLSH::write(io::FileWriter& w) const {
  Shared lock(mutex_);
  io::ByteWriter p;
  p.put<std::uint64_t>(num_perm()).put<std::uint64_t>(bands_).put<std::uint64_t>(rows_).put<double>(threshold_);
  p.put<std::uint64_t>(size());
  w.add_owned(kTagParams, p.take());
  write_store(w, store_, user_meta);
}

std::unique_ptr<MinHashLSH> MinHashLSH::read(const std::shared_ptr<io::FileReader>& reader) {
  reader->expect_kind(io::Kind::MinHashLSH);
  io::ByteReader p(reader->section(kTagParams), "MinHashLSH parameters");
  const auto num_perm = p.read<std::uint64_t>();
  const auto bands = p.read<std::uint64_t>();
  const auto rows = p.read<std::uint64_t>();
  const auto threshold = p.read<double>();
  const auto count = p.read<std::uint64_t>();
  p.expect_end();
  if (num_perm < 1 || num_perm > (1u << 20) || bands < 1 || rows < 1 || bands > num_perm || rows > num_perm ||
      bands * rows > num_perm || !(threshold >= 0.0 && threshold <= 1.0) || count >= (1ull << 32))
    fail(ErrorKind::IO, reader->origin(), ": inconsistent MinHashLSH parameters");
  auto lsh = std::make_unique<MinHashLSH>(num_perm, bands, rows, threshold);
  std::vector<std::uint64_t> sigs;
  std::vector<idx_t> keys;
  read_store(*reader, num_perm, count, lsh->user_meta, sigs, keys);
  try {
    lsh->store_.check_new(keys.data(), keys.size());
  } catch (const Error& e) {
    fail(ErrorKind::IO, reader->origin(), ": corrupted keys: ", e.what());
  }
  for (std::size_t i = 0; i < count; ++i) lsh->store_.append(keys[i], sigs.data() + i * num_perm);
  lsh->index_slots(0, count, 0);
  return lsh;
}

// --- MinHashLSHForest -------------------------------------------------------------------------------
MinHashLSHForest::MinHashLSHForest(std::size_t num_perm, std::size_t trees)
    : trees_(trees), depth_(trees ? num_perm / trees : 0), store_(num_perm) {
  ANNFORGE_CHECK(num_perm >= 1, ErrorKind::Value, "num_perm must be >= 1, got ", num_perm);
  ANNFORGE_CHECK(trees >= 1 && trees <= num_perm, ErrorKind::Value, "l (number of trees) must be in 1..num_perm (",
                 num_perm, "), got ", trees);
  sorted_.resize(trees);
}

std::size_t MinHashLSHForest::memory_bytes() const {
  Shared lock(mutex_);
  return store_.memory_bytes() + trees_ * store_.slots() * sizeof(std::uint32_t);
}

void MinHashLSHForest::insert(const idx_t* keys, const std::uint64_t* sigs, std::size_t n) {
  std::unique_lock<parallel::WriterPreferringMutex> lock(mutex_);
  store_.check_new(keys, n);
  for (std::size_t i = 0; i < n; ++i) store_.append(keys[i], sigs + i * num_perm());
  if (n) dirty_ = true;
}

std::size_t MinHashLSHForest::remove(const idx_t* keys, std::size_t n) {
  std::unique_lock<parallel::WriterPreferringMutex> lock(mutex_);
  std::size_t removed = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const std::int64_t slot = store_.slot_of(keys[i]);
    if (slot < 0) continue;
    store_.kill(static_cast<std::size_t>(slot));
    ++removed;
  }
  if (removed) dirty_ = true;
  return removed;
}

void MinHashLSHForest::index(int num_threads) {
  std::unique_lock<parallel::WriterPreferringMutex> lock(mutex_);
  index_locked(num_threads);
}

void MinHashLSHForest::index_locked(int num_threads) {
  if (!dirty_) return;
  parallel::parallel_for(trees_, num_threads, [&](std::size_t t, std::size_t) {
    auto& order = sorted_[t];
    order.clear();
    for (std::size_t s = 0; s < store_.slots(); ++s)
      if (store_.alive(s)) order.push_back(static_cast<std::uint32_t>(s));
    const std::size_t off = t * depth_;
    std::sort(order.begin(), order.end(), [&](std::uint32_t x, std::uint32_t y) {
      const std::uint64_t* a = store_.sig(x) + off;
      const std::uint64_t* b = store_.sig(y) + off;
      return std::lexicographical_compare(a, a + depth_, b, b + depth_);
    });
  });
  dirty_ = false;
}

QueryResult MinHashLSHForest::query(const std::uint64_t* sigs, std::size_t n, std::size_t k, int num_threads) {
  ANNFORGE_CHECK(k >= 1, ErrorKind::Value, "k must be >= 1, got ", k);
  Shared lock(mutex_, std::defer_lock);
  // Re-sort after inserts or removals; retry if another thread changed the forest in between.
  for (;;) {
    if (dirty_) index(num_threads);
    lock.lock();
    if (!dirty_) break;
    lock.unlock();
  }
  return run_queries(n, num_threads, [&](std::size_t i, std::vector<idx_t>& keys, std::vector<float>& scores,
                                         std::vector<std::uint32_t>& cand) {
    const std::uint64_t* q = sigs + i * num_perm();
    // Longest shared prefix first; shorten it until the trees together give k distinct candidates.
    for (std::size_t r = depth_; r >= 1; --r) {
      cand.clear();
      for (std::size_t t = 0; t < trees_; ++t) {
        const std::size_t off = t * depth_;
        const auto& order = sorted_[t];
        auto lower = std::lower_bound(order.begin(), order.end(), q + off, [&](std::uint32_t s, const std::uint64_t* key) {
          const std::uint64_t* a = store_.sig(s) + off;
          return std::lexicographical_compare(a, a + r, key, key + r);
        });
        auto upper = std::upper_bound(lower, order.end(), q + off, [&](const std::uint64_t* key, std::uint32_t s) {
          const std::uint64_t* a = store_.sig(s) + off;
          return std::lexicographical_compare(key, key + r, a, a + r);
        });
        cand.insert(cand.end(), lower, upper);
      }
      std::sort(cand.begin(), cand.end());
      cand.erase(std::unique(cand.begin(), cand.end()), cand.end());
      if (cand.size() >= k) break;
    }
    emit_candidates(store_, q, cand, true, -1.0, k, keys, scores);
  });
}

void MinHashLSHForest::write(io::FileWriter& w) const {
  Shared lock(mutex_);
  io::ByteWriter p;
  p.put<std::uint64_t>(num_perm()).put<std::uint64_t>(trees_).put<std::uint64_t>(size());
  w.add_owned(kTagForestParams, p.take());
  write_store(w, store_, user_meta);
}

std::unique_ptr<MinHashLSHForest> MinHashLSHForest::read(const std::shared_ptr<io::FileReader>& reader) {
  reader->expect_kind(io::Kind::MinHashLSHForest);
  io::ByteReader p(reader->section(kTagForestParams), "MinHashLSHForest parameters");
  const auto num_perm = p.read<std::uint64_t>();
  const auto trees = p.read<std::uint64_t>();
  const auto count = p.read<std::uint64_t>();
  p.expect_end();
  if (num_perm < 1 || num_perm > (1u << 20) || trees < 1 || trees > num_perm || count >= (1ull << 32))
    fail(ErrorKind::IO, reader->origin(), ": inconsistent MinHashLSHForest parameters");
  auto forest = std::make_unique<MinHashLSHForest>(num_perm, trees);
  std::vector<std::uint64_t> sigs;
  std::vector<idx_t> keys;
  read_store(*reader, num_perm, count, forest->user_meta, sigs, keys);
  try {
    forest->insert(keys.data(), sigs.data(), count);
  } catch (const Error& e) {
    fail(ErrorKind::IO, reader->origin(), ": corrupted keys: ", e.what());
  }
  forest->index(0);
  return forest;
}

}  // namespace annforge::minhash
