// AVX2 kernels (with FMA and F16C). Compiled with -mavx2 -mfma -mf16c (see CMakeLists.txt) and only
// ever called after the dispatcher has checked the CPU, so nothing in here may be reachable from
// baseline code: everything lives in an anonymous namespace and no std:: inline function or template
// is used (a weak inline symbol compiled with these flags could be chosen by the linker for a baseline
// caller).
//
// The loops are kernels_vector.inc's, over the 8-lane primitives defined here. AVX2 has masked
// loads/stores for 32-bit elements only (vmaskmovps, which never faults on masked-out lanes), so float32 tails are masked and the tails
// of binary16 / uint8 rows go through a zero-padded copy of the last < 8 elements: no kernel reads or
// writes past the end of a row.
#include "annforge/simd/kernels.h"

#if defined(ANNFORGE_HAVE_AVX2)

#include <immintrin.h>

#include "f16_scalar.h"

namespace annforge::simd {
namespace {

using std::size_t;
using std::uint16_t;
using std::uint8_t;
using std::uint32_t;

// --- the primitives of kernels_vector.inc -------------------------------------------------------------

constexpr size_t kPanelRows = 16;  // two ymm per k step in the packed layout
constexpr size_t kMr = 6;          // queries per micro-tile: 6 x 16 = 12 ymm accumulators (+2 panel, +1 query)
constexpr size_t kKc = 256;        // k block of dot_packed (a 16 KiB panel slice stays in L1)

// kMaskTable + 8 - r holds r all-ones lanes followed by zeros: the lane mask of the low r lanes.
alignas(64) const int kMaskTable[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};

// A tail of r < 8 elements: its length (for the zero-padded copies) and its float32 lane mask.
struct Tail {
  size_t r;
  __m256i mask;
};

#include "kernels_x86.inc"

struct V : X86Vector<kPanelRows> {
  static constexpr Level kLevel = Level::AVX2;
  using reg = __m256;
  using tail = Tail;
  static constexpr size_t kLanes = 8;
  static constexpr int kUnrollM = 6;
  static constexpr int kUnrollK = 4;

  static inline reg zero() { return _mm256_setzero_ps(); }
  static inline reg load(const float* p) { return _mm256_loadu_ps(p); }
  static inline reg broadcast(const float* p) { return _mm256_broadcast_ss(p); }
  static inline reg add(reg a, reg b) { return _mm256_add_ps(a, b); }
  static inline reg sub(reg a, reg b) { return _mm256_sub_ps(a, b); }
  static inline reg fma(reg a, reg b, reg acc) { return _mm256_fmadd_ps(a, b, acc); }
  static inline reg fnma(reg a, reg b, reg c) { return _mm256_fnmadd_ps(a, b, c); }
  static inline float hsum(reg v) {
    const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 h = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)));
  }
  static inline tail tail_of(size_t r) {  // r <= 8
    return {r, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kMaskTable + 8 - r))};
  }
  static inline reg load_part(const float* p, const tail& t) { return _mm256_maskload_ps(p, t.mask); }
  static inline void store(float* p, reg v) { _mm256_storeu_ps(p, v); }
  static inline void store_part(float* p, const tail& t, reg v) { _mm256_maskstore_ps(p, t.mask, v); }
};

// Loaders of 8 stored elements (float32 / binary16 / uint8) as floats: full, or the first r < 8 with
// the other lanes zero.
struct LoadF32 {
  using T = float;
  static inline __m256 full(const float* p) { return _mm256_loadu_ps(p); }
  static inline __m256 part(const float* p, const Tail& t) { return _mm256_maskload_ps(p, t.mask); }
};
struct LoadF16 {
  using T = uint16_t;
  static inline __m256 full(const uint16_t* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static inline __m256 part(const uint16_t* p, const Tail& t) {
    alignas(16) uint16_t buf[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (size_t i = 0; i < t.r; ++i) buf[i] = p[i];
    return _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(buf)));
  }
};
struct LoadU8 {
  using T = uint8_t;
  static inline __m256 full(const uint8_t* p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  }
  static inline __m256 part(const uint8_t* p, const Tail& t) {
    alignas(16) uint8_t buf[16] = {0};
    for (size_t i = 0; i < t.r; ++i) buf[i] = p[i];
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(buf))));
  }
};

#include "kernels_vector.inc"

// --- float16 conversion -------------------------------------------------------------------------------

// vcvtps2ph rounds to nearest even exactly like the scalar code for every non-NaN input; for NaN it
// keeps the payload, whereas the scalar reference returns sign | 0x7e00. A NaN lane is replaced by
// sign | 0x7fc00000 first, which converts to exactly that.
static inline __m128i f32x8_to_f16(__m256 v) {
  const __m256 nan = _mm256_cmp_ps(v, v, _CMP_UNORD_Q);
  if (_mm256_movemask_ps(nan)) {
    const __m256 quiet = _mm256_or_ps(_mm256_and_ps(v, _mm256_castsi256_ps(_mm256_set1_epi32(INT32_MIN))),
                                      _mm256_castsi256_ps(_mm256_set1_epi32(0x7fc00000)));
    v = _mm256_blendv_ps(v, quiet, nan);
  }
  return _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}

// vcvtph2ps quiets a signalling NaN; the scalar reference keeps it as is. Patch NaN lanes to match.
static inline __m256 f16x8_to_f32(__m128i h) {
  __m256 v = _mm256_cvtph_ps(h);
  const __m256 nan = _mm256_cmp_ps(v, v, _CMP_UNORD_Q);
  if (_mm256_movemask_ps(nan)) {
    const __m256i h32 = _mm256_cvtepu16_epi32(h);
    const __m256i sign = _mm256_slli_epi32(_mm256_and_si256(h32, _mm256_set1_epi32(0x8000)), 16);
    const __m256i mant = _mm256_slli_epi32(_mm256_and_si256(h32, _mm256_set1_epi32(0x3ff)), 13);
    const __m256i bits = _mm256_or_si256(_mm256_or_si256(sign, mant), _mm256_set1_epi32(0x7f800000));
    v = _mm256_blendv_ps(v, _mm256_castsi256_ps(bits), nan);
  }
  return v;
}

void f32_to_f16(const float* in, uint16_t* out, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), f32x8_to_f16(_mm256_loadu_ps(in + i)));
  for (; i < n; ++i) out[i] = detail::f32_to_f16_bits(in[i]);
}

void f16_to_f32(const uint16_t* in, float* out, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(out + i, f16x8_to_f32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(in + i))));
  for (; i < n; ++i) out[i] = detail::f16_bits_to_f32(in[i]);
}

// --- selection --------------------------------------------------------------------------------------

// One compare per 8 scores; the rare chunk with a hit writes its indices branch-free.
size_t indices_at_least(const float* x, size_t n, float bound, uint32_t* out) {
  const __m256 b = _mm256_set1_ps(bound);
  size_t c = 0, j = 0;
  for (; j + 8 <= n; j += 8) {
    const unsigned m = static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(x + j), b, _CMP_GE_OQ)));
    if (m) {
      for (unsigned t = 0; t < 8; ++t) {
        out[c] = static_cast<uint32_t>(j + t);
        c += (m >> t) & 1u;
      }
    }
  }
  return append_at_least(x, j, n, bound, out, c);
}

// --- transforms ---------------------------------------------------------------------------------------

// Spans 1, 2 and 4 of the transform inside each 8-lane vector: with b = x with lanes i and i ^ h swapped
// and s_i = +1 where bit h of i is clear, -1 where set, a * s + b is x_i + x_(i+h) in the low lane of each
// pair and x_(i-h) - x_i in the high one (exact: s is +-1).
void fwht_in_lanes(float* x, size_t n) {
  const __m256 s1 = _mm256_setr_ps(1, -1, 1, -1, 1, -1, 1, -1);
  const __m256 s2 = _mm256_setr_ps(1, 1, -1, -1, 1, 1, -1, -1);
  const __m256 s4 = _mm256_setr_ps(1, 1, 1, 1, -1, -1, -1, -1);
  for (size_t i = 0; i < n; i += 8) {
    __m256 a = _mm256_loadu_ps(x + i);
    a = _mm256_fmadd_ps(a, s1, _mm256_permute_ps(a, 0xB1));
    a = _mm256_fmadd_ps(a, s2, _mm256_permute_ps(a, 0x4E));
    a = _mm256_fmadd_ps(a, s4, _mm256_permute2f128_ps(a, a, 0x01));
    _mm256_storeu_ps(x + i, a);
  }
}

}  // namespace

const Kernels* avx2_kernels() { return &kTable; }

}  // namespace annforge::simd

#else  // !ANNFORGE_HAVE_AVX2

namespace annforge::simd {
const Kernels* avx2_kernels() { return nullptr; }
}  // namespace annforge::simd

#endif
