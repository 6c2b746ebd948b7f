// 4-bit fast-scan accumulation with AVX2: two sub-quantizers per 256-bit register (one per 128-bit
// lane, as _mm256_shuffle_epi8 looks up within lanes), 16-bit accumulators, lanes summed at the end.
#include "annforge/codec/pq4_fastscan.h"

#if defined(__AVX2__)
#include <immintrin.h>

namespace annforge::simd {
namespace {

// Bytes are summed as 16-bit words (even byte + 256 * odd byte) plus an odd-byte accumulator
// (word >> 8); even sums = words - (odd << 8) modulo 2^16, exact as every true sum is below 2^16.
void scan_avx2(const std::uint8_t* blocks, std::size_t nblocks, std::size_t padded_m, const std::uint8_t* table,
               std::uint16_t* out) {
  const std::size_t bytes = padded_m * 16;
  const __m256i low_nibble = _mm256_set1_epi8(0x0f);
  const __m256i zero = _mm256_setzero_si256();
  for (std::size_t b = 0; b < nblocks; ++b) {
    const std::uint8_t* blk = blocks + b * bytes;
    __m256i lo_all = zero, lo_odd = zero, hi_all = zero, hi_odd = zero;  // vectors 0-15 / 16-31
    const std::uint8_t* ahead = blk + 2 * bytes;  // fetch two blocks ahead (lists are short streams)
    for (std::size_t j = 0; j < padded_m; j += 2) {
      if (j % 4 == 0) _mm_prefetch(reinterpret_cast<const char*>(ahead + j * 16), _MM_HINT_T0);
      const __m256i codes = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + j * 16));
      const __m256i lut = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(table + j * 16));
      const __m256i lo = _mm256_shuffle_epi8(lut, _mm256_and_si256(codes, low_nibble));
      const __m256i hi = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(codes, 4), low_nibble));
      lo_all = _mm256_add_epi16(lo_all, lo);
      lo_odd = _mm256_add_epi16(lo_odd, _mm256_srli_epi16(lo, 8));
      hi_all = _mm256_add_epi16(hi_all, hi);
      hi_odd = _mm256_add_epi16(hi_odd, _mm256_srli_epi16(hi, 8));
    }
    const __m128i lo_a = _mm_add_epi16(_mm256_castsi256_si128(lo_all), _mm256_extracti128_si256(lo_all, 1));
    const __m128i lo_o = _mm_add_epi16(_mm256_castsi256_si128(lo_odd), _mm256_extracti128_si256(lo_odd, 1));
    const __m128i hi_a = _mm_add_epi16(_mm256_castsi256_si128(hi_all), _mm256_extracti128_si256(hi_all, 1));
    const __m128i hi_o = _mm_add_epi16(_mm256_castsi256_si128(hi_odd), _mm256_extracti128_si256(hi_odd, 1));
    const __m128i lo_e = _mm_sub_epi16(lo_a, _mm_slli_epi16(lo_o, 8));
    const __m128i hi_e = _mm_sub_epi16(hi_a, _mm_slli_epi16(hi_o, 8));
    std::uint16_t* o = out + b * 32;
    _mm_storeu_si128(reinterpret_cast<__m128i*>(o), _mm_unpacklo_epi16(lo_e, lo_o));       // vectors 0-7
    _mm_storeu_si128(reinterpret_cast<__m128i*>(o + 8), _mm_unpackhi_epi16(lo_e, lo_o));   // 8-15
    _mm_storeu_si128(reinterpret_cast<__m128i*>(o + 16), _mm_unpacklo_epi16(hi_e, hi_o));  // 16-23
    _mm_storeu_si128(reinterpret_cast<__m128i*>(o + 24), _mm_unpackhi_epi16(hi_e, hi_o));  // 24-31
  }
}

void below_avx2(const std::uint16_t* acc, std::size_t nblocks, const std::uint16_t* bounds,
                std::uint32_t* masks) {
  for (std::size_t b = 0; b < nblocks; ++b) {
    if (bounds[b] == 0) {
      masks[b] = 0;
      continue;
    }
    // acc < bound  <=>  max(acc, bound - 1) == bound - 1 (unsigned; AVX2 has no unsigned 16-bit compare).
    const __m256i top = _mm256_set1_epi16(static_cast<short>(bounds[b] - 1));
    const __m256i a0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(acc + b * 32));
    const __m256i a1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(acc + b * 32 + 16));
    const __m256i e0 = _mm256_cmpeq_epi16(_mm256_max_epu16(a0, top), top);
    const __m256i e1 = _mm256_cmpeq_epi16(_mm256_max_epu16(a1, top), top);
    // packs interleaves 128-bit lanes (e0 lo, e1 lo, e0 hi, e1 hi): put them back in order.
    const __m256i packed = _mm256_permute4x64_epi64(_mm256_packs_epi16(e0, e1), 0xd8);
    masks[b] = static_cast<std::uint32_t>(_mm256_movemask_epi8(packed));
  }
}

}  // namespace

codec::pq4::ScanFn pq4_scan_avx2() { return &scan_avx2; }
codec::pq4::BelowFn pq4_below_avx2() { return &below_avx2; }

}  // namespace annforge::simd
#else
namespace annforge::simd {
codec::pq4::ScanFn pq4_scan_avx2() { return nullptr; }
codec::pq4::BelowFn pq4_below_avx2() { return nullptr; }
}  // namespace annforge::simd
#endif
