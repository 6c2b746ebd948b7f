// 4-bit fast-scan accumulation with AVX-512 VBMI + VNNI (Ice Lake, Sapphire Rapids, Zen 4 and later),
// on the same block layout as the other levels (see codec/pq4_fastscan.h).
//
// The AVX2 / AVX-512BW kernels look bytes up with vpshufb, one 16-entry table per 128-bit lane, and
// must widen byte sums to 16 bits with an extra shift and add per register. Here one 64-byte vpermb
// table holds four sub-quantizers' tables, so each 64-byte row of codes is first transposed from
// [sub-quantizer][vector] to [vector][sub-quantizer]: the four looked-up bytes of one vector are then
// adjacent and one vpdpbusd (x 1) adds them into that vector's 32-bit sum. 8 instead of 11 vector
// operations per 128 looked-up codes; the sums are the same integers as the scalar kernel's.
#include "annforge/simd/pq4_kernels.h"

#if (defined(__AVX512VBMI__) && defined(__AVX512VNNI__) && defined(__AVX512BW__)) || \
    (defined(_MSC_VER) && defined(__AVX512BW__))
#include <immintrin.h>

#if defined(__GNUC__) && !defined(__clang__)
// GCC 12's vpermb intrinsic passes an _mm512_undefined_epi32() it then flags as maybe-uninitialized.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace annforge::simd {
namespace {

struct VbmiConstants {
  __m512i transpose;  // byte 4v+s <- byte 16s+v
  __m512i low_nibble;
  __m512i table_select;  // byte 4v+s = s << 4: which of the four 16-byte tables vpermb reads
  __m512i ones;
};

inline VbmiConstants make_constants() {
  alignas(64) std::uint8_t order[64];
  for (int v = 0; v < 16; ++v)
    for (int s = 0; s < 4; ++s) order[4 * v + s] = static_cast<std::uint8_t>(16 * s + v);
  return {_mm512_load_si512(order), _mm512_set1_epi8(0x0f), _mm512_set1_epi32(0x30201000), _mm512_set1_epi8(1)};
}

// Adds four sub-quantizers (64 code bytes, 64 table bytes) of one block: `lo` gets vectors 0-15,
// `hi` vectors 16-31, one 32-bit lane each.
inline void accumulate_quad(__m512i codes, __m512i lut, const VbmiConstants& k, __m512i& lo, __m512i& hi) {
  const __m512i c = _mm512_permutexvar_epi8(k.transpose, codes);
  // (c & 0x0f) | select, one ternary-logic op each: 0xEA = (A & B) | C.
  const __m512i lo_idx = _mm512_ternarylogic_epi32(c, k.low_nibble, k.table_select, 0xEA);
  const __m512i hi_idx = _mm512_ternarylogic_epi32(_mm512_srli_epi16(c, 4), k.low_nibble, k.table_select, 0xEA);
  lo = _mm512_dpbusd_epi32(lo, _mm512_permutexvar_epi8(lo_idx, lut), k.ones);
  hi = _mm512_dpbusd_epi32(hi, _mm512_permutexvar_epi8(hi_idx, lut), k.ones);
}

void scan_vbmi(const std::uint8_t* blocks, std::size_t nblocks, std::size_t padded_m, const std::uint8_t* table,
               std::uint16_t* out) {
  const VbmiConstants k = make_constants();
  const std::size_t bytes = padded_m * 16;
  const std::size_t quads = padded_m / 4 * 4;
  const __m512i zero = _mm512_setzero_si512();
  for (std::size_t b = 0; b < nblocks; ++b) {
    const std::uint8_t* blk = blocks + b * bytes;
    const std::uint8_t* ahead = blk + 2 * bytes;  // lists are short: fetch two blocks ahead
    // Two accumulator pairs so consecutive vpdpbusd do not wait on each other's result.
    __m512i lo0 = zero, hi0 = zero, lo1 = zero, hi1 = zero;
    std::size_t j = 0;
    for (; j + 8 <= quads; j += 8) {
      _mm_prefetch(reinterpret_cast<const char*>(ahead + j * 16), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(ahead + j * 16 + 64), _MM_HINT_T0);
      accumulate_quad(_mm512_loadu_si512(blk + j * 16), _mm512_loadu_si512(table + j * 16), k, lo0, hi0);
      accumulate_quad(_mm512_loadu_si512(blk + j * 16 + 64), _mm512_loadu_si512(table + j * 16 + 64), k, lo1, hi1);
    }
    if (j < quads) {
      _mm_prefetch(reinterpret_cast<const char*>(ahead + j * 16), _MM_HINT_T0);
      accumulate_quad(_mm512_loadu_si512(blk + j * 16), _mm512_loadu_si512(table + j * 16), k, lo0, hi0);
      j += 4;
    }
    if (j < padded_m) {
      // A trailing pair: the missing two sub-quantizers read code 0 from all-zero tables.
      const __mmask64 half = 0xffffffffull;
      accumulate_quad(_mm512_maskz_loadu_epi8(half, blk + j * 16), _mm512_maskz_loadu_epi8(half, table + j * 16), k,
                      lo1, hi1);
    }
    // Every true sum is below 2^16 (see quantize_lut): narrowing keeps it exactly.
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + b * 32), _mm512_cvtepi32_epi16(_mm512_add_epi32(lo0, lo1)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + b * 32 + 16),
                        _mm512_cvtepi32_epi16(_mm512_add_epi32(hi0, hi1)));
  }
}

// Several queries' tables against one list (simd/pq4_kernels.h, Pq4ScanMultiFn): the transposed
// indices of each 64-byte row of codes are built once and looked up in every table, so per query
// and row only two vpermb and two vpdpbusd remain.
template <std::size_t G>
void scan_multi_vbmi_n(const std::uint8_t* blocks, std::size_t nblocks, std::size_t padded_m,
                       const std::uint8_t* const* tables, std::uint16_t* const* outs) {
  const VbmiConstants k = make_constants();
  const std::size_t bytes = padded_m * 16, quads = (padded_m + 3) / 4;
  // A trailing pair of sub-quantizers: zero codes above it, and zero table entries for them.
  const __mmask64 tail = padded_m % 4 ? 0xffffffffull : ~0ull;
  for (std::size_t b = 0; b < nblocks; ++b) {
    const std::uint8_t* blk = blocks + b * bytes;
    _mm_prefetch(reinterpret_cast<const char*>(blk + 2 * bytes), _MM_HINT_T0);
    __m512i lo[G], hi[G];
    for (std::size_t g = 0; g < G; ++g) lo[g] = hi[g] = _mm512_setzero_si512();
    for (std::size_t q = 0; q < quads; ++q) {
      const __mmask64 rows = q + 1 < quads ? ~0ull : tail;
      const __m512i c = _mm512_permutexvar_epi8(k.transpose, _mm512_maskz_loadu_epi8(rows, blk + q * 64));
      const __m512i lo_idx = _mm512_ternarylogic_epi32(c, k.low_nibble, k.table_select, 0xEA);
      const __m512i hi_idx = _mm512_ternarylogic_epi32(_mm512_srli_epi16(c, 4), k.low_nibble, k.table_select, 0xEA);
      for (std::size_t g = 0; g < G; ++g) {
        const __m512i t = _mm512_maskz_loadu_epi8(rows, tables[g] + q * 64);
        lo[g] = _mm512_dpbusd_epi32(lo[g], _mm512_permutexvar_epi8(lo_idx, t), k.ones);
        hi[g] = _mm512_dpbusd_epi32(hi[g], _mm512_permutexvar_epi8(hi_idx, t), k.ones);
      }
    }
    for (std::size_t g = 0; g < G; ++g) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(outs[g] + b * 32), _mm512_cvtepi32_epi16(lo[g]));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(outs[g] + b * 32 + 16), _mm512_cvtepi32_epi16(hi[g]));
    }
  }
}

void scan_multi_vbmi(const std::uint8_t* blocks, std::size_t nblocks, std::size_t padded_m,
                     const std::uint8_t* const* tables, std::size_t ntables, std::uint16_t* const* outs) {
  for (std::size_t done = 0; done < ntables;) {
    const std::size_t n = ntables - done;
    if (n >= 4) {
      scan_multi_vbmi_n<4>(blocks, nblocks, padded_m, tables + done, outs + done);
      done += 4;
    } else if (n == 3) {
      scan_multi_vbmi_n<3>(blocks, nblocks, padded_m, tables + done, outs + done);
      done += 3;
    } else if (n == 2) {
      scan_multi_vbmi_n<2>(blocks, nblocks, padded_m, tables + done, outs + done);
      done += 2;
    } else {
      scan_vbmi(blocks, nblocks, padded_m, tables[done], outs[done]);
      done += 1;
    }
  }
}

}  // namespace

Pq4ScanFn pq4_scan_avx512vbmi() { return &scan_vbmi; }
Pq4ScanMultiFn pq4_scan_multi_avx512vbmi() { return &scan_multi_vbmi; }

}  // namespace annforge::simd
#else
namespace annforge::simd {
Pq4ScanFn pq4_scan_avx512vbmi() { return nullptr; }
Pq4ScanMultiFn pq4_scan_multi_avx512vbmi() { return nullptr; }
}  // namespace annforge::simd
#endif
