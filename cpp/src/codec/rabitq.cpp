// RaBitQ codec: rotation, extended-code search, query quantization and the estimator (see codec/rabitq.h).
#include "annforge/codec/rabitq.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <functional>
#include <utility>

#include "annforge/simd/kernels.h"
#include "annforge/util/splitmix64.h"

namespace annforge::codec {
namespace {

// The dense rotation costs O(dim^3) to build (seconds at 1536-d) and dim^2 floats: beyond a few thousand
// dimensions a structured rotation would be needed.
constexpr std::size_t kMaxDim = 4096;

// A Haar-random padded x dim matrix with orthonormal columns, row-major in float: Gram-Schmidt with a
// second pass ("twice is enough") on Gaussian columns, in double.
std::vector<float> random_rotation(std::size_t padded, std::size_t dim, std::uint64_t seed) {
  util::SplitMix64 rng(util::splitmix64(seed ^ 0x52614269745121ULL));
  std::vector<double> cols(dim * padded);
  for (std::size_t k = 0; k < cols.size(); k += 2) {  // Box-Muller: two normals per pair of uniforms
    const double u1 = 1.0 - rng.uniform(), u2 = rng.uniform();
    const double radius = std::sqrt(-2.0 * std::log(u1));
    cols[k] = radius * std::cos(6.283185307179586 * u2);
    if (k + 1 < cols.size()) cols[k + 1] = radius * std::sin(6.283185307179586 * u2);
  }
  for (std::size_t j = 0; j < dim; ++j) {
    double* c = cols.data() + j * padded;
    for (int pass = 0; pass < 2; ++pass) {
      for (std::size_t p = 0; p < j; ++p) {
        const double* e = cols.data() + p * padded;
        double dot = 0;
        for (std::size_t i = 0; i < padded; ++i) dot += c[i] * e[i];
        for (std::size_t i = 0; i < padded; ++i) c[i] -= dot * e[i];
      }
    }
    double sq = 0;
    for (std::size_t i = 0; i < padded; ++i) sq += c[i] * c[i];
    ANNFORGE_ASSERT(sq > 0);  // a Gaussian column in the span of the others has probability zero
    const double inv = 1.0 / std::sqrt(sq);
    for (std::size_t i = 0; i < padded; ++i) c[i] *= inv;
  }
  std::vector<float> rows(padded * dim);
  for (std::size_t i = 0; i < padded; ++i)
    for (std::size_t j = 0; j < dim; ++j) rows[i * dim + j] = static_cast<float>(cols[j * padded + i]);
  return rows;
}

void check_finite(const float* x, std::size_t n, const char* what) {
  // Branch-free over the exponent bits (all ones: NaN or infinity), so it vectorises.
  std::uint32_t non_finite = 0;
  for (std::size_t i = 0; i < n; ++i) {
    std::uint32_t bits;
    std::memcpy(&bits, x + i, sizeof(bits));
    non_finite |= static_cast<std::uint32_t>((bits & 0x7f800000u) == 0x7f800000u);
  }
  if (non_finite) fail(ErrorKind::Value, "RaBitQ: ", what, " contains NaN or infinity");
}

// `x` scaled to unit length in `out` (double arithmetic); ValueError for a zero vector.
void normalised(const float* x, std::size_t dim, float* out, const char* what) {
  double sq = 0;
  for (std::size_t j = 0; j < dim; ++j) sq += static_cast<double>(x[j]) * x[j];
  if (!(sq > 0)) fail(ErrorKind::Value, "RaBitQ: cosine ", what, " has zero norm");
  const double inv = 1.0 / std::sqrt(sq);
  for (std::size_t j = 0; j < dim; ++j) out[j] = static_cast<float>(x[j] * inv);
}

// Buffers reused across the rows of one encode() call.
struct LevelScratch {
  std::vector<unsigned> start;
  std::vector<std::pair<double, std::uint32_t>> events, sorted;
  std::vector<std::uint32_t> bucket_start;
};

// The extended-RaBitQ code search: k_i = min(floor(t o_i), K - 1) for the t in [t_lo, t_hi] that
// maximises <k + 1/2, o> / |k + 1/2| (o >= 0). Sweeps the critical values of t (where some k_i steps up)
// in increasing order; they are put in order by a bucket sort over [t_lo, t_hi] (one bucket per event
// on average, each bucket sorted by (t, i)), so the order, and the result, are exact and deterministic.
void search_levels(const std::vector<double>& o, unsigned K, std::vector<unsigned>& k, LevelScratch& scratch) {
  const std::size_t D = o.size();
  k.assign(D, 0);
  if (K <= 1) return;
  const double max_o = *std::max_element(o.begin(), o.end());
  if (!(max_o > 0)) return;
  const double t_lo = (K - 1) / (3.0 * max_o), t_hi = (K + 9) / max_o;
  double ip = 0, sq = 0;
  auto& events = scratch.events;
  events.clear();
  for (std::size_t i = 0; i < D; ++i) {
    const double level = std::floor(t_lo * o[i]);
    k[i] = level >= K - 1 ? K - 1 : static_cast<unsigned>(level);
    ip += (k[i] + 0.5) * o[i];
    sq += (k[i] + 0.5) * (k[i] + 0.5);
    if (!(o[i] > 0)) continue;
    for (unsigned m = k[i] + 1; m < K; ++m) {
      const double t = m / o[i];
      if (t > t_hi) break;
      events.emplace_back(t, static_cast<std::uint32_t>(i));
    }
  }
  scratch.start = k;
  const std::size_t E = events.size();
  auto& sorted = scratch.sorted;
  sorted.resize(E);
  auto& first = scratch.bucket_start;
  first.assign(E + 1, 0);
  const double per_bucket = E / (t_hi - t_lo);
  auto bucket_of = [&](double t) {
    const double b = (t - t_lo) * per_bucket;
    return b <= 0 ? std::size_t{0} : std::min(E - 1, static_cast<std::size_t>(b));
  };
  for (const auto& e : events) ++first[bucket_of(e.first) + 1];
  for (std::size_t b = 0; b < E; ++b) first[b + 1] += first[b];
  {
    std::vector<std::uint32_t> fill(first.begin(), first.end() - 1);
    for (const auto& e : events) sorted[fill[bucket_of(e.first)]++] = e;
  }
  for (std::size_t b = 0; b < E; ++b)
    if (first[b + 1] - first[b] > 1) std::sort(sorted.begin() + first[b], sorted.begin() + first[b + 1]);

  double best = ip / std::sqrt(sq);
  std::size_t best_steps = 0;
  for (std::size_t s = 0; s < E; ++s) {
    const std::uint32_t i = sorted[s].second;
    ++k[i];
    ip += o[i];
    sq += 2.0 * k[i];  // (k + 1/2)^2 - (k - 1/2)^2
    const double cosine = ip / std::sqrt(sq);
    if (cosine > best) {
      best = cosine;
      best_steps = s + 1;
    }
  }
  k = scratch.start;
  for (std::size_t s = 0; s < best_steps; ++s) ++k[sorted[s].second];
}

inline void set_bit(std::uint64_t* plane, std::size_t i) { plane[i / 64] |= std::uint64_t{1} << (i % 64); }

// The Kac walk step of the Hadamard rotation: entries i and i + half -> their sum and difference
// (symmetric, so forward and inverse share it; the 1/sqrt(2) is in the sign multipliers).
void kac_step(float* x, std::size_t half) {
  for (std::size_t i = 0; i < half; ++i) {
    const float a = x[i], b = x[i + half];
    x[i] = a + b;
    x[i + half] = a - b;
  }
}

}  // namespace

RaBitQ::Rotation RaBitQ::parse_rotation(const std::string& name, const char* what) {
  if (name == "dense") return Rotation::Dense;
  if (name == "hadamard") return Rotation::Hadamard;
  fail(ErrorKind::Value, what, " must be 'hadamard' or 'dense', got '", name, "'");
}

const char* RaBitQ::rotation_name(Rotation kind) { return kind == Rotation::Dense ? "dense" : "hadamard"; }

RaBitQ::RaBitQ(std::size_t dim, Metric metric, unsigned bits, std::uint64_t seed, Rotation rotation)
    : dim_(dim), padded_dim_((dim + 63) / 64 * 64), metric_(metric), bits_(bits), seed_(seed), rotation_kind_(rotation) {
  ANNFORGE_CHECK(dim >= 1 && dim <= kMaxDim, ErrorKind::Value, "RaBitQ: dim must be in 1..", kMaxDim, ", got ", dim);
  ANNFORGE_CHECK(bits >= 1 && bits <= 8, ErrorKind::Value, "RaBitQ: bits must be in 1..8, got ", bits);
  ANNFORGE_CHECK(rotation == Rotation::Dense || rotation == Rotation::Hadamard, ErrorKind::Value,
                 "RaBitQ: unknown rotation kind ", static_cast<unsigned>(rotation));
  if (rotation == Rotation::Dense) {
    rotation_ = random_rotation(padded_dim_, dim_, seed_);
    packed_for_ = &simd::kernels();
    packed_rotation_.resize(packed_for_->packed_size(padded_dim_, dim_));
    packed_for_->pack_rows(rotation_.data(), padded_dim_, dim_, packed_rotation_.data());
    return;
  }
  const std::size_t D = padded_dim_;
  std::size_t L = 1;
  while (2 * L <= D) L *= 2;
  hadamard_block_ = L;
  // Round r scales entry i by 1/sqrt(L) when the transform covers it, and by 1/sqrt(2) more for the
  // Kac step when L < D: folded into the sign multipliers (diagonal, so they commute with the transform
  // on the block; see hadamard_inverse for why the same multipliers serve T^T).
  util::SplitMix64 rng(util::splitmix64(seed_ ^ 0x48616461ULL));
  hadamard_signs_.resize(kHadamardRounds * D);
  for (unsigned r = 0; r < kHadamardRounds; ++r) {
    const std::size_t begin = hadamard_begin(r);
    for (std::size_t i = 0; i < D; ++i) {
      double scale = (i >= begin && i < begin + L) ? 1.0 / std::sqrt(static_cast<double>(L)) : 1.0;
      if (L < D) scale *= std::sqrt(0.5);
      hadamard_signs_[r * D + i] = static_cast<float>((rng.next() >> 63) ? -scale : scale);
    }
  }
}

void RaBitQ::hadamard_forward(float* x) const {
  // T = K_3 F_3 S_3 ... K_0 F_0 S_0: signs (with the scales), the transform on the round's block, the Kac
  // step (entries i and i + D/2 -> their sum and difference) when the block is not everything.
  const simd::Kernels& K = simd::kernels();
  const std::size_t D = padded_dim_, L = hadamard_block_, half = D / 2;
  for (unsigned r = 0; r < kHadamardRounds; ++r) {
    const float* s = hadamard_signs_.data() + r * D;
    for (std::size_t i = 0; i < D; ++i) x[i] *= s[i];
    if (L == D) {
      K.fwht(x, D);
      continue;
    }
    K.fwht(x + hadamard_begin(r), L);
    kac_step(x, half);
  }
}

void RaBitQ::hadamard_inverse(float* y) const {
  // T^T: the rounds in reverse, each step transposed. The transform and the Kac step are symmetric, and
  // a round's scales are constant on the block, so they commute with its transform: round r^T is
  // (Kac, transform, multipliers), the same multipliers as forward.
  const simd::Kernels& K = simd::kernels();
  const std::size_t D = padded_dim_, L = hadamard_block_, half = D / 2;
  for (unsigned r = kHadamardRounds; r-- > 0;) {
    if (L == D) {
      K.fwht(y, D);
    } else {
      kac_step(y, half);
      K.fwht(y + hadamard_begin(r), L);
    }
    const float* s = hadamard_signs_.data() + r * D;
    for (std::size_t i = 0; i < D; ++i) y[i] *= s[i];
  }
}

std::vector<float> RaBitQ::rotation_matrix() const {
  if (rotation_kind_ == Rotation::Dense) return rotation_;
  const std::size_t D = padded_dim_;
  std::vector<float> out(D * dim_), column(D);
  for (std::size_t j = 0; j < dim_; ++j) {
    std::fill(column.begin(), column.end(), 0.0f);
    column[j] = 1.0f;
    hadamard_forward(column.data());
    for (std::size_t i = 0; i < D; ++i) out[i * dim_ + j] = column[i];
  }
  return out;
}

std::size_t RaBitQ::rotation_bytes() const {
  return (rotation_.capacity() + packed_rotation_.capacity() + hadamard_signs_.capacity()) * sizeof(float);
}

const float* RaBitQ::packed_rotation(const simd::Kernels& K, std::vector<float>& other_level) const {
  if (&K == packed_for_) return packed_rotation_.data();
  other_level.resize(K.packed_size(padded_dim_, dim_));
  K.pack_rows(rotation_.data(), padded_dim_, dim_, other_level.data());
  return other_level.data();
}

unsigned RaBitQ::max_query_bits() const {
  unsigned qb = 16;
  const std::uint64_t code_max = (std::uint64_t{1} << bits_) - 1;
  while (qb > 1 && padded_dim_ * code_max * ((std::uint64_t{1} << qb) - 1) > 0xffffffffULL) --qb;
  return qb;
}

void RaBitQ::rotate(const float* x, float* out) const {
  if (rotation_kind_ == Rotation::Hadamard) {
    std::memcpy(out, x, dim_ * sizeof(float));
    std::fill(out + dim_, out + padded_dim_, 0.0f);
    hadamard_forward(out);
    return;
  }
  simd::kernels().dot_rows(x, rotation_.data(), padded_dim_, dim_, out);
}

void RaBitQ::rotate_batch(const float* x, std::size_t n, float* out, std::vector<float>& other_level) const {
  // Dense: more than a few rows go through the blocked GEMM kernel, which reads the matrix once for all.
  if (rotation_kind_ == Rotation::Hadamard || n < 8) {
    for (std::size_t i = 0; i < n; ++i) rotate(x + i * dim_, out + i * padded_dim_);
    return;
  }
  const simd::Kernels& K = simd::kernels();
  K.dot_packed(x, n, dim_, packed_rotation(K, other_level), padded_dim_, dim_, out, padded_dim_);
}

void RaBitQ::rotate_rows(const float* x, std::size_t n, float* out) const {
  std::vector<float> other_level;
  rotate_batch(x, n, out, other_level);
}

struct RaBitQ::EncodeScratch {
  std::vector<float> residuals, rotated, other_level_rotation;
  std::vector<double> residual_dot_centroid, o;
  std::vector<unsigned> k;
  LevelScratch levels;
};

void RaBitQ::encode(const float* x, std::size_t n, const float* centroid, std::uint8_t* records) const {
  check_finite(centroid, dim_, "centroid");
  check_finite(x, n * dim_, "data");
  const std::size_t D = padded_dim_;
  // Rows are rotated in batches (rotate_batch: one pass over a dense matrix per batch).
  constexpr std::size_t kBatch = 64;
  EncodeScratch scratch;
  scratch.residuals.resize(kBatch * dim_);
  scratch.rotated.resize(kBatch * D);
  scratch.residual_dot_centroid.resize(kBatch);
  scratch.o.resize(D);
  for (std::size_t b = 0; b < n; b += kBatch) {
    const std::size_t m = std::min(kBatch, n - b);
    for (std::size_t r = 0; r < m; ++r) {
      float* residual = scratch.residuals.data() + r * dim_;
      const float* row = x + (b + r) * dim_;
      if (metric_ == Metric::Cosine) {
        normalised(row, dim_, residual, "vector");
      } else {
        std::memcpy(residual, row, dim_ * sizeof(float));
      }
      double dot = 0;
      for (std::size_t j = 0; j < dim_; ++j) {
        residual[j] -= centroid[j];
        dot += static_cast<double>(residual[j]) * centroid[j];
      }
      scratch.residual_dot_centroid[r] = dot;
    }
    rotate_batch(scratch.residuals.data(), m, scratch.rotated.data(), scratch.other_level_rotation);
    for (std::size_t r = 0; r < m; ++r)
      encode_rotated(scratch.rotated.data() + r * D, scratch.residual_dot_centroid[r], scratch,
                     records + (b + r) * record_bytes());
  }
}

void RaBitQ::encode_rotated(const float* rotated, double residual_dot_centroid, EncodeScratch& scratch,
                            std::uint8_t* record) const {
  const std::size_t D = padded_dim_;
  std::vector<double>& o = scratch.o;
  double sq = 0;
  for (std::size_t i = 0; i < D; ++i) sq += static_cast<double>(rotated[i]) * rotated[i];
  const double norm = std::sqrt(sq);
  const double inv = norm > 0 ? 1.0 / norm : 0.0;
  for (std::size_t i = 0; i < D; ++i) o[i] = std::fabs(rotated[i]) * inv;

  const unsigned K = 1u << (bits_ - 1);
  std::vector<unsigned>& k = scratch.k;
  search_levels(o, K, k, scratch.levels);

  std::uint64_t* planes = reinterpret_cast<std::uint64_t*>(record);
  std::memset(planes, 0, code_words() * 8);
  double y_dot_o = 0, y_sq = 0, code_sum = 0, abs_sum = 0, positives = 0;
  for (std::size_t i = 0; i < D; ++i) {
    const bool positive = rotated[i] >= 0.0f;
    const unsigned u = positive ? K + k[i] : K - 1 - k[i];
    for (unsigned a = 0; a < bits_; ++a)
      if ((u >> (bits_ - 1 - a)) & 1u) set_bit(planes + a * words(), i);
    y_dot_o += (k[i] + 0.5) * o[i];
    y_sq += (k[i] + 0.5) * (k[i] + 0.5);
    code_sum += u;
    abs_sum += o[i];
    positives += positive ? 1 : 0;
  }
  // a and a1 are the cosines between the quantized and the true unit residual. A zero residual has
  // none; its factors are all 0 except the sums, so its estimates are exact (|r| = 0).
  const double a = norm > 0 ? y_dot_o / std::sqrt(y_sq) : 1.0;
  const double a1 = norm > 0 ? abs_sum / std::sqrt(static_cast<double>(D)) : 1.0;
  float factors[8] = {};
  factors[kAdd] = static_cast<float>(metric_ == Metric::L2 ? norm * norm : residual_dot_centroid);
  factors[kSignInvA] = static_cast<float>(norm / a1);
  factors[kSignErr] = static_cast<float>(norm * std::sqrt(std::max(0.0, 1.0 - a1 * a1)) / a1);
  factors[kSignSum] = static_cast<float>(positives);
  if (bits_ > 1) {
    factors[kInvA] = static_cast<float>(norm / a);
    factors[kErr] = static_cast<float>(norm * std::sqrt(std::max(0.0, 1.0 - a * a)) / a);
    factors[kCodeSum] = static_cast<float>(code_sum);
    factors[kScale] = static_cast<float>(norm / (a * std::sqrt(y_sq)));
  }
  std::memcpy(record + code_words() * 8, factors, num_factors(bits_) * sizeof(float));
}

double RaBitQ::query_residual(const float* q, const float* centroid, float* v) const {
  if (metric_ == Metric::Cosine) {
    normalised(q, dim_, v, "query");
  } else {
    std::memcpy(v, q, dim_ * sizeof(float));
  }
  // Every metric estimates <r, v> with v = q - c (for ip that is an error proportional to |q - c|, not |q|).
  // base: l2 |v|^2, otherwise <c, q>; summed in independent double lanes (one serial chain of 384 adds
  // was ~0.5 us of a query's preparation).
  constexpr std::size_t kLanes = 8;
  double lanes[kLanes] = {};
  const bool l2 = metric_ == Metric::L2;
  std::size_t j = 0;
  for (; j + kLanes <= dim_; j += kLanes) {
    for (std::size_t l = 0; l < kLanes; ++l) {
      const float q_j = v[j + l], r = q_j - centroid[j + l];
      lanes[l] += l2 ? static_cast<double>(r) * r : static_cast<double>(centroid[j + l]) * q_j;
      v[j + l] = r;
    }
  }
  double base = 0;
  for (; j < dim_; ++j) {
    const float q_j = v[j], r = q_j - centroid[j];
    base += l2 ? static_cast<double>(r) * r : static_cast<double>(centroid[j]) * q_j;
    v[j] = r;
  }
  for (double lane : lanes) base += lane;
  return base;
}

void RaBitQ::prepare_query(const float* q, const float* centroid, unsigned query_bits, Query& out) const {
  ANNFORGE_CHECK(query_bits >= 1 && query_bits <= max_query_bits(), ErrorKind::Value,
                 "RaBitQ: query_bits must be in 1..", max_query_bits(), " here, got ", query_bits);
  check_finite(q, dim_, "query");
  check_finite(centroid, dim_, "centroid");
  std::vector<float> v(dim_), rotated(padded_dim_);
  const double base = query_residual(q, centroid, v.data());
  rotate(v.data(), rotated.data());
  quantize_rotated(q, rotated.data(), base, query_bits, out);
}

void RaBitQ::prepare_queries(const float* q, std::size_t n, const float* centroid, unsigned query_bits,
                             Query* out) const {
  ANNFORGE_CHECK(query_bits >= 1 && query_bits <= max_query_bits(), ErrorKind::Value,
                 "RaBitQ: query_bits must be in 1..", max_query_bits(), " here, got ", query_bits);
  check_finite(q, n * dim_, "query");
  check_finite(centroid, dim_, "centroid");
  // A dense rotation matrix is read once per batch of queries through the packed GEMM kernel instead of
  // once per query (at 384-d it is 590 kB: reading it dominated a single query's preparation).
  const std::size_t D = padded_dim_;
  constexpr std::size_t kBatch = 64;
  std::vector<float> other_level, v(std::min(n, kBatch) * dim_), rotated(std::min(n, kBatch) * D);
  std::vector<double> base(kBatch);
  for (std::size_t b = 0; b < n; b += kBatch) {
    const std::size_t m = std::min(kBatch, n - b);
    for (std::size_t r = 0; r < m; ++r) base[r] = query_residual(q + (b + r) * dim_, centroid, v.data() + r * dim_);
    rotate_batch(v.data(), m, rotated.data(), other_level);
    for (std::size_t r = 0; r < m; ++r)
      quantize_rotated(q + (b + r) * dim_, rotated.data() + r * D, base[r], query_bits, out[b + r]);
  }
}

namespace {
// A 32-bit bijective mixer (Wellons' "lowbias32"): turns a counter into well-spread random bits.
inline std::uint32_t mix32(std::uint32_t x) noexcept {
  x ^= x >> 16;
  x *= 0x7feb352dU;
  x ^= x >> 15;
  x *= 0x846ca68bU;
  return x ^ (x >> 16);
}
}  // namespace

void RaBitQ::quantize_rotated(const float* q, const float* rotated, double base, unsigned query_bits,
                              Query& out) const {
  // Written as independent lanes and counter-based random bits so the loops vectorize: this runs once
  // per query (once per probed list for IVF), and a serial version cost ~8 us at 384-d, a sixth of a
  // quantized-graph query.
  const std::size_t D = padded_dim_;  // a multiple of 64
  constexpr std::size_t kLanes = 8;
  float lo_lane[kLanes], hi_lane[kLanes];
  double sq_lane[kLanes];
  for (std::size_t k = 0; k < kLanes; ++k) {
    lo_lane[k] = hi_lane[k] = rotated[k];
    sq_lane[k] = 0.0;
  }
  for (std::size_t i = 0; i < D; i += kLanes)
    for (std::size_t k = 0; k < kLanes; ++k) {
      const float value = rotated[i + k];
      lo_lane[k] = std::min(lo_lane[k], value);
      hi_lane[k] = std::max(hi_lane[k], value);
      sq_lane[k] += static_cast<double>(value) * value;
    }
  double lo = lo_lane[0], hi = hi_lane[0], sq = 0;
  for (std::size_t k = 0; k < kLanes; ++k) {
    lo = std::min<double>(lo, lo_lane[k]);
    hi = std::max<double>(hi, hi_lane[k]);
    sq += sq_lane[k];
  }
  const unsigned top = (1u << query_bits) - 1;
  const double delta = hi > lo ? (hi - lo) / top : 0.0;

  // Randomized rounding (E[q~] = q'). Its random bits are a hash of the seed and the query, so a query
  // always gets the same code; four hash lanes keep the multiply chains short.
  std::uint64_t lane[4];
  for (std::size_t k = 0; k < 4; ++k) lane[k] = seed_ ^ (0x717565727952ULL + k * util::kSplitMix64Gamma);
  std::size_t j = 0;
  for (; j + 4 <= dim_; j += 4)
    for (std::size_t k = 0; k < 4; ++k) {
      std::uint32_t bits;
      std::memcpy(&bits, q + j + k, sizeof(bits));
      lane[k] = (lane[k] ^ bits) * 0xBF58476D1CE4E5B9ULL;
      lane[k] ^= lane[k] >> 31;
    }
  for (; j < dim_; ++j) {
    std::uint32_t bits;
    std::memcpy(&bits, q + j, sizeof(bits));
    lane[0] = (lane[0] ^ bits) * 0xBF58476D1CE4E5B9ULL;
    lane[0] ^= lane[0] >> 31;
  }
  const std::uint64_t h = util::splitmix64(lane[0] ^ util::splitmix64(lane[1] ^ util::splitmix64(lane[2] ^ util::splitmix64(lane[3]))));
  const auto key = static_cast<std::uint32_t>(h), stride = static_cast<std::uint32_t>(h >> 32) | 1u;

  // level = floor(x + u), x = (q'_i - lo) / delta >= 0, u uniform in [0, 1): E[level] = x. The float to
  // integer conversion truncates, which is the floor here since x + u >= 0.
  const double scale = delta > 0 ? 1.0 / delta : 0.0;
  std::vector<std::uint16_t> levels(D);
  std::uint64_t level_sum = 0;
  if (query_bits <= 8) {
    // Single precision suffices below 256 levels (the rounding probabilities keep 16 bits) and runs
    // twice as wide; lo is a float (the smallest rotated value), so x >= 0 holds exactly.
    const auto flo = static_cast<float>(lo), fscale = static_cast<float>(scale);
    for (std::size_t i = 0; i < D; ++i) {
      const float u = static_cast<float>(mix32(key + static_cast<std::uint32_t>(i) * stride) >> 8) * (1.0f / 16777216.0f);
      const auto z = static_cast<std::int32_t>((rotated[i] - flo) * fscale + u);
      const std::uint32_t level = static_cast<std::uint32_t>(z) < top ? static_cast<std::uint32_t>(z) : top;
      levels[i] = static_cast<std::uint16_t>(level);
      level_sum += level;
    }
  } else {
    for (std::size_t i = 0; i < D; ++i) {
      const double u = static_cast<double>(mix32(key + static_cast<std::uint32_t>(i) * stride)) * (1.0 / 4294967296.0);
      const auto z = static_cast<std::uint32_t>((static_cast<double>(rotated[i]) - lo) * scale + u);
      const std::uint32_t level = z < top ? z : top;
      levels[i] = static_cast<std::uint16_t>(level);
      level_sum += level;
    }
  }
  const std::size_t W = words();
  out.query_bits = query_bits;
  out.planes.assign(static_cast<std::size_t>(query_bits) * W, 0);
  if (query_bits <= 8) {
    // Eight levels at a time: mask bit b of each byte, then one multiply gathers the eight bits
    // (byte i's bit lands on bit 56 + i; the partial products never carry into those bits).
    constexpr std::uint64_t kLowBits = 0x0101010101010101ULL, kGather = 0x0102040810204080ULL;
    std::vector<std::uint8_t> packed_levels(levels.begin(), levels.end());
    for (std::size_t w = 0; w < W; ++w)
      for (unsigned g = 0; g < 8; ++g) {
        const std::uint8_t* bytes = packed_levels.data() + w * 64 + g * 8;
        std::uint64_t eight = 0;  // byte i at bits 8i on any endianness (one load on little-endian)
        for (unsigned i = 0; i < 8; ++i) eight |= static_cast<std::uint64_t>(bytes[i]) << (8 * i);
        for (unsigned b = 0; b < query_bits; ++b)
          out.planes[b * W + w] |= ((((eight >> b) & kLowBits) * kGather) >> 56) << (g * 8);
      }
  } else {
    for (std::size_t w = 0; w < W; ++w) {
      const std::uint16_t* block = levels.data() + w * 64;
      for (unsigned b = 0; b < query_bits; ++b) {
        std::uint64_t word = 0;
        for (unsigned i = 0; i < 64; ++i) word |= static_cast<std::uint64_t>((block[i] >> b) & 1u) << i;
        out.planes[b * W + w] = word;
      }
    }
  }
  out.lo = lo;
  out.delta = delta;
  out.qsum = delta * static_cast<double>(level_sum) + lo * static_cast<double>(D);
  out.vnorm = std::sqrt(sq);
  out.base = base;
}

void RaBitQ::estimate(const Query& q, const std::uint8_t* records, std::size_t n, unsigned stage_bits, double eps0,
                      const simd::RaBitQKernels& kernels, float* est, float* lower, float* upper) const {
  ANNFORGE_CHECK(stage_bits == 1 || stage_bits == bits_, ErrorKind::Value, "RaBitQ: stage_bits must be 1 or ", bits_,
                 ", got ", stage_bits);
  ANNFORGE_CHECK(eps0 >= 0 && std::isfinite(eps0), ErrorKind::Value, "RaBitQ: eps0 must be finite and >= 0, got ",
                 eps0);
  ANNFORGE_CHECK(q.planes.size() == static_cast<std::size_t>(q.query_bits) * words(), ErrorKind::Value,
                 "RaBitQ: the query was prepared for another codec");
  const std::size_t stride = record_bytes() / 8;
  const auto* codes = reinterpret_cast<const std::uint64_t*>(records);
  std::vector<std::uint32_t> dots(n);
  if (stage_bits == 1)
    kernels.binary_dot(codes, n, stride, words(), q.planes.data(), q.query_bits, dots.data());
  else
    kernels.multibit_dot(codes, n, stride, words(), bits_, q.planes.data(), q.query_bits, dots.data());

  // <r, v> ~= scale * <y, q~>, <y, q~> = delta * dot + lo * sum(u) - offset * sum(q~), y = u - offset;
  // variance <= err^2 |v|^2 / (D - 1) + (|r|/a)^2 delta^2 / 4 (see the header).
  const double D = static_cast<double>(padded_dim_);
  const bool one_bit = stage_bits == 1;
  const double offset = one_bit ? 0.5 : ((1u << bits_) - 1) / 2.0;
  const double rotation_var = q.vnorm * q.vnorm / (D - 1.0);
  const double rounding_var = q.delta * q.delta / 4.0;
  const double sign_scale = 1.0 / (0.5 * std::sqrt(D));  // 1/|y| of a 1-bit code
  const std::size_t factor_offset = code_words() * 8, nf = num_factors(bits_);
  const bool l2 = metric_ == Metric::L2;
  const double sign = l2 ? -2.0 : -1.0;  // l2: |r|^2 + |v|^2 - 2 <r, v>; ip: 1 - <c, q> - <r, c> - <r, v>
  const double half_scale = l2 ? 2.0 * eps0 : eps0;
  for (std::size_t i = 0; i < n; ++i) {
    float f[8];
    std::memcpy(f, records + i * record_bytes() + factor_offset, nf * sizeof(float));
    const double inv_a = one_bit ? f[kSignInvA] : f[kInvA];
    const double err = one_bit ? f[kSignErr] : f[kErr];
    const double u_sum = one_bit ? f[kSignSum] : f[kCodeSum];
    const double scale = one_bit ? inv_a * sign_scale : f[kScale];
    const double ip = scale * (q.delta * dots[i] + q.lo * u_sum - offset * q.qsum);
    const double dist = (l2 ? f[kAdd] + q.base : 1.0 - q.base - f[kAdd]) + sign * ip;
    est[i] = static_cast<float>(dist);
    if (lower || upper) {
      const double half = half_scale * std::sqrt(err * err * rotation_var + inv_a * inv_a * rounding_var);
      if (lower) lower[i] = static_cast<float>(l2 ? std::max(0.0, dist - half) : dist - half);
      if (upper) upper[i] = static_cast<float>(dist + half);
    }
  }
}

}  // namespace annforge::codec

// ---------------------------------------------------------------------------------------------------
// Float queries for callers that score the codes with their own tables (index/ivf_rabitq.cpp)

namespace annforge::codec {

void RaBitQ::prepare_float_query(const float* q, const float* rotated_q, const float* centroid,
                                 const float* rotated_centroid, FloatQuery& out) const {
  // Runs once per (query, probed list): SIMD dot products instead of double loops.
  const std::size_t D = padded_dim_;
  const simd::Kernels& K = simd::kernels();
  out.rotated.resize(D);
  float* v = out.rotated.data();
  for (std::size_t i = 0; i < D; ++i) v[i] = rotated_q[i] - rotated_centroid[i];
  const float sq = K.dot(v, v, D);
  static const std::vector<float> kOnes(kMaxDim, 1.0f);  // padded_dim <= kMaxDim
  out.qsum = K.dot(v, kOnes.data(), D);
  out.vnorm = std::sqrt(static_cast<double>(sq));  // R has orthonormal columns: |R v| = |v|
  // l2: |v|^2; ip: <c, q> (cosine callers pass the normalised query).
  out.base = metric_ == Metric::L2 ? static_cast<double>(sq) : static_cast<double>(K.dot(centroid, q, dim_));
}

void RaBitQ::sign_nibbles(const std::uint8_t* record, std::uint8_t* nibbles) const {
  const auto* plane = reinterpret_cast<const std::uint64_t*>(record);  // the sign plane comes first
  for (std::size_t j = 0; j < padded_dim_ / 4; ++j)
    nibbles[j] = static_cast<std::uint8_t>((plane[(4 * j) / 64] >> ((4 * j) % 64)) & 0xfu);
}

void RaBitQ::fastscan_lut(const FloatQuery& q, float* lut) const {
  // Entry e of a group is sum_t bit_t(e) * v[t]: four 16-wide multiply-adds per group, which the compiler
  // vectorises (a doubling recurrence would not).
  static const auto kBit = [] {
    std::array<std::array<float, 16>, 4> m{};
    for (unsigned t = 0; t < 4; ++t)
      for (unsigned e = 0; e < 16; ++e) m[t][e] = static_cast<float>((e >> t) & 1u);
    return m;
  }();
  for (std::size_t j = 0; j < padded_dim_ / 4; ++j) {
    const float* v = q.rotated.data() + 4 * j;
    float* t = lut + 16 * j;
    const float v0 = v[0], v1 = v[1], v2 = v[2], v3 = v[3];
    for (unsigned e = 0; e < 16; ++e)
      t[e] = kBit[0][e] * v0 + kBit[1][e] * v1 + kBit[2][e] * v2 + kBit[3][e] * v3;
  }
}

namespace {
// The distance from <r, v> ~= ip and its bound's half-width (see the header's estimator).
inline float finish_estimate(Metric metric, const float* f, double base, double ip, double half, float* lower,
                             float* upper) {
  const bool l2 = metric == Metric::L2;
  const double dist = l2 ? f[RaBitQ::kAdd] + base - 2.0 * ip : 1.0 - base - f[RaBitQ::kAdd] - ip;
  if (l2) half *= 2.0;
  if (lower) *lower = static_cast<float>(l2 ? std::max(0.0, dist - half) : dist - half);
  if (upper) *upper = static_cast<float>(dist + half);
  return static_cast<float>(dist);
}
}  // namespace

float RaBitQ::estimate_sign(const FloatQuery& q, const float* f, double bit_dot, double bit_dot_error,
                            double eps0, float* lower, float* upper) const {
  const double D = static_cast<double>(padded_dim_);
  const double scale = f[kSignInvA] / (0.5 * std::sqrt(D));  // |r| / (a1 |y|), y = b - 1/2
  const double ip = scale * (bit_dot - 0.5 * q.qsum);
  const double err = f[kSignErr];
  const double half = eps0 * err * q.vnorm / std::sqrt(D - 1.0) + scale * bit_dot_error;
  return finish_estimate(metric_, f, q.base, ip, half, lower, upper);
}

RaBitQ::SignLinear RaBitQ::sign_linear(const FloatQuery& q) const {
  const double inv_y = 1.0 / (0.5 * std::sqrt(static_cast<double>(padded_dim_)));  // 1/|y| of a sign code
  const bool l2 = metric_ == Metric::L2;
  SignLinear s;
  s.constant = static_cast<float>(l2 ? q.base : 1.0 - q.base);
  s.add_sign = l2 ? 1.0f : -1.0f;
  s.slope = static_cast<float>((l2 ? -2.0 : -1.0) * inv_y);
  s.shift = static_cast<float>(-0.5 * q.qsum);
  return s;
}

namespace {
// <plane, q'> for one bit plane: through the 4-dimension table when there is one, else bit by bit.
double plane_dot(const std::uint64_t* plane, std::size_t words, const std::vector<float>& rotated, const float* lut) {
  double dot = 0;
  if (lut) {
    for (std::size_t w = 0; w < words; ++w) {
      const std::uint64_t bits = plane[w];
      const float* t = lut + w * 16 * 16;  // 16 nibbles of 16 entries per word
      float part = 0;
      for (unsigned j = 0; j < 16; ++j) part += t[j * 16 + ((bits >> (4 * j)) & 0xfu)];
      dot += part;
    }
    return dot;
  }
  for (std::size_t w = 0; w < words; ++w) {
    std::uint64_t bits = plane[w];
    while (bits) {
      const int t = __builtin_ctzll(bits);
      bits &= bits - 1;
      dot += rotated[w * 64 + static_cast<std::size_t>(t)];
    }
  }
  return dot;
}
}  // namespace

float RaBitQ::estimate_full(const FloatQuery& q, const std::uint8_t* record, double eps0, float* lower,
                            float* upper, const float* lut) const {
  const auto* planes = reinterpret_cast<const std::uint64_t*>(record);
  if (bits_ == 1) {
    float f[4];
    std::memcpy(f, record + factor_offset(), sizeof(f));
    return estimate_sign(q, f, plane_dot(planes, words(), q.rotated, lut), 0.0, eps0, lower, upper);
  }
  float f[8];
  std::memcpy(f, record + factor_offset(), num_factors(bits_) * sizeof(float));
  // <u, q'> = sum over planes a of 2^(bits-1-a) <plane_a, q'> (plane 0 holds the top bit).
  double dot = 0;
  for (unsigned a = 0; a < bits_; ++a)
    dot += std::ldexp(plane_dot(planes + a * words(), words(), q.rotated, lut), static_cast<int>(bits_ - 1 - a));
  const double offset = ((1u << bits_) - 1) / 2.0;
  const double ip = f[kScale] * (dot - offset * q.qsum);
  const double D = static_cast<double>(padded_dim_);
  const double half = eps0 * f[kErr] * q.vnorm / std::sqrt(D - 1.0);
  return finish_estimate(metric_, f, q.base, ip, half, lower, upper);
}

void RaBitQ::decode(const std::uint8_t* record, const float* centroid, float* out) const {
  float f[8];
  std::memcpy(f, record + code_words() * 8, num_factors(bits_) * sizeof(float));
  // |r|^2 = (|r|/a1)^2 - (|r| sqrt(1 - a1^2)/a1)^2, from the sign-stage factors (every metric has them).
  const double norm = std::sqrt(std::max(0.0, static_cast<double>(f[kSignInvA]) * f[kSignInvA] -
                                                  static_cast<double>(f[kSignErr]) * f[kSignErr]));
  const auto* planes = reinterpret_cast<const std::uint64_t*>(record);
  const std::size_t D = padded_dim_;
  const double offset = ((1u << bits_) - 1) / 2.0;
  std::vector<double> y(D);
  double sq = 0;
  for (std::size_t i = 0; i < D; ++i) {
    unsigned u = 0;
    for (unsigned a = 0; a < bits_; ++a) u = (u << 1) | static_cast<unsigned>((planes[a * words() + i / 64] >> (i % 64)) & 1u);
    y[i] = u - offset;
    sq += y[i] * y[i];
  }
  const double s = sq > 0 ? norm / std::sqrt(sq) : 0.0;
  if (rotation_kind_ == Rotation::Hadamard) {
    std::vector<float> z(D);
    for (std::size_t i = 0; i < D; ++i) z[i] = static_cast<float>(s * y[i]);
    hadamard_inverse(z.data());
    for (std::size_t j = 0; j < dim_; ++j) out[j] = static_cast<float>(centroid[j] + static_cast<double>(z[j]));
    return;
  }
  for (std::size_t j = 0; j < dim_; ++j) {
    double v = 0;
    for (std::size_t i = 0; i < D; ++i) v += static_cast<double>(rotation_[i * dim_ + j]) * y[i];
    out[j] = static_cast<float>(centroid[j] + s * v);
  }
}

}  // namespace annforge::codec
