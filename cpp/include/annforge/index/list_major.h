// List-major scanning of probed inverted lists for a block of queries (IVF-PQ and ScaNN with 4-bit
// codes).
//
// One query at a time, a scan streams each probed list's codes from memory and waits on it. Here the
// (query, probe) pairs of a block of queries are grouped by list, so each list is read once per block
// and, with a several-tables kernel (codec::pq4::ScanMultiFn), its codes are loaded and split into
// table indices once per group of queries. The caller scans each query's nearest list first, on its
// own, so that query's candidate threshold is tight before the rest arrive; since a candidate buffer
// keeps the same k best whatever the order, results equal the one-query-at-a-time search.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "annforge/codec/pq4_fastscan.h"
#include "annforge/parallel/executor.h"
#include "annforge/util/topk.h"

namespace annforge {

constexpr std::size_t kListMajorBlock = 256;                    // queries per block
constexpr std::size_t kListMajorBytes = std::size_t(16) << 20;  // their per-query state, per worker
constexpr std::size_t kListGroup = 8;  // queries served by one pass over a list (the kernels take 2-4 at a time)

// Queries per block for nq queries on `threads` workers, each holding its table (`table_bytes`) and a
// TopKBuffer of `candidates` while the block runs; below 2 the list-major order gains nothing.
inline std::size_t list_major_block(std::size_t nq, std::size_t threads, std::size_t table_bytes,
                                    std::size_t candidates) {
  const std::size_t state_bytes = table_bytes + TopKBuffer::capacity_for(candidates) * sizeof(std::pair<float, idx_t>);
  return std::min({kListMajorBlock, (nq + threads - 1) / threads, std::max<std::size_t>(1, kListMajorBytes / state_bytes)});
}

// Per-worker buffers of scan_rest_list_major.
struct ListMajorScratch {
  std::vector<std::uint32_t> ends, visits;  // visits grouped by list: entry i * nprobe + p
  std::vector<std::uint16_t> group_acc;
  std::vector<const std::uint8_t*> group_tables;
  std::vector<std::uint16_t*> group_outs;
};

// Visits probes 1..nprobe-1 of queries [q0, q0 + nb) list by list. probe[(q0 + i) * nprobe + p] is a
// list number below nlists, or negative for none. For each visit, visit(i, p, sums) runs with `sums`
// the list's 16-bit sums for query i when `multi` computed them (two or more queries on that list),
// else nullptr (the visitor scans itself). codes_of(l) returns {blocks, number of vectors} of list l;
// table_of(i) query i's quantized table (padded_m x 16 bytes).
template <class CodesOf, class TableOf, class Visit>
void scan_rest_list_major(const std::int32_t* probe, std::size_t nprobe, std::size_t q0, std::size_t nb,
                          std::size_t nlists, codec::pq4::ScanMultiFn multi, std::size_t padded_m,
                          CodesOf codes_of, TableOf table_of, Visit visit, ListMajorScratch& s) {
  // Counting sort of the (query, probe) pairs by list.
  s.ends.assign(nlists + 1, 0);
  for (std::size_t i = 0; i < nb; ++i)
    for (std::size_t p = 1; p < nprobe; ++p) {
      const std::int32_t list = probe[(q0 + i) * nprobe + p];
      if (list >= 0) ++s.ends[static_cast<std::size_t>(list) + 1];
    }
  for (std::size_t l = 0; l < nlists; ++l) s.ends[l + 1] += s.ends[l];
  s.visits.resize(s.ends[nlists]);
  for (std::size_t i = 0; i < nb; ++i)
    for (std::size_t p = 1; p < nprobe; ++p) {
      const std::int32_t list = probe[(q0 + i) * nprobe + p];
      if (list >= 0) s.visits[s.ends[static_cast<std::size_t>(list)]++] = static_cast<std::uint32_t>(i * nprobe + p);
    }
  // ends[l] now holds the end of list l's run (= the start of list l + 1's).
  std::size_t begin = 0;
  for (std::size_t l = 0; l < nlists; ++l) {
    const std::size_t end = s.ends[l];
    const std::pair<const std::uint8_t*, std::size_t> codes = codes_of(l);
    if (multi && end - begin >= 2 && codes.second > 0) {
      const std::size_t nblocks = codec::pq4::blocks_for(codes.second), stride = nblocks * codec::pq4::kBlock;
      s.group_acc.resize(kListGroup * stride);
      for (std::size_t g0 = begin; g0 < end; g0 += kListGroup) {
        const std::size_t g1 = std::min(end, g0 + kListGroup);
        s.group_tables.resize(g1 - g0);
        s.group_outs.resize(g1 - g0);
        for (std::size_t v = g0; v < g1; ++v) {
          s.group_tables[v - g0] = table_of(s.visits[v] / nprobe);
          s.group_outs[v - g0] = s.group_acc.data() + (v - g0) * stride;
        }
        multi(codes.first, nblocks, padded_m, s.group_tables.data(), g1 - g0, s.group_outs.data());
        for (std::size_t v = g0; v < g1; ++v) visit(s.visits[v] / nprobe, s.visits[v] % nprobe, s.group_outs[v - g0]);
      }
    } else {
      for (std::size_t v = begin; v < end; ++v)
        visit(s.visits[v] / nprobe, s.visits[v] % nprobe, static_cast<const std::uint16_t*>(nullptr));
    }
    begin = end;
  }
}

// The probe scan of a batch, for both families: nq queries, each with nprobe probed lists
// (probe[qi * nprobe + p], nearest first, negative for none), on `threads` workers. A query is
// prepared, its lists scanned and it is finished; callbacks name the worker w and the query's slot
// among that worker's states (the family keeps the states):
//   prepare(w, slot, qi)              table and empty candidate buffer of query qi in that slot
//   scan(w, slot, qi, p, sums)        probe p of query qi; `sums` as in scan_rest_list_major
//   finish(w, slot, qi)               re-rank and write query qi's row
//   table_of(w, slot)                 the slot's quantized table
// With block >= 2 (list_major_block) and nprobe >= 2 the lists are visited list-major within blocks of
// queries; otherwise one query at a time in probe order (slot 0).
template <class CodesOf, class Prepare, class TableOf, class Scan, class Finish>
void scan_probed_lists(std::size_t nq, std::size_t nprobe, std::size_t threads, std::size_t block,
                       const std::int32_t* probe, std::size_t nlists, codec::pq4::ScanMultiFn multi,
                       std::size_t padded_m, CodesOf codes_of, Prepare prepare, TableOf table_of, Scan scan,
                       Finish finish) {
  if (block < 2 || nprobe < 2) {
    parallel::parallel_for(nq, static_cast<int>(threads), [&](std::size_t qi, std::size_t w) {
      prepare(w, std::size_t(0), qi);
      for (std::size_t p = 0; p < nprobe; ++p)
        if (probe[qi * nprobe + p] >= 0) scan(w, std::size_t(0), qi, p, static_cast<const std::uint16_t*>(nullptr));
      finish(w, std::size_t(0), qi);
    });
    return;
  }
  std::vector<ListMajorScratch> scratch(threads);
  parallel::parallel_for((nq + block - 1) / block, static_cast<int>(threads), [&](std::size_t bi, std::size_t w) {
    const std::size_t q0 = bi * block, nb = std::min(nq, q0 + block) - q0;
    for (std::size_t i = 0; i < nb; ++i) {  // each query's nearest list first, on its own
      prepare(w, i, q0 + i);
      if (probe[(q0 + i) * nprobe] >= 0) scan(w, i, q0 + i, std::size_t(0), static_cast<const std::uint16_t*>(nullptr));
    }
    scan_rest_list_major(
        probe, nprobe, q0, nb, nlists, multi, padded_m, codes_of, [&](std::size_t i) { return table_of(w, i); },
        [&](std::size_t i, std::size_t p, const std::uint16_t* sums) { scan(w, i, q0 + i, p, sums); }, scratch[w]);
    for (std::size_t i = 0; i < nb; ++i) finish(w, i, q0 + i);
  });
}

}  // namespace annforge
