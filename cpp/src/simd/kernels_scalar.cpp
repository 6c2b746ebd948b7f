// Portable reference kernels: the baseline every SIMD level is tested against, and the fallback on
// CPUs (or builds) without a vector level. Four independent accumulators give the compiler ILP
// without changing results between builds (no -ffast-math anywhere).
#include "annforge/simd/kernels.h"
#include "f16_scalar.h"

namespace annforge::simd {
namespace {

using detail::f16_bits_to_f32;
using detail::f32_to_f16_bits;

constexpr std::size_t kPanelRows = 8;

float l2_sqr(const float* a, const float* b, std::size_t d) {
  float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  std::size_t j = 0;
  for (; j + 4 <= d; j += 4) {
    const float t0 = a[j] - b[j], t1 = a[j + 1] - b[j + 1], t2 = a[j + 2] - b[j + 2], t3 = a[j + 3] - b[j + 3];
    s0 += t0 * t0;
    s1 += t1 * t1;
    s2 += t2 * t2;
    s3 += t3 * t3;
  }
  for (; j < d; ++j) {
    const float t = a[j] - b[j];
    s0 += t * t;
  }
  return (s0 + s1) + (s2 + s3);
}

float dot(const float* a, const float* b, std::size_t d) {
  float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  std::size_t j = 0;
  for (; j + 4 <= d; j += 4) {
    s0 += a[j] * b[j];
    s1 += a[j + 1] * b[j + 1];
    s2 += a[j + 2] * b[j + 2];
    s3 += a[j + 3] * b[j + 3];
  }
  for (; j < d; ++j) s0 += a[j] * b[j];
  return (s0 + s1) + (s2 + s3);
}

void l2_sqr_rows(const float* q, const float* x, std::size_t n, std::size_t d, float* out) {
  for (std::size_t i = 0; i < n; ++i) out[i] = l2_sqr(q, x + i * d, d);
}

void dot_rows(const float* q, const float* x, std::size_t n, std::size_t d, float* out) {
  for (std::size_t i = 0; i < n; ++i) out[i] = dot(q, x + i * d, d);
}

std::size_t packed_size(std::size_t n, std::size_t d) {
  return (n + kPanelRows - 1) / kPanelRows * kPanelRows * d;
}

void pack_rows(const float* x, std::size_t n, std::size_t d, float* packed) {
  const std::size_t panels = (n + kPanelRows - 1) / kPanelRows;
  for (std::size_t p = 0; p < panels; ++p) {
    float* dst = packed + p * kPanelRows * d;
    for (std::size_t r = 0; r < kPanelRows; ++r) {
      const std::size_t row = p * kPanelRows + r;
      if (row < n) {
        const float* src = x + row * d;
        for (std::size_t k = 0; k < d; ++k) dst[k * kPanelRows + r] = src[k];
      } else {
        for (std::size_t k = 0; k < d; ++k) dst[k * kPanelRows + r] = 0.0f;
      }
    }
  }
}

void dot_packed(const float* q, std::size_t nq, std::size_t ldq, const float* packed, std::size_t n,
                std::size_t d, float* out, std::size_t ldo) {
  const std::size_t panels = (n + kPanelRows - 1) / kPanelRows;
  for (std::size_t i = 0; i < nq; ++i) {
    const float* qi = q + i * ldq;
    for (std::size_t p = 0; p < panels; ++p) {
      const float* panel = packed + p * kPanelRows * d;
      float acc[kPanelRows] = {};
      for (std::size_t k = 0; k < d; ++k) {
        const float qk = qi[k];
        for (std::size_t r = 0; r < kPanelRows; ++r) acc[r] += qk * panel[k * kPanelRows + r];
      }
      const std::size_t base = p * kPanelRows;
      for (std::size_t r = 0; r < kPanelRows && base + r < n; ++r) out[i * ldo + base + r] = acc[r];
    }
  }
}

float l2_sqr_f16(const float* q, const std::uint16_t* x, std::size_t d) {
  float s = 0;
  for (std::size_t j = 0; j < d; ++j) {
    const float t = q[j] - f16_bits_to_f32(x[j]);
    s += t * t;
  }
  return s;
}

float dot_f16(const float* q, const std::uint16_t* x, std::size_t d) {
  float s = 0;
  for (std::size_t j = 0; j < d; ++j) s += q[j] * f16_bits_to_f32(x[j]);
  return s;
}

void l2_sqr_f16_rows(const float* q, const std::uint16_t* x, std::size_t n, std::size_t d, float* out) {
  for (std::size_t i = 0; i < n; ++i) out[i] = l2_sqr_f16(q, x + i * d, d);
}

void dot_f16_rows(const float* q, const std::uint16_t* x, std::size_t n, std::size_t d, float* out) {
  for (std::size_t i = 0; i < n; ++i) out[i] = dot_f16(q, x + i * d, d);
}

void f32_to_f16(const float* in, std::uint16_t* out, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) out[i] = f32_to_f16_bits(in[i]);
}

void f16_to_f32(const std::uint16_t* in, float* out, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) out[i] = f16_bits_to_f32(in[i]);
}

float l2_sqr_sq8(const float* q_shifted, const std::uint8_t* code, const float* scale, std::size_t d) {
  float s = 0;
  for (std::size_t j = 0; j < d; ++j) {
    const float t = q_shifted[j] - static_cast<float>(code[j]) * scale[j];
    s += t * t;
  }
  return s;
}

float dot_u8(const float* w, const std::uint8_t* code, std::size_t d) {
  float s = 0;
  for (std::size_t j = 0; j < d; ++j) s += w[j] * static_cast<float>(code[j]);
  return s;
}

void l2_sqr_sq8_rows(const float* q_shifted, const std::uint8_t* codes, const float* scale, std::size_t n,
                     std::size_t d, float* out) {
  for (std::size_t i = 0; i < n; ++i) out[i] = l2_sqr_sq8(q_shifted, codes + i * d, scale, d);
}

void dot_u8_rows(const float* w, const std::uint8_t* codes, std::size_t n, std::size_t d, float* out) {
  for (std::size_t i = 0; i < n; ++i) out[i] = dot_u8(w, codes + i * d, d);
}

// --- selection --------------------------------------------------------------------------------------

std::size_t indices_at_least(const float* x, std::size_t n, float bound, std::uint32_t* out) {
  std::size_t c = 0;
  for (std::size_t j = 0; j < n; ++j) {  // branch-free: always write, advance only on a hit
    out[c] = static_cast<std::uint32_t>(j);
    c += x[j] >= bound ? 1 : 0;
  }
  return c;
}

// --- transforms ---------------------------------------------------------------------------------------

void fwht(float* x, std::size_t n) {
  for (std::size_t h = 1; h < n; h *= 2)
    for (std::size_t i = 0; i < n; i += 2 * h)
      for (std::size_t j = i; j < i + h; ++j) {
        const float a = x[j], b = x[j + h];
        x[j] = a + b;
        x[j + h] = a - b;
      }
}

const Kernels kTable = {
    Level::Scalar,   l2_sqr,        dot,          l2_sqr_rows,     dot_rows,    kPanelRows,
    packed_size,     pack_rows,     dot_packed,   l2_sqr_f16,      dot_f16,     l2_sqr_f16_rows,
    dot_f16_rows,    f32_to_f16,    f16_to_f32,   l2_sqr_sq8,      dot_u8,      l2_sqr_sq8_rows,
    dot_u8_rows,     indices_at_least, fwht,
};

}  // namespace

const Kernels* scalar_kernels() { return &kTable; }

}  // namespace annforge::simd
