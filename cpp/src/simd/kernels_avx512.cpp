// AVX-512 kernels (F + BW + DQ + VL, with FMA and F16C). Compiled with -mavx512f -mavx512bw -mavx512dq
// -mavx512vl -mavx2 -mfma -mf16c (see CMakeLists.txt) and only ever called after the dispatcher has
// checked the CPU, so nothing in here may be reachable from baseline code: everything lives in an
// anonymous namespace and no std:: inline function or template is used (a weak inline symbol compiled
// with these flags could be chosen by the linker for a baseline caller).
//
// Tails are handled with masked loads/stores, so no kernel reads or writes past the end of a row.
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

// --- small helpers ----------------------------------------------------------------------------------

constexpr size_t kPanelRows = 32;  // two zmm per k step in the packed layout
constexpr size_t kMr = 8;          // queries per micro-tile: 8 x 32 = 16 zmm accumulators
constexpr size_t kKc = 256;        // k block of dot_packed (a 32 KiB panel slice stays in L1)

static inline __mmask16 tail_mask(size_t r) {  // the low r lanes, r <= 16
  return static_cast<__mmask16>((1u << r) - 1u);
}

static inline size_t min_size(size_t a, size_t b) { return a < b ? a : b; }

static inline float hsum(__m512 v) { return _mm512_reduce_add_ps(v); }

static inline void prefetch(const void* p) { _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T0); }

// Per-element updates of the distance accumulators.
struct L2 {
  static inline __m512 step(__m512 q, __m512 x, __m512 acc) {
    const __m512 t = _mm512_sub_ps(q, x);
    return _mm512_fmadd_ps(t, t, acc);
  }
};
struct Dot {
  static inline __m512 step(__m512 q, __m512 x, __m512 acc) { return _mm512_fmadd_ps(q, x, acc); }
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

// --- one query against one row / four rows ----------------------------------------------------------

template <class Op, class Ld>
float pair(const float* q, const typename Ld::T* x, size_t d) {
  __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps(), s2 = _mm512_setzero_ps(),
         s3 = _mm512_setzero_ps();
  size_t j = 0;
  for (; j + 64 <= d; j += 64) {
    s0 = Op::step(_mm512_loadu_ps(q + j), Ld::full(x + j), s0);
    s1 = Op::step(_mm512_loadu_ps(q + j + 16), Ld::full(x + j + 16), s1);
    s2 = Op::step(_mm512_loadu_ps(q + j + 32), Ld::full(x + j + 32), s2);
    s3 = Op::step(_mm512_loadu_ps(q + j + 48), Ld::full(x + j + 48), s3);
  }
  for (; j + 16 <= d; j += 16) s0 = Op::step(_mm512_loadu_ps(q + j), Ld::full(x + j), s0);
  if (j < d) {
    const __mmask16 m = tail_mask(d - j);
    s1 = Op::step(_mm512_maskz_loadu_ps(m, q + j), Ld::part(x + j, m), s1);
  }
  return hsum(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
}

// Four rows at a time share each query load; two accumulators per row hide the FMA latency. The rows
// two groups ahead are prefetched (a scan of a large block is bound by memory, not by arithmetic).
template <class Op, class Ld>
void rows(const float* q, const typename Ld::T* x, size_t n, size_t d, float* out) {
  using T = typename Ld::T;
  constexpr size_t kAhead = 8;  // rows
  size_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const T* x0 = x + i * d;
    const T* x1 = x0 + d;
    const T* x2 = x1 + d;
    const T* x3 = x2 + d;
    // Prefetch target: the same offsets, kAhead rows further (clamped to stay inside the block).
    const size_t ahead = (i + 4 + kAhead <= n) ? kAhead * d : 0;
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(),
           a3 = _mm512_setzero_ps();
    __m512 b0 = _mm512_setzero_ps(), b1 = _mm512_setzero_ps(), b2 = _mm512_setzero_ps(),
           b3 = _mm512_setzero_ps();
    size_t j = 0;
    for (; j + 32 <= d; j += 32) {
      if (ahead) {
        // One cache line per row per iteration covers float32 rows at 32 floats x 4 B = 2 lines only
        // partly; the hardware streamer picks up the rest once the stream is established.
        prefetch(x0 + ahead + j);
        prefetch(x1 + ahead + j);
        prefetch(x2 + ahead + j);
        prefetch(x3 + ahead + j);
        if (sizeof(T) == 4) {
          prefetch(x0 + ahead + j + 16);
          prefetch(x1 + ahead + j + 16);
          prefetch(x2 + ahead + j + 16);
          prefetch(x3 + ahead + j + 16);
        }
      }
      const __m512 qa = _mm512_loadu_ps(q + j), qb = _mm512_loadu_ps(q + j + 16);
      a0 = Op::step(qa, Ld::full(x0 + j), a0);
      a1 = Op::step(qa, Ld::full(x1 + j), a1);
      a2 = Op::step(qa, Ld::full(x2 + j), a2);
      a3 = Op::step(qa, Ld::full(x3 + j), a3);
      b0 = Op::step(qb, Ld::full(x0 + j + 16), b0);
      b1 = Op::step(qb, Ld::full(x1 + j + 16), b1);
      b2 = Op::step(qb, Ld::full(x2 + j + 16), b2);
      b3 = Op::step(qb, Ld::full(x3 + j + 16), b3);
    }
    if (j + 16 <= d) {
      const __m512 qa = _mm512_loadu_ps(q + j);
      a0 = Op::step(qa, Ld::full(x0 + j), a0);
      a1 = Op::step(qa, Ld::full(x1 + j), a1);
      a2 = Op::step(qa, Ld::full(x2 + j), a2);
      a3 = Op::step(qa, Ld::full(x3 + j), a3);
      j += 16;
    }
    if (j < d) {
      const __mmask16 m = tail_mask(d - j);
      const __m512 qb = _mm512_maskz_loadu_ps(m, q + j);
      b0 = Op::step(qb, Ld::part(x0 + j, m), b0);
      b1 = Op::step(qb, Ld::part(x1 + j, m), b1);
      b2 = Op::step(qb, Ld::part(x2 + j, m), b2);
      b3 = Op::step(qb, Ld::part(x3 + j, m), b3);
    }
    out[i] = hsum(_mm512_add_ps(a0, b0));
    out[i + 1] = hsum(_mm512_add_ps(a1, b1));
    out[i + 2] = hsum(_mm512_add_ps(a2, b2));
    out[i + 3] = hsum(_mm512_add_ps(a3, b3));
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

// 8 x 8 transpose of rows r0..r7 (each 8 floats) in ymm registers.
static inline void transpose8(__m256& r0, __m256& r1, __m256& r2, __m256& r3, __m256& r4, __m256& r5, __m256& r6,
                              __m256& r7) {
  const __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
  const __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
  const __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
  const __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xee);
  const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xee);
  const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xee);
  const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xee);
  r0 = _mm256_permute2f128_ps(u0, u4, 0x20);
  r1 = _mm256_permute2f128_ps(u1, u5, 0x20);
  r2 = _mm256_permute2f128_ps(u2, u6, 0x20);
  r3 = _mm256_permute2f128_ps(u3, u7, 0x20);
  r4 = _mm256_permute2f128_ps(u0, u4, 0x31);
  r5 = _mm256_permute2f128_ps(u1, u5, 0x31);
  r6 = _mm256_permute2f128_ps(u2, u6, 0x31);
  r7 = _mm256_permute2f128_ps(u3, u7, 0x31);
}

// Panel p holds rows p*32 .. p*32+31 as packed[p*32*d + k*32 + r]. In a full panel, blocks of 8 rows x 8
// dimensions are transposed in registers (faster than gathering columns); a partial panel and the last
// d % 8 dimensions go element by element, with missing rows written as zeros.
void pack_rows(const float* x, size_t n, size_t d, float* packed) {
  const size_t panels = (n + kPanelRows - 1) / kPanelRows;
  for (size_t p = 0; p < panels; ++p) {
    float* dst = packed + p * kPanelRows * d;
    const size_t row0 = p * kPanelRows, valid = min_size(kPanelRows, n - row0);
    size_t k = 0;
    if (valid == kPanelRows) {
      // Every group of 8 rows for one block of 8 dimensions before moving on, so that each packed
      // cache line is completed while it is still in L1.
      for (; k + 8 <= d; k += 8) {
        for (size_t h = 0; h < kPanelRows / 8; ++h) {
          const float* s = x + (row0 + h * 8) * d + k;
          __m256 r0 = _mm256_loadu_ps(s), r1 = _mm256_loadu_ps(s + d), r2 = _mm256_loadu_ps(s + 2 * d),
                 r3 = _mm256_loadu_ps(s + 3 * d), r4 = _mm256_loadu_ps(s + 4 * d), r5 = _mm256_loadu_ps(s + 5 * d),
                 r6 = _mm256_loadu_ps(s + 6 * d), r7 = _mm256_loadu_ps(s + 7 * d);
          transpose8(r0, r1, r2, r3, r4, r5, r6, r7);
          float* o = dst + k * kPanelRows + h * 8;
          _mm256_storeu_ps(o, r0);
          _mm256_storeu_ps(o + kPanelRows, r1);
          _mm256_storeu_ps(o + 2 * kPanelRows, r2);
          _mm256_storeu_ps(o + 3 * kPanelRows, r3);
          _mm256_storeu_ps(o + 4 * kPanelRows, r4);
          _mm256_storeu_ps(o + 5 * kPanelRows, r5);
          _mm256_storeu_ps(o + 6 * kPanelRows, r6);
          _mm256_storeu_ps(o + 7 * kPanelRows, r7);
        }
      }
    }
    for (; k < d; ++k)
      for (size_t r = 0; r < kPanelRows; ++r) dst[k * kPanelRows + r] = r < valid ? x[(row0 + r) * d + k] : 0.0f;
  }
}

// Micro-kernel: M (<= 8) queries x 32 rows over kc dimensions; c[i][h] covers rows 16h .. 16h+15.
// Query values are broadcast straight from memory (an embedded-broadcast FMA operand).
template <size_t M>
void tile(const float* q, size_t ldq, const float* panel, size_t kc, float* out, size_t ldo, __mmask16 m0,
          __mmask16 m1, bool accumulate) {
  __m512 c0[M], c1[M];
#pragma GCC unroll 8
  for (size_t i = 0; i < M; ++i) c0[i] = c1[i] = _mm512_setzero_ps();
#pragma GCC unroll 2
  for (size_t k = 0; k < kc; ++k) {
    const __m512 b0 = _mm512_loadu_ps(panel + k * kPanelRows);
    const __m512 b1 = _mm512_loadu_ps(panel + k * kPanelRows + 16);
#pragma GCC unroll 8
    for (size_t i = 0; i < M; ++i) {
      const __m512 a = _mm512_set1_ps(q[i * ldq + k]);
      c0[i] = _mm512_fmadd_ps(a, b0, c0[i]);
      c1[i] = _mm512_fmadd_ps(a, b1, c1[i]);
    }
  }
#pragma GCC unroll 8
  for (size_t i = 0; i < M; ++i) {
    float* o = out + i * ldo;
    if (accumulate) {
      c0[i] = _mm512_add_ps(c0[i], _mm512_maskz_loadu_ps(m0, o));
      c1[i] = _mm512_add_ps(c1[i], _mm512_maskz_loadu_ps(m1, o + 16));
    }
    _mm512_mask_storeu_ps(o, m0, c0[i]);
    _mm512_mask_storeu_ps(o + 16, m1, c1[i]);
  }
}

void tile_rest(size_t m, const float* q, size_t ldq, const float* panel, size_t kc, float* out, size_t ldo,
               __mmask16 m0, __mmask16 m1, bool acc) {
  switch (m) {
    case 1: tile<1>(q, ldq, panel, kc, out, ldo, m0, m1, acc); break;
    case 2: tile<2>(q, ldq, panel, kc, out, ldo, m0, m1, acc); break;
    case 3: tile<3>(q, ldq, panel, kc, out, ldo, m0, m1, acc); break;
    case 4: tile<4>(q, ldq, panel, kc, out, ldo, m0, m1, acc); break;
    case 5: tile<5>(q, ldq, panel, kc, out, ldo, m0, m1, acc); break;
    case 6: tile<6>(q, ldq, panel, kc, out, ldo, m0, m1, acc); break;
    case 7: tile<7>(q, ldq, panel, kc, out, ldo, m0, m1, acc); break;
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
  // Loop order (GotoBLAS style): a kc-slice of one panel (kc x 32 floats) stays in L1 while every
  // query block streams past it; partial sums over k blocks accumulate in out[].
  for (size_t k0 = 0; k0 < d; k0 += kKc) {
    const size_t kc = min_size(kKc, d - k0);
    const bool acc = k0 != 0;
    for (size_t p = 0; p < panels; ++p) {
      const float* panel = packed + p * kPanelRows * d + k0 * kPanelRows;
      const size_t j0 = p * kPanelRows;
      const size_t valid = min_size(kPanelRows, n - j0);
      const __mmask16 m0 = tail_mask(min_size(16, valid));
      const __mmask16 m1 = tail_mask(valid > 16 ? valid - 16 : 0);
      size_t i = 0;
      for (; i + kMr <= nq; i += kMr)
        tile<kMr>(q + i * ldq + k0, ldq, panel, kc, out + i * ldo + j0, ldo, m0, m1, acc);
      if (i < nq) tile_rest(nq - i, q + i * ldq + k0, ldq, panel, kc, out + i * ldo + j0, ldo, m0, m1, acc);
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

// --- sq8 ----------------------------------------------------------------------------------------------

// sum_j (q[j] - code[j] * scale[j])^2 for one row, 4 accumulators.
static inline __m512 sq8_step(const float* q, const float* s, __m512 c, __m512 acc) {
  const __m512 t = _mm512_fnmadd_ps(c, _mm512_loadu_ps(s), _mm512_loadu_ps(q));
  return _mm512_fmadd_ps(t, t, acc);
}

float l2_sqr_sq8(const float* q, const uint8_t* code, const float* scale, size_t d) {
  __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps(), s2 = _mm512_setzero_ps(),
         s3 = _mm512_setzero_ps();
  size_t j = 0;
  for (; j + 64 <= d; j += 64) {
    s0 = sq8_step(q + j, scale + j, LoadU8::full(code + j), s0);
    s1 = sq8_step(q + j + 16, scale + j + 16, LoadU8::full(code + j + 16), s1);
    s2 = sq8_step(q + j + 32, scale + j + 32, LoadU8::full(code + j + 32), s2);
    s3 = sq8_step(q + j + 48, scale + j + 48, LoadU8::full(code + j + 48), s3);
  }
  for (; j + 16 <= d; j += 16) s0 = sq8_step(q + j, scale + j, LoadU8::full(code + j), s0);
  if (j < d) {
    const __mmask16 m = tail_mask(d - j);
    const __m512 t = _mm512_fnmadd_ps(LoadU8::part(code + j, m), _mm512_maskz_loadu_ps(m, scale + j),
                                      _mm512_maskz_loadu_ps(m, q + j));
    s1 = _mm512_fmadd_ps(t, t, s1);
  }
  return hsum(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
}

float dot_u8(const float* w, const uint8_t* code, size_t d) { return pair<Dot, LoadU8>(w, code, d); }

void dot_u8_rows(const float* w, const uint8_t* codes, size_t n, size_t d, float* out) {
  rows<Dot, LoadU8>(w, codes, n, d, out);
}

// Four rows at a time share the query and scale loads.
void l2_sqr_sq8_rows(const float* q, const uint8_t* codes, const float* scale, size_t n, size_t d, float* out) {
  size_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const uint8_t* x0 = codes + i * d;
    const uint8_t* x1 = x0 + d;
    const uint8_t* x2 = x1 + d;
    const uint8_t* x3 = x2 + d;
    const size_t ahead = (i + 12 <= n) ? 8 * d : 0;
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(),
           a3 = _mm512_setzero_ps();
    size_t j = 0;
    for (; j + 16 <= d; j += 16) {
      if (ahead && (j & 63) == 0) {
        prefetch(x0 + ahead + j);
        prefetch(x1 + ahead + j);
        prefetch(x2 + ahead + j);
        prefetch(x3 + ahead + j);
      }
      const __m512 qv = _mm512_loadu_ps(q + j), sv = _mm512_loadu_ps(scale + j);
      __m512 t = _mm512_fnmadd_ps(LoadU8::full(x0 + j), sv, qv);
      a0 = _mm512_fmadd_ps(t, t, a0);
      t = _mm512_fnmadd_ps(LoadU8::full(x1 + j), sv, qv);
      a1 = _mm512_fmadd_ps(t, t, a1);
      t = _mm512_fnmadd_ps(LoadU8::full(x2 + j), sv, qv);
      a2 = _mm512_fmadd_ps(t, t, a2);
      t = _mm512_fnmadd_ps(LoadU8::full(x3 + j), sv, qv);
      a3 = _mm512_fmadd_ps(t, t, a3);
    }
    if (j < d) {
      const __mmask16 m = tail_mask(d - j);
      const __m512 qv = _mm512_maskz_loadu_ps(m, q + j), sv = _mm512_maskz_loadu_ps(m, scale + j);
      __m512 t = _mm512_fnmadd_ps(LoadU8::part(x0 + j, m), sv, qv);
      a0 = _mm512_fmadd_ps(t, t, a0);
      t = _mm512_fnmadd_ps(LoadU8::part(x1 + j, m), sv, qv);
      a1 = _mm512_fmadd_ps(t, t, a1);
      t = _mm512_fnmadd_ps(LoadU8::part(x2 + j, m), sv, qv);
      a2 = _mm512_fmadd_ps(t, t, a2);
      t = _mm512_fnmadd_ps(LoadU8::part(x3 + j, m), sv, qv);
      a3 = _mm512_fmadd_ps(t, t, a3);
    }
    out[i] = hsum(a0);
    out[i + 1] = hsum(a1);
    out[i + 2] = hsum(a2);
    out[i + 3] = hsum(a3);
  }
  for (; i < n; ++i) out[i] = l2_sqr_sq8(q, codes + i * d, scale, d);
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

const Kernels kTable = {
    Level::AVX512,   l2_sqr,        dot,          l2_sqr_rows,     dot_rows,    kPanelRows,
    packed_size,     pack_rows,     dot_packed,   l2_sqr_f16,      dot_f16,     l2_sqr_f16_rows,
    dot_f16_rows,    f32_to_f16,    f16_to_f32,   l2_sqr_sq8,      dot_u8,      l2_sqr_sq8_rows,
    dot_u8_rows,     indices_at_least,
};

}  // namespace

const Kernels* avx512_kernels() { return &kTable; }

}  // namespace annforge::simd

#else  // !ANNFORGE_HAVE_AVX512

namespace annforge::simd {
const Kernels* avx512_kernels() { return nullptr; }
}  // namespace annforge::simd

#endif
