// NEON (AArch64 Advanced SIMD) kernels. Advanced SIMD is mandatory on AArch64, so this file needs no
// extra flags; on any other target it compiles to the stub at the bottom and the dispatcher skips the
// level. The loops are kernels_vector.inc's (as for AVX2 and AVX-512), over the 4-lane primitives defined
// here: f32 one-to-one / one-to-many, the packed GEMM (panel of 8 rows: the scalar table's layout),
// binary16 and sq8 distances. The binary16 <-> float32 array conversions are the scalar ones (bit-exact
// by construction, NaN included).
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

// --- the primitives of kernels_vector.inc -------------------------------------------------------------

constexpr size_t kPanelRows = 8;  // two q-registers per k step; the scalar table's panel height
constexpr size_t kMr = 8;         // queries per micro-tile: 8 x 8 = 16 accumulators (of 32 registers)
constexpr size_t kKc = 256;       // k block of dot_packed (an 8 KiB panel slice stays in L1)

struct V {
  static constexpr Level kLevel = Level::NEON;
  using reg = float32x4_t;
  using tail = size_t;  // the number of elements, < 4
  static constexpr size_t kLanes = 4;
  static constexpr bool kMaskedTails = false;  // tails go element by element
  static constexpr bool kPrefetch = false;
  static constexpr size_t kSq8Accumulators = 2;
  static constexpr int kUnrollM = 8;
  static constexpr int kUnrollK = 1;
  static constexpr size_t kPackDims = 4;

  static inline reg zero() { return vdupq_n_f32(0); }
  static inline reg load(const float* p) { return vld1q_f32(p); }
  static inline reg broadcast(const float* p) { return vdupq_n_f32(*p); }
  static inline reg add(reg a, reg b) { return vaddq_f32(a, b); }
  static inline reg sub(reg a, reg b) { return vsubq_f32(a, b); }
  static inline reg fma(reg a, reg b, reg acc) { return vfmaq_f32(acc, a, b); }
  static inline reg fnma(reg a, reg b, reg c) { return vfmsq_f32(c, a, b); }
  static inline float hsum(reg v) { return vaddvq_f32(v); }
  static inline tail tail_of(size_t r) { return r; }
  // Partial loads and stores (the GEMM's last panel) go through a zero-padded copy.
  static inline reg load_part(const float* p, tail r) {
    float buf[4] = {0, 0, 0, 0};
    for (size_t i = 0; i < r; ++i) buf[i] = p[i];
    return vld1q_f32(buf);
  }
  static inline void store(float* p, reg v) { vst1q_f32(p, v); }
  static inline void store_part(float* p, tail r, reg v) {
    float buf[4];
    vst1q_f32(buf, v);
    for (size_t i = 0; i < r; ++i) p[i] = buf[i];
  }
  static inline void prefetch(const void*) {}
  // 4 x 4 transpose of rows s .. s + 3 ld, dimensions 0..3.
  static inline void transpose_block(const float* s, size_t ld, float* o) {
    const float32x4_t r0 = vld1q_f32(s), r1 = vld1q_f32(s + ld), r2 = vld1q_f32(s + 2 * ld), r3 = vld1q_f32(s + 3 * ld);
    const float32x4_t t0 = vtrn1q_f32(r0, r1), t1 = vtrn2q_f32(r0, r1), t2 = vtrn1q_f32(r2, r3),
                      t3 = vtrn2q_f32(r2, r3);
    vst1q_f32(o, vreinterpretq_f32_f64(vtrn1q_f64(vreinterpretq_f64_f32(t0), vreinterpretq_f64_f32(t2))));
    vst1q_f32(o + kPanelRows, vreinterpretq_f32_f64(vtrn1q_f64(vreinterpretq_f64_f32(t1), vreinterpretq_f64_f32(t3))));
    vst1q_f32(o + 2 * kPanelRows,
              vreinterpretq_f32_f64(vtrn2q_f64(vreinterpretq_f64_f32(t0), vreinterpretq_f64_f32(t2))));
    vst1q_f32(o + 3 * kPanelRows,
              vreinterpretq_f32_f64(vtrn2q_f64(vreinterpretq_f64_f32(t1), vreinterpretq_f64_f32(t3))));
  }
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

#include "kernels_vector.inc"

// --- float16 conversion: the scalar code (bit-exact by construction, NaN included) --------------------

void f32_to_f16(const float* in, uint16_t* out, size_t n) {
  for (size_t i = 0; i < n; ++i) out[i] = detail::f32_to_f16_bits(in[i]);
}
void f16_to_f32(const uint16_t* in, float* out, size_t n) {
  for (size_t i = 0; i < n; ++i) out[i] = detail::f16_bits_to_f32(in[i]);
}

// --- selection --------------------------------------------------------------------------------------

// One compare per 8 scores; the rare chunk with a hit writes its indices branch-free.
size_t indices_at_least(const float* x, size_t n, float bound, std::uint32_t* out) {
  const float32x4_t b = vdupq_n_f32(bound);
  size_t c = 0, j = 0;
  for (; j + 8 <= n; j += 8) {
    const uint32x4_t m = vorrq_u32(vcgeq_f32(vld1q_f32(x + j), b), vcgeq_f32(vld1q_f32(x + j + 4), b));
    if (vmaxvq_u32(m) != 0) c = append_at_least(x, j, j + 8, bound, out, c);
  }
  return append_at_least(x, j, n, bound, out, c);
}

// --- transforms ---------------------------------------------------------------------------------------

// Spans 1 and 2 of the transform inside each 4-lane vector: a * s + b with b the lanes i ^ h swapped in
// and s_i = -1 where bit h of i is set (as the x86 files).
void fwht_in_lanes(float* x, size_t n) {
  static const float k1[4] = {1, -1, 1, -1}, k2[4] = {1, 1, -1, -1};
  const float32x4_t s1 = vld1q_f32(k1), s2 = vld1q_f32(k2);
  for (size_t i = 0; i < n; i += 4) {
    float32x4_t a = vld1q_f32(x + i);
    a = vfmaq_f32(vrev64q_f32(a), a, s1);
    a = vfmaq_f32(vextq_f32(a, a, 2), a, s2);
    vst1q_f32(x + i, a);
  }
}

}  // namespace

const Kernels* neon_kernels() { return &kTable; }

}  // namespace annforge::simd

#else  // not an AArch64 build with NEON

namespace annforge::simd {
const Kernels* neon_kernels() { return nullptr; }
}  // namespace annforge::simd

#endif
