#include "annforge/codec/pq.h"

#include <algorithm>

#include "annforge/cluster/kmeans.h"
#include "annforge/common.h"
#include "annforge/simd/kernels.h"

namespace annforge::codec {

ProductQuantizer::ProductQuantizer(std::size_t d, std::size_t m, std::size_t nbits)
    : d_(d), m_(m), nbits_(nbits), ksub_(std::size_t(1) << nbits), dsub_(m ? d / m : 0) {
  ANNFORGE_CHECK(m >= 1 && m <= d, ErrorKind::Value, "m must be in [1, dim = ", d, "], got ", m);
  ANNFORGE_CHECK(d % m == 0, ErrorKind::Value, "dim = ", d, " must be a multiple of m = ", m);
  ANNFORGE_CHECK(nbits == 4 || nbits == 8, ErrorKind::Value, "nbits must be 4 or 8, got ", nbits);
}

void ProductQuantizer::set_codebooks(const float* codebooks) {
  codebooks_.assign(codebooks, codebooks + m_ * ksub_ * dsub_);
  derive_transposed();
}

void ProductQuantizer::derive_transposed() {
  codebooks_t_.resize(codebooks_.size());
  for (std::size_t j = 0; j < m_; ++j)
    for (std::size_t c = 0; c < ksub_; ++c)
      for (std::size_t t = 0; t < dsub_; ++t)
        codebooks_t_[(j * dsub_ + t) * ksub_ + c] = codebooks_[(j * ksub_ + c) * dsub_ + t];
}

void ProductQuantizer::train(const float* x, std::size_t n, std::uint64_t seed, int num_threads, int niter) {
  ANNFORGE_CHECK(n >= ksub_, ErrorKind::Value, "product quantizer training needs at least ", ksub_,
                 " vectors, got ", n);
  std::vector<float> codebooks(m_ * ksub_ * dsub_);
  std::vector<float> slice;
  // At most 256 points per centre are used anyway: copy only those sub-vectors.
  const std::size_t used = std::min(n, ksub_ * 256);
  slice.resize(used * dsub_);
  cluster::KMeansOptions opt;
  opt.niter = niter;
  opt.num_threads = num_threads;
  opt.max_points_per_centroid = 0;  // the rows below are already a sample
  // Evenly spaced rows: deterministic, and the caller's rows are already in random order.
  for (std::size_t j = 0; j < m_; ++j) {
    for (std::size_t i = 0; i < used; ++i) {
      const std::size_t row = i * n / used;
      std::copy(x + row * d_ + j * dsub_, x + row * d_ + (j + 1) * dsub_, slice.data() + i * dsub_);
    }
    opt.seed = seed + 1000003 * (j + 1);
    auto res = cluster::kmeans(slice.data(), used, dsub_, ksub_, opt);
    std::copy(res.centroids.begin(), res.centroids.end(), codebooks.begin() + j * ksub_ * dsub_);
  }
  codebooks_ = std::move(codebooks);
  derive_transposed();
}

void ProductQuantizer::encode(const float* x, std::size_t n, std::uint8_t* codes, int num_threads) const {
  ANNFORGE_ASSERT(trained());
  std::vector<std::int32_t> labels(n);
  std::vector<float> scores(n);
  for (std::size_t j = 0; j < m_; ++j) {
    cluster::PackedCentroids centres(codebooks_.data() + j * ksub_ * dsub_, ksub_, dsub_);
    centres.nearest(x + j * dsub_, n, d_, 1, false, num_threads, labels.data(), scores.data());
    for (std::size_t i = 0; i < n; ++i) codes[i * m_ + j] = static_cast<std::uint8_t>(labels[i]);
  }
}

void ProductQuantizer::decode(const std::uint8_t* code, float* out) const {
  for (std::size_t j = 0; j < m_; ++j) {
    const float* c = codebooks_.data() + (j * ksub_ + code[j]) * dsub_;
    std::copy(c, c + dsub_, out + j * dsub_);
  }
}

std::vector<float> ProductQuantizer::fit_reconstruct(const float* x, std::size_t n, std::uint64_t seed,
                                                     int num_threads) {
  train(x, n, seed, num_threads);
  std::vector<std::uint8_t> codes(n * m_);
  encode(x, n, codes.data(), num_threads);
  std::vector<float> recon(n * d_);
  for (std::size_t i = 0; i < n; ++i) decode(codes.data() + i * m_, recon.data() + i * d_);
  return recon;
}

void ProductQuantizer::inner_product_table(const float* q, float* table) const {
  const std::size_t ksub = ksub_, dsub = dsub_;
  for (std::size_t j = 0; j < m_; ++j) {
    float* __restrict t = table + j * ksub;
    const float* __restrict cb = codebooks_t_.data() + j * dsub * ksub;
    const float* qj = q + j * dsub;
    for (std::size_t c = 0; c < ksub; ++c) t[c] = 0.0f;
    for (std::size_t s = 0; s < dsub; ++s) {
      const float v = qj[s];
      for (std::size_t c = 0; c < ksub; ++c) t[c] += v * cb[s * ksub + c];
    }
  }
}

void ProductQuantizer::residual_l2_terms(const float* v, float* table) const {
  const auto& K = simd::kernels();
  for (std::size_t j = 0; j < m_; ++j) {
    const float* cb = codebooks_.data() + j * ksub_ * dsub_;
    float* t = table + j * ksub_;
    K.dot_rows(v + j * dsub_, cb, ksub_, dsub_, t);
    for (std::size_t c = 0; c < ksub_; ++c) t[c] = K.dot(cb + c * dsub_, cb + c * dsub_, dsub_) + 2.0f * t[c];
  }
}

}  // namespace annforge::codec
