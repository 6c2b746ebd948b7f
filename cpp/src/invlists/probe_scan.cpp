#include "annforge/invlists/probe_scan.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <utility>

#include "annforge/parallel/executor.h"

namespace annforge::invlists {

namespace pq4 = codec::pq4;

namespace {

constexpr std::size_t kListMajorBlock = 256;                    // queries per block
constexpr std::size_t kListMajorBytes = std::size_t(16) << 20;  // their per-query state, per worker
constexpr std::size_t kListGroup = 8;  // queries served by one pass over a list (the kernels take 2-4 at a time)

inline int lowest_bit(std::uint32_t v) {  // v != 0
#if defined(__GNUC__)
  return __builtin_ctz(v);
#else
  int i = 0;
  while (!(v & 1u)) v >>= 1, ++i;
  return i;
#endif
}

}  // namespace

std::size_t list_major_block(std::size_t nq, std::size_t threads, std::size_t table_bytes, std::size_t candidates) {
  const std::size_t state_bytes = table_bytes + TopKBuffer::capacity_for(candidates) * sizeof(std::pair<float, idx_t>);
  return std::min({kListMajorBlock, (nq + threads - 1) / threads, std::max<std::size_t>(1, kListMajorBytes / state_bytes)});
}

// ---------------------------------------------------------------------------------------------------
// One list

ListScanner::ListScanner(std::size_t nbits) {
  if (nbits == 4) {
    scan_ = pq4::scan_kernel();
    below_ = pq4::below_kernel();
  }
}

void ListScanner::scan_bytes(const ListView& v, std::size_t list, float base, TopKBuffer& heap, const float* lut,
                             std::size_t m, const IdSelector* filter) {
  const float* norm_terms = v.norm_terms;
  float thr = heap.threshold();
  for (std::size_t i = 0; i < v.size; ++i) {
    const std::uint8_t* c = v.codes + i * m;
    float d0 = base, d1 = norm_terms ? norm_terms[i] : 0.0f, d2 = 0, d3 = 0;
    std::size_t j = 0;
    for (; j + 4 <= m; j += 4) {
      d0 += lut[j * 256 + c[j]];
      d1 += lut[(j + 1) * 256 + c[j + 1]];
      d2 += lut[(j + 2) * 256 + c[j + 2]];
      d3 += lut[(j + 3) * 256 + c[j + 3]];
    }
    for (; j < m; ++j) d0 += lut[j * 256 + c[j]];
    const float dist = (d0 + d1) + (d2 + d3);
    // Ties too: the buffer breaks them by label, so the order lists come in cannot matter.
    if (!(dist <= thr) || (filter && !filter->contains(v.ids[i]))) continue;
    heap.push(dist, pack_location(list, i));
    thr = heap.threshold();
  }
}

void ListScanner::scan(const InvertedLists& lists, std::size_t list, float list_offset, ProbeQuery& q,
                       const float* lut, const IdSelector* filter, const std::uint16_t* sums) {
  const ListView v = lists.list(list);
  const std::size_t n = v.size;
  if (n == 0) return;
  TopKBuffer& heap = q.heap;
  if (lists.nbits() == 8) {
    scan_bytes(v, list, list_offset, heap, lut, lists.m(), filter);
    return;
  }
  const std::size_t nblocks = pq4::blocks_for(n);
  if (!sums) {
    acc_.resize(nblocks * pq4::kBlock);
    scan_(v.codes, nblocks, pq4::padded_m(lists.m()), q.qlut.table.data(), acc_.data());
    sums = acc_.data();
  }
  const bool with_terms = v.norm_terms != nullptr;
  const float* norm_terms = v.norm_terms;
  const float offset = list_offset + q.qlut.bias, inv_scale = 1.0f / q.qlut.scale, scale = q.qlut.scale;
  float thr = heap.threshold();
  // A 16-bit sum can only enter when offset + norm_term + sum / scale <= thr, so the sum must be below
  // (thr - offset - floor) * scale with `floor` the block's lowest norm term. One kernel call compares
  // every block against its bound (from the threshold when the list starts, with slack for float
  // rounding; a threshold that tightens later only lets more through) and exact float distances are
  // computed only for the few that pass. Same pushes, same order as computing every distance.
  masks_.resize(nblocks);
  std::uint32_t* masks = masks_.data();
  if (thr < std::numeric_limits<float>::infinity()) {
    bounds_.resize(nblocks);
    std::uint16_t* bounds = bounds_.data();
    const float lim0 = (thr - offset) * scale, rel = (std::fabs(thr) + std::fabs(offset)) * scale * 1e-5f;
    for (std::size_t b = 0; b < nblocks; ++b) {
      const float floor = with_terms ? v.block_floor[b] : 0.0f;
      const float lim = lim0 - floor * scale + 2.0f + rel + std::fabs(floor) * scale * 1e-5f;
      // A sum never reaches 65535 (quantize_lut keeps sums below 65535 - padded_m), so 65535 passes all.
      bounds[b] = lim <= 0.0f ? std::uint16_t(0) : lim >= 65535.0f ? std::uint16_t(65535) : static_cast<std::uint16_t>(lim);
    }
    below_(sums, nblocks, bounds, masks);
  } else if (!with_terms && !filter && n > heap.k()) {
    // No threshold yet (the query's first list). The distance grows with the sum within this list,
    // so only its k smallest sums can enter: a histogram of the sums gives a bound that lets those
    // (and a few more) through, instead of offering all n to the buffer.
    constexpr unsigned kShift = 7;
    std::array<std::uint32_t, (65536 >> kShift)> hist{};
    for (std::size_t i = 0; i < n; ++i) ++hist[sums[i] >> kShift];
    std::size_t bin = 0;
    for (std::size_t seen = 0; bin < hist.size(); ++bin)
      if ((seen += hist[bin]) >= heap.k()) break;
    const std::size_t lim = (bin + 1) << kShift;
    bounds_.assign(nblocks, lim >= 65535 ? std::uint16_t(65535) : static_cast<std::uint16_t>(lim));
    below_(sums, nblocks, bounds_.data(), masks);
  } else {
    for (std::size_t b = 0; b < nblocks; ++b) masks[b] = ~std::uint32_t(0);  // buffer not full yet
  }
  if (n % pq4::kBlock) masks[nblocks - 1] &= (std::uint32_t(1) << (n % pq4::kBlock)) - 1;  // padding
  for (std::size_t b = 0; b < nblocks; ++b) {
    std::uint32_t pass = masks[b];
    const std::size_t base_i = b * pq4::kBlock;
    while (pass) {
      const std::size_t i = base_i + static_cast<std::size_t>(lowest_bit(pass));
      pass &= pass - 1;
      const float dist = with_terms ? (offset + norm_terms[i]) + static_cast<float>(sums[i]) * inv_scale
                                    : offset + static_cast<float>(sums[i]) * inv_scale;
      // Ties too: the buffer breaks them by label, so the order lists come in cannot matter.
      if (!(dist <= thr) || (filter && !filter->contains(v.ids[i]))) continue;
      heap.push(dist, pack_location(list, i));
      thr = heap.threshold();
    }
  }
  if (!(heap.threshold() < std::numeric_limits<float>::infinity())) heap.tighten();  // a threshold for the next list
}

// ---------------------------------------------------------------------------------------------------
// The scheduler

namespace {

// A worker's state for one search call.
struct Worker {
  explicit Worker(std::size_t nbits) : scanner(nbits) {}
  ListScanner scanner;
  std::vector<float> lut;            // the float table of the query being prepared (8-bit: being scanned)
  std::vector<ProbeQuery> queries;   // one per query of the current block
  std::vector<std::uint32_t> ends, visits;  // the block's visits grouped by list: entry i * nprobe + p
  std::vector<std::uint16_t> group_acc;
  std::vector<const std::uint8_t*> group_tables;
  std::vector<std::uint16_t*> group_outs;
};

class Scheduler {
 public:
  Scheduler(const InvertedLists& lists, const ProbePlan& plan, const ProbeFamily& family)
      : lists_(lists), plan_(plan), family_(family), multi_(lists.nbits() == 4 ? pq4::scan_multi_kernel() : nullptr),
        lut_kernels_(lists.nbits() == 4 ? pq4::lut_kernels() : nullptr), padded_m_(pq4::padded_m(lists.m())) {}

  void run() {
    const std::size_t nq = plan_.nq, nprobe = plan_.nprobe, threads = plan_.threads;
    std::vector<Worker> workers(threads, Worker(lists_.nbits()));
    // 8-bit codes keep a float table per sub-quantizer and query (1 KiB each): one query at a time.
    const std::size_t block =
        lists_.nbits() == 4 ? list_major_block(nq, threads, padded_m_ * 16, plan_.candidates) : 1;
    if (block < 2 || nprobe < 2) {
      parallel::parallel_for(nq, static_cast<int>(threads), [&](std::size_t qi, std::size_t w) {
        Worker& wk = workers[w];
        ProbeQuery& q = prepare(wk, w, 0, qi);
        for (std::size_t p = 0; p < nprobe; ++p)
          if (plan_.probe[qi * nprobe + p] >= 0) visit(wk, q, qi, p, nullptr);
        family_.finish_query(w, qi, q);
      });
      return;
    }
    parallel::parallel_for((nq + block - 1) / block, static_cast<int>(threads), [&](std::size_t bi, std::size_t w) {
      Worker& wk = workers[w];
      const std::size_t q0 = bi * block, nb = std::min(nq, q0 + block) - q0;
      for (std::size_t i = 0; i < nb; ++i) {  // each query's nearest list first, on its own
        ProbeQuery& q = prepare(wk, w, i, q0 + i);
        if (plan_.probe[(q0 + i) * nprobe] >= 0) visit(wk, q, q0 + i, 0, nullptr);
      }
      scan_rest_list_major(wk, q0, nb);
      for (std::size_t i = 0; i < nb; ++i) family_.finish_query(w, q0 + i, wk.queries[i]);
    });
  }

 private:
  ProbeQuery& prepare(Worker& wk, std::size_t w, std::size_t slot, std::size_t qi) const {
    if (wk.queries.size() <= slot) wk.queries.resize(slot + 1);
    ProbeQuery& q = wk.queries[slot];
    wk.lut.resize(lists_.m() << lists_.nbits());
    family_.prepare_query(w, qi, wk.lut.data(), q);
    if (lists_.nbits() == 4) pq4::quantize_lut(wk.lut.data(), lists_.m(), q.qlut, lut_kernels_);
    q.heap.reset(plan_.candidates);
    return q;
  }

  void visit(Worker& wk, ProbeQuery& q, std::size_t qi, std::size_t p, const std::uint16_t* sums) const {
    const auto list = static_cast<std::size_t>(plan_.probe[qi * plan_.nprobe + p]);
    wk.scanner.scan(lists_, list, family_.list_offset(qi, p, q), q, wk.lut.data(), plan_.filter, sums);
  }

  // Visits probes 1..nprobe-1 of queries [q0, q0 + nb) list by list; two or more queries on a list share
  // one pass of the several-tables kernel over its codes.
  void scan_rest_list_major(Worker& s, std::size_t q0, std::size_t nb) const {
    const std::int32_t* probe = plan_.probe;
    const std::size_t nprobe = plan_.nprobe, nlists = lists_.nlists();
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
      const std::size_t end = s.ends[l], n = lists_.list_size(l);
      if (multi_ && end - begin >= 2 && n > 0) {
        const std::size_t nblocks = pq4::blocks_for(n), stride = nblocks * pq4::kBlock;
        s.group_acc.resize(kListGroup * stride);
        for (std::size_t g0 = begin; g0 < end; g0 += kListGroup) {
          const std::size_t g1 = std::min(end, g0 + kListGroup);
          s.group_tables.resize(g1 - g0);
          s.group_outs.resize(g1 - g0);
          for (std::size_t v = g0; v < g1; ++v) {
            s.group_tables[v - g0] = s.queries[s.visits[v] / nprobe].qlut.table.data();
            s.group_outs[v - g0] = s.group_acc.data() + (v - g0) * stride;
          }
          multi_(lists_.stored_codes(l), nblocks, padded_m_, s.group_tables.data(), g1 - g0, s.group_outs.data());
          for (std::size_t v = g0; v < g1; ++v) {
            const std::size_t i = s.visits[v] / nprobe;
            visit(s, s.queries[i], q0 + i, s.visits[v] % nprobe, s.group_outs[v - g0]);
          }
        }
      } else {
        for (std::size_t v = begin; v < end; ++v) {
          const std::size_t i = s.visits[v] / nprobe;
          visit(s, s.queries[i], q0 + i, s.visits[v] % nprobe, nullptr);
        }
      }
      begin = end;
    }
  }

  const InvertedLists& lists_;
  const ProbePlan& plan_;
  const ProbeFamily& family_;
  const pq4::ScanMultiFn multi_;
  const pq4::LutKernels* lut_kernels_;
  const std::size_t padded_m_;
};

}  // namespace

void search_probed_lists(const InvertedLists& lists, const ProbePlan& plan, const ProbeFamily& family) {
  if (plan.nq == 0) return;
  Scheduler(lists, plan, family).run();
}

}  // namespace annforge::invlists
