#include "annforge/index/ivfpq.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <mutex>

#include "annforge/codec/pq4_fastscan.h"
#include "annforge/index/list_major.h"
#include "annforge/parallel/executor.h"
#include "annforge/simd/kernels.h"
#include "annforge/storage/prefetch.h"
#include "annforge/util/topk.h"

namespace annforge {

namespace {

constexpr std::uint32_t kTagMeta = io::make_tag("META");
constexpr std::uint32_t kTagCentroids = io::make_tag("CENT");
constexpr std::uint32_t kTagCodebooks = io::make_tag("PQCB");
constexpr std::uint32_t kTagRotation = io::make_tag("ROTM");
constexpr std::uint32_t kTagSq8 = io::make_tag("SQ8P");
constexpr std::uint32_t kTagListSizes = io::make_tag("LSIZ");
constexpr std::uint32_t kTagCodes = io::make_tag("CODE");
constexpr std::uint32_t kTagIds = io::make_tag("IDS ");
constexpr std::uint32_t kTagRefine = io::make_tag("REFV");

constexpr int kCoarseIterations = 10;  // as faiss (IndexIVF: cp.niter = 10)
constexpr std::size_t kCoarsePointsPerCentroid = 256;

inline int lowest_bit(std::uint32_t v) {  // v != 0
#if defined(__GNUC__)
  return __builtin_ctz(v);
#else
  int i = 0;
  while (!(v & 1u)) v >>= 1, ++i;
  return i;
#endif
}

inline idx_t pack_location(std::size_t list, std::size_t offset) {
  return static_cast<idx_t>((static_cast<std::uint64_t>(list) << 32) | offset);
}
inline std::size_t location_list(idx_t loc) { return static_cast<std::size_t>(static_cast<std::uint64_t>(loc) >> 32); }
inline std::size_t location_offset(idx_t loc) { return static_cast<std::size_t>(loc & 0xffffffffll); }

}  // namespace

// What one query carries from list to list: its quantized look-up table (4-bit codes), ||q||^2 and
// its candidate heap. The list-major search keeps one per query of a block.
struct IVFPQIndex::QueryState {
  codec::pq4::QuantizedLut qlut;
  float q_sqnorm = 0;  // ||q||^2 (l2 without residuals)
  TopKBuffer heap;  // candidates: many per list, so appended and cut back in batches
};

// Per-worker buffers reused across the queries of one search call.
struct IVFPQIndex::QueryScratch {
  std::vector<float> ip_table;   // m x ksub: <q_j, c_jc>
  std::vector<float> lut;        // m x ksub: distance contribution of each code (8-bit codes: used by the scan)
  std::vector<std::uint16_t> acc, bounds;
  std::vector<std::uint32_t> masks;
  VectorCodec::Query refine_query;         // the query folded for the re-ranking code
  std::vector<QueryState> states;          // one per query of the current block
  codec::pq4::ScanFn scan = nullptr;
  codec::pq4::BelowFn below = nullptr;
  const codec::pq4::LutKernels* lut_kernels = nullptr;
};

IVFPQIndex::IVFPQIndex(std::size_t dim, std::size_t nlist, std::size_t m, std::size_t nbits, Metric metric,
                       RefineKind refine, std::uint64_t seed, bool residual)
    : VectorIndex(dim, metric), nlist_(nlist), m_(m), nbits_(nbits), refine_(refine), seed_(seed),
      residual_(residual), pq_(dim, m, nbits), refine_codec_(refine, dim, metric) {
  ANNFORGE_CHECK(nlist >= 1 && nlist <= (std::size_t(1) << 24), ErrorKind::Value,
                 "nlist must be in [1, 16777216], got ", nlist);
}

bool IVFPQIndex::is_trained() const {
  std::shared_lock<parallel::WriterPreferringMutex> lock(mutex_);
  return trained_;
}

void IVFPQIndex::check_trained() const {
  ANNFORGE_CHECK(trained_, ErrorKind::State, "index is not trained: call train(x) before add or search");
}

std::size_t IVFPQIndex::code_bytes() const noexcept { return (nbits_ * m_ + 7) / 8; }

std::size_t IVFPQIndex::refine_bytes() const noexcept { return refine_codec_.code_bytes(); }

namespace {
// Whether the d x d row-major matrix has orthonormal rows, R R^T = I within 1e-3 per entry (a rotation
// must not change distances). Finite entries are checked first, so no product can overflow.
bool is_orthonormal(const float* r, std::size_t d) {
  for (std::size_t i = 0; i < d * d; ++i)
    if (!std::isfinite(r[i])) return false;
  const auto& K = simd::kernels();  // d^2 / 2 dot products: SIMD keeps a 1024-d check well under a second
  for (std::size_t i = 0; i < d; ++i)
    for (std::size_t j = i; j < d; ++j) {
      const float s = K.dot(r + i * d, r + j * d, d);
      if (!(std::fabs(s - (i == j ? 1.0f : 0.0f)) < 1e-3f)) return false;
    }
  return true;
}
}  // namespace

void IVFPQIndex::set_rotation(const float* rotation) {
  std::unique_lock<parallel::WriterPreferringMutex> lock(mutex_);
  ANNFORGE_CHECK(!trained_, ErrorKind::State, "the rotation must be set before train()");
  const std::size_t d = dim_;
  for (std::size_t i = 0; i < d * d; ++i)
    ANNFORGE_CHECK(std::isfinite(rotation[i]), ErrorKind::Value, "rotation contains NaN or infinity");
  ANNFORGE_CHECK(is_orthonormal(rotation, d), ErrorKind::Value, "rotation must be an orthonormal matrix");
  rotation_.assign(rotation, rotation + d * d);
}

std::vector<float> IVFPQIndex::rotation() const {
  std::shared_lock<parallel::WriterPreferringMutex> lock(mutex_);
  return rotation_;
}

std::vector<float> IVFPQIndex::coarse_centroids() const {
  std::shared_lock<parallel::WriterPreferringMutex> lock(mutex_);
  return centroids_;
}

std::vector<std::size_t> IVFPQIndex::list_sizes() const {
  std::shared_lock<parallel::WriterPreferringMutex> lock(mutex_);
  std::vector<std::size_t> out(lists_.size());
  for (std::size_t l = 0; l < lists_.size(); ++l) out[l] = lists_[l].size();
  return out;
}

void IVFPQIndex::transform(const float* x, std::size_t n, std::vector<float>& out) const {
  prepare_rows(x, n, out);
  if (rotation_.empty()) return;
  const auto& K = simd::kernels();
  std::vector<float> row(dim_);
  for (std::size_t i = 0; i < n; ++i) {
    float* r = out.data() + i * dim_;
    K.dot_rows(r, rotation_.data(), dim_, dim_, row.data());  // (R x)_i = <R_i, x>
    std::copy(row.begin(), row.end(), r);
  }
}

void IVFPQIndex::unrotate(float* row) const {
  if (rotation_.empty()) return;
  std::vector<float> out(dim_, 0.0f);
  for (std::size_t i = 0; i < dim_; ++i)  // x = R^T y
    for (std::size_t j = 0; j < dim_; ++j) out[j] += rotation_[i * dim_ + j] * row[i];
  std::copy(out.begin(), out.end(), row);
}

void IVFPQIndex::derive_tables() {
  coarse_ = cluster::PackedCentroids(centroids_.data(), nlist_, dim_);
  // l2 without residuals: ||code word||^2 goes into every query's look-up table (scan_list), and it
  // depends on the codebooks only.
  code_norms_.clear();
  if (metric_ == Metric::L2 && !residual_) {
    const auto& K = simd::kernels();
    const std::size_t entries = m_ * pq_.ksub(), dsub = pq_.dsub();
    const float* words = pq_.codebooks().data();
    code_norms_.resize(entries);
    for (std::size_t i = 0; i < entries; ++i) code_norms_[i] = K.dot(words + i * dsub, words + i * dsub, dsub);
  }
}

float IVFPQIndex::norm_term(std::size_t list, const std::uint8_t* code) const {
  std::vector<float> r(dim_);
  pq_.decode(code, r.data());
  const auto& K = simd::kernels();
  if (!residual_) return K.dot(r.data(), r.data(), dim_);  // ||r||^2
  return K.dot(r.data(), r.data(), dim_) + 2.0f * K.dot(centroids_.data() + list * dim_, r.data(), dim_);
}

// ---------------------------------------------------------------------------------------------------
// Training

void IVFPQIndex::train(const float* x, std::size_t n, int num_threads, cluster::KMeansAccelerator* accelerator) {
  (void)parallel::resolve_threads(num_threads);
  check_storable(x, n, "training vectors");
  ANNFORGE_CHECK(n >= nlist_, ErrorKind::Value, "training needs at least nlist = ", nlist_, " vectors, got ", n);
  ANNFORGE_CHECK(n >= pq_.ksub(), ErrorKind::Value, "training needs at least 2^nbits = ", pq_.ksub(),
                 " vectors, got ", n);
  std::vector<float> rotation;
  {
    std::shared_lock<parallel::WriterPreferringMutex> lock(mutex_);
    rotation = rotation_;
  }
  // Rows as training sees them: a transformed copy only when there is something to transform (a
  // 100k x 384 copy costs as much as a few k-means iterations in page faults alone).
  std::vector<float> transformed;
  const float* xt = x;
  if (metric_ == Metric::Cosine || !rotation.empty()) {
    transform(x, n, transformed);
    xt = transformed.data();
  }
  const std::size_t d = dim_;

  cluster::KMeansOptions opt;
  opt.niter = kCoarseIterations;
  opt.seed = seed_;
  opt.max_points_per_centroid = kCoarsePointsPerCentroid;
  opt.num_threads = num_threads;
  opt.assign_all = false;
  opt.accelerator = accelerator;
  auto coarse = cluster::kmeans(xt, n, d, nlist_, opt);
  cluster::PackedCentroids packed(coarse.centroids.data(), nlist_, d);

  // PQ codebooks on the residuals of an evenly spaced sample (at most 256 rows per PQ centre).
  const std::size_t ns = std::min(n, pq_.ksub() * 256);
  std::vector<float> residuals(ns * d);
  for (std::size_t i = 0; i < ns; ++i) {
    const std::size_t row = i * n / ns;
    std::copy(xt + row * d, xt + (row + 1) * d, residuals.data() + i * d);
  }
  if (residual_) {
    std::vector<std::int32_t> labels(ns);
    std::vector<float> scores(ns);
    packed.nearest(residuals.data(), ns, d, 1, false, num_threads, labels.data(), scores.data());
    for (std::size_t i = 0; i < ns; ++i) {
      const float* c = coarse.centroids.data() + static_cast<std::size_t>(labels[i]) * d;
      for (std::size_t j = 0; j < d; ++j) residuals[i * d + j] -= c[j];
    }
  }
  codec::ProductQuantizer pq(d, m_, nbits_);
  pq.train(residuals.data(), ns, seed_ + 17, num_threads);

  VectorCodec refine_codec(refine_, d, metric_);
  refine_codec.train(xt, n);  // sq8 ranges; nothing for the other codes

  std::unique_lock<parallel::WriterPreferringMutex> lock(mutex_);
  centroids_ = std::move(coarse.centroids);
  pq_ = std::move(pq);
  refine_codec_ = std::move(refine_codec);
  lists_.assign(nlist_, InvertedList());
  where_.clear();
  trained_ = true;
  derive_tables();
}

// ---------------------------------------------------------------------------------------------------
// Updates

void IVFPQIndex::encode_refine(const float* row, std::uint8_t* out) const { refine_codec_.encode(row, out); }

void IVFPQIndex::decode_refine(const std::uint8_t* stored, float* out) const { refine_codec_.decode(stored, out); }

void IVFPQIndex::append(std::size_t list, idx_t id, const std::uint8_t* code, const float* row) {
  InvertedList& L = lists_[list];
  const std::size_t off = L.size();
  if (nbits_ == 8) {
    L.codes.append(code, m_);
  } else {
    if (off % codec::pq4::kBlock == 0) L.codes.resize(L.codes.size() + codec::pq4::block_bytes(m_));
    std::uint8_t* blocks = L.codes.mutable_data();
    for (std::size_t j = 0; j < m_; ++j) codec::pq4::set_code(blocks, m_, off, j, code[j]);
  }
  L.ids.push_back(id);
  if (norm_terms_stored()) {
    const float term = norm_term(list, code);
    L.norm_terms.push_back(term);
    lower_floor(L, off, term);
  }
  if (refine_ != RefineKind::None) {
    const std::size_t rb = refine_bytes();
    L.refine.resize(L.refine.size() + rb);
    encode_refine(row, L.refine.mutable_data() + off * rb);
  }
  where_.set(id, pack_location(list, off));
}

void IVFPQIndex::lower_floor(InvertedList& L, std::size_t slot, float term) {
  const std::size_t block = slot / codec::pq4::kBlock;
  if (block >= L.block_floor.size()) L.block_floor.resize(block + 1, std::numeric_limits<float>::infinity());
  L.block_floor[block] = std::min(L.block_floor[block], term);
}

void IVFPQIndex::erase_at(std::size_t list, std::size_t off) {
  InvertedList& L = lists_[list];
  const std::size_t last = L.size() - 1, rb = refine_bytes();
  if (off != last) {  // move the last entry into the hole
    const idx_t moved = L.ids[last];
    L.ids.at_mut(off) = moved;
    where_.set(moved, pack_location(list, off));
    if (norm_terms_stored()) {
      L.norm_terms.at_mut(off) = L.norm_terms[last];
      lower_floor(L, off, L.norm_terms[last]);
    }
    if (nbits_ == 8) {
      std::uint8_t* c = L.codes.mutable_data();
      std::memcpy(c + off * m_, c + last * m_, m_);
    } else {
      std::uint8_t* blocks = L.codes.mutable_data();
      for (std::size_t j = 0; j < m_; ++j)
        codec::pq4::set_code(blocks, m_, off, j, codec::pq4::get_code(blocks, m_, last, j));
    }
    if (rb) {
      std::uint8_t* r = L.refine.mutable_data();
      std::memcpy(r + off * rb, r + last * rb, rb);
    }
  }
  L.ids.shrink(last);
  if (norm_terms_stored()) {
    L.norm_terms.shrink(last);
    L.block_floor.resize(codec::pq4::blocks_for(last));  // an emptied block starts afresh
  }
  if (nbits_ == 8) {
    L.codes.shrink(last * m_);
  } else {
    std::uint8_t* blocks = L.codes.mutable_data();
    for (std::size_t j = 0; j < m_; ++j) codec::pq4::set_code(blocks, m_, last, j, 0);  // keep padding zero
    L.codes.shrink(codec::pq4::blocks_for(last) * codec::pq4::block_bytes(m_));
  }
  if (rb) L.refine.shrink(last * rb);
}

void IVFPQIndex::add(const float* x, std::size_t n, const idx_t* ids, int num_threads, idx_t* out_ids) {
  (void)parallel::resolve_threads(num_threads);
  {
    std::shared_lock<parallel::WriterPreferringMutex> lock(mutex_);
    check_trained();
  }
  check_storable(x, n, "vectors");
  if (ids) validate_new_ids(ids, n);
  std::vector<float> rows;
  transform(x, n, rows);
  const std::size_t d = dim_;

  std::unique_lock<parallel::WriterPreferringMutex> lock(mutex_);
  check_trained();  // (train() may not run concurrently with the encoding below)
  std::vector<std::int32_t> lists(n);
  std::vector<float> scores(n);
  coarse_.nearest(rows.data(), n, d, 1, false, num_threads, lists.data(), scores.data());
  std::vector<float> residuals;
  if (residual_) {
    residuals.resize(n * d);
    parallel::parallel_for((n + 255) / 256, num_threads, [&](std::size_t t, std::size_t) {
      for (std::size_t i = t * 256; i < std::min(n, t * 256 + 256); ++i) {
        const float* c = centroids_.data() + static_cast<std::size_t>(lists[i]) * d;
        for (std::size_t j = 0; j < d; ++j) residuals[i * d + j] = rows[i * d + j] - c[j];
      }
    });
  }
  std::vector<std::uint8_t> codes(n * m_);
  pq_.encode(residual_ ? residuals.data() : rows.data(), n, codes.data(), num_threads);

  assign_ids(ids, n, out_ids);
  for (std::size_t i = 0; i < n; ++i) {
    const idx_t loc = where_.erase(out_ids[i]);
    if (loc != IdMap::kMissing) erase_at(location_list(loc), location_offset(loc));  // upsert
    append(static_cast<std::size_t>(lists[i]), out_ids[i], codes.data() + i * m_, rows.data() + i * d);
  }
}

std::size_t IVFPQIndex::remove(const idx_t* ids, std::size_t n) {
  std::unique_lock<parallel::WriterPreferringMutex> lock(mutex_);
  std::size_t removed = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const idx_t loc = where_.erase(ids[i]);
    if (loc == IdMap::kMissing) continue;
    erase_at(location_list(loc), location_offset(loc));
    ++removed;
  }
  return removed;
}

std::size_t IVFPQIndex::size() const {
  std::shared_lock<parallel::WriterPreferringMutex> lock(mutex_);
  return where_.size();
}

bool IVFPQIndex::contains(idx_t id) const {
  std::shared_lock<parallel::WriterPreferringMutex> lock(mutex_);
  return where_.contains(id);
}

std::vector<idx_t> IVFPQIndex::ids() const {
  std::shared_lock<parallel::WriterPreferringMutex> lock(mutex_);
  std::vector<idx_t> out;
  out.reserve(where_.size());
  for (const auto& L : lists_) out.insert(out.end(), L.ids.data(), L.ids.data() + L.size());
  return out;
}

void IVFPQIndex::reconstruct(const idx_t* ids, std::size_t n, float* out) const {
  std::shared_lock<parallel::WriterPreferringMutex> lock(mutex_);
  std::vector<std::uint8_t> code(m_);
  for (std::size_t i = 0; i < n; ++i) {
    const idx_t loc = where_.find(ids[i]);
    ANNFORGE_CHECK(loc != IdMap::kMissing, ErrorKind::Value, "id ", ids[i], " is not in the index");
    const std::size_t l = location_list(loc), off = location_offset(loc);
    const InvertedList& L = lists_[l];
    float* row = out + i * dim_;
    if (refine_ != RefineKind::None) {
      decode_refine(L.refine.data() + off * refine_bytes(), row);
    } else {
      for (std::size_t j = 0; j < m_; ++j)
        code[j] = nbits_ == 8 ? L.codes[off * m_ + j] : codec::pq4::get_code(L.codes.data(), m_, off, j);
      pq_.decode(code.data(), row);
      if (residual_) {
        const float* c = centroids_.data() + l * dim_;
        for (std::size_t j = 0; j < dim_; ++j) row[j] += c[j];
      }
    }
    unrotate(row);
  }
}

std::size_t IVFPQIndex::memory_bytes() const {
  std::shared_lock<parallel::WriterPreferringMutex> lock(mutex_);
  std::size_t bytes =
      where_.memory_bytes() +
      (centroids_.size() + rotation_.size() + pq_.codebooks().size() + code_norms_.size()) * sizeof(float);
  bytes += centroids_.size() * sizeof(float);  // packed copy for the GEMM kernel
  for (const auto& L : lists_)
    bytes += L.codes.heap_bytes() + L.ids.heap_bytes() + L.refine.heap_bytes() + L.norm_terms.heap_bytes();
  return bytes;
}

// ---------------------------------------------------------------------------------------------------
// Search

void IVFPQIndex::probe_lists(const float* q, std::size_t nq, std::size_t nprobe, int num_threads,
                             std::int32_t* lists, float* dist) const {
  // Hook for an HNSW coarse quantizer (nlist >= 16384); flat GEMM scan of the centroids for now.
  // Lists are ranked by l2 for every metric: vectors were assigned to their l2-nearest centroid.
  coarse_.nearest(q, nq, dim_, nprobe, false, num_threads, lists, dist);
}

void IVFPQIndex::scan_list(const float* q, std::size_t list, float coarse_dist, QueryScratch& s, QueryState& st,
                           const IdSelector* filter, const std::uint16_t* summed) const {
  const InvertedList& L = lists_[list];
  const std::size_t n = L.size();
  if (n == 0) return;
  // l2: ||q - c||^2 + norm_term - 2 <q, r>;  ip: 1 - <q, c> - <q, r>.  The table holds the last term.
  // Without residuals c is 0: l2 ||q||^2 + (||r||^2 - 2 <q, r>), ip 1 - <q, r>; ||r||^2 is a sum over
  // sub-spaces, so the table holds all of the bracket and there is no per-vector term to add.
  const bool l2 = norm_terms_stored();  // a per-vector norm term to add
  float base;
  if (residual_)
    base = l2 ? coarse_dist : 1.0f - simd::kernels().dot(q, centroids_.data() + list * dim_, dim_);
  else
    base = metric_ == Metric::L2 ? st.q_sqnorm : 1.0f;
  const float* norm_terms = l2 ? L.norm_terms.data() : nullptr;
  TopKBuffer& heap = st.heap;
  float thr = heap.threshold();
  auto consider = [&](float dist, std::size_t offset) {
    if (filter && !filter->contains(L.ids[offset])) return;
    heap.push(dist, pack_location(list, offset));
    thr = heap.threshold();
  };
  if (nbits_ == 8) {
    const float* lut = s.lut.data();
    const std::uint8_t* codes = L.codes.data();
    const std::size_t m = m_;
    for (std::size_t i = 0; i < n; ++i) {
      const std::uint8_t* c = codes + i * m;
      float d0 = base, d1 = l2 ? norm_terms[i] : 0.0f, d2 = 0, d3 = 0;
      std::size_t j = 0;
      for (; j + 4 <= m; j += 4) {
        d0 += lut[j * 256 + c[j]];
        d1 += lut[(j + 1) * 256 + c[j + 1]];
        d2 += lut[(j + 2) * 256 + c[j + 2]];
        d3 += lut[(j + 3) * 256 + c[j + 3]];
      }
      for (; j < m; ++j) d0 += lut[j * 256 + c[j]];
      const float dist = (d0 + d1) + (d2 + d3);
      if (dist <= thr) consider(dist, i);  // ties too: TopK breaks them by label, so the order lists come in cannot matter
    }
  } else {
    const std::size_t nblocks = codec::pq4::blocks_for(n);
    if (!summed) {
      s.acc.resize(nblocks * codec::pq4::kBlock);
      s.scan(L.codes.data(), nblocks, codec::pq4::padded_m(m_), st.qlut.table.data(), s.acc.data());
    }
    const float offset = base + st.qlut.bias, inv_scale = 1.0f / st.qlut.scale, scale = st.qlut.scale;
    const float* floors = l2 ? L.block_floor.data() : nullptr;
    const std::uint16_t* acc = summed ? summed : s.acc.data();
    // A 16-bit sum can only enter when offset + norm_term + acc / scale < thr, so acc must be below
    // (thr - offset - floor) * scale with `floor` the block's lowest norm term. One kernel call compares
    // every block against its bound (from the threshold when the list starts, with slack for float
    // rounding; a threshold that tightens later only lets more through) and exact float distances are
    // computed only for the few that pass. Same pushes, same order as computing every distance.
    s.masks.resize(nblocks);
    std::uint32_t* masks = s.masks.data();
    if (thr < std::numeric_limits<float>::infinity()) {
      s.bounds.resize(nblocks);
      std::uint16_t* bounds = s.bounds.data();
      const float lim0 = (thr - offset) * scale, rel = (std::fabs(thr) + std::fabs(offset)) * scale * 1e-5f;
      for (std::size_t b = 0; b < nblocks; ++b) {
        const float floor = l2 ? floors[b] : 0.0f;
        const float lim = lim0 - floor * scale + 2.0f + rel + std::fabs(floor) * scale * 1e-5f;
        // acc never reaches 65535 (quantize_lut keeps sums below 65535 - padded_m), so 65535 passes all.
        bounds[b] = lim <= 0.0f ? std::uint16_t(0) : lim >= 65535.0f ? std::uint16_t(65535) : static_cast<std::uint16_t>(lim);
      }
      s.below(acc, nblocks, bounds, masks);
    } else if (!l2 && !filter && n > heap.k()) {
      // No threshold yet (the query's first list). The distance grows with the sum within this list,
      // so only its k smallest sums can enter: a histogram of the sums gives a bound that lets those
      // (and a few more) through, instead of offering all n to the buffer.
      constexpr unsigned kShift = 7;
      std::array<std::uint32_t, (65536 >> kShift)> hist{};
      for (std::size_t i = 0; i < n; ++i) ++hist[acc[i] >> kShift];
      std::size_t bin = 0;
      for (std::size_t seen = 0; bin < hist.size(); ++bin)
        if ((seen += hist[bin]) >= heap.k()) break;
      const std::size_t lim = (bin + 1) << kShift;
      s.bounds.assign(nblocks, lim >= 65535 ? std::uint16_t(65535) : static_cast<std::uint16_t>(lim));
      s.below(acc, nblocks, s.bounds.data(), masks);
    } else {
      for (std::size_t b = 0; b < nblocks; ++b) masks[b] = ~std::uint32_t(0);  // heap not full yet
    }
    if (n % codec::pq4::kBlock) masks[nblocks - 1] &= (std::uint32_t(1) << (n % codec::pq4::kBlock)) - 1;  // padding
    for (std::size_t b = 0; b < nblocks; ++b) {
      std::uint32_t pass = masks[b];
      const std::size_t base_i = b * codec::pq4::kBlock;
      while (pass) {
        const std::size_t i = base_i + static_cast<std::size_t>(lowest_bit(pass));
        pass &= pass - 1;
        const float dist = l2 ? (offset + norm_terms[i]) + static_cast<float>(acc[i]) * inv_scale
                              : offset + static_cast<float>(acc[i]) * inv_scale;
        if (dist <= thr) consider(dist, i);  // ties too: TopK breaks them by label, so the order lists come in cannot matter
      }
    }
    if (!(heap.threshold() < std::numeric_limits<float>::infinity())) heap.tighten();  // a threshold for the next list
  }
}

std::size_t IVFPQIndex::refine_chunk() const noexcept {
  return std::min(dim_, (dim_ / 4 + 15) / 16 * 16);  // about a quarter of a row, whole cache lines
}

void IVFPQIndex::search(const float* q, std::size_t nq, std::size_t k, SearchOptions& opt, idx_t* out_ids,
                        float* out_dist) const {
  check_k(k);
  const auto nprobe_knob = opt.knobs.take_int("nprobe", static_cast<long long>(std::min<std::size_t>(nlist_, 16)), 1);
  const auto refine_factor = opt.knobs.take_int("refine_factor", 4, 1);
  opt.knobs.reject_unknown("IVFPQIndex", "nprobe, refine_factor");
  check_storable(q, nq, "queries");
  std::size_t threads = parallel::resolve_threads(opt.num_threads);
  {
    std::shared_lock<parallel::WriterPreferringMutex> lock(mutex_);
    check_trained();
  }
  std::vector<float> Q;
  transform(q, nq, Q);
  std::shared_lock<parallel::WriterPreferringMutex> lock(mutex_);
  check_trained();
  if (nq == 0) return;
  const std::size_t nprobe = std::min<std::size_t>(nlist_, static_cast<std::size_t>(nprobe_knob));
  const bool rerank = refine_ != RefineKind::None;
  const std::size_t candidates =
      rerank ? std::min<std::size_t>(k * static_cast<std::size_t>(refine_factor), std::size_t(1) << 24) : k;
  const IdSelector* filter = opt.filter;
  if (filter && !filter->thread_safe()) threads = 1;

  std::vector<std::int32_t> probe(nq * nprobe);
  std::vector<float> probe_dist(nq * nprobe);
  probe_lists(Q.data(), nq, nprobe, static_cast<int>(threads), probe.data(), probe_dist.data());

  std::vector<QueryScratch> scratch(threads);
  const auto scan = nbits_ == 4 ? codec::pq4::scan_kernel() : nullptr;
  const auto below = nbits_ == 4 ? codec::pq4::below_kernel() : nullptr;
  const auto* lut_kernels = nbits_ == 4 ? codec::pq4::lut_kernels() : nullptr;
  const auto scan_multi = nbits_ == 4 ? codec::pq4::scan_multi_kernel() : nullptr;
  for (auto& s : scratch) {
    s.scan = scan;
    s.below = below;
    s.lut_kernels = lut_kernels;
  }
  const std::size_t d = dim_, pm = codec::pq4::padded_m(m_);
  // 4-bit codes: list-major within blocks of queries (index/list_major.h). 8-bit codes keep a 1 KiB
  // float table per sub-quantizer and query: one query at a time.
  const std::size_t block = nbits_ == 4 ? list_major_block(nq, threads, pm * 16, candidates) : 1;
  auto state = [&](std::size_t w, std::size_t slot) -> QueryState& {
    auto& states = scratch[w].states;
    if (states.size() <= slot) states.resize(slot + 1);
    return states[slot];
  };
  scan_probed_lists(
      nq, nprobe, threads, block, probe.data(), nlist_, scan_multi, pm,
      [&](std::size_t l) { return std::make_pair(lists_[l].codes.data(), lists_[l].size()); },
      [&](std::size_t w, std::size_t slot, std::size_t qi) {
        prepare_query(Q.data() + qi * d, candidates, scratch[w], state(w, slot));
      },
      [&](std::size_t w, std::size_t slot) { return state(w, slot).qlut.table.data(); },
      [&](std::size_t w, std::size_t slot, std::size_t qi, std::size_t p, const std::uint16_t* sums) {
        scan_list(Q.data() + qi * d, static_cast<std::size_t>(probe[qi * nprobe + p]), probe_dist[qi * nprobe + p],
                  scratch[w], state(w, slot), filter, sums);
      },
      [&](std::size_t w, std::size_t slot, std::size_t qi) {
        finish_query(Q.data() + qi * d, k, scratch[w], state(w, slot), out_ids + qi * k, out_dist + qi * k);
      });
}

void IVFPQIndex::prepare_query(const float* qv, std::size_t candidates, QueryScratch& s, QueryState& st) const {
  const std::size_t entries = m_ * pq_.ksub(), d = dim_;
  if (s.lut.size() != entries) {
    s.ip_table.resize(entries);
    s.lut.resize(entries);
  }
  if (!residual_ && metric_ == Metric::L2) st.q_sqnorm = simd::kernels().dot(qv, qv, d);
  pq_.inner_product_table(qv, s.ip_table.data());
  const float factor = metric_ == Metric::L2 ? -2.0f : -1.0f;
  if (code_norms_.empty()) {
    for (std::size_t i = 0; i < entries; ++i) s.lut[i] = factor * s.ip_table[i];
  } else {
    for (std::size_t i = 0; i < entries; ++i) s.lut[i] = factor * s.ip_table[i] + code_norms_[i];
  }
  if (nbits_ == 4) codec::pq4::quantize_lut(s.lut.data(), m_, st.qlut, s.lut_kernels);
  st.heap.reset(candidates);
}

void IVFPQIndex::finish_query(const float* qv, std::size_t k, QueryScratch& s, QueryState& st, idx_t* ids,
                              float* dist) const {
  auto& found = st.heap.sorted();
  if (refine_ == RefineKind::None) {
    write_row_by_id(
        found, [&](idx_t loc) { return lists_[location_list(loc)].ids[location_offset(loc)]; }, k, ids, dist);
    return;
  }
  refine_codec_.prepare(qv, s.refine_query);
  const std::size_t rb = refine_bytes(), chunk = refine_chunk();
  TopK best(k);
  // The stored vectors are scattered: fetch a few candidates ahead. f32 l2 rows are read a chunk at
  // a time and most candidates stop after the first one (see distance_within): fetch that much.
  constexpr std::size_t kAhead = 2;
  const bool chunked = refine_ == RefineKind::F32 && metric_ == Metric::L2;
  const std::size_t ahead_bytes = chunked ? chunk * sizeof(float) : rb;
  auto stored = [&](const std::pair<float, idx_t>& e) {
    return lists_[location_list(e.second)].refine.data() + location_offset(e.second) * rb;
  };
  for (std::size_t i = 0; i < std::min(kAhead, found.size()); ++i) prefetch_range(stored(found[i]), ahead_bytes);
  for (std::size_t i = 0; i < found.size(); ++i) {
    if (i + kAhead < found.size()) prefetch_range(stored(found[i + kAhead]), ahead_bytes);
    const auto& e = found[i];
    const InvertedList& L = lists_[location_list(e.second)];
    const std::size_t off = location_offset(e.second);
    // A candidate whose distance exceeds the k-th best cannot enter `best` (ties may: strict bound).
    const float dv = refine_codec_.distance_within(s.refine_query, L.refine.data() + off * rb, best.threshold(), chunk);
    best.push(dv, L.ids[off]);
  }
  write_row(best.sorted(), k, ids, dist);
}

IVFPQIndex::Layout IVFPQIndex::layout() const {
  std::shared_lock<parallel::WriterPreferringMutex> lock(mutex_);
  check_trained();
  Layout out;
  out.rotation = rotation_;
  out.centroids = centroids_;
  out.codebooks = pq_.codebooks();
  out.code_norms = code_norms_;
  out.sq8_offset = refine_codec_.sq8_offset();
  out.sq8_scale = refine_codec_.sq8_scale();
  out.list_offsets.resize(nlist_ + 1, 0);
  for (std::size_t l = 0; l < nlist_; ++l) out.list_offsets[l + 1] = out.list_offsets[l] + lists_[l].size();
  const std::size_t total = out.list_offsets[nlist_], rb = refine_bytes();
  out.codes.resize(total * m_);
  out.ids.resize(total);
  if (norm_terms_stored()) out.norm_terms.resize(total);
  out.refine.resize(total * rb);
  for (std::size_t l = 0; l < nlist_; ++l) {
    const InvertedList& L = lists_[l];
    const std::size_t base = out.list_offsets[l];
    for (std::size_t i = 0; i < L.size(); ++i) {
      for (std::size_t j = 0; j < m_; ++j)
        out.codes[(base + i) * m_ + j] = nbits_ == 8 ? L.codes[i * m_ + j] : codec::pq4::get_code(L.codes.data(), m_, i, j);
      out.ids[base + i] = L.ids[i];
      if (norm_terms_stored()) out.norm_terms[base + i] = L.norm_terms[i];
    }
    if (rb) std::memcpy(out.refine.data() + base * rb, L.refine.data(), L.size() * rb);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------
// Serialization

void IVFPQIndex::hold_unchanged(const std::function<void()>& fn) const {
  std::shared_lock<parallel::WriterPreferringMutex> lock(mutex_);
  fn();
}

void IVFPQIndex::write(io::FileWriter& w) const {
  // A file is an index ready to search: loading refuses untrained ones, so none is written.
  ANNFORGE_CHECK(trained_, ErrorKind::State, "index is not trained: call train(x) before saving it");
  io::ByteWriter meta;
  write_common(meta);
  meta.put(static_cast<std::uint64_t>(nlist_))
      .put(static_cast<std::uint64_t>(m_))
      .put(static_cast<std::uint64_t>(nbits_))
      .put(static_cast<std::uint8_t>(refine_))
      .put(seed_)
      .put(static_cast<std::uint8_t>(trained_ ? 1 : 0))
      .put(static_cast<std::uint8_t>(rotation_.empty() ? 0 : 1))
      .put(static_cast<std::uint8_t>(residual_ ? 1 : 0));
  w.add_owned(kTagMeta, meta.take());
  if (!rotation_.empty()) w.add(kTagRotation, rotation_.data(), rotation_.size() * sizeof(float));
  if (!trained_) return;
  w.add(kTagCentroids, centroids_.data(), centroids_.size() * sizeof(float));
  w.add(kTagCodebooks, pq_.codebooks().data(), pq_.codebooks().size() * sizeof(float));
  if (refine_ == RefineKind::SQ8) {
    io::ByteWriter sq;
    for (float v : refine_codec_.sq8_offset()) sq.put(v);
    for (float v : refine_codec_.sq8_scale()) sq.put(v);
    w.add_owned(kTagSq8, sq.take());
  }
  io::ByteWriter sizes;
  for (const auto& L : lists_) sizes.put(static_cast<std::uint64_t>(L.size()));
  w.add_owned(kTagListSizes, sizes.take());
  w.add(kTagCodes, nullptr, 0);
  for (const auto& L : lists_) w.add_chunk(L.codes.data(), L.codes.size());
  w.add(kTagIds, nullptr, 0);
  for (const auto& L : lists_) w.add_chunk(L.ids.data(), L.ids.size() * sizeof(idx_t));
  w.add(kTagRefine, nullptr, 0);
  for (const auto& L : lists_) w.add_chunk(L.refine.data(), L.refine.size());
}

std::unique_ptr<IVFPQIndex> IVFPQIndex::read(const std::shared_ptr<io::FileReader>& reader) {
  reader->expect_kind(io::Kind::IVFPQ);
  const std::string& origin = reader->origin();
  auto corrupt = [&](const char* why) { fail(ErrorKind::IO, origin, ": corrupted IVFPQIndex: ", why); };
  const io::Bytes meta_bytes = reader->section(kTagMeta);
  io::ByteReader meta(meta_bytes, "IVFPQIndex metadata");
  const auto dim = meta.read<std::uint64_t>();
  const auto metric = meta.read<std::uint8_t>();
  (void)meta.read<idx_t>();
  const auto nlist = meta.read<std::uint64_t>(), m = meta.read<std::uint64_t>(), nbits = meta.read<std::uint64_t>();
  const auto refine = meta.read<std::uint8_t>();
  const auto seed = meta.read<std::uint64_t>();
  const auto trained = meta.read<std::uint8_t>(), has_rotation = meta.read<std::uint8_t>();
  // Files written before the flag existed encode residuals.
  const std::uint8_t residual = meta.remaining() > 0 ? meta.read<std::uint8_t>() : std::uint8_t(1);
  meta.expect_end();
  if (dim < 1 || dim > (1u << 20) || metric > 2) corrupt("dimension or metric out of range");
  if (nlist < 1 || nlist > (std::uint64_t(1) << 24)) corrupt("nlist out of range");
  if (m < 1 || m > dim || dim % m != 0 || (nbits != 4 && nbits != 8)) corrupt("invalid product quantizer shape");
  if (refine > 3 || trained > 1 || has_rotation > 1 || residual > 1) corrupt("invalid flags");
  if (!trained) corrupt("the index is not trained (only trained indexes are saved)");

  auto index = std::make_unique<IVFPQIndex>(dim, nlist, m, nbits, static_cast<Metric>(metric),
                                            static_cast<RefineKind>(refine), seed, residual == 1);
  io::ByteReader common(meta_bytes, "IVFPQIndex metadata");
  index->read_common(common);
  const std::size_t d = dim;
  auto floats = [&](std::uint32_t tag, std::size_t count, std::vector<float>& out) {
    const io::Bytes b = reader->section(tag);
    if (b.size != count * sizeof(float)) fail(ErrorKind::IO, origin, ": corrupted IVFPQIndex: section ",
                                              io::tag_name(tag), " does not hold ", count, " floats");
    out.resize(count);
    std::memcpy(out.data(), b.data, b.size);
    for (float v : out)
      if (!std::isfinite(v)) corrupt("non-finite parameter");
  };
  if (has_rotation) {
    floats(kTagRotation, d * d, index->rotation_);
    if (!is_orthonormal(index->rotation_.data(), d)) corrupt("the OPQ rotation is not orthonormal");
  }

  floats(kTagCentroids, nlist * d, index->centroids_);
  check_loaded_rows(index->centroids_.data(), nlist, d, origin, "IVFPQIndex coarse centroids");
  std::vector<float> codebooks;
  const std::size_t dsub = d / m;
  floats(kTagCodebooks, m * index->pq_.ksub() * dsub, codebooks);
  check_loaded_rows(codebooks.data(), m * index->pq_.ksub(), dsub, origin, "IVFPQIndex codebooks");
  index->pq_.set_codebooks(codebooks.data());
  if (refine == static_cast<std::uint8_t>(RefineKind::SQ8)) {
    std::vector<float> both;
    floats(kTagSq8, 2 * d, both);
    if (!index->refine_codec_.load_sq8(both.data(), both.data() + d)) corrupt(VectorCodec::kBadSq8);
  }

  io::ByteReader sizes(reader->section(kTagListSizes), "IVFPQIndex list sizes");
  std::vector<std::size_t> list_size(nlist);
  std::size_t total = 0, code_total = 0;
  for (std::size_t l = 0; l < nlist; ++l) {
    const auto sz = sizes.read<std::uint64_t>();
    if (sz >= (std::uint64_t(1) << 32)) corrupt("list size out of range");
    list_size[l] = sz;
    total += sz;
    code_total += nbits == 8 ? sz * m : codec::pq4::blocks_for(sz) * codec::pq4::block_bytes(m);
  }
  sizes.expect_end();
  const std::size_t rb = index->refine_bytes();
  const io::Bytes codes = reader->section(kTagCodes), ids = reader->section(kTagIds),
                  refv = reader->section(kTagRefine);
  if (total > ids.size / sizeof(idx_t) || ids.size != total * sizeof(idx_t)) corrupt("id section size mismatch");
  if (codes.size != code_total) corrupt("code section size mismatch");
  if (refv.size != total * rb) corrupt("re-ranking section size mismatch");
  if (refine == static_cast<std::uint8_t>(RefineKind::F32))
    check_loaded_finite(reinterpret_cast<const float*>(refv.data), total * d, origin, "IVFPQIndex re-ranking vectors");
  if (refine == static_cast<std::uint8_t>(RefineKind::F16))
    check_loaded_finite_f16(reinterpret_cast<const std::uint16_t*>(refv.data), total * d, origin,
                            "IVFPQIndex re-ranking vectors");

  index->lists_.assign(nlist, InvertedList());
  index->where_.reserve(total);
  const bool mapped = reader->mapped();
  std::size_t entry = 0, code_off = 0;
  for (std::size_t l = 0; l < nlist; ++l) {
    InvertedList& L = index->lists_[l];
    const std::size_t sz = list_size[l];
    const std::size_t cb = nbits == 8 ? sz * m : codec::pq4::blocks_for(sz) * codec::pq4::block_bytes(m);
    const auto* id_ptr = reinterpret_cast<const idx_t*>(ids.data) + entry;
    for (std::size_t i = 0; i < sz; ++i) {
      idx_t id;
      std::memcpy(&id, id_ptr + i, sizeof id);
      if (!index->id_below_next(id) || index->where_.contains(id)) corrupt("invalid or repeated id");
      index->where_.set(id, pack_location(l, i));
    }
    if (mapped) {
      L.codes = AlignedBuffer<std::uint8_t>::view(codes.data + code_off, cb, reader->keepalive());
      L.ids = AlignedBuffer<idx_t>::view(id_ptr, sz, reader->keepalive());
      if (rb) L.refine = AlignedBuffer<std::uint8_t>::view(refv.data + entry * rb, sz * rb, reader->keepalive());
    } else {
      L.codes.append(codes.data + code_off, cb);
      L.ids.reserve(sz);
      for (std::size_t i = 0; i < sz; ++i) {
        idx_t id;
        std::memcpy(&id, id_ptr + i, sizeof id);
        L.ids.push_back(id);
      }
      if (rb) L.refine.append(refv.data + entry * rb, sz * rb);
    }
    entry += sz;
    code_off += cb;
  }
  index->trained_ = true;
  index->derive_tables();
  if (index->norm_terms_stored()) {  // recomputed from the codes rather than stored
    std::vector<std::uint8_t> code(m);
    for (std::size_t l = 0; l < nlist; ++l) {
      InvertedList& L = index->lists_[l];
      L.norm_terms.reserve(L.size());
      for (std::size_t i = 0; i < L.size(); ++i) {
        for (std::size_t j = 0; j < m; ++j)
          code[j] = nbits == 8 ? L.codes[i * m + j] : codec::pq4::get_code(L.codes.data(), m, i, j);
        const float term = index->norm_term(l, code.data());
        if (!std::isfinite(term)) corrupt("a vector's norm term is not finite");
        L.norm_terms.push_back(term);
        lower_floor(L, i, term);
      }
    }
  }
  return index;
}

}  // namespace annforge
