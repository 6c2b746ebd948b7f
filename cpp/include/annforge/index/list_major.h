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

namespace annforge {

constexpr std::size_t kListMajorBlock = 256;                    // queries per block
constexpr std::size_t kListMajorBytes = std::size_t(16) << 20;  // their per-query state, per worker
constexpr std::size_t kListGroup = 8;  // queries served by one pass over a list (the kernels take 2-4 at a time)

// Queries per block for nq queries on `threads` workers, each query holding `state_bytes` (its table
// and candidate buffer) while the block runs; below 2 the list-major order gains nothing.
inline std::size_t list_major_block(std::size_t nq, std::size_t threads, std::size_t state_bytes) {
  return std::min({kListMajorBlock, (nq + threads - 1) / threads,
                   std::max<std::size_t>(1, kListMajorBytes / std::max<std::size_t>(1, state_bytes))});
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

}  // namespace annforge
