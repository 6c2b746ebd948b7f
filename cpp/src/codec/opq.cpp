#include "annforge/codec/opq.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <numeric>

#include "annforge/codec/pq.h"
#include "annforge/common.h"
#include "annforge/simd/kernels.h"
#include "annforge/util/splitmix64.h"

namespace annforge::codec {

namespace {

// Four partial sums, so that the compiler may vectorise without reassociating a single sum.
double dot(const double* a, const double* b, std::size_t n) {
  double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  std::size_t i = 0;
  for (; i + 4 <= n; i += 4) {
    s0 += a[i] * b[i];
    s1 += a[i + 1] * b[i + 1];
    s2 += a[i + 2] * b[i + 2];
    s3 += a[i + 3] * b[i + 3];
  }
  for (; i < n; ++i) s0 += a[i] * b[i];
  return (s0 + s1) + (s2 + s3);
}

// (x, y) <- (c x - s y, s x + c y), element-wise.
void rotate(double* x, double* y, double c, double s, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) {
    const double xi = x[i], yi = y[i];
    x[i] = c * xi - s * yi;
    y[i] = s * xi + c * yi;
  }
}

// v -= (u . v) u for each accepted unit column u, twice (one pass of modified Gram-Schmidt can leave
// an error of the order of the cancellation); returns ||v||.
double orthogonalise(double* v, const std::vector<const double*>& basis, std::size_t d) {
  for (int pass = 0; pass < 2; ++pass)
    for (const double* u : basis) {
      const double p = dot(u, v, d);
      for (std::size_t i = 0; i < d; ++i) v[i] -= p * u[i];
    }
  return std::sqrt(dot(v, v, d));
}

// One-sided (Hestenes) Jacobi SVD of the row-major d x d matrix a, started from the orthonormal
// columns of `v` (column j at v[j * d ...]): rotates pairs of columns of B = a V until every pair is
// orthogonal to working precision, so that B = U S and a = U S V^T. Returns U V^T (row-major) and
// leaves the final V in `v` (a good start for a nearby matrix: its columns are then almost orthogonal
// already and a sweep or two suffices).
std::vector<double> polar_factor(const double* a, std::size_t d, std::vector<double>& v) {
  // b: columns of B = a V, column j contiguous at b[j * d].
  std::vector<double> b(d * d, 0.0);
  for (std::size_t j = 0; j < d; ++j) {
    const double* vj = v.data() + j * d;
    double* bj = b.data() + j * d;
    for (std::size_t i = 0; i < d; ++i) bj[i] = dot(a + i * d, vj, d);
  }
  const double tol = static_cast<double>(d) * DBL_EPSILON;
  std::vector<double> norm2(d);
  constexpr int kMaxSweeps = 60;  // Jacobi converges quadratically; a handful of sweeps is the rule
  for (int sweep = 0; sweep < kMaxSweeps; ++sweep) {
    for (std::size_t j = 0; j < d; ++j) norm2[j] = dot(b.data() + j * d, b.data() + j * d, d);
    // Orthogonal to working precision relative to the pair (|cos| <= tol) or, absolutely, relative to
    // the largest column: directions of negligible singular value need not be resolved further, as
    // they hardly move the polar factor (and U is orthonormalised again below in any case).
    const double abs_floor = tol * *std::max_element(norm2.begin(), norm2.end());
    bool rotated = false;
    for (std::size_t p = 0; p + 1 < d; ++p)
      for (std::size_t q = p + 1; q < d; ++q) {
        const double alpha = norm2[p], beta = norm2[q];
        if (alpha == 0.0 || beta == 0.0) continue;
        double* bp = b.data() + p * d;
        double* bq = b.data() + q * d;
        const double gamma = dot(bp, bq, d);
        if (std::fabs(gamma) <= std::max(tol * std::sqrt(alpha * beta), abs_floor)) continue;
        // The rotation that diagonalises [[alpha, gamma], [gamma, beta]] (the smaller angle).
        const double zeta = (beta - alpha) / (2.0 * gamma);
        const double t = (zeta >= 0 ? 1.0 : -1.0) / (std::fabs(zeta) + std::sqrt(1.0 + zeta * zeta));
        const double c = 1.0 / std::sqrt(1.0 + t * t), s = c * t;
        rotate(bp, bq, c, s, d);
        rotate(v.data() + p * d, v.data() + q * d, c, s, d);
        norm2[p] = alpha - t * gamma;
        norm2[q] = beta + t * gamma;
        rotated = true;
      }
    if (!rotated) break;
  }

  // U: b_j / sigma_j, orthonormalised again in order of decreasing sigma (exact orthonormality even
  // if the sweeps stopped early); directions of a zero or negligible sigma are completed from the
  // unit vectors.
  std::vector<double> sigma(d);
  for (std::size_t j = 0; j < d; ++j) sigma[j] = std::sqrt(dot(b.data() + j * d, b.data() + j * d, d));
  std::vector<std::size_t> order(d);
  std::iota(order.begin(), order.end(), std::size_t(0));
  std::stable_sort(order.begin(), order.end(), [&](std::size_t x, std::size_t y) { return sigma[x] > sigma[y]; });
  const double rank_tol = (d == 0 ? 0.0 : sigma[order[0]]) * tol;
  std::vector<const double*> basis;
  std::vector<std::size_t> missing;
  for (std::size_t j : order) {
    double* u = b.data() + j * d;
    if (sigma[j] > rank_tol) {
      for (std::size_t i = 0; i < d; ++i) u[i] /= sigma[j];
      const double len = orthogonalise(u, basis, d);
      if (len >= 0.5) {
        for (std::size_t i = 0; i < d; ++i) u[i] /= len;
        basis.push_back(u);
        continue;
      }
    }
    missing.push_back(j);
  }
  // Completion: the unit vector with the largest part outside the span so far (1 - sum_u u_e^2; the
  // largest is at least missing / d), orthogonalised.
  std::vector<double> outside(d, 1.0);
  for (const double* u : basis)
    for (std::size_t e = 0; e < d; ++e) outside[e] -= u[e] * u[e];
  while (!missing.empty()) {
    const std::size_t e = static_cast<std::size_t>(std::max_element(outside.begin(), outside.end()) - outside.begin());
    double* u = b.data() + missing.back() * d;
    std::fill(u, u + d, 0.0);
    u[e] = 1.0;
    const double len = orthogonalise(u, basis, d);
    ANNFORGE_ASSERT(len > 0.0);
    for (std::size_t i = 0; i < d; ++i) u[i] /= len;
    basis.push_back(u);
    missing.pop_back();
    for (std::size_t k = 0; k < d; ++k) outside[k] -= u[k] * u[k];
  }

  // R = U V^T = sum_j u_j v_j^T.
  std::vector<double> r(d * d, 0.0);
  for (std::size_t j = 0; j < d; ++j) {
    const double* u = b.data() + j * d;
    const double* vj = v.data() + j * d;
    for (std::size_t i = 0; i < d; ++i) {
      double* ri = r.data() + i * d;
      const double ui = u[i];
      for (std::size_t k = 0; k < d; ++k) ri[k] += ui * vj[k];
    }
  }
  return r;
}

std::vector<double> identity(std::size_t d) {
  std::vector<double> e(d * d, 0.0);
  for (std::size_t i = 0; i < d; ++i) e[i * d + i] = 1.0;
  return e;
}

// Rows [r0, r0 + len) of the n x d matrix x, transposed into a d x len matrix.
void transpose_rows(const float* x, std::size_t d, std::size_t r0, std::size_t len, float* out) {
  for (std::size_t i = 0; i < len; ++i)
    for (std::size_t j = 0; j < d; ++j) out[j * len + i] = x[(r0 + i) * d + j];
}

// The training sample: every row when n <= max_points, else max_points distinct rows (a partial
// Fisher-Yates shuffle), in increasing row order.
std::vector<float> sample_rows(const float* x, std::size_t n, std::size_t d, std::size_t max_points,
                               std::uint64_t seed) {
  if (max_points == 0 || n <= max_points) return std::vector<float>(x, x + n * d);
  std::vector<std::size_t> rows(n);
  std::iota(rows.begin(), rows.end(), std::size_t(0));
  util::SplitMix64 rng(seed);
  for (std::size_t i = 0; i < max_points; ++i) std::swap(rows[i], rows[i + rng.below(n - i)]);
  rows.resize(max_points);
  std::sort(rows.begin(), rows.end());
  std::vector<float> out(max_points * d);
  for (std::size_t i = 0; i < max_points; ++i) std::copy(x + rows[i] * d, x + (rows[i] + 1) * d, out.data() + i * d);
  return out;
}

}  // namespace

std::vector<double> orthogonal_polar_factor(const double* a, std::size_t d) {
  for (std::size_t i = 0; i < d * d; ++i)
    ANNFORGE_CHECK(std::isfinite(a[i]), ErrorKind::Value, "matrix contains NaN or infinity");
  std::vector<double> v = identity(d);
  return polar_factor(a, d, v);
}

std::vector<float> train_opq_rotation(const float* x, std::size_t n, std::size_t d, std::size_t m, std::size_t nbits,
                                      const OPQOptions& options) {
  ANNFORGE_CHECK(options.niter >= 1, ErrorKind::Value, "OPQ needs niter >= 1, got ", options.niter);
  ProductQuantizer shape(d, m, nbits);  // validates d % m and nbits
  ANNFORGE_CHECK(n >= shape.ksub(), ErrorKind::Value, "OPQ training needs at least 2^nbits = ", shape.ksub(),
                 " vectors, got ", n);
  for (std::size_t i = 0; i < n * d; ++i)
    ANNFORGE_CHECK(std::isfinite(x[i]), ErrorKind::Value, "training vectors contain NaN or infinity at row ", i / d);

  const auto& K = simd::kernels();
  const std::vector<float> sample = sample_rows(x, n, d, options.max_points, options.seed);
  const std::size_t ns = sample.size() / d;

  // The sample transposed and packed in chunks of rows, for M = sum_i y_i x_i^T as GEMMs over the
  // sample dimension; each chunk's float product is summed into M in double.
  constexpr std::size_t kChunk = 2048;
  std::vector<std::vector<float>> packed_chunks;
  std::vector<float> transposed(d * std::min(ns, kChunk));
  for (std::size_t r0 = 0; r0 < ns; r0 += kChunk) {
    const std::size_t len = std::min(kChunk, ns - r0);
    transpose_rows(sample.data(), d, r0, len, transposed.data());
    std::vector<float> packed(K.packed_size(d, len));
    K.pack_rows(transposed.data(), d, len, packed.data());
    packed_chunks.push_back(std::move(packed));
  }

  std::vector<double> rotation = identity(d);
  std::vector<double> right = identity(d);  // right singular vectors of the last M: the next start
  std::vector<float> rotation_f(d * d), rotated(ns * d), packed_rotation(K.packed_size(d, d));
  std::vector<float> product(d * d);
  std::vector<double> m_sum(d * d);
  for (std::size_t i = 0; i < d; ++i) rotation_f[i * d + i] = 1.0f;
  for (int it = 0; it < options.niter; ++it) {
    // Rotated sample: (R x)_a = <x, R_a>.
    K.pack_rows(rotation_f.data(), d, d, packed_rotation.data());
    K.dot_packed(sample.data(), ns, d, packed_rotation.data(), d, d, rotated.data(), d);
    ProductQuantizer pq(d, m, nbits);
    const std::vector<float> recon =
        pq.fit_reconstruct(rotated.data(), ns, options.seed + static_cast<std::uint64_t>(it), options.num_threads);
    // Procrustes: argmin over orthonormal R of sum_i ||R x_i - y_i||^2 is the polar factor of M.
    std::fill(m_sum.begin(), m_sum.end(), 0.0);
    for (std::size_t c = 0, r0 = 0; r0 < ns; ++c, r0 += kChunk) {
      const std::size_t len = std::min(kChunk, ns - r0);
      transpose_rows(recon.data(), d, r0, len, transposed.data());
      K.dot_packed(transposed.data(), d, len, packed_chunks[c].data(), d, len, product.data(), d);
      for (std::size_t i = 0; i < d * d; ++i) m_sum[i] += product[i];
    }
    rotation = polar_factor(m_sum.data(), d, right);
    for (std::size_t i = 0; i < d * d; ++i) rotation_f[i] = static_cast<float>(rotation[i]);
  }
  return rotation_f;
}

}  // namespace annforge::codec
