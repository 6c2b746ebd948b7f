#include "annforge/storage/vector_codec.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

namespace annforge {

RefineKind parse_refine(const std::string& name) {
  if (name == "f32") return RefineKind::F32;
  if (name == "f16") return RefineKind::F16;
  if (name == "sq8") return RefineKind::SQ8;
  if (name == "none" || name.empty()) return RefineKind::None;
  fail(ErrorKind::Value, "unknown refine storage '", name, "': expected 'f32', 'f16', 'sq8' or None");
}

const char* refine_name(RefineKind kind) {
  switch (kind) {
    case RefineKind::F32: return "f32";
    case RefineKind::F16: return "f16";
    case RefineKind::SQ8: return "sq8";
    case RefineKind::None: return "none";
  }
  return "none";
}

VectorCodec::VectorCodec(RefineKind kind, std::size_t dim, Metric metric)
    : kind_(kind), dim_(dim), l2_(metric == Metric::L2) {}

std::size_t VectorCodec::code_bytes() const noexcept {
  switch (kind_) {
    case RefineKind::F32: return dim_ * sizeof(float);
    case RefineKind::F16: return dim_ * sizeof(std::uint16_t);
    case RefineKind::SQ8: return dim_;
    case RefineKind::None: return 0;
  }
  return 0;
}

void VectorCodec::train(const float* rows, std::size_t n) {
  if (kind_ != RefineKind::SQ8) return;
  std::vector<float> lo(dim_, std::numeric_limits<float>::infinity());
  std::vector<float> hi(dim_, -std::numeric_limits<float>::infinity());
  for (std::size_t i = 0; i < n; ++i)
    for (std::size_t j = 0; j < dim_; ++j) {
      lo[j] = std::min(lo[j], rows[i * dim_ + j]);
      hi[j] = std::max(hi[j], rows[i * dim_ + j]);
    }
  if (n == 0) std::fill(lo.begin(), lo.end(), 0.0f), std::fill(hi.begin(), hi.end(), 0.0f);
  std::vector<float> scale(dim_);
  for (std::size_t j = 0; j < dim_; ++j) {
    const float range = hi[j] - lo[j];
    scale[j] = range > 0.0f && std::isfinite(range) ? range / 255.0f : 1.0f;  // see the header
  }
  sq8_offset_ = std::move(lo);
  sq8_scale_ = std::move(scale);
}

void VectorCodec::encode(const float* row, std::uint8_t* out) const {
  switch (kind_) {
    case RefineKind::F32: std::memcpy(out, row, dim_ * sizeof(float)); break;
    case RefineKind::F16: {
      std::vector<std::uint16_t> h(dim_);  // `out` need not be 2-byte aligned
      simd::kernels().f32_to_f16(row, h.data(), dim_);
      std::memcpy(out, h.data(), dim_ * sizeof(std::uint16_t));
      break;
    }
    case RefineKind::SQ8:
      for (std::size_t j = 0; j < dim_; ++j) {
        const float v = std::nearbyint((row[j] - sq8_offset_[j]) / sq8_scale_[j]);
        out[j] = static_cast<std::uint8_t>(std::min(255.0f, std::max(0.0f, v)));  // a NaN lands on 0
      }
      break;
    case RefineKind::None: break;
  }
}

void VectorCodec::decode(const std::uint8_t* code, float* out) const {
  switch (kind_) {
    case RefineKind::F32: std::memcpy(out, code, dim_ * sizeof(float)); break;
    case RefineKind::F16: {
      std::vector<std::uint16_t> h(dim_);
      std::memcpy(h.data(), code, dim_ * sizeof(std::uint16_t));
      simd::kernels().f16_to_f32(h.data(), out, dim_);
      break;
    }
    case RefineKind::SQ8:
      for (std::size_t j = 0; j < dim_; ++j) out[j] = sq8_offset_[j] + code[j] * sq8_scale_[j];
      break;
    case RefineKind::None: break;
  }
}

void VectorCodec::prepare(const float* q, Query& out) const {
  out.raw = q;
  if (kind_ != RefineKind::SQ8) return;
  out.folded.resize(dim_);
  const float* off = sq8_offset_.data();
  const float* scale = sq8_scale_.data();
  if (l2_) {
    for (std::size_t j = 0; j < dim_; ++j) out.folded[j] = q[j] - off[j];
  } else {
    float base = 0.0f;
    for (std::size_t j = 0; j < dim_; ++j) {
      out.folded[j] = q[j] * scale[j];
      base += q[j] * off[j];
    }
    out.base = base;
  }
}

float VectorCodec::distance_within(const Query& q, const std::uint8_t* code, float bound, std::size_t chunk) const {
  if (kind_ != RefineKind::F32 || !l2_) return distance(q, code);
  // Squared l2 only grows along the row: once a prefix exceeds `bound` the rest need not be read.
  const auto& K = simd::kernels();
  const auto* x = reinterpret_cast<const float*>(code);
  float sum = 0.0f;
  for (std::size_t o = 0; o < dim_; o += chunk) {
    sum += K.l2_sqr(q.raw + o, x + o, std::min(chunk, dim_ - o));
    if (sum > bound) break;
  }
  return sum;
}

bool VectorCodec::load_sq8(const float* offset, const float* scale) {
  for (std::size_t j = 0; j < dim_; ++j)
    if (!(scale[j] > 0.0f) || !(std::fabs(offset[j]) < 1e18f) || !(scale[j] < 1e16f)) return false;
  sq8_offset_.assign(offset, offset + dim_);
  sq8_scale_.assign(scale, scale + dim_);
  return true;
}

std::size_t VectorCodec::memory_bytes() const noexcept {
  return (sq8_offset_.capacity() + sq8_scale_.capacity()) * sizeof(float);
}

}  // namespace annforge
