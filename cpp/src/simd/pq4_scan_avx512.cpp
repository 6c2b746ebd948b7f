// 4-bit fast-scan accumulation with AVX-512BW: four sub-quantizers per 512-bit register (one per
// 128-bit lane), a 256-bit step for a trailing pair, 16-bit accumulators, lanes summed at the end.
#include "annforge/codec/pq4_fastscan.h"

#if defined(__AVX512F__) && defined(__AVX512BW__)
#include <immintrin.h>

namespace annforge::simd {
namespace {

// Sums of bytes without unpacking them: added as 16-bit words, a word holds (even byte) + 256 * (odd
// byte); a second accumulator adds the odd bytes alone (word >> 8). The even sums are then
// total - (odd << 8) modulo 2^16, exact because every true sum is below 2^16 (see quantize_lut).
// Fewer shuffle-port operations than zero-extending each byte.
void scan_avx512(const std::uint8_t* blocks, std::size_t nblocks, std::size_t padded_m,
                 const std::uint8_t* table, std::uint16_t* out) {
  const std::size_t bytes = padded_m * 16;
  const std::size_t quads = padded_m / 4 * 4;
  const __m512i low_nibble = _mm512_set1_epi8(0x0f);
  const __m512i zero = _mm512_setzero_si512();
  const __m256i low_nibble_256 = _mm256_set1_epi8(0x0f);
  for (std::size_t b = 0; b < nblocks; ++b) {
    const std::uint8_t* blk = blocks + b * bytes;
    // lo: vectors 0-15, hi: vectors 16-31; *_all: word sums, *_odd: odd-byte sums.
    __m512i lo_all = zero, lo_odd = zero, hi_all = zero, hi_odd = zero;
    // Lists are short (a few dozen blocks): start fetching two blocks ahead rather than waiting for
    // the hardware prefetcher to notice the stream. (Prefetching past the end is harmless.)
    const std::uint8_t* ahead = blk + 2 * bytes;
    for (std::size_t j = 0; j < quads; j += 4) {
      _mm_prefetch(reinterpret_cast<const char*>(ahead + j * 16), _MM_HINT_T0);
      const __m512i codes = _mm512_loadu_si512(blk + j * 16);
      const __m512i lut = _mm512_loadu_si512(table + j * 16);
      const __m512i lo = _mm512_shuffle_epi8(lut, _mm512_and_si512(codes, low_nibble));
      const __m512i hi = _mm512_shuffle_epi8(lut, _mm512_and_si512(_mm512_srli_epi16(codes, 4), low_nibble));
      lo_all = _mm512_add_epi16(lo_all, lo);
      lo_odd = _mm512_add_epi16(lo_odd, _mm512_srli_epi16(lo, 8));
      hi_all = _mm512_add_epi16(hi_all, hi);
      hi_odd = _mm512_add_epi16(hi_odd, _mm512_srli_epi16(hi, 8));
    }
    // Fold the four 128-bit lanes (one sub-quantizer group each) into two.
    __m256i la = _mm256_add_epi16(_mm512_castsi512_si256(lo_all), _mm512_extracti64x4_epi64(lo_all, 1));
    __m256i lodd = _mm256_add_epi16(_mm512_castsi512_si256(lo_odd), _mm512_extracti64x4_epi64(lo_odd, 1));
    __m256i ha = _mm256_add_epi16(_mm512_castsi512_si256(hi_all), _mm512_extracti64x4_epi64(hi_all, 1));
    __m256i hodd = _mm256_add_epi16(_mm512_castsi512_si256(hi_odd), _mm512_extracti64x4_epi64(hi_odd, 1));
    if (quads < padded_m) {  // a trailing pair of sub-quantizers at 256 bits
      const __m256i codes = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + quads * 16));
      const __m256i lut = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(table + quads * 16));
      const __m256i lo = _mm256_shuffle_epi8(lut, _mm256_and_si256(codes, low_nibble_256));
      const __m256i hi =
          _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(codes, 4), low_nibble_256));
      la = _mm256_add_epi16(la, lo);
      lodd = _mm256_add_epi16(lodd, _mm256_srli_epi16(lo, 8));
      ha = _mm256_add_epi16(ha, hi);
      hodd = _mm256_add_epi16(hodd, _mm256_srli_epi16(hi, 8));
    }
    const __m128i lo_a = _mm_add_epi16(_mm256_castsi256_si128(la), _mm256_extracti128_si256(la, 1));
    const __m128i lo_o = _mm_add_epi16(_mm256_castsi256_si128(lodd), _mm256_extracti128_si256(lodd, 1));
    const __m128i hi_a = _mm_add_epi16(_mm256_castsi256_si128(ha), _mm256_extracti128_si256(ha, 1));
    const __m128i hi_o = _mm_add_epi16(_mm256_castsi256_si128(hodd), _mm256_extracti128_si256(hodd, 1));
    const __m128i lo_e = _mm_sub_epi16(lo_a, _mm_slli_epi16(lo_o, 8));
    const __m128i hi_e = _mm_sub_epi16(hi_a, _mm_slli_epi16(hi_o, 8));
    std::uint16_t* o = out + b * 32;
    _mm_storeu_si128(reinterpret_cast<__m128i*>(o), _mm_unpacklo_epi16(lo_e, lo_o));       // vectors 0-7
    _mm_storeu_si128(reinterpret_cast<__m128i*>(o + 8), _mm_unpackhi_epi16(lo_e, lo_o));   // 8-15
    _mm_storeu_si128(reinterpret_cast<__m128i*>(o + 16), _mm_unpacklo_epi16(hi_e, hi_o));  // 16-23
    _mm_storeu_si128(reinterpret_cast<__m128i*>(o + 24), _mm_unpackhi_epi16(hi_e, hi_o));  // 24-31
  }
}

void lut_min_max(const float* lut, std::size_t m, float* mins, float* maxs) {
  for (std::size_t j = 0; j < m; ++j) {
    const __m512 t = _mm512_loadu_ps(lut + j * 16);
    mins[j] = _mm512_reduce_min_ps(t);
    maxs[j] = _mm512_reduce_max_ps(t);
  }
}

void lut_encode(const float* lut, std::size_t m, const float* mins, float scale, std::uint8_t* out) {
  const __m512 vscale = _mm512_set1_ps(scale), half = _mm512_set1_ps(0.5f), cap = _mm512_set1_ps(255.0f);
  for (std::size_t j = 0; j < m; ++j) {
    const __m512 t = _mm512_loadu_ps(lut + j * 16);
    // Same operation order as the portable loop: subtract, multiply, add (no FMA: -ffp-contract=off).
    __m512 v = _mm512_add_ps(_mm512_mul_ps(_mm512_sub_ps(t, _mm512_set1_ps(mins[j])), vscale), half);
    v = _mm512_min_ps(v, cap);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + j * 16), _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(v)));
  }
}

void below_avx512(const std::uint16_t* acc, std::size_t nblocks, const std::uint16_t* bounds,
                  std::uint32_t* masks) {
  for (std::size_t b = 0; b < nblocks; ++b)
    masks[b] = static_cast<std::uint32_t>(_mm512_cmplt_epu16_mask(_mm512_loadu_si512(acc + b * 32),
                                                                  _mm512_set1_epi16(static_cast<short>(bounds[b]))));
}

const codec::pq4::LutKernels kLutKernels = {&lut_min_max, &lut_encode};

}  // namespace

codec::pq4::ScanFn pq4_scan_avx512() { return &scan_avx512; }
codec::pq4::BelowFn pq4_below_avx512() { return &below_avx512; }
const codec::pq4::LutKernels* pq4_lut_avx512() { return &kLutKernels; }

}  // namespace annforge::simd
#else
namespace annforge::simd {
codec::pq4::ScanFn pq4_scan_avx512() { return nullptr; }
codec::pq4::BelowFn pq4_below_avx512() { return nullptr; }
const codec::pq4::LutKernels* pq4_lut_avx512() { return nullptr; }
}  // namespace annforge::simd
#endif
