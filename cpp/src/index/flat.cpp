#include "annforge/index/flat.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <mutex>

#include "annforge/parallel/executor.h"
#include "annforge/simd/kernels.h"
#include "annforge/util/topk.h"

namespace annforge {

namespace {

constexpr std::uint32_t kTagMeta = io::make_tag("META");
constexpr std::uint32_t kTagIds = io::make_tag("IDS ");
constexpr std::uint32_t kTagVectors = io::make_tag("VECS");
constexpr std::uint32_t kTagNorms = io::make_tag("NRMS");

constexpr std::size_t kScanBlock = 1024;     // rows per one-to-many kernel call
constexpr std::size_t kQuerySubBlock = 64;   // queries per packed-kernel call (distance tile stays in L2)
constexpr std::size_t kPackedBytes = 384 * 1024;  // target size of one packed row block
constexpr std::size_t kMinRowsPerTask = 4096;

std::size_t div_up(std::size_t a, std::size_t b) { return (a + b - 1) / b; }

// Distance from a raw score: l2 kernels already give squared distances; ip/cosine are 1 - <q, x>.
inline float from_dot(float dot) { return 1.0f - dot; }

// A pre-test bound lowered by 2^-20 of the magnitude of the terms involved (-inf stays -inf): the
// pre-tests compare rearranged expressions, whose rounding differs from that of the exact distance by
// far less than this, so they can never drop a row the exact test would keep.
inline float loosen(float bound, float magnitude) { return bound - magnitude * 0x1p-20f - 0x1p-100f; }

}  // namespace

FlatIndex::FlatIndex(std::size_t dim, Metric metric) : VectorIndex(dim, metric) {}

std::size_t FlatIndex::size() const {
  std::shared_lock<parallel::WriterPreferringMutex> lock(mutex_);
  return slot_ids_.size();
}

bool FlatIndex::contains(idx_t id) const {
  std::shared_lock<parallel::WriterPreferringMutex> lock(mutex_);
  return slot_of_.contains(id);
}

std::vector<idx_t> FlatIndex::ids() const {
  std::shared_lock<parallel::WriterPreferringMutex> lock(mutex_);
  return std::vector<idx_t>(slot_ids_.data(), slot_ids_.data() + slot_ids_.size());
}

std::size_t FlatIndex::memory_bytes() const {
  std::shared_lock<parallel::WriterPreferringMutex> lock(mutex_);
  return vectors_.heap_bytes() + sq_norms_.heap_bytes() + slot_ids_.heap_bytes() + slot_of_.memory_bytes();
}

void FlatIndex::add(const float* x, std::size_t n, const idx_t* ids, int num_threads, idx_t* out_ids) {
  (void)parallel::resolve_threads(num_threads);  // validates the argument
  check_storable(x, n, "vectors");
  if (ids) validate_new_ids(ids, n);
  std::vector<float> rows;
  prepare_rows(x, n, rows);
  const auto& K = simd::kernels();
  std::unique_lock<parallel::WriterPreferringMutex> lock(mutex_);
  assign_ids(ids, n, out_ids);
  std::size_t fresh = 0;
  for (std::size_t i = 0; i < n; ++i) fresh += slot_of_.contains(out_ids[i]) ? 0 : 1;
  vectors_.reserve(vectors_.size() + fresh * dim_);
  sq_norms_.reserve(sq_norms_.size() + fresh);
  slot_ids_.reserve(slot_ids_.size() + fresh);
  slot_of_.reserve(slot_ids_.size() + fresh);
  for (std::size_t i = 0; i < n; ++i) {
    const float* row = rows.data() + i * dim_;
    const float norm = K.dot(row, row, dim_);
    const idx_t slot = slot_of_.find(out_ids[i]);
    if (slot != IdMap::kMissing) {  // upsert: replace in place
      std::copy(row, row + dim_, vectors_.mutable_data() + static_cast<std::size_t>(slot) * dim_);
      sq_norms_.at_mut(static_cast<std::size_t>(slot)) = norm;
    } else {
      slot_of_.set(out_ids[i], static_cast<idx_t>(slot_ids_.size()));
      vectors_.append(row, dim_);
      sq_norms_.push_back(norm);
      slot_ids_.push_back(out_ids[i]);
    }
  }
}

std::size_t FlatIndex::remove(const idx_t* ids, std::size_t n) {
  std::unique_lock<parallel::WriterPreferringMutex> lock(mutex_);
  std::size_t removed = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const idx_t slot = slot_of_.erase(ids[i]);
    if (slot == IdMap::kMissing) continue;
    ++removed;
    const std::size_t s = static_cast<std::size_t>(slot), last = slot_ids_.size() - 1;
    if (s != last) {  // keep rows dense: move the last row into the hole
      float* v = vectors_.mutable_data();
      std::copy(v + last * dim_, v + (last + 1) * dim_, v + s * dim_);
      sq_norms_.at_mut(s) = sq_norms_[last];
      const idx_t moved = slot_ids_[last];
      slot_ids_.at_mut(s) = moved;
      slot_of_.set(moved, slot);
    }
    vectors_.shrink(last * dim_);
    sq_norms_.shrink(last);
    slot_ids_.shrink(last);
  }
  return removed;
}

void FlatIndex::reconstruct(const idx_t* ids, std::size_t n, float* out) const {
  std::shared_lock<parallel::WriterPreferringMutex> lock(mutex_);
  for (std::size_t i = 0; i < n; ++i) {
    const idx_t slot = slot_of_.find(ids[i]);
    ANNFORGE_CHECK(slot != IdMap::kMissing, ErrorKind::Value, "id ", ids[i], " is not in the index");
    const float* row = vectors_.data() + static_cast<std::size_t>(slot) * dim_;
    std::copy(row, row + dim_, out + i * dim_);
  }
}

// ---------------------------------------------------------------------------------------------------
// Search

// Per-(query, row range) top-k candidates, merged at the end.
struct FlatIndex::Candidates {
  std::size_t k = 0, ranges = 1;
  std::vector<std::vector<std::pair<float, idx_t>>> lists;  // [query * ranges + range] -> sorted (dist, slot)
};

void FlatIndex::search(const float* q, std::size_t nq, std::size_t k, SearchOptions& opt, idx_t* out_ids,
                       float* out_dist) const {
  check_k(k);
  opt.knobs.reject_unknown("FlatIndex", "none: FlatIndex is exact");
  check_storable(q, nq, "queries");
  std::vector<float> prepared;
  const float* queries = q;
  if (metric_ == Metric::Cosine) {
    prepare_rows(q, nq, prepared);
    queries = prepared.data();
  }
  std::shared_lock<parallel::WriterPreferringMutex> lock(mutex_);
  search_locked(queries, nq, k, opt.num_threads, opt.filter, out_ids, out_dist);
}

void FlatIndex::search_locked(const float* Q, std::size_t nq, std::size_t k, int num_threads,
                              const IdSelector* filter, idx_t* out_ids, float* out_dist) const {
  if (nq == 0) return;
  const auto& K = simd::kernels();
  const std::size_t n = slot_ids_.size(), d = dim_;
  const float* X = vectors_.data();
  const bool l2 = metric_ == Metric::L2;
  std::size_t threads = parallel::resolve_threads(num_threads);
  if (filter && !filter->thread_safe()) threads = 1;

  // Allowed rows, when the filter is a small explicit set: scan only those (any selectivity stays fast).
  std::vector<idx_t> allowed_slots;
  bool gather = false;
  if (filter && filter->id_list() && filter->id_list()->size() * 8 < n) {
    gather = true;
    for (idx_t id : *filter->id_list()) {
      const idx_t s = slot_of_.find(id);
      if (s != IdMap::kMissing) allowed_slots.push_back(s);
    }
    std::sort(allowed_slots.begin(), allowed_slots.end());
    filter = nullptr;  // already applied
  }

  const bool batched = !gather && nq >= 4;
  // Split the rows into ranges when there are too few queries (or query blocks) to occupy the threads.
  std::size_t query_block = nq, ranges = 1;
  if (batched) {
    query_block = std::max<std::size_t>(K.panel_rows, div_up(div_up(nq, threads), 8) * 8);
    const std::size_t qblocks = div_up(nq, query_block);
    if (qblocks < threads) ranges = std::min(div_up(threads, qblocks), std::max<std::size_t>(1, n / kMinRowsPerTask));
  } else if (!gather) {
    query_block = 1;
    if (nq < threads) ranges = std::min(div_up(threads, nq), std::max<std::size_t>(1, n / kMinRowsPerTask));
  } else {
    query_block = 1;
  }
  const std::size_t qblocks = div_up(nq, query_block);
  const std::size_t rows_per_range = div_up(std::max<std::size_t>(n, 1), ranges);

  Candidates cand;
  cand.k = k;
  cand.ranges = ranges;
  cand.lists.resize(nq * ranges);

  auto accept = [&](TopK& heap, float dist, std::size_t slot) {
    if (dist <= heap.threshold()) {
      if (filter && !filter->contains(slot_ids_[slot])) return;
      heap.push(dist, static_cast<idx_t>(slot));
    }
  };

  const std::size_t panel = K.panel_rows;
  std::size_t block_rows = std::max<std::size_t>(panel, kPackedBytes / (sizeof(float) * d) / panel * panel);

  parallel::parallel_for(qblocks * ranges, static_cast<int>(threads), [&](std::size_t task, std::size_t) {
    const std::size_t qb = task / ranges, r = task % ranges;
    const std::size_t q0 = qb * query_block, q1 = std::min(nq, q0 + query_block);
    const std::size_t r0 = std::min(n, r * rows_per_range), r1 = std::min(n, r0 + rows_per_range);
    std::vector<TopK> heaps(q1 - q0, TopK(k));

    if (gather) {
      for (std::size_t qi = q0; qi < q1; ++qi) {
        const float* qv = Q + qi * d;
        TopK& heap = heaps[qi - q0];
        for (idx_t s : allowed_slots) {
          const float* row = X + static_cast<std::size_t>(s) * d;
          const float dist = l2 ? K.l2_sqr(qv, row, d) : from_dot(K.dot(qv, row, d));
          accept(heap, dist, static_cast<std::size_t>(s));
        }
      }
    } else if (!batched) {
      std::vector<float> buf(kScanBlock);
      for (std::size_t qi = q0; qi < q1; ++qi) {
        const float* qv = Q + qi * d;
        TopK& heap = heaps[qi - q0];
        for (std::size_t b = r0; b < r1; b += kScanBlock) {
          const std::size_t nb = std::min(kScanBlock, r1 - b);
          if (l2) {
            K.l2_sqr_rows(qv, X + b * d, nb, d, buf.data());
          } else {
            K.dot_rows(qv, X + b * d, nb, d, buf.data());
            for (std::size_t j = 0; j < nb; ++j) buf[j] = from_dot(buf[j]);
          }
          float thr = heap.threshold();
          for (std::size_t j = 0; j < nb; ++j) {
            if (buf[j] <= thr) {
              accept(heap, buf[j], b + j);
              thr = heap.threshold();
            }
          }
        }
      }
    } else {
      AlignedBuffer<float> packed(K.packed_size(block_rows, d));
      std::vector<float> dots(kQuerySubBlock * block_rows);
      std::vector<float> score(block_rows);  // l2: dot - |x|^2 / 2, so that "closer" is "larger" as for ip
      std::vector<std::uint32_t> hits(block_rows);
      std::vector<float> qnorm(q1 - q0);
      for (std::size_t qi = q0; qi < q1; ++qi) qnorm[qi - q0] = l2 ? K.dot(Q + qi * d, Q + qi * d, d) : 0.0f;
      for (std::size_t b = r0; b < r1; b += block_rows) {
        const std::size_t nb = std::min(block_rows, r1 - b);
        K.pack_rows(X + b * d, nb, d, packed.mutable_data());
        const float* xn = sq_norms_.data() + b;
        for (std::size_t s0 = q0; s0 < q1; s0 += kQuerySubBlock) {
          const std::size_t ns = std::min(kQuerySubBlock, q1 - s0);
          K.dot_packed(Q + s0 * d, ns, d, packed.data(), nb, d, dots.data(), block_rows);
          for (std::size_t i = 0; i < ns; ++i) {
            TopK& heap = heaps[s0 + i - q0];
            const float* dot = dots.data() + i * block_rows;
            // Vector pre-test against the bound the heap had before this block (a superset of what the
            // heap will take: every hit is still checked against the current threshold), then the exact
            // distances of the few hits.
            const float thr = heap.threshold();
            std::size_t count;
            if (l2) {
              const float qn = qnorm[s0 + i - q0];
              for (std::size_t j = 0; j < nb; ++j) score[j] = dot[j] - 0.5f * xn[j];
              const float bound = loosen(0.5f * (qn - thr), qn + std::fabs(thr));  // dist <= thr
              count = K.indices_at_least(score.data(), nb, bound, hits.data());
              for (std::size_t h = 0; h < count; ++h) {
                const std::size_t j = hits[h];
                accept(heap, std::max(0.0f, qn + xn[j] - 2.0f * dot[j]), b + j);
              }
            } else {
              count = K.indices_at_least(dot, nb, loosen(1.0f - thr, 1.0f + std::fabs(thr)), hits.data());
              for (std::size_t h = 0; h < count; ++h) accept(heap, from_dot(dot[hits[h]]), b + hits[h]);
            }
          }
        }
      }
    }
    for (std::size_t qi = q0; qi < q1; ++qi) cand.lists[qi * ranges + r] = std::move(heaps[qi - q0].sorted());
  });

  // Merge ranges, recompute the winners' distances with the direct kernels, and write the rows out.
  parallel::parallel_for(nq, static_cast<int>(std::min<std::size_t>(threads, std::max<std::size_t>(1, nq / 64))),
                         [&](std::size_t qi, std::size_t) {
    TopK heap(k);
    const float* qv = Q + qi * d;
    for (std::size_t r = 0; r < ranges; ++r)
      for (const auto& e : cand.lists[qi * ranges + r]) {
        const float* row = X + static_cast<std::size_t>(e.second) * d;
        heap.push(l2 ? K.l2_sqr(qv, row, d) : from_dot(K.dot(qv, row, d)), e.second);
      }
    auto& best = heap.sorted();
    for (auto& e : best) e.second = slot_ids_[static_cast<std::size_t>(e.second)];
    // Equal distances: order by id, so results do not depend on the storage order.
    std::stable_sort(best.begin(), best.end(), [](const auto& a, const auto& b) {
      return a.first < b.first || (a.first == b.first && a.second < b.second);
    });
    write_row(best, k, out_ids + qi * k, out_dist + qi * k);
  });
}

RangeResult FlatIndex::search_range(const float* q, std::size_t nq, float radius, int num_threads,
                                    const IdSelector* filter) const {
  ANNFORGE_CHECK(!std::isnan(radius), ErrorKind::Value, "radius must not be NaN");
  check_storable(q, nq, "queries");
  std::vector<float> prepared;
  const float* Q = q;
  if (metric_ == Metric::Cosine) {
    prepare_rows(q, nq, prepared);
    Q = prepared.data();
  }
  std::shared_lock<parallel::WriterPreferringMutex> lock(mutex_);
  const auto& K = simd::kernels();
  const std::size_t n = slot_ids_.size(), d = dim_;
  const bool l2 = metric_ == Metric::L2;
  std::size_t threads = parallel::resolve_threads(num_threads);
  if (filter && !filter->thread_safe()) threads = 1;
  std::vector<std::vector<std::pair<float, idx_t>>> hits(nq);
  parallel::parallel_for(nq, static_cast<int>(threads), [&](std::size_t qi, std::size_t) {
    std::vector<float> buf(kScanBlock);
    const float* qv = Q + qi * d;
    auto& out = hits[qi];
    for (std::size_t b = 0; b < n; b += kScanBlock) {
      const std::size_t nb = std::min(kScanBlock, n - b);
      if (l2) {
        K.l2_sqr_rows(qv, vectors_.data() + b * d, nb, d, buf.data());
      } else {
        K.dot_rows(qv, vectors_.data() + b * d, nb, d, buf.data());
        for (std::size_t j = 0; j < nb; ++j) buf[j] = from_dot(buf[j]);
      }
      for (std::size_t j = 0; j < nb; ++j) {
        if (buf[j] < radius) {
          const idx_t id = slot_ids_[b + j];
          if (!filter || filter->contains(id)) out.emplace_back(buf[j], id);
        }
      }
    }
    std::sort(out.begin(), out.end());
  });
  RangeResult res;
  res.lims.resize(nq + 1, 0);
  for (std::size_t i = 0; i < nq; ++i) res.lims[i + 1] = res.lims[i] + hits[i].size();
  res.ids.reserve(res.lims[nq]);
  res.distances.reserve(res.lims[nq]);
  for (const auto& h : hits)
    for (const auto& e : h) {
      res.distances.push_back(e.first);
      res.ids.push_back(e.second);
    }
  return res;
}

// ---------------------------------------------------------------------------------------------------
// Serialization

void FlatIndex::write(io::FileWriter& w) const {
  std::shared_lock<parallel::WriterPreferringMutex> lock(mutex_);
  io::ByteWriter meta;
  write_common(meta);
  meta.put(static_cast<std::uint64_t>(slot_ids_.size()));
  w.add_owned(kTagMeta, meta.take());
  w.add(kTagIds, slot_ids_.data(), slot_ids_.size() * sizeof(idx_t));
  w.add(kTagVectors, vectors_.data(), vectors_.size() * sizeof(float));
  w.add(kTagNorms, sq_norms_.data(), sq_norms_.size() * sizeof(float));
}

std::unique_ptr<FlatIndex> FlatIndex::read(const std::shared_ptr<io::FileReader>& reader) {
  reader->expect_kind(io::Kind::Flat);
  io::ByteReader meta(reader->section(kTagMeta), "FlatIndex metadata");
  auto index = std::make_unique<FlatIndex>(1, Metric::L2);
  index->read_common(meta);
  const auto n = meta.read<std::uint64_t>();
  meta.expect_end();
  const std::size_t d = index->dim_;

  const io::Bytes ids = reader->section(kTagIds), vecs = reader->section(kTagVectors),
                  norms = reader->section(kTagNorms);
  if (n > ids.size / sizeof(idx_t) || ids.size != n * sizeof(idx_t))
    fail(ErrorKind::IO, reader->origin(), ": corrupted FlatIndex: id section does not hold ", n, " ids");
  if (vecs.size / sizeof(float) / d != n || vecs.size != n * d * sizeof(float))
    fail(ErrorKind::IO, reader->origin(), ": corrupted FlatIndex: vector section does not hold ", n, " x ", d,
         " floats");
  if (norms.size != n * sizeof(float))
    fail(ErrorKind::IO, reader->origin(), ": corrupted FlatIndex: norm section does not hold ", n, " floats");

  const auto* id_ptr = reinterpret_cast<const idx_t*>(ids.data);
  const auto* vec_ptr = reinterpret_cast<const float*>(vecs.data);
  const auto* norm_ptr = reinterpret_cast<const float*>(norms.data);
  // Searches trust the stored squared norms: they must be those of the (finite) vectors. The
  // tolerance covers summation order differences between SIMD levels.
  check_loaded_rows(vec_ptr, n, d, reader->origin(), "FlatIndex vectors");
  const auto& K = simd::kernels();
  for (std::size_t i = 0; i < n; ++i) {
    const float expected = K.dot(vec_ptr + i * d, vec_ptr + i * d, d);
    if (!(std::fabs(norm_ptr[i] - expected) <= 1e-2f * expected + 1e-30f))
      fail(ErrorKind::IO, reader->origin(), ": corrupted FlatIndex: stored norm of row ", i,
           " does not match its vector");
  }
  if (reader->mapped()) {  // sections are 64-byte aligned in the file and the mapping is page aligned
    index->vectors_ = AlignedBuffer<float>::view(vec_ptr, n * d, reader->keepalive());
    index->sq_norms_ = AlignedBuffer<float>::view(norm_ptr, n, reader->keepalive());
  } else {
    index->vectors_.append(vec_ptr, n * d);
    index->sq_norms_.append(norm_ptr, n);
  }
  index->slot_ids_.reserve(n);
  index->slot_of_.reserve(n);
  for (std::size_t i = 0; i < n; ++i) {
    idx_t id;
    std::memcpy(&id, id_ptr + i, sizeof id);
    if (!index->id_below_next(id) || index->slot_of_.contains(id))
      fail(ErrorKind::IO, reader->origin(), ": corrupted FlatIndex: invalid or repeated id ", id);
    index->slot_of_.set(id, static_cast<idx_t>(i));
    index->slot_ids_.push_back(id);
  }
  return index;
}

}  // namespace annforge
