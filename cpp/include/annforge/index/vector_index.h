// The interface every vector index family implements, and the checks they share.
#pragma once

#include <cstddef>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "annforge/common.h"
#include "annforge/io/format.h"
#include "annforge/storage/filter.h"

namespace annforge {

// A family's search knobs by name (ef, nprobe, ...); each family takes the ones it knows and rejects
// the rest, so a misspelt knob is an error rather than silently ignored.
class SearchKnobs {
 public:
  void set(const std::string& name, double value) { values_[name] = value; }
  bool empty() const { return values_.empty(); }
  // Removes and returns the knob, or `fallback` when absent.
  double take(const std::string& name, double fallback);
  // Integer knob with a lower bound; ValueError names the knob.
  long long take_int(const std::string& name, long long fallback, long long min_value);
  // ValueError naming every knob left over.
  void reject_unknown(const char* family, const char* known) const;

 private:
  std::map<std::string, double> values_;
};

struct SearchOptions {
  int num_threads = 0;
  const IdSelector* filter = nullptr;
  SearchKnobs knobs;
};

// Per-query results of a range search, concatenated: query i owns [lims[i], lims[i+1]).
struct RangeResult {
  std::vector<std::size_t> lims;
  std::vector<idx_t> ids;
  std::vector<float> distances;
};

class VectorIndex {
 public:
  VectorIndex(std::size_t dim, Metric metric);
  virtual ~VectorIndex() = default;
  VectorIndex(const VectorIndex&) = delete;
  VectorIndex& operator=(const VectorIndex&) = delete;

  std::size_t dim() const noexcept { return dim_; }
  Metric metric() const noexcept { return metric_; }
  virtual io::Kind kind() const = 0;

  virtual std::size_t size() const = 0;
  // Adds n rows (upsert by id). ids may be null: then next_id(), next_id()+1, ... are used.
  // The ids used are written to out_ids.
  virtual void add(const float* x, std::size_t n, const idx_t* ids, int num_threads, idx_t* out_ids) = 0;
  // Writes nq*k ids and distances, best first, padded with -1 / +inf.
  virtual void search(const float* q, std::size_t nq, std::size_t k, SearchOptions& opt, idx_t* out_ids,
                      float* out_dist) const = 0;
  virtual std::size_t remove(const idx_t* ids, std::size_t n) = 0;
  virtual bool contains(idx_t id) const = 0;
  // Live ids in storage order.
  virtual std::vector<idx_t> ids() const = 0;
  // Stored (possibly normalised or decoded) vectors for the given ids; ValueError for unknown ids.
  virtual void reconstruct(const idx_t* ids, std::size_t n, float* out) const = 0;
  virtual std::size_t memory_bytes() const = 0;

  // Serialisation, for every family through this base: the file's sections reference the index's
  // arrays, so the family's lock is held from the first section until the last byte is out (a
  // concurrent add could otherwise reallocate what the writer points at).
  void save(const std::string& path) const;
  std::vector<unsigned char> to_bytes() const;
  // Fills a writer with the index and hands it to `sink` while the lock is still held; save() and
  // to_bytes() are two such sinks.
  using WriterSink = std::function<void(const io::FileWriter&)>;
  void serialise(const WriterSink& sink) const;

  // The k every search accepts, in [1, kMaxK] (ValueError otherwise). Public so that callers can check
  // k before they allocate the nq x k output.
  static constexpr long long kMaxK = 1 << 24;
  static void check_k(long long k);

 protected:
  // Shared input checks (ValueError with the argument named): finite values.
  static void check_finite(const float* x, std::size_t n, std::size_t dim, const char* what);
  // check_finite, plus what the loaders demand of stored rows: under l2 / ip each row's squared norm must
  // be <= kMaxLoadedSqNorm (a larger one overflows the distances, and the saved file would be refused).
  // Cosine rows are normalised before they are stored, so only finiteness matters there.
  void check_storable(const float* x, std::size_t n, const char* what) const;
  // Copies rows into `out`, normalising them for the cosine metric (zero rows stay zero).
  void prepare_rows(const float* x, std::size_t n, std::vector<float>& out) const;
  // Distances as users see them, from a raw inner product (ip/cosine: 1 - <q,x>).
  // Ids for add(): validated given ids, or consecutive new ones; advances next_id_.
  void assign_ids(const idx_t* ids, std::size_t n, idx_t* out_ids);
  // Loader checks of values a file provides (OSError "<origin>: corrupted <what>: ..."): stored vectors
  // must be finite, and centres / code words small enough (squared norm <= kMaxLoadedSqNorm) that the
  // sums of norms and dot products a search forms from them cannot overflow to inf or NaN.
  static constexpr float kMaxLoadedSqNorm = 1.0e37f;  // FLT_MAX / 34
  static void check_loaded_finite(const float* x, std::size_t n, const std::string& origin, const char* what);
  static void check_loaded_finite_f16(const std::uint16_t* x, std::size_t n, const std::string& origin,
                                      const char* what);
  static void check_loaded_rows(const float* rows, std::size_t n, std::size_t dim, const std::string& origin,
                                const char* what);
  // The family's sections, added to `w`; serialise() calls it with the lock of hold_unchanged held.
  virtual void write(io::FileWriter& w) const = 0;
  // Runs `fn` holding the family's lock that excludes add / remove / train (searches may go on).
  virtual void hold_unchanged(const std::function<void()>& fn) const = 0;
  // The metadata every family writes first and reads back (dim, metric, next id).
  void write_common(io::ByteWriter& w) const;
  void read_common(io::ByteReader& r);
  // Whether `id` is one this index could have handed out or been given (0 <= id < next id): loaders
  // refuse stored ids that are not.
  bool id_below_next(idx_t id) const noexcept {
    return id >= 0 && static_cast<std::uint64_t>(id) < next_id_;
  }

  std::size_t dim_;
  Metric metric_;
  // One past the largest id used so far, in [0, 2^63]: 2^63 once id 2^63 - 1 was used, after which
  // no automatic id is left (an int64 could not hold that value).
  std::uint64_t next_id_ = 0;
};

}  // namespace annforge
