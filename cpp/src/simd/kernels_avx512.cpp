// AVX-512 kernels (F + BW + DQ + VL, with FMA and F16C). Compiled with -mavx512f -mavx512bw -mavx512dq
// -mavx512vl -mavx2 -mfma -mf16c (see CMakeLists.txt) and only ever called after the dispatcher has
// checked the CPU, so nothing in here may be reachable from baseline code: everything lives in an
// anonymous namespace and no std:: inline function or template is used (a weak inline symbol compiled
// with these flags could be chosen by the linker for a baseline caller).
//
// The loops are kernels_vector.inc's, over the 16-lane primitives defined here. Tails are handled with
// masked loads/stores, so no kernel reads or writes past the end of a row.
#include "annforge/simd/kernels.h"

#if defined(ANNFORGE_HAVE_AVX512)

#if defined(__GNUC__) && !defined(__clang__)
// GCC 12's avx512fintrin.h trips its own -Wuninitialized in _mm512_undefined_* (GCC bug 105593).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include <immintrin.h>

#include "f16_scalar.h"

namespace annforge::simd {
namespace {

using std::size_t;
using std::uint16_t;
using std::uint8_t;
using std::uint32_t;

// --- the primitives of kernels_vector.inc -------------------------------------------------------------

constexpr size_t kPanelRows = 32;  // two zmm per k step in the packed layout
constexpr size_t kMr = 8;          // queries per micro-tile: 8 x 32 = 16 zmm accumulators
constexpr size_t kKc = 256;        // k block of dot_packed (a 32 KiB panel slice stays in L1)

static inline __mmask16 tail_mask(size_t r) {  // the low r lanes, r <= 16
  return static_cast<__mmask16>((1u << r) - 1u);
}

#include "kernels_x86.inc"

struct V : X86Vector<kPanelRows> {
  static constexpr Level kLevel = Level::AVX512;
  using reg = __m512;
  using tail = __mmask16;
  static constexpr size_t kLanes = 16;
  static constexpr int kUnrollM = 8;
  static constexpr int kUnrollK = 2;

  static inline reg zero() { return _mm512_setzero_ps(); }
  static inline reg load(const float* p) { return _mm512_loadu_ps(p); }
  static inline reg broadcast(const float* p) { return _mm512_set1_ps(*p); }
  static inline reg add(reg a, reg b) { return _mm512_add_ps(a, b); }
  static inline reg sub(reg a, reg b) { return _mm512_sub_ps(a, b); }
  static inline reg fma(reg a, reg b, reg acc) { return _mm512_fmadd_ps(a, b, acc); }
  static inline reg fnma(reg a, reg b, reg c) { return _mm512_fnmadd_ps(a, b, c); }
  static inline float hsum(reg v) { return _mm512_reduce_add_ps(v); }
  static inline tail tail_of(size_t r) { return tail_mask(r); }
  static inline reg load_part(const float* p, tail m) { return _mm512_maskz_loadu_ps(m, p); }
  static inline void store(float* p, reg v) { _mm512_storeu_ps(p, v); }
  static inline void store_part(float* p, tail m, reg v) { _mm512_mask_storeu_ps(p, m, v); }
};

// Loaders of 16 stored elements (float32 / binary16 / uint8) as floats, full or masked.
struct LoadF32 {
  using T = float;
  static inline __m512 full(const float* p) { return _mm512_loadu_ps(p); }
  static inline __m512 part(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
};
struct LoadF16 {
  using T = uint16_t;
  static inline __m512 full(const uint16_t* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static inline __m512 part(const uint16_t* p, __mmask16 m) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
  }
};
struct LoadU8 {
  using T = uint8_t;
  static inline __m512 full(const uint8_t* p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  }
  static inline __m512 part(const uint8_t* p, __mmask16 m) {
    return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, p)));
  }
};

#include "kernels_vector.inc"

// --- float16 conversion -------------------------------------------------------------------------------

// vcvtps2ph rounds to nearest even exactly like the scalar code for every non-NaN input; for NaN it
// keeps the payload, whereas the scalar reference returns sign | 0x7e00. Patch NaN lanes to match.
static inline __m256i f32x16_to_f16(__m512 v) {
  __m256i h = _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  if (nan) {
    const __m512i sign = _mm512_and_si512(_mm512_srli_epi32(_mm512_castps_si512(v), 16), _mm512_set1_epi32(0x8000));
    const __m256i fix = _mm512_cvtepi32_epi16(_mm512_or_si512(sign, _mm512_set1_epi32(0x7e00)));
    h = _mm256_mask_blend_epi16(nan, h, fix);
  }
  return h;
}

// vcvtph2ps quiets a signalling NaN; the scalar reference keeps it as is. Patch NaN lanes to match.
static inline __m512 f16x16_to_f32(__m256i h) {
  __m512 v = _mm512_cvtph_ps(h);
  const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  if (nan) {
    const __m512i h32 = _mm512_cvtepu16_epi32(h);
    const __m512i sign = _mm512_slli_epi32(_mm512_and_si512(h32, _mm512_set1_epi32(0x8000)), 16);
    const __m512i mant = _mm512_slli_epi32(_mm512_and_si512(h32, _mm512_set1_epi32(0x3ff)), 13);
    const __m512i bits = _mm512_or_si512(_mm512_or_si512(sign, mant), _mm512_set1_epi32(0x7f800000));
    v = _mm512_mask_blend_ps(nan, v, _mm512_castsi512_ps(bits));
  }
  return v;
}

void f32_to_f16(const float* in, uint16_t* out, size_t n) {
  size_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), f32x16_to_f16(_mm512_loadu_ps(in + i)));
  if (i < n) {
    const __mmask16 m = tail_mask(n - i);
    _mm256_mask_storeu_epi16(out + i, m, f32x16_to_f16(_mm512_maskz_loadu_ps(m, in + i)));
  }
}

void f16_to_f32(const uint16_t* in, float* out, size_t n) {
  size_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm512_storeu_ps(out + i, f16x16_to_f32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(in + i))));
  if (i < n) {
    const __mmask16 m = tail_mask(n - i);
    _mm512_mask_storeu_ps(out + i, m, f16x16_to_f32(_mm256_maskz_loadu_epi16(m, in + i)));
  }
}

// --- selection --------------------------------------------------------------------------------------

static inline unsigned popcount16(unsigned m) {  // portable (no -mpopcnt needed)
  m = m - ((m >> 1) & 0x5555u);
  m = (m & 0x3333u) + ((m >> 2) & 0x3333u);
  m = (m + (m >> 4)) & 0x0f0fu;
  return (m + (m >> 8)) & 0x1fu;
}

// One compare per 16 scores; hits are compressed straight into out[].
size_t indices_at_least(const float* x, size_t n, float bound, uint32_t* out) {
  const __m512 b = _mm512_set1_ps(bound);
  const __m512i step = _mm512_set1_epi32(16);
  __m512i idx = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  size_t c = 0, j = 0;
  for (; j + 16 <= n; j += 16) {
    const __mmask16 m = _mm512_cmp_ps_mask(_mm512_loadu_ps(x + j), b, _CMP_GE_OQ);
    if (m) {
      _mm512_mask_compressstoreu_epi32(out + c, m, idx);
      c += popcount16(m);
    }
    idx = _mm512_add_epi32(idx, step);
  }
  if (j < n) {
    const __mmask16 m = _mm512_mask_cmp_ps_mask(tail_mask(n - j), _mm512_maskz_loadu_ps(tail_mask(n - j), x + j), b,
                                                _CMP_GE_OQ);
    _mm512_mask_compressstoreu_epi32(out + c, m, idx);
    c += popcount16(m);
  }
  return c;
}

// --- transforms ---------------------------------------------------------------------------------------

// Spans 1, 2, 4 and 8 of the transform inside each 16-lane vector, as in the AVX2 file: a * s + b with b
// the lanes i ^ h swapped in and s_i = -1 where bit h of i is set.
void fwht_in_lanes(float* x, size_t n) {
  const __m512 s1 = _mm512_setr_ps(1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1);
  const __m512 s2 = _mm512_setr_ps(1, 1, -1, -1, 1, 1, -1, -1, 1, 1, -1, -1, 1, 1, -1, -1);
  const __m512 s4 = _mm512_setr_ps(1, 1, 1, 1, -1, -1, -1, -1, 1, 1, 1, 1, -1, -1, -1, -1);
  const __m512 s8 = _mm512_setr_ps(1, 1, 1, 1, 1, 1, 1, 1, -1, -1, -1, -1, -1, -1, -1, -1);
  for (size_t i = 0; i < n; i += 16) {
    __m512 a = _mm512_loadu_ps(x + i);
    a = _mm512_fmadd_ps(a, s1, _mm512_permute_ps(a, 0xB1));
    a = _mm512_fmadd_ps(a, s2, _mm512_permute_ps(a, 0x4E));
    a = _mm512_fmadd_ps(a, s4, _mm512_shuffle_f32x4(a, a, 0xB1));
    a = _mm512_fmadd_ps(a, s8, _mm512_shuffle_f32x4(a, a, 0x4E));
    _mm512_storeu_ps(x + i, a);
  }
}

}  // namespace

const Kernels* avx512_kernels() { return &kTable; }

}  // namespace annforge::simd

#else  // !ANNFORGE_HAVE_AVX512

namespace annforge::simd {
const Kernels* avx512_kernels() { return nullptr; }
}  // namespace annforge::simd

#endif
