// NEON (AArch64 Advanced SIMD) kernels. Advanced SIMD is mandatory on AArch64, so this file needs no
// extra flags; on any other target it compiles to the stub at the bottom and the dispatcher skips the
// level. Same structure as kernels_avx2.cpp at 4 lanes: f32 one-to-one / one-to-many, the packed GEMM
// (panel of 8 rows: the scalar table's layout), binary16 and sq8 distances. The binary16 <-> float32
// array conversions are the scalar ones (bit-exact by construction, NaN included).
//
// Tails go element by element, so no kernel reads or writes past the end of a row.
#include "annforge/simd/kernels.h"

#if defined(ANNFORGE_HAVE_NEON) && defined(__aarch64__) && defined(__ARM_NEON)

#include <arm_neon.h>

#include "f16_scalar.h"

namespace annforge::simd {
namespace {

using std::size_t;
using std::uint16_t;
using std::uint8_t;

constexpr size_t kPanelRows = 8;  // two q-registers per k step; the scalar table's panel height
constexpr size_t kMr = 8;         // queries per micro-tile: 8 x 8 = 16 accumulators (of 32 registers)
constexpr size_t kKc = 256;       // k block of dot_packed (an 8 KiB panel slice stays in L1)

static inline size_t min_size(size_t a, size_t b) { return a < b ? a : b; }

// Per-element updates of the distance accumulators (vector and scalar tail forms).
struct L2 {
  static inline float32x4_t step(float32x4_t q, float32x4_t x, float32x4_t acc) {
    const float32x4_t t = vsubq_f32(q, x);
    return vfmaq_f32(acc, t, t);
  }
  static inline float step1(float q, float x, float acc) { return acc + (q - x) * (q - x); }
};
struct Dot {
  static inline float32x4_t step(float32x4_t q, float32x4_t x, float32x4_t acc) { return vfmaq_f32(acc, q, x); }
  static inline float step1(float q, float x, float acc) { return acc + q * x; }
};

// Loaders of 4 stored elements (float32 / binary16 / uint8) as floats, and of one element.
struct LoadF32 {
  using T = float;
  static inline float32x4_t full(const float* p) { return vld1q_f32(p); }
  static inline float one(const float* p) { return *p; }
};
struct LoadF16 {
  using T = uint16_t;
  static inline float32x4_t full(const uint16_t* p) { return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p))); }
  static inline float one(const uint16_t* p) { return detail::f16_bits_to_f32(*p); }
};
struct LoadU8 {
  using T = uint8_t;
  static inline float32x4_t full(const uint8_t* p) {
    // 4 bytes through a 32-bit lane load (never past p + 3), widened to u16, u32, float.
    std::uint32_t word;
    __builtin_memcpy(&word, p, 4);
    const uint8x8_t b = vreinterpret_u8_u32(vdup_n_u32(word));
    return vcvtq_f32_u32(vmovl_u16(vget_low_u16(vmovl_u8(b))));
  }
  static inline float one(const uint8_t* p) { return static_cast<float>(*p); }
};

// --- one query against one row / four rows ----------------------------------------------------------

template <class Op, class Ld>
float pair(const float* q, const typename Ld::T* x, size_t d) {
  float32x4_t s0 = vdupq_n_f32(0), s1 = vdupq_n_f32(0), s2 = vdupq_n_f32(0), s3 = vdupq_n_f32(0);
  size_t j = 0;
  for (; j + 16 <= d; j += 16) {
    s0 = Op::step(vld1q_f32(q + j), Ld::full(x + j), s0);
    s1 = Op::step(vld1q_f32(q + j + 4), Ld::full(x + j + 4), s1);
    s2 = Op::step(vld1q_f32(q + j + 8), Ld::full(x + j + 8), s2);
    s3 = Op::step(vld1q_f32(q + j + 12), Ld::full(x + j + 12), s3);
  }
  for (; j + 4 <= d; j += 4) s0 = Op::step(vld1q_f32(q + j), Ld::full(x + j), s0);
  float s = vaddvq_f32(vaddq_f32(vaddq_f32(s0, s1), vaddq_f32(s2, s3)));
  for (; j < d; ++j) s = Op::step1(q[j], Ld::one(x + j), s);
  return s;
}

// Four rows at a time share each query load; two accumulators per row hide the FMA latency.
template <class Op, class Ld>
void rows(const float* q, const typename Ld::T* x, size_t n, size_t d, float* out) {
  using T = typename Ld::T;
  size_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const T* x0 = x + i * d;
    const T* x1 = x0 + d;
    const T* x2 = x1 + d;
    const T* x3 = x2 + d;
    float32x4_t a0 = vdupq_n_f32(0), a1 = vdupq_n_f32(0), a2 = vdupq_n_f32(0), a3 = vdupq_n_f32(0);
    float32x4_t b0 = vdupq_n_f32(0), b1 = vdupq_n_f32(0), b2 = vdupq_n_f32(0), b3 = vdupq_n_f32(0);
    size_t j = 0;
    for (; j + 8 <= d; j += 8) {
      const float32x4_t qa = vld1q_f32(q + j), qb = vld1q_f32(q + j + 4);
      a0 = Op::step(qa, Ld::full(x0 + j), a0);
      a1 = Op::step(qa, Ld::full(x1 + j), a1);
      a2 = Op::step(qa, Ld::full(x2 + j), a2);
      a3 = Op::step(qa, Ld::full(x3 + j), a3);
      b0 = Op::step(qb, Ld::full(x0 + j + 4), b0);
      b1 = Op::step(qb, Ld::full(x1 + j + 4), b1);
      b2 = Op::step(qb, Ld::full(x2 + j + 4), b2);
      b3 = Op::step(qb, Ld::full(x3 + j + 4), b3);
    }
    if (j + 4 <= d) {
      const float32x4_t qa = vld1q_f32(q + j);
      a0 = Op::step(qa, Ld::full(x0 + j), a0);
      a1 = Op::step(qa, Ld::full(x1 + j), a1);
      a2 = Op::step(qa, Ld::full(x2 + j), a2);
      a3 = Op::step(qa, Ld::full(x3 + j), a3);
      j += 4;
    }
    float s0 = vaddvq_f32(vaddq_f32(a0, b0)), s1 = vaddvq_f32(vaddq_f32(a1, b1)),
          s2 = vaddvq_f32(vaddq_f32(a2, b2)), s3 = vaddvq_f32(vaddq_f32(a3, b3));
    for (; j < d; ++j) {
      s0 = Op::step1(q[j], Ld::one(x0 + j), s0);
      s1 = Op::step1(q[j], Ld::one(x1 + j), s1);
      s2 = Op::step1(q[j], Ld::one(x2 + j), s2);
      s3 = Op::step1(q[j], Ld::one(x3 + j), s3);
    }
    out[i] = s0;
    out[i + 1] = s1;
    out[i + 2] = s2;
    out[i + 3] = s3;
  }
  for (; i < n; ++i) out[i] = pair<Op, Ld>(q, x + i * d, d);
}

// --- float32 --------------------------------------------------------------------------------------

float l2_sqr(const float* a, const float* b, size_t d) { return pair<L2, LoadF32>(a, b, d); }
float dot(const float* a, const float* b, size_t d) { return pair<Dot, LoadF32>(a, b, d); }
void l2_sqr_rows(const float* q, const float* x, size_t n, size_t d, float* out) {
  rows<L2, LoadF32>(q, x, n, d, out);
}
void dot_rows(const float* q, const float* x, size_t n, size_t d, float* out) {
  rows<Dot, LoadF32>(q, x, n, d, out);
}

// --- packed many-to-many ------------------------------------------------------------------------------

size_t packed_size(size_t n, size_t d) { return (n + kPanelRows - 1) / kPanelRows * kPanelRows * d; }

// Panel p holds rows p*8 .. p*8+7 as packed[p*8*d + k*8 + r]; missing rows of the last panel are zeros.
void pack_rows(const float* x, size_t n, size_t d, float* packed) {
  const size_t panels = (n + kPanelRows - 1) / kPanelRows;
  for (size_t p = 0; p < panels; ++p) {
    float* dst = packed + p * kPanelRows * d;
    const size_t row0 = p * kPanelRows, valid = min_size(kPanelRows, n - row0);
    size_t k = 0;
    if (valid == kPanelRows) {  // 4 x 4 transposes of rows r..r+3, dimensions k..k+3
      for (; k + 4 <= d; k += 4) {
        for (size_t h = 0; h < 2; ++h) {
          const float* s = x + (row0 + 4 * h) * d + k;
          const float32x4_t r0 = vld1q_f32(s), r1 = vld1q_f32(s + d), r2 = vld1q_f32(s + 2 * d),
                            r3 = vld1q_f32(s + 3 * d);
          const float32x4_t t0 = vtrn1q_f32(r0, r1), t1 = vtrn2q_f32(r0, r1), t2 = vtrn1q_f32(r2, r3),
                            t3 = vtrn2q_f32(r2, r3);
          float* o = dst + k * kPanelRows + 4 * h;
          vst1q_f32(o, vreinterpretq_f32_f64(vtrn1q_f64(vreinterpretq_f64_f32(t0), vreinterpretq_f64_f32(t2))));
          vst1q_f32(o + kPanelRows,
                    vreinterpretq_f32_f64(vtrn1q_f64(vreinterpretq_f64_f32(t1), vreinterpretq_f64_f32(t3))));
          vst1q_f32(o + 2 * kPanelRows,
                    vreinterpretq_f32_f64(vtrn2q_f64(vreinterpretq_f64_f32(t0), vreinterpretq_f64_f32(t2))));
          vst1q_f32(o + 3 * kPanelRows,
                    vreinterpretq_f32_f64(vtrn2q_f64(vreinterpretq_f64_f32(t1), vreinterpretq_f64_f32(t3))));
        }
      }
    }
    for (; k < d; ++k)
      for (size_t r = 0; r < kPanelRows; ++r) dst[k * kPanelRows + r] = r < valid ? x[(row0 + r) * d + k] : 0.0f;
  }
}

// Micro-kernel: M (<= 8) queries x 8 rows over kc dimensions; c0/c1[i] cover rows 0..3 / 4..7.
template <size_t M>
void tile(const float* q, size_t ldq, const float* panel, size_t kc, float* out, size_t ldo, size_t valid,
          bool accumulate) {
  float32x4_t c0[M], c1[M];
  for (size_t i = 0; i < M; ++i) c0[i] = c1[i] = vdupq_n_f32(0);
  for (size_t k = 0; k < kc; ++k) {
    const float32x4_t b0 = vld1q_f32(panel + k * kPanelRows), b1 = vld1q_f32(panel + k * kPanelRows + 4);
    for (size_t i = 0; i < M; ++i) {
      const float32x4_t a = vdupq_n_f32(q[i * ldq + k]);
      c0[i] = vfmaq_f32(c0[i], a, b0);
      c1[i] = vfmaq_f32(c1[i], a, b1);
    }
  }
  for (size_t i = 0; i < M; ++i) {
    float* o = out + i * ldo;
    if (valid == kPanelRows) {
      if (accumulate) {
        c0[i] = vaddq_f32(c0[i], vld1q_f32(o));
        c1[i] = vaddq_f32(c1[i], vld1q_f32(o + 4));
      }
      vst1q_f32(o, c0[i]);
      vst1q_f32(o + 4, c1[i]);
    } else {
      float tmp[kPanelRows];
      vst1q_f32(tmp, c0[i]);
      vst1q_f32(tmp + 4, c1[i]);
      for (size_t r = 0; r < valid; ++r) o[r] = accumulate ? o[r] + tmp[r] : tmp[r];
    }
  }
}

void tile_rest(size_t m, const float* q, size_t ldq, const float* panel, size_t kc, float* out, size_t ldo,
               size_t valid, bool acc) {
  switch (m) {
    case 1: tile<1>(q, ldq, panel, kc, out, ldo, valid, acc); break;
    case 2: tile<2>(q, ldq, panel, kc, out, ldo, valid, acc); break;
    case 3: tile<3>(q, ldq, panel, kc, out, ldo, valid, acc); break;
    case 4: tile<4>(q, ldq, panel, kc, out, ldo, valid, acc); break;
    case 5: tile<5>(q, ldq, panel, kc, out, ldo, valid, acc); break;
    case 6: tile<6>(q, ldq, panel, kc, out, ldo, valid, acc); break;
    case 7: tile<7>(q, ldq, panel, kc, out, ldo, valid, acc); break;
    default: break;
  }
}

void dot_packed(const float* q, size_t nq, size_t ldq, const float* packed, size_t n, size_t d, float* out,
                size_t ldo) {
  const size_t panels = (n + kPanelRows - 1) / kPanelRows;
  if (d == 0) {
    for (size_t i = 0; i < nq; ++i)
      for (size_t j = 0; j < n; ++j) out[i * ldo + j] = 0.0f;
    return;
  }
  for (size_t k0 = 0; k0 < d; k0 += kKc) {
    const size_t kc = min_size(kKc, d - k0);
    const bool acc = k0 != 0;
    for (size_t p = 0; p < panels; ++p) {
      const float* panel = packed + p * kPanelRows * d + k0 * kPanelRows;
      const size_t j0 = p * kPanelRows;
      const size_t valid = min_size(kPanelRows, n - j0);
      size_t i = 0;
      for (; i + kMr <= nq; i += kMr)
        tile<kMr>(q + i * ldq + k0, ldq, panel, kc, out + i * ldo + j0, ldo, valid, acc);
      if (i < nq) tile_rest(nq - i, q + i * ldq + k0, ldq, panel, kc, out + i * ldo + j0, ldo, valid, acc);
    }
  }
}

// --- float16 storage --------------------------------------------------------------------------------

float l2_sqr_f16(const float* q, const uint16_t* x, size_t d) { return pair<L2, LoadF16>(q, x, d); }
float dot_f16(const float* q, const uint16_t* x, size_t d) { return pair<Dot, LoadF16>(q, x, d); }
void l2_sqr_f16_rows(const float* q, const uint16_t* x, size_t n, size_t d, float* out) {
  rows<L2, LoadF16>(q, x, n, d, out);
}
void dot_f16_rows(const float* q, const uint16_t* x, size_t n, size_t d, float* out) {
  rows<Dot, LoadF16>(q, x, n, d, out);
}

void f32_to_f16(const float* in, uint16_t* out, size_t n) {
  for (size_t i = 0; i < n; ++i) out[i] = detail::f32_to_f16_bits(in[i]);
}
void f16_to_f32(const uint16_t* in, float* out, size_t n) {
  for (size_t i = 0; i < n; ++i) out[i] = detail::f16_bits_to_f32(in[i]);
}

// --- sq8 ----------------------------------------------------------------------------------------------

float l2_sqr_sq8(const float* q, const uint8_t* code, const float* scale, size_t d) {
  float32x4_t s0 = vdupq_n_f32(0), s1 = vdupq_n_f32(0);
  size_t j = 0;
  for (; j + 8 <= d; j += 8) {
    const float32x4_t t0 = vfmsq_f32(vld1q_f32(q + j), LoadU8::full(code + j), vld1q_f32(scale + j));
    const float32x4_t t1 = vfmsq_f32(vld1q_f32(q + j + 4), LoadU8::full(code + j + 4), vld1q_f32(scale + j + 4));
    s0 = vfmaq_f32(s0, t0, t0);
    s1 = vfmaq_f32(s1, t1, t1);
  }
  for (; j + 4 <= d; j += 4) {
    const float32x4_t t = vfmsq_f32(vld1q_f32(q + j), LoadU8::full(code + j), vld1q_f32(scale + j));
    s0 = vfmaq_f32(s0, t, t);
  }
  float s = vaddvq_f32(vaddq_f32(s0, s1));
  for (; j < d; ++j) {
    const float t = q[j] - static_cast<float>(code[j]) * scale[j];
    s += t * t;
  }
  return s;
}

float dot_u8(const float* w, const uint8_t* code, size_t d) { return pair<Dot, LoadU8>(w, code, d); }

void dot_u8_rows(const float* w, const uint8_t* codes, size_t n, size_t d, float* out) {
  rows<Dot, LoadU8>(w, codes, n, d, out);
}

void l2_sqr_sq8_rows(const float* q, const uint8_t* codes, const float* scale, size_t n, size_t d, float* out) {
  for (size_t i = 0; i < n; ++i) out[i] = l2_sqr_sq8(q, codes + i * d, scale, d);
}

// --- selection --------------------------------------------------------------------------------------

// One compare per 8 scores; the rare chunk with a hit writes its indices branch-free.
size_t indices_at_least(const float* x, size_t n, float bound, std::uint32_t* out) {
  const float32x4_t b = vdupq_n_f32(bound);
  size_t c = 0, j = 0;
  for (; j + 8 <= n; j += 8) {
    const uint32x4_t m = vorrq_u32(vcgeq_f32(vld1q_f32(x + j), b), vcgeq_f32(vld1q_f32(x + j + 4), b));
    if (vmaxvq_u32(m) == 0) continue;
    for (size_t t = 0; t < 8; ++t) {
      out[c] = static_cast<std::uint32_t>(j + t);
      c += x[j + t] >= bound ? 1 : 0;
    }
  }
  for (; j < n; ++j) {
    out[c] = static_cast<std::uint32_t>(j);
    c += x[j] >= bound ? 1 : 0;
  }
  return c;
}

const Kernels kTable = {
    Level::NEON,     l2_sqr,        dot,          l2_sqr_rows,     dot_rows,    kPanelRows,
    packed_size,     pack_rows,     dot_packed,   l2_sqr_f16,      dot_f16,     l2_sqr_f16_rows,
    dot_f16_rows,    f32_to_f16,    f16_to_f32,   l2_sqr_sq8,      dot_u8,      l2_sqr_sq8_rows,
    dot_u8_rows,     indices_at_least,
};

}  // namespace

const Kernels* neon_kernels() { return &kTable; }

}  // namespace annforge::simd

#else  // not an AArch64 build with NEON

namespace annforge::simd {
const Kernels* neon_kernels() { return nullptr; }
}  // namespace annforge::simd

#endif
