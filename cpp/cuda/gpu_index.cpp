#include "gpu_index.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace annforge::gpu {

namespace {

constexpr std::size_t kQueryTile = 4096;             // queries per upload / probe step
constexpr std::size_t kCandidateBudget = 32u << 20;  // (distance, label) pairs alive at once in the IVF scan

void check_k(std::size_t k, const char* what) {
  ANNFORGE_CHECK(k >= 1 && k <= kMaxK, ErrorKind::Value, what, " must be in [1, ", kMaxK, "] on the GPU, got ", k);
}

// Device row numbers -> int64 labels on the host.
void widen(const std::vector<std::int32_t>& in, std::int64_t* out) {
  for (std::size_t i = 0; i < in.size(); ++i) out[i] = in[i];
}

}  // namespace

// ---------------------------------------------------------------------------------------------------
// GpuFlat

GpuFlat::GpuFlat(int device, const float* x, std::size_t n, std::size_t d, Metric metric, bool f16)
    : device_((check_device(device), device)), n_(n), d_(d), metric_(metric), f16_(f16),
      stream_(device), ws_(new_knn_workspace()) {
  ANNFORGE_CHECK(d >= 1, ErrorKind::Value, "dim must be >= 1");
  ANNFORGE_CHECK(n < 0x7fffffffu, ErrorKind::Value, "a GPU index holds fewer than 2^31 vectors, got ", n);
  DeviceGuard guard(device_);
  cudaStream_t s = stream_.get();
  base_f32_.upload(x, n * d, s);
  if (f16) {
    base_f16_.resize(n * d);
    to_half(base_f32_.data(), n * d, base_f16_.data(), s);
  }
  norms_.resize(n);
  row_norms(f16 ? static_cast<const void*>(base_f16_.data()) : base_f32_.data(), f16, n, d, norms_.data(), s);
  stream_.sync();
  if (f16) base_f32_ = DeviceBuffer<float>();  // keep only the half copy
}

std::size_t GpuFlat::memory_bytes() const noexcept {
  return base_f32_.bytes() + base_f16_.bytes() + norms_.bytes();
}

void GpuFlat::search(const float* q, std::size_t nq, std::size_t k, const std::uint8_t* mask, std::int64_t* labels,
                     float* dist) {
  check_k(k, "k");
  if (nq == 0) return;
  DeviceGuard guard(device_);
  cudaStream_t s = stream_.get();
  if (mask) mask_.upload(mask, n_, s);
  std::vector<std::int32_t> host_l;
  for (std::size_t q0 = 0; q0 < nq; q0 += kQueryTile) {
    const std::size_t tq = std::min(kQueryTile, nq - q0);
    queries_.upload(q + q0 * d_, tq * d_, s);
    if (metric_ == Metric::Cosine) normalize_rows(queries_.data(), tq, d_, s);
    query_norms_.resize(tq);
    row_norms(queries_.data(), false, tq, d_, query_norms_.data(), s);
    out_d_.resize(tq * k);
    out_l_.resize(tq * k);
    KnnProblem p;
    p.d_queries = queries_.data();
    p.d_query_norms = query_norms_.data();
    p.nq = tq;
    p.d_base = f16_ ? static_cast<const void*>(base_f16_.data()) : base_f32_.data();
    p.base_f16 = f16_;
    p.d_base_norms = norms_.data();
    p.n = n_;
    p.d = d_;
    p.d_mask = mask ? mask_.data() : nullptr;
    p.metric = metric_ == Metric::L2 ? Epilogue::L2 : Epilogue::OneMinusDot;
    p.k = k;
    knn(p, *ws_, out_l_.data(), out_d_.data(), s);
    host_l.resize(tq * k);
    out_l_.download(host_l.data(), tq * k, s);
    out_d_.download(dist + q0 * k, tq * k, s);
    stream_.sync();
    widen(host_l, labels + q0 * k);
  }
}

// ---------------------------------------------------------------------------------------------------
// GpuIVFPQ

GpuIVFPQ::GpuIVFPQ(int device, const IvfpqHostLayout& L)
    : device_((check_device(device), device)), metric_(L.metric), has_rotation_(!L.rotation.empty()),
      list_offsets_(L.list_offsets), stream_(device), ws_(new_knn_workspace()) {
  const std::size_t d = L.d, m = L.m, ksub = std::size_t(1) << L.nbits;
  ANNFORGE_CHECK(d >= 1 && m >= 1 && d % m == 0 && (L.nbits == 4 || L.nbits == 8), ErrorKind::Value,
                 "invalid IVF-PQ shape");
  ANNFORGE_CHECK(L.list_offsets.size() == L.nlist + 1 && L.list_offsets.front() == 0, ErrorKind::Value,
                 "list offsets must have nlist + 1 entries starting at 0");
  const std::size_t total = static_cast<std::size_t>(L.list_offsets.back());
  ANNFORGE_CHECK(total < 0x7fffffffu, ErrorKind::Value, "a GPU index holds fewer than 2^31 vectors, got ", total);
  for (std::size_t l = 0; l < L.nlist; ++l)
    ANNFORGE_CHECK(L.list_offsets[l] <= L.list_offsets[l + 1], ErrorKind::Value, "list offsets must not decrease");
  ANNFORGE_CHECK(L.centroids.size() == L.nlist * d && L.codebooks.size() == m * ksub * (d / m) &&
                     L.codes.size() == total * m && (L.rotation.empty() || L.rotation.size() == d * d),
                 ErrorKind::Value, "IVF-PQ arrays do not match the shape");
  const std::size_t refine_bytes = L.refine == 1 ? 4 * d : L.refine == 2 ? 2 * d : L.refine == 3 ? d : 0;
  ANNFORGE_CHECK(L.refine_rows.size() == total * refine_bytes, ErrorKind::Value, "re-ranking rows do not match");

  DeviceGuard guard(device_);
  cudaStream_t s = stream_.get();
  centroids_.upload(L.centroids.data(), L.centroids.size(), s);
  centroid_norms_.resize(L.nlist);
  row_norms(centroids_.data(), false, L.nlist, d, centroid_norms_.data(), s);
  codebooks_.upload(L.codebooks.data(), L.codebooks.size(), s);
  if (!L.code_norms.empty()) code_norms_.upload(L.code_norms.data(), L.code_norms.size(), s);
  if (!L.norm_terms.empty()) norm_terms_.upload(L.norm_terms.data(), L.norm_terms.size(), s);
  if (!L.sq8_offset.empty()) {
    sq8_offset_.upload(L.sq8_offset.data(), d, s);
    sq8_scale_.upload(L.sq8_scale.data(), d, s);
  }
  if (has_rotation_) rotation_.upload(L.rotation.data(), d * d, s);
  list_offsets_dev_.upload(L.list_offsets.data(), L.list_offsets.size(), s);
  // 4-bit codes: two per byte (the low nibble is the even sub-quantizer).
  std::size_t stride = m;
  if (L.nbits == 4) {
    stride = (m + 1) / 2;
    std::vector<std::uint8_t> packed(total * stride, 0);
    for (std::size_t i = 0; i < total; ++i)
      for (std::size_t j = 0; j < m; ++j)
        packed[i * stride + j / 2] |= static_cast<std::uint8_t>((L.codes[i * m + j] & 15) << ((j & 1) * 4));
    codes_.upload(packed.data(), packed.size(), s);
    stream_.sync();  // `packed` is pageable host memory going out of scope
  } else {
    codes_.upload(L.codes.data(), L.codes.size(), s);
  }
  if (refine_bytes) refine_.upload(L.refine_rows.data(), L.refine_rows.size(), s);
  stream_.sync();

  dev_.d = d;
  dev_.m = m;
  dev_.ksub = ksub;
  dev_.nbits = L.nbits;
  dev_.nlist = L.nlist;
  dev_.total = total;
  dev_.residual = L.residual;
  dev_.l2 = L.metric == Metric::L2;
  dev_.d_centroids = centroids_.data();
  dev_.d_codebooks = codebooks_.data();
  dev_.d_code_norms = L.code_norms.empty() ? nullptr : code_norms_.data();
  dev_.d_list_offsets = list_offsets_dev_.data();
  dev_.d_codes = codes_.data();
  dev_.code_stride = stride;
  dev_.d_norm_terms = L.norm_terms.empty() ? nullptr : norm_terms_.data();
  dev_.refine = L.refine;
  dev_.d_refine = refine_bytes ? static_cast<const void*>(refine_.data()) : nullptr;
  dev_.d_sq8_offset = L.sq8_offset.empty() ? nullptr : sq8_offset_.data();
  dev_.d_sq8_scale = L.sq8_scale.empty() ? nullptr : sq8_scale_.data();
}

std::size_t GpuIVFPQ::memory_bytes() const noexcept {
  return centroids_.bytes() + codebooks_.bytes() + code_norms_.bytes() + norm_terms_.bytes() + codes_.bytes() +
         refine_.bytes() + list_offsets_dev_.bytes();
}

void GpuIVFPQ::search(const float* q, std::size_t nq, std::size_t k, std::size_t nprobe, std::size_t refine_factor,
                      const std::uint8_t* mask, std::int64_t* labels, float* dist) {
  check_k(k, "k");
  ANNFORGE_CHECK(refine_factor >= 1, ErrorKind::Value, "refine_factor must be >= 1");
  const bool rerank = dev_.refine != 0;
  const std::size_t cand = rerank ? k * refine_factor : k;
  ANNFORGE_CHECK(cand <= kMaxK, ErrorKind::Value, "k * refine_factor must be <= ", kMaxK, " on the GPU, got ", cand);
  nprobe = std::min(nprobe, dev_.nlist);
  ANNFORGE_CHECK(nprobe >= 1, ErrorKind::Value, "nprobe must be >= 1");
  if (nq == 0) return;
  const std::size_t d = dev_.d, entries = dev_.m * dev_.ksub;
  DeviceGuard guard(device_);
  cudaStream_t s = stream_.get();
  if (mask) mask_.upload(mask, dev_.total, s);
  std::vector<std::int32_t> probes, offsets, widths, host_l;

  for (std::size_t q0 = 0; q0 < nq; q0 += kQueryTile) {
    const std::size_t tq = std::min(kQueryTile, nq - q0);
    // Queries as the index sees them: normalised (cosine), then rotated (OPQ).
    queries_.upload(q + q0 * d, tq * d, s);
    if (metric_ == Metric::Cosine) normalize_rows(queries_.data(), tq, d, s);
    float* Q = queries_.data();
    if (has_rotation_) {
      rotated_.resize(tq * d);
      matmul_nt(queries_.data(), nullptr, tq, rotation_.data(), nullptr, d, d, Epilogue::Raw, rotated_.data(), s);
      Q = rotated_.data();
    }
    query_norms_.resize(tq);
    row_norms(Q, false, tq, d, query_norms_.data(), s);
    // Coarse probing: the nprobe l2-nearest centroids (as on the CPU, for every metric).
    probes_.resize(tq * nprobe);
    coarse_d_.resize(tq * nprobe);
    KnnProblem p;
    p.d_queries = Q;
    p.d_query_norms = query_norms_.data();
    p.nq = tq;
    p.d_base = centroids_.data();
    p.d_base_norms = centroid_norms_.data();
    p.n = dev_.nlist;
    p.d = d;
    p.metric = Epilogue::L2;
    p.k = nprobe;
    check_k(nprobe, "nprobe");
    knn(p, *ws_, probes_.data(), coarse_d_.data(), s);
    probes.resize(tq * nprobe);
    probes_.download(probes.data(), tq * nprobe, s);
    stream_.sync();

    // Where each probed list's candidates go in its query's row.
    offsets.resize(tq * nprobe);
    widths.resize(tq);
    std::size_t ld = 1;
    for (std::size_t i = 0; i < tq; ++i) {
      std::size_t w = 0;
      for (std::size_t j = 0; j < nprobe; ++j) {
        const std::int32_t l = probes[i * nprobe + j];
        offsets[i * nprobe + j] = static_cast<std::int32_t>(w);
        if (l >= 0) w += static_cast<std::size_t>(list_offsets_[l + 1] - list_offsets_[l]);
      }
      ANNFORGE_CHECK(w < 0x7fffffffu, ErrorKind::Value, "too many candidates for one query");
      widths[i] = static_cast<std::int32_t>(w);
      ld = std::max(ld, w);
    }
    cand_offsets_.upload(offsets.data(), offsets.size(), s);
    widths_.upload(widths.data(), widths.size(), s);

    // Scan and select in sub-tiles whose candidate rows fit the budget.
    const std::size_t sub = std::max<std::size_t>(1, std::min<std::size_t>(tq, kCandidateBudget / ld));
    best_d_.resize(tq * cand);
    best_l_.resize(tq * cand);
    for (std::size_t s0 = 0; s0 < tq; s0 += sub) {
      const std::size_t ns = std::min(sub, tq - s0);
      const float* Qs = Q + s0 * d;
      luts_.resize(ns * entries);
      ivfpq_luts(dev_, Qs, ns, luts_.data(), s);
      cand_d_.resize(ns * ld);
      cand_l_.resize(ns * ld);
      ivfpq_scan(dev_, Qs, luts_.data(), ns, probes_.data() + s0 * nprobe, coarse_d_.data() + s0 * nprobe, nprobe,
                 cand_offsets_.data() + s0 * nprobe, mask ? mask_.data() : nullptr, ld, cand_d_.data(),
                 cand_l_.data(), s);
      fill_empty(best_d_.data() + s0 * cand, best_l_.data() + s0 * cand, ns * cand, s);
      select_rows(cand_d_.data(), cand_l_.data(), widths_.data() + s0, ld, ns, cand, best_d_.data() + s0 * cand,
                  best_l_.data() + s0 * cand, s);
    }
    out_d_.resize(tq * k);
    out_l_.resize(tq * k);
    if (rerank) {
      ivfpq_rerank(dev_, Q, tq, best_l_.data(), cand, best_d_.data(), s);
      std::vector<std::int32_t> cand_widths(tq, static_cast<std::int32_t>(cand));
      widths_.upload(cand_widths.data(), tq, s);
      fill_empty(out_d_.data(), out_l_.data(), tq * k, s);
      select_rows(best_d_.data(), best_l_.data(), widths_.data(), cand, tq, k, out_d_.data(), out_l_.data(), s);
    } else {
      ANNFORGE_CUDA_CHECK(cudaMemcpyAsync(out_d_.data(), best_d_.data(), tq * k * sizeof(float),
                                          cudaMemcpyDeviceToDevice, s));
      ANNFORGE_CUDA_CHECK(cudaMemcpyAsync(out_l_.data(), best_l_.data(), tq * k * sizeof(std::int32_t),
                                          cudaMemcpyDeviceToDevice, s));
    }
    host_l.resize(tq * k);
    out_l_.download(host_l.data(), tq * k, s);
    out_d_.download(dist + q0 * k, tq * k, s);
    stream_.sync();
    widen(host_l, labels + q0 * k);
  }
}

// ---------------------------------------------------------------------------------------------------
// GpuKMeansAccelerator

GpuKMeansAccelerator::GpuKMeansAccelerator(int device)
    : device_((check_device(device), device)), stream_(device), ws_(new_knn_workspace()) {}

void GpuKMeansAccelerator::ensure(Cached& slot, const float* x, std::size_t n, std::size_t d, bool norms) {
  if (slot.host != x || slot.n != n || slot.d != d) {
    slot.data.upload(x, n * d, stream_.get());
    slot.host = x;
    slot.n = n;
    slot.d = d;
    slot.norms = DeviceBuffer<float>();
  }
  if (norms && slot.norms.size() != n) {
    slot.norms.resize(n);
    row_norms(slot.data.data(), false, n, d, slot.norms.data(), stream_.get());
  }
}

void GpuKMeansAccelerator::nearest(const float* x, std::size_t n, std::size_t d, const float* centroids, std::size_t k,
                                   bool inner_product, std::int32_t* labels, float* score) {
  if (n == 0) return;
  ANNFORGE_CHECK(k < 0x7fffffffu, ErrorKind::Value, "too many centroids for the GPU");
  DeviceGuard guard(device_);
  cudaStream_t s = stream_.get();
  ensure(points_, x, n, d, true);
  centroids_.upload(centroids, k * d, s);
  centroid_norms_.resize(k);
  row_norms(centroids_.data(), false, k, d, centroid_norms_.data(), s);
  out_d_.resize(n);
  out_l_.resize(n);
  KnnProblem p;
  p.d_queries = points_.data.data();
  p.d_query_norms = points_.norms.data();
  p.nq = n;
  p.d_base = centroids_.data();
  p.d_base_norms = centroid_norms_.data();
  p.n = k;
  p.d = d;
  p.metric = inner_product ? Epilogue::OneMinusDot : Epilogue::L2;
  p.k = 1;
  p.exact_distances = true;
  knn(p, *ws_, out_l_.data(), out_d_.data(), s);
  out_l_.download(labels, n, s);
  out_d_.download(score, n, s);
  stream_.sync();
  if (inner_product)
    for (std::size_t i = 0; i < n; ++i) score[i] -= 1.0f;  // 1 - <x, c>  ->  -<x, c>
}

void GpuKMeansAccelerator::lower_min_distances(const float* pool, std::size_t n, std::size_t d, const float* centre,
                                               float* mind) {
  if (n == 0) return;
  DeviceGuard guard(device_);
  cudaStream_t s = stream_.get();
  ensure(pool_, pool, n, d, false);
  centre_.upload(centre, d, s);
  mind_.upload(mind, n, s);
  gpu::lower_min_distances(pool_.data.data(), n, d, centre_.data(), mind_.data(), s);
  mind_.download(mind, n, s);
  stream_.sync();
}

bool GpuKMeansAccelerator::centroid_sums(const float* x, std::size_t n, std::size_t d, const std::int32_t* labels,
                                         std::size_t k, double* sums) {
  if (n == 0) return true;
  for (std::size_t i = 0; i < n; ++i)  // a bad label would write outside the sums
    ANNFORGE_CHECK(labels[i] >= 0 && static_cast<std::size_t>(labels[i]) < k, ErrorKind::Value,
                   "k-means label out of range");
  DeviceGuard guard(device_);
  cudaStream_t s = stream_.get();
  ensure(points_, x, n, d, false);
  labels_.upload(labels, n, s);
  sums_.resize(k * d);
  ANNFORGE_CUDA_CHECK(cudaMemsetAsync(sums_.data(), 0, k * d * sizeof(double), s));
  gpu::centroid_sums(points_.data.data(), n, d, labels_.data(), sums_.data(), s);
  sums_.download(sums, k * d, s);
  stream_.sync();
  return true;
}

}  // namespace annforge::gpu
