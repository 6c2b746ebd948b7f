// RaBitQ (Gao & Long, SIGMOD 2024, arXiv 2405.12497) with the extended multi-bit codes (Gao et al.,
// arXiv 2409.09913): codes of a vector's residual from a centroid, an unbiased estimator of its distance
// to a query, and a bound on that estimator's error.
//
// Rotation. A seeded random orthogonal map R: the first `dim` columns of a random orthogonal
// padded_dim x padded_dim matrix T. padded_dim = dim rounded up to a multiple of 64, so a rotated vector
// fills whole 64-bit words. Two kinds:
// - Dense: T Haar-random, made by Gram-Schmidt (two passes, in double) on a Gaussian matrix from
//   SplitMix64. O(padded_dim * dim) per rotation, O(padded_dim * dim^2) once to build.
// - Hadamard: T a product of 4 rounds of random sign flips and fast Walsh-Hadamard transforms (the
//   randomized Hadamard transform of Ailon & Chazelle, as RaBitQ's authors use for speed). When D =
//   padded_dim is not a power of two, round r transforms the first (r even) or last (r odd) L entries,
//   L the largest power of two <= D, and then mixes entry i with entry i + D/2 by a 45-degree Givens
//   rotation (a Kac walk step), so every entry is reached. Every step is orthogonal, hence so is T.
//   O(D log D) per rotation (~10x faster than dense at 384-d), D floats of state, and bit-identical
//   results at every SIMD level (the butterflies are exact sums, the scales the same multiplies).
//
// Codes (B = bits, 1..8, per dimension). r = x - c (x normalised first for cosine), r' = R r, o = r'/|r|.
// Each dimension gets u_i in [0, 2^B) standing for y_i = u_i - (2^B - 1)/2 = sign(r'_i) (k_i + 1/2),
// k_i in [0, 2^(B-1)); the top bit of u_i is the sign bit, i.e. the 1-bit RaBitQ code. The k_i are
// min(floor(t o_i), 2^(B-1) - 1) for the rescaling t that maximises <y, o> / |y| (the extended-RaBitQ
// code search: a sweep over the critical values of t, restricted to t in [(K-1)/(3 max o), (K+9)/max o]
// with K = 2^(B-1); on 384-d Gaussian and MiniLM rows it found the optimum of the unrestricted sweep,
// which tests/test_rabitq.py checks at 128-d). u is stored as B bit planes, sign plane first
// (simd/rabitq_kernels.h).
//
// Per-vector factors (floats after the planes, see Factor), precomputed so that an estimate costs a few
// multiply-adds and one square root: |r|^2 (l2) or <r, c> (ip, cosine); for the 1-bit (sign) stage, with
// a1 = <sign code, o> / |sign code|: |r|/a1, |r| sqrt(1 - a1^2)/a1 and the number of positive signs; for
// a multi-bit code (bits > 1) the same for the full code, with a = <y, o>/|y| (the paper's <o_bar, o>),
// the sum of its u_i, and |r|/(a |y|). 4 floats for 1-bit codes, 8 otherwise.
//
// Estimator. With q normalised first for cosine, v = q - c is rotated, q' = R v, and quantized to
// query_bits bits with randomized rounding (q~ = lo + delta * q_u, E[q~] = q' exactly; the random bits
// come from the codec's seed and the query's bytes, so the same query always gets the same code).
//   <r, v> ~= |r| <y, q~> / (a |y|)         (unbiased: the paper's estimator, and E over the rounding)
// and the metric's distance follows: l2: |r|^2 + |v|^2 - 2 <r, v>; ip: 1 - <c, q> - <r, c> - <r, v> (so
// the error scales with |q - c|, not |q|); cosine: the same as ip on unit vectors. Over the random
// rotation the error of <r, v> is close to normal with standard deviation at most
//   sigma = |r| sqrt(|v|^2 (1 - a^2) / (a^2 (D - 1)) + delta^2 / (4 a^2))
// (D = padded_dim; the second term is the rounding, variance <= delta^2/4 per dimension). The bound is
// estimate +- eps0 * sigma (l2: 2 eps0 sigma). eps0 = 1.9 (the paper's choice) covers ~94% of pairs when
// the query is nearly orthogonal to the residual (the worst case) and more otherwise; eps0 = 3 covers
// ~99.7% in the worst case: the documented confidence for ">= 99% of pairs" (tests/test_rabitq.py).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "annforge/common.h"
#include "annforge/simd/kernels.h"
#include "annforge/simd/rabitq_kernels.h"

namespace annforge::codec {

class RaBitQ {
 public:
  enum Factor : std::size_t {
    kAdd = 0,                                                   // l2: |r|^2; ip, cosine: <r, c>
    kSignInvA = 1, kSignErr = 2, kSignSum = 3,                  // the 1-bit stage
    kInvA = 4, kErr = 5, kCodeSum = 6, kScale = 7,              // the full multi-bit code (bits > 1)
  };
  static std::size_t num_factors(unsigned bits) { return bits > 1 ? 8 : 4; }
  static constexpr double kDefaultEps0 = 1.9;
  enum class Rotation : std::uint8_t { Dense = 0, Hadamard = 1 };  // stored in files: values are fixed
  static constexpr unsigned kHadamardRounds = 4;
  // "dense" | "hadamard"; ValueError naming `what` (the caller's parameter) otherwise.
  static Rotation parse_rotation(const std::string& name, const char* what);
  static const char* rotation_name(Rotation kind);

  // dim in 1..4096, bits in 1..8; ValueError otherwise. Cosine encodes unit vectors.
  RaBitQ(std::size_t dim, Metric metric, unsigned bits, std::uint64_t seed, Rotation rotation = Rotation::Dense);

  std::size_t dim() const { return dim_; }
  std::size_t padded_dim() const { return padded_dim_; }
  std::size_t words() const { return padded_dim_ / 64; }  // 64-bit words per bit plane
  unsigned bits() const { return bits_; }
  Metric metric() const { return metric_; }
  std::uint64_t seed() const { return seed_; }
  // One encoded vector: bits() planes, then the factors; a multiple of 8 bytes.
  std::size_t code_words() const { return bits_ * words(); }
  std::size_t record_bytes() const { return code_words() * 8 + num_factors(bits_) * sizeof(float); }
  Rotation rotation_kind() const { return rotation_kind_; }
  // R: padded_dim x dim, row-major, orthonormal columns (made from the transform for Hadamard).
  std::vector<float> rotation_matrix() const;
  std::size_t rotation_bytes() const;  // memory the rotation holds
  void rotate(const float* x, float* out) const;  // out: padded_dim floats
  // n rows at once (n x padded_dim floats out), through the blocked GEMM kernel for more than a few rows.
  void rotate_rows(const float* x, std::size_t n, float* out) const;
  // The most query bits (<= 16) whose kernel sums, up to padded_dim * (2^bits - 1) * (2^query_bits - 1),
  // fit in 32 bits (at least 12 for every allowed dim).
  unsigned max_query_bits() const;
  // The default query_bits: bits + 3 (4 for 1-bit codes, as in the paper), at most max_query_bits(). Three
  // bits more than the code keep the rounding's share of the error variance small at every bits.
  unsigned default_query_bits() const { return bits_ + 3 < max_query_bits() ? bits_ + 3 : max_query_bits(); }

  // Encodes n rows of x (dim floats each, finite; cosine rows nonzero) relative to `centroid` into
  // n * record_bytes() bytes at `records` (8-byte aligned).
  void encode(const float* x, std::size_t n, const float* centroid, std::uint8_t* records) const;

  // A query prepared for one centroid.
  struct Query {
    unsigned query_bits = 0;
    std::vector<std::uint64_t> planes;  // query_bits planes of words() words, least significant first
    double lo = 0, delta = 0;           // q~_i = lo + delta * q_u[i]
    double qsum = 0;                    // sum of q~_i
    double vnorm = 0;                   // |v| = |q'|
    double base = 0;                    // l2: |v|^2; ip/cosine: <c, q>
  };
  void prepare_query(const float* q, const float* centroid, unsigned query_bits, Query& out) const;
  // The same for n queries (n * dim floats) at once, identical results; the rotation goes through the
  // blocked GEMM kernel, so the matrix is read once per 64 queries rather than once per query.
  void prepare_queries(const float* q, std::size_t n, const float* centroid, unsigned query_bits, Query* out) const;

  // Distance estimates and bounds of n records (stride record_bytes()) against a prepared query, from
  // the first `stage_bits` planes: 1 (the sign codes alone) or bits(). eps0 >= 0. lower/upper may be null.
  void estimate(const Query& q, const std::uint8_t* records, std::size_t n, unsigned stage_bits, double eps0,
                const simd::RaBitQKernels& kernels, float* est, float* lower, float* upper) const;

  // --- Scoring with the caller's own tables (the IVF index's 4-bit fast scan, index/ivf_rabitq.h) ---
  // A query residual in float: q' = R (q - c) = R q - R c, from the rotated query and the rotated centroid
  // (rotate()), with |v|^2 and <c, q> as prepare_query has them (q normalised first for cosine).
  struct FloatQuery {
    std::vector<float> rotated;  // q', padded_dim floats
    double qsum = 0, vnorm = 0, base = 0;
  };
  void prepare_float_query(const float* q, const float* rotated_q, const float* centroid,
                           const float* rotated_centroid, FloatQuery& out) const;
  // The sign codes as 4-bit fast-scan codes: nibble j holds the sign bits of dimensions 4j .. 4j+3 (bit t
  // = dimension 4j + t); padded_dim / 4 of them, one per byte.
  void sign_nibbles(const std::uint8_t* record, std::uint8_t* nibbles) const;
  // The matching table, padded_dim / 4 x 16 floats: entry (j, v) = sum of q'_{4j+t} over the bits t set
  // in v, so summing entry (j, nibble_j) over j gives <b, q'> for the sign bits b.
  void fastscan_lut(const FloatQuery& q, float* lut) const;
  // Where a record's factors start (record + factor_offset(), floats in Factor order).
  std::size_t factor_offset() const { return code_words() * 8; }
  // The 1-bit estimate of a record's distance from bit_dot = <b, q'> (e.g. the fast-scan sum) and its
  // factors (the first 4 suffice, so a compact copy of them will do); the bound widens by
  // `bit_dot_error`, a bound on bit_dot's own error (the table's quantisation). lower/upper may be null.
  float estimate_sign(const FloatQuery& q, const float* factors, double bit_dot, double bit_dot_error,
                      double eps0, float* lower, float* upper) const;
  // estimate_sign without the bound, as a function of the factors and bit_dot that a scan can inline:
  //   est = constant + add_sign * f[kAdd] + f[kSignInvA] * slope * (bit_dot + shift).
  struct SignLinear {
    float constant, add_sign, slope, shift;
    float operator()(const float* f, float bit_dot) const {
      return constant + add_sign * f[kAdd] + f[kSignInvA] * slope * (bit_dot + shift);
    }
  };
  SignLinear sign_linear(const FloatQuery& q) const;
  // The estimate from the full code (all bits() planes; the sign code when bits() == 1), in float.
  // `lut` (may be null): fastscan_lut(q), so that each plane costs padded_dim / 4 look-ups.
  float estimate_full(const FloatQuery& q, const std::uint8_t* record, double eps0, float* lower,
                      float* upper, const float* lut = nullptr) const;
  // The vector the code stands for: centroid + R^T (|r| y / |y|) (unit-normalised first for cosine,
  // as encode() saw it).
  void decode(const std::uint8_t* record, const float* centroid, float* out) const;

 private:
  struct EncodeScratch;
  // v = q - centroid (q normalised first for cosine); returns Query::base.
  double query_residual(const float* q, const float* centroid, float* v) const;
  // The rest of prepare_query once v is rotated (padded_dim floats); q only seeds the rounding.
  void quantize_rotated(const float* q, const float* rotated, double base, unsigned query_bits, Query& out) const;
  // One row from its rotated residual (padded_dim floats) and <r, c>.
  void encode_rotated(const float* rotated, double residual_dot_centroid, EncodeScratch& scratch,
                      std::uint8_t* record) const;

  std::size_t dim_, padded_dim_;
  Metric metric_;
  unsigned bits_;
  std::uint64_t seed_;
  Rotation rotation_kind_;
  std::vector<float> rotation_;  // Dense: R, row-major
  // Hadamard: per round, D multipliers: a random sign times the round's scale for that entry.
  std::vector<float> hadamard_signs_;
  std::size_t hadamard_block_ = 0;  // L
  // T x (forward) and T^T y (inverse) for the Hadamard kind, in place on padded_dim floats.
  void hadamard_forward(float* x) const;
  void hadamard_inverse(float* y) const;
  // Where round r's transform starts: the first L entries in even rounds, the last L in odd ones.
  std::size_t hadamard_begin(unsigned r) const { return r % 2 == 1 ? padded_dim_ - hadamard_block_ : 0; }
  // n rows (dim floats, stride dim) into n x padded_dim floats; `other_level` is scratch for the packing.
  void rotate_batch(const float* x, std::size_t n, float* out, std::vector<float>& other_level) const;
  // The rotation in the GEMM kernel's packed layout, made once: packing it per call cost more than
  // rotating a single query. The layout belongs to one kernel table (the SIMD level can be changed at
  // run time); another level packs a private copy (packed_rotation()).
  std::vector<float> packed_rotation_;
  const simd::Kernels* packed_for_ = nullptr;
  const float* packed_rotation(const simd::Kernels& K, std::vector<float>& other_level) const;
};

}  // namespace annforge::codec
