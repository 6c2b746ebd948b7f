// AVX2 kernels (with FMA and F16C). Compiled with -mavx2 -mfma -mf16c (see CMakeLists.txt) and only
// ever called after the dispatcher has checked the CPU, so nothing in here may be reachable from
// baseline code: everything lives in an anonymous namespace and no std:: inline function or template
// is used (a weak inline symbol compiled with these flags could be chosen by the linker for a baseline
// caller).
//
// Same structure as kernels_avx512.cpp, at 8 lanes. AVX2 has masked loads/stores for 32-bit elements
// only (vmaskmovps, which never faults on masked-out lanes), so float32 tails are masked and the tails
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

// --- small helpers ----------------------------------------------------------------------------------

constexpr size_t kPanelRows = 16;  // two ymm per k step in the packed layout
constexpr size_t kMr = 6;          // queries per micro-tile: 6 x 16 = 12 ymm accumulators (+2 panel, +1 query)
constexpr size_t kKc = 256;        // k block of dot_packed (a 16 KiB panel slice stays in L1)

// kMaskTable + 8 - r holds r all-ones lanes followed by zeros: the lane mask of the low r lanes.
alignas(64) const int kMaskTable[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};

static inline __m256i tail_mask(size_t r) {  // the low r lanes, r <= 8
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kMaskTable + 8 - r));
}

static inline size_t min_size(size_t a, size_t b) { return a < b ? a : b; }

static inline float hsum(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 h = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)));
}

static inline void prefetch(const void* p) { _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T0); }

// Per-element updates of the distance accumulators.
struct L2 {
  static inline __m256 step(__m256 q, __m256 x, __m256 acc) {
    const __m256 t = _mm256_sub_ps(q, x);
    return _mm256_fmadd_ps(t, t, acc);
  }
};
struct Dot {
  static inline __m256 step(__m256 q, __m256 x, __m256 acc) { return _mm256_fmadd_ps(q, x, acc); }
};

// Loaders of 8 stored elements (float32 / binary16 / uint8) as floats: full, or the first r < 8 with
// the other lanes zero.
struct LoadF32 {
  using T = float;
  static inline __m256 full(const float* p) { return _mm256_loadu_ps(p); }
  static inline __m256 part(const float* p, size_t r) { return _mm256_maskload_ps(p, tail_mask(r)); }
};
struct LoadF16 {
  using T = uint16_t;
  static inline __m256 full(const uint16_t* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static inline __m256 part(const uint16_t* p, size_t r) {
    alignas(16) uint16_t buf[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (size_t i = 0; i < r; ++i) buf[i] = p[i];
    return _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(buf)));
  }
};
struct LoadU8 {
  using T = uint8_t;
  static inline __m256 full(const uint8_t* p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  }
  static inline __m256 part(const uint8_t* p, size_t r) {
    alignas(16) uint8_t buf[16] = {0};
    for (size_t i = 0; i < r; ++i) buf[i] = p[i];
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(buf))));
  }
};

static inline __m256 load_q_part(const float* q, size_t r) { return _mm256_maskload_ps(q, tail_mask(r)); }

// --- one query against one row / four rows ----------------------------------------------------------

template <class Op, class Ld>
float pair(const float* q, const typename Ld::T* x, size_t d) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps(), s2 = _mm256_setzero_ps(),
         s3 = _mm256_setzero_ps();
  size_t j = 0;
  for (; j + 32 <= d; j += 32) {
    s0 = Op::step(_mm256_loadu_ps(q + j), Ld::full(x + j), s0);
    s1 = Op::step(_mm256_loadu_ps(q + j + 8), Ld::full(x + j + 8), s1);
    s2 = Op::step(_mm256_loadu_ps(q + j + 16), Ld::full(x + j + 16), s2);
    s3 = Op::step(_mm256_loadu_ps(q + j + 24), Ld::full(x + j + 24), s3);
  }
  for (; j + 8 <= d; j += 8) s0 = Op::step(_mm256_loadu_ps(q + j), Ld::full(x + j), s0);
  if (j < d) s1 = Op::step(load_q_part(q + j, d - j), Ld::part(x + j, d - j), s1);
  return hsum(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
}

// Four rows at a time share each query load; two accumulators per row hide the FMA latency. The rows
// two groups ahead are prefetched (a scan of a large block is bound by memory, not by arithmetic).
template <class Op, class Ld>
void rows(const float* q, const typename Ld::T* x, size_t n, size_t d, float* out) {
  using T = typename Ld::T;
  constexpr size_t kAhead = 8;                    // rows
  constexpr size_t kLine = 64 / sizeof(T);        // elements per cache line
  size_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const T* x0 = x + i * d;
    const T* x1 = x0 + d;
    const T* x2 = x1 + d;
    const T* x3 = x2 + d;
    // Prefetch target: the same offsets, kAhead rows further (only while that stays inside the block).
    const size_t ahead = (i + 4 + kAhead <= n) ? kAhead * d : 0;
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(),
           a3 = _mm256_setzero_ps();
    __m256 b0 = _mm256_setzero_ps(), b1 = _mm256_setzero_ps(), b2 = _mm256_setzero_ps(),
           b3 = _mm256_setzero_ps();
    size_t j = 0;
    for (; j + 16 <= d; j += 16) {
      if (ahead && (j % kLine) == 0) {  // one line per row per cache line of row data
        prefetch(x0 + ahead + j);
        prefetch(x1 + ahead + j);
        prefetch(x2 + ahead + j);
        prefetch(x3 + ahead + j);
      }
      const __m256 qa = _mm256_loadu_ps(q + j), qb = _mm256_loadu_ps(q + j + 8);
      a0 = Op::step(qa, Ld::full(x0 + j), a0);
      a1 = Op::step(qa, Ld::full(x1 + j), a1);
      a2 = Op::step(qa, Ld::full(x2 + j), a2);
      a3 = Op::step(qa, Ld::full(x3 + j), a3);
      b0 = Op::step(qb, Ld::full(x0 + j + 8), b0);
      b1 = Op::step(qb, Ld::full(x1 + j + 8), b1);
      b2 = Op::step(qb, Ld::full(x2 + j + 8), b2);
      b3 = Op::step(qb, Ld::full(x3 + j + 8), b3);
    }
    if (j + 8 <= d) {
      const __m256 qa = _mm256_loadu_ps(q + j);
      a0 = Op::step(qa, Ld::full(x0 + j), a0);
      a1 = Op::step(qa, Ld::full(x1 + j), a1);
      a2 = Op::step(qa, Ld::full(x2 + j), a2);
      a3 = Op::step(qa, Ld::full(x3 + j), a3);
      j += 8;
    }
    if (j < d) {
      const size_t r = d - j;
      const __m256 qb = load_q_part(q + j, r);
      b0 = Op::step(qb, Ld::part(x0 + j, r), b0);
      b1 = Op::step(qb, Ld::part(x1 + j, r), b1);
      b2 = Op::step(qb, Ld::part(x2 + j, r), b2);
      b3 = Op::step(qb, Ld::part(x3 + j, r), b3);
    }
    out[i] = hsum(_mm256_add_ps(a0, b0));
    out[i + 1] = hsum(_mm256_add_ps(a1, b1));
    out[i + 2] = hsum(_mm256_add_ps(a2, b2));
    out[i + 3] = hsum(_mm256_add_ps(a3, b3));
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

// 8 x 8 transpose of rows r0..r7 (each 8 floats) in registers.
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

// Panel p holds rows p*16 .. p*16+15 as packed[p*16*d + k*16 + r]. In a full panel, blocks of 8 rows x 8
// dimensions are transposed in registers; a partial panel and the last d % 8 dimensions go element by
// element, with missing rows written as zeros.
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

// Micro-kernel: M (<= 6) queries x 16 rows over kc dimensions; c0/c1[i] cover rows 0..7 / 8..15.
// `valid` (<= 16) rows of the panel are real; only their columns of out[] are read or written.
template <size_t M>
void tile(const float* q, size_t ldq, const float* panel, size_t kc, float* out, size_t ldo, size_t valid,
          bool accumulate) {
  __m256 c0[M], c1[M];
#pragma GCC unroll 6
  for (size_t i = 0; i < M; ++i) c0[i] = c1[i] = _mm256_setzero_ps();
#pragma GCC unroll 4
  for (size_t k = 0; k < kc; ++k) {
    const __m256 b0 = _mm256_loadu_ps(panel + k * kPanelRows);
    const __m256 b1 = _mm256_loadu_ps(panel + k * kPanelRows + 8);
#pragma GCC unroll 6
    for (size_t i = 0; i < M; ++i) {
      const __m256 a = _mm256_broadcast_ss(q + i * ldq + k);
      c0[i] = _mm256_fmadd_ps(a, b0, c0[i]);
      c1[i] = _mm256_fmadd_ps(a, b1, c1[i]);
    }
  }
  if (valid == kPanelRows) {
#pragma GCC unroll 6
    for (size_t i = 0; i < M; ++i) {
      float* o = out + i * ldo;
      if (accumulate) {
        c0[i] = _mm256_add_ps(c0[i], _mm256_loadu_ps(o));
        c1[i] = _mm256_add_ps(c1[i], _mm256_loadu_ps(o + 8));
      }
      _mm256_storeu_ps(o, c0[i]);
      _mm256_storeu_ps(o + 8, c1[i]);
    }
  } else {
    const __m256i m0 = tail_mask(min_size(8, valid)), m1 = tail_mask(valid > 8 ? valid - 8 : 0);
#pragma GCC unroll 6
    for (size_t i = 0; i < M; ++i) {
      float* o = out + i * ldo;
      if (accumulate) {
        c0[i] = _mm256_add_ps(c0[i], _mm256_maskload_ps(o, m0));
        c1[i] = _mm256_add_ps(c1[i], _mm256_maskload_ps(o + 8, m1));
      }
      _mm256_maskstore_ps(o, m0, c0[i]);
      _mm256_maskstore_ps(o + 8, m1, c1[i]);
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
  // Loop order (GotoBLAS style): a kc-slice of one panel (kc x 16 floats) stays in L1 while every
  // query block streams past it; partial sums over k blocks accumulate in out[].
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

// --- sq8 ----------------------------------------------------------------------------------------------

// (q - code * scale)^2 accumulated, for 8 elements.
static inline __m256 sq8_step(__m256 q, __m256 s, __m256 c, __m256 acc) {
  const __m256 t = _mm256_fnmadd_ps(c, s, q);
  return _mm256_fmadd_ps(t, t, acc);
}

float l2_sqr_sq8(const float* q, const uint8_t* code, const float* scale, size_t d) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps(), s2 = _mm256_setzero_ps(),
         s3 = _mm256_setzero_ps();
  size_t j = 0;
  for (; j + 32 <= d; j += 32) {
    s0 = sq8_step(_mm256_loadu_ps(q + j), _mm256_loadu_ps(scale + j), LoadU8::full(code + j), s0);
    s1 = sq8_step(_mm256_loadu_ps(q + j + 8), _mm256_loadu_ps(scale + j + 8), LoadU8::full(code + j + 8), s1);
    s2 = sq8_step(_mm256_loadu_ps(q + j + 16), _mm256_loadu_ps(scale + j + 16), LoadU8::full(code + j + 16), s2);
    s3 = sq8_step(_mm256_loadu_ps(q + j + 24), _mm256_loadu_ps(scale + j + 24), LoadU8::full(code + j + 24), s3);
  }
  for (; j + 8 <= d; j += 8)
    s0 = sq8_step(_mm256_loadu_ps(q + j), _mm256_loadu_ps(scale + j), LoadU8::full(code + j), s0);
  if (j < d) {
    const size_t r = d - j;
    s1 = sq8_step(load_q_part(q + j, r), load_q_part(scale + j, r), LoadU8::part(code + j, r), s1);
  }
  return hsum(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
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
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(),
           a3 = _mm256_setzero_ps();
    size_t j = 0;
    for (; j + 8 <= d; j += 8) {
      if (ahead && (j & 63) == 0) {
        prefetch(x0 + ahead + j);
        prefetch(x1 + ahead + j);
        prefetch(x2 + ahead + j);
        prefetch(x3 + ahead + j);
      }
      const __m256 qv = _mm256_loadu_ps(q + j), sv = _mm256_loadu_ps(scale + j);
      a0 = sq8_step(qv, sv, LoadU8::full(x0 + j), a0);
      a1 = sq8_step(qv, sv, LoadU8::full(x1 + j), a1);
      a2 = sq8_step(qv, sv, LoadU8::full(x2 + j), a2);
      a3 = sq8_step(qv, sv, LoadU8::full(x3 + j), a3);
    }
    if (j < d) {
      const size_t r = d - j;
      const __m256 qv = load_q_part(q + j, r), sv = load_q_part(scale + j, r);
      a0 = sq8_step(qv, sv, LoadU8::part(x0 + j, r), a0);
      a1 = sq8_step(qv, sv, LoadU8::part(x1 + j, r), a1);
      a2 = sq8_step(qv, sv, LoadU8::part(x2 + j, r), a2);
      a3 = sq8_step(qv, sv, LoadU8::part(x3 + j, r), a3);
    }
    out[i] = hsum(a0);
    out[i + 1] = hsum(a1);
    out[i + 2] = hsum(a2);
    out[i + 3] = hsum(a3);
  }
  for (; i < n; ++i) out[i] = l2_sqr_sq8(q, codes + i * d, scale, d);
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
  for (; j < n; ++j) {
    out[c] = static_cast<uint32_t>(j);
    c += x[j] >= bound ? 1 : 0;
  }
  return c;
}

const Kernels kTable = {
    Level::AVX2,     l2_sqr,        dot,          l2_sqr_rows,     dot_rows,    kPanelRows,
    packed_size,     pack_rows,     dot_packed,   l2_sqr_f16,      dot_f16,     l2_sqr_f16_rows,
    dot_f16_rows,    f32_to_f16,    f16_to_f32,   l2_sqr_sq8,      dot_u8,      l2_sqr_sq8_rows,
    dot_u8_rows,     indices_at_least,
};

}  // namespace

const Kernels* avx2_kernels() { return &kTable; }

}  // namespace annforge::simd

#else  // !ANNFORGE_HAVE_AVX2

namespace annforge::simd {
const Kernels* avx2_kernels() { return nullptr; }
}  // namespace annforge::simd

#endif
