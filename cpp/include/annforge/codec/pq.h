// Product quantizer: the vector is cut into m sub-vectors of dsub = d / m dimensions, each replaced
// by the index of its nearest centre in a per-sub-space codebook of ksub = 2^nbits centres (k-means).
// Distances to a query are then sums of m table look-ups (asymmetric distance computation, ADC).
//
// Codes are kept one sub-quantizer index per byte here (nbits <= 8); the 4-bit fast-scan layout
// (codec/pq4_fastscan.h) re-packs them into blocks of 32 vectors.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace annforge::codec {

class ProductQuantizer {
 public:
  ProductQuantizer() = default;
  // ValueError unless d % m == 0 and nbits is 4 or 8.
  ProductQuantizer(std::size_t d, std::size_t m, std::size_t nbits);

  std::size_t d() const noexcept { return d_; }
  std::size_t m() const noexcept { return m_; }
  std::size_t nbits() const noexcept { return nbits_; }
  std::size_t ksub() const noexcept { return ksub_; }
  std::size_t dsub() const noexcept { return dsub_; }
  bool trained() const noexcept { return !codebooks_.empty(); }
  // m x ksub x dsub floats: centre c of sub-space j starts at (j * ksub + c) * dsub.
  const std::vector<float>& codebooks() const noexcept { return codebooks_; }
  void set_codebooks(const float* codebooks);

  // k-means per sub-space (at most 256 training points per centre, seeded, parallel inside).
  void train(const float* x, std::size_t n, std::uint64_t seed, int num_threads, int niter = 25);
  // codes[i * m + j] = nearest centre of sub-vector j of row i (rows have stride d).
  void encode(const float* x, std::size_t n, std::uint8_t* codes, int num_threads) const;
  void decode(const std::uint8_t* code, float* out) const;  // one vector (m bytes -> d floats)
  // Trains on x (n rows of d floats), then returns x encoded and decoded again (n x d floats): OPQ's
  // inner step, which aligns its rotation to what the quantizer can reproduce.
  std::vector<float> fit_reconstruct(const float* x, std::size_t n, std::uint64_t seed, int num_threads);

  // table[j * ksub + c] = <q_j, centre_jc>   (q: d floats)
  void inner_product_table(const float* q, float* table) const;
  // table[j * ksub + c] = ||centre_jc||^2 + 2 <v_j, centre_jc>: the query-independent part of
  // ||q - v - centre||^2 - ||q - v||^2 for a coarse centre v (faiss's "precomputed table", term 1).
  void residual_l2_terms(const float* v, float* table) const;

 private:
  void derive_transposed();

  std::size_t d_ = 0, m_ = 0, nbits_ = 0, ksub_ = 0, dsub_ = 0;
  std::vector<float> codebooks_;
  // m x dsub x ksub: the codebooks with the centre index innermost, so a query's look-up table is
  // dsub contiguous multiply-adds over ksub lanes per sub-space (vectorises; no call per sub-space).
  std::vector<float> codebooks_t_;
};

}  // namespace annforge::codec
