// One code for stored full-precision vectors: HNSW's graph storage, IVF-PQ's refine copy and ScaNN's
// reorder copy all encode, decode and score rows through it (f32, f16, sq8; later codes plug in here).
//
// sq8 stores each dimension as round((x - offset) / scale) clamped to [0, 255], with offset = the
// dimension's minimum over the training rows and scale = (max - min) / 255. A dimension whose range is
// zero (constant in training) or not finite gets scale 1: codes stay exact for the trained value, every
// scale is positive (what the loaders of all three families demand), and no division by zero arises.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "annforge/common.h"
#include "annforge/simd/kernels.h"

namespace annforge {

// The stored-vector codes. The values are the refine / reorder byte in IVF-PQ and ScaNN files (None: the
// family keeps no full-precision copy); HNSW files use their own storage byte (see hnsw.h).
enum class RefineKind : std::uint8_t { None = 0, F32 = 1, F16 = 2, SQ8 = 3 };
RefineKind parse_refine(const std::string& name);  // "f32" | "f16" | "sq8" | "none"
const char* refine_name(RefineKind kind);

class VectorCodec {
 public:
  VectorCodec(RefineKind kind, std::size_t dim, Metric metric);

  RefineKind kind() const noexcept { return kind_; }
  std::size_t dim() const noexcept { return dim_; }
  std::size_t code_bytes() const noexcept;  // bytes per vector; 0 for None
  // Only sq8 learns parameters; the other codes are always ready.
  bool trained() const noexcept { return kind_ != RefineKind::SQ8 || !sq8_offset_.empty(); }

  // sq8: per-dimension ranges of n rows (n == 0: offset 0, scale 1). No-op for the other codes.
  void train(const float* rows, std::size_t n);
  void encode(const float* row, std::uint8_t* out) const;
  void decode(const std::uint8_t* code, float* out) const;

  // A query folded once for the code: sq8 keeps q - offset (l2) or q * scale and <q, offset> (ip).
  struct Query {
    const float* raw = nullptr;
    std::vector<float> folded;
    float base = 0.0f;
  };
  void prepare(const float* q, Query& out) const;
  // Distance as users see it (l2: squared; ip / cosine: 1 - <q, x>) in the stored representation.
  float distance(const Query& q, const std::uint8_t* code) const;
  // distance(), except that f32 l2 is summed `chunk` dimensions at a time and stops once the partial sum
  // exceeds `bound` (any larger value means "out"). Always summed chunk by chunk, so a distance does not
  // depend on when the bound cut in.
  float distance_within(const Query& q, const std::uint8_t* code, float bound, std::size_t chunk) const;

  // sq8 parameters (empty until trained), as files store them: dim offsets, then dim scales.
  const std::vector<float>& sq8_offset() const noexcept { return sq8_offset_; }
  const std::vector<float>& sq8_scale() const noexcept { return sq8_scale_; }
  // Takes parameters read from a file. Returns false (and keeps nothing) unless every scale is in
  // (0, 1e16) and every |offset| < 1e18, bounds under which folded queries and sums stay finite.
  bool load_sq8(const float* offset, const float* scale);
  static constexpr const char* kBadSq8 = "sq8 parameters out of range (scales must be positive, values below 1e18)";
  std::size_t memory_bytes() const noexcept;

 private:
  RefineKind kind_;
  std::size_t dim_;
  bool l2_;
  std::vector<float> sq8_offset_, sq8_scale_;
};

inline float VectorCodec::distance(const Query& q, const std::uint8_t* code) const {
  const auto& K = simd::kernels();
  switch (kind_) {
    case RefineKind::F32: {
      const auto* x = reinterpret_cast<const float*>(code);
      return l2_ ? K.l2_sqr(q.raw, x, dim_) : 1.0f - K.dot(q.raw, x, dim_);
    }
    case RefineKind::F16: {
      const auto* x = reinterpret_cast<const std::uint16_t*>(code);
      return l2_ ? K.l2_sqr_f16(q.raw, x, dim_) : 1.0f - K.dot_f16(q.raw, x, dim_);
    }
    case RefineKind::SQ8:
      return l2_ ? K.l2_sqr_sq8(q.folded.data(), code, sq8_scale_.data(), dim_)
                 : 1.0f - (q.base + K.dot_u8(q.folded.data(), code, dim_));
    case RefineKind::None: break;
  }
  return 0.0f;
}

}  // namespace annforge
