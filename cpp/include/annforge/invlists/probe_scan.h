// The probe scan of IVF-PQ and ScaNN: each query visits the lists its coarse quantizer chose, and every
// entry there is scored with the query's look-up table and offered to its candidate buffer.
//
// Three parts:
//   ProbeFamily   what a family supplies (a plain interface): a query's float table, the constant part
//                 of the distance to a list's entries, and the re-ranking of the candidates.
//   ListScanner   scores one list for one query. 4-bit codes: fast-scan 16-bit sums, then a pre-filter
//                 that compares every sum with a bound derived from the candidate threshold (per block
//                 of 32, with the block's lowest norm term) and, for a query's first list, a histogram
//                 bound; float distances are computed only for the sums that pass. Same candidates as
//                 computing every distance. 8-bit codes: float tables.
//   scheduler     search_probed_lists. 4-bit codes: list-major within blocks of queries. One query at a
//                 time, a scan streams each probed list's codes from memory and waits on it; here the
//                 (query, probe) pairs of a block are grouped by list, so each list is read once per
//                 block and, with a several-tables kernel (codec::pq4::ScanMultiFn), its codes are split
//                 into table indices once per group of queries. Each query's nearest list is scanned
//                 first, on its own, so that its threshold is tight before the rest arrive; a candidate
//                 buffer keeps the same k best whatever the order, so results equal the one-query-at-a-
//                 time search.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "annforge/codec/pq4_fastscan.h"
#include "annforge/invlists/inverted_lists.h"
#include "annforge/storage/filter.h"
#include "annforge/util/topk.h"

namespace annforge::invlists {

// One query while its lists are scanned.
struct ProbeQuery {
  codec::pq4::QuantizedLut qlut;  // 4-bit codes: the query's table, quantised
  float query_term = 0.0f;        // a per-query constant the family may keep for list_offset (IVF-PQ: ||q||^2)
  TopKBuffer heap;                // candidates, labelled by location (pack_location)
};

// What a family supplies to the probe scan. The distance of an entry of probe p of query qi is
//   list_offset(qi, p) + sum_j lut[j][code_j] (+ the entry's norm term when the lists keep them).
// `w` (< the plan's threads) names the worker, so a family can keep per-worker buffers; calls for one
// worker never overlap.
class ProbeFamily {
 public:
  virtual ~ProbeFamily() = default;
  // Writes query qi's table, m x 2^nbits floats (each code's share of the distance), to `lut` and may set
  // q.query_term.
  virtual void prepare_query(std::size_t w, std::size_t qi, float* lut, ProbeQuery& q) const = 0;
  virtual float list_offset(std::size_t qi, std::size_t p, const ProbeQuery& q) const = 0;
  // Re-ranks or sorts q.heap's candidates and writes query qi's row of results.
  virtual void finish_query(std::size_t w, std::size_t qi, ProbeQuery& q) const = 0;
};

// Scores lists for queries (one scanner per worker; it keeps its buffers between calls).
class ListScanner {
 public:
  explicit ListScanner(std::size_t nbits = 4);
  // Offers the entries of `list` to q.heap (those at or below its threshold that pass `filter`, which
  // may be null). 8-bit codes read the float table `lut`; 4-bit codes q.qlut, or `sums` when not null
  // (the list's 16-bit sums for this query, computed already).
  void scan(const InvertedLists& lists, std::size_t list, float list_offset, ProbeQuery& q, const float* lut,
            const IdSelector* filter, const std::uint16_t* sums = nullptr);

 private:
  void scan_bytes(const ListView& v, std::size_t list, float list_offset, TopKBuffer& heap, const float* lut,
                  std::size_t m, const IdSelector* filter);
  std::vector<std::uint16_t> acc_, bounds_;
  std::vector<std::uint32_t> masks_;
  codec::pq4::ScanFn scan_ = nullptr;
  codec::pq4::BelowFn below_ = nullptr;
};

struct ProbePlan {
  const std::int32_t* probe = nullptr;  // nq x nprobe list numbers, nearest first, negative for none
  std::size_t nq = 0, nprobe = 0;
  std::size_t threads = 1;
  std::size_t candidates = 0;  // size of each query's candidate buffer
  const IdSelector* filter = nullptr;
};

// Runs the probe scan of a batch: per query prepare_query, its probed lists scanned, finish_query.
void search_probed_lists(const InvertedLists& lists, const ProbePlan& plan, const ProbeFamily& family);

// Queries per list-major block for nq queries on `threads` workers, each holding its table
// (`table_bytes`) and a buffer of `candidates` while the block runs; below 2 the order gains nothing.
std::size_t list_major_block(std::size_t nq, std::size_t threads, std::size_t table_bytes, std::size_t candidates);

}  // namespace annforge::invlists
