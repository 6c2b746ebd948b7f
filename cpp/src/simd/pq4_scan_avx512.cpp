// 4-bit fast-scan accumulation with AVX-512BW: four sub-quantizers per 512-bit register (one per
// 128-bit lane), a 256-bit step for a trailing pair, 16-bit accumulators, lanes summed at the end.
#include "annforge/simd/pq4_kernels.h"

#if defined(__AVX512F__) && defined(__AVX512BW__)
#include <immintrin.h>

namespace annforge::simd {
#include "pq4_scan_256.inc"
namespace {

// Byte sums as in pq4_scan_256.inc, four sub-quantizers per 512-bit register, for one or several
// tables against the same blocks (G = 1: the plain scan; ScanMultiFn): each 64-byte row of codes is
// loaded and split into nibble indices once, then looked up in up to four tables (16 zmm accumulators).
template <std::size_t G>
void scan_multi_avx512_n(const std::uint8_t* blocks, std::size_t nblocks, std::size_t padded_m,
                         const std::uint8_t* const* tables, std::uint16_t* const* outs) {
  const std::size_t bytes = padded_m * 16;
  const std::size_t quads = padded_m / 4 * 4;
  const __m512i low_nibble = _mm512_set1_epi8(0x0f);
  for (std::size_t b = 0; b < nblocks; ++b) {
    const std::uint8_t* blk = blocks + b * bytes;
    // Lists are short (a few dozen blocks): start fetching two blocks ahead rather than waiting for
    // the hardware prefetcher to notice the stream. (Prefetching past the end is harmless.)
    const std::uint8_t* ahead = blk + 2 * bytes;
    // lo: vectors 0-15, hi: vectors 16-31; *_all: word sums, *_odd: odd-byte sums.
    __m512i lo_all[G], lo_odd[G], hi_all[G], hi_odd[G];
    for (std::size_t g = 0; g < G; ++g) lo_all[g] = lo_odd[g] = hi_all[g] = hi_odd[g] = _mm512_setzero_si512();
    for (std::size_t j = 0; j < quads; j += 4) {
      _mm_prefetch(reinterpret_cast<const char*>(ahead + j * 16), _MM_HINT_T0);
      const __m512i codes = _mm512_loadu_si512(blk + j * 16);
      const __m512i lo_idx = _mm512_and_si512(codes, low_nibble);
      const __m512i hi_idx = _mm512_and_si512(_mm512_srli_epi16(codes, 4), low_nibble);
      for (std::size_t g = 0; g < G; ++g) {
        const __m512i lut = _mm512_loadu_si512(tables[g] + j * 16);
        const __m512i lo = _mm512_shuffle_epi8(lut, lo_idx);
        const __m512i hi = _mm512_shuffle_epi8(lut, hi_idx);
        lo_all[g] = _mm512_add_epi16(lo_all[g], lo);
        lo_odd[g] = _mm512_add_epi16(lo_odd[g], _mm512_srli_epi16(lo, 8));
        hi_all[g] = _mm512_add_epi16(hi_all[g], hi);
        hi_odd[g] = _mm512_add_epi16(hi_odd[g], _mm512_srli_epi16(hi, 8));
      }
    }
    const bool pair = quads < padded_m;
    const NibbleIndices256 tail = pair ? nibble_indices256(blk + quads * 16) : NibbleIndices256{};
    for (std::size_t g = 0; g < G; ++g) {
      // Fold the four 128-bit lanes (one sub-quantizer group each) into two.
      BlockSums256 sums = {
          _mm256_add_epi16(_mm512_castsi512_si256(lo_all[g]), _mm512_extracti64x4_epi64(lo_all[g], 1)),
          _mm256_add_epi16(_mm512_castsi512_si256(lo_odd[g]), _mm512_extracti64x4_epi64(lo_odd[g], 1)),
          _mm256_add_epi16(_mm512_castsi512_si256(hi_all[g]), _mm512_extracti64x4_epi64(hi_all[g], 1)),
          _mm256_add_epi16(_mm512_castsi512_si256(hi_odd[g]), _mm512_extracti64x4_epi64(hi_odd[g], 1))};
      if (pair) accumulate_indices256(tail, tables[g] + quads * 16, sums);  // a trailing pair at 256 bits
      store_block_sums256(sums, outs[g] + b * 32);
    }
  }
}

void scan_avx512(const std::uint8_t* blocks, std::size_t nblocks, std::size_t padded_m,
                 const std::uint8_t* table, std::uint16_t* out) {
  scan_multi_avx512_n<1>(blocks, nblocks, padded_m, &table, &out);
}

void scan_multi_avx512(const std::uint8_t* blocks, std::size_t nblocks, std::size_t padded_m,
                       const std::uint8_t* const* tables, std::size_t ntables, std::uint16_t* const* outs) {
  std::size_t t = 0;
  for (; t + 4 <= ntables; t += 4) scan_multi_avx512_n<4>(blocks, nblocks, padded_m, tables + t, outs + t);
  switch (ntables - t) {
    case 3: scan_multi_avx512_n<3>(blocks, nblocks, padded_m, tables + t, outs + t); break;
    case 2: scan_multi_avx512_n<2>(blocks, nblocks, padded_m, tables + t, outs + t); break;
    case 1: scan_avx512(blocks, nblocks, padded_m, tables[t], outs[t]); break;
    default: break;
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

const Pq4LutKernels kLutKernels = {&lut_min_max, &lut_encode};

}  // namespace

Pq4ScanFn pq4_scan_avx512() { return &scan_avx512; }
Pq4BelowFn pq4_below_avx512() { return &below_avx512; }
Pq4ScanMultiFn pq4_scan_multi_avx512() { return &scan_multi_avx512; }
const Pq4LutKernels* pq4_lut_avx512() { return &kLutKernels; }

}  // namespace annforge::simd
#else
namespace annforge::simd {
Pq4ScanFn pq4_scan_avx512() { return nullptr; }
Pq4BelowFn pq4_below_avx512() { return nullptr; }
Pq4ScanMultiFn pq4_scan_multi_avx512() { return nullptr; }
const Pq4LutKernels* pq4_lut_avx512() { return nullptr; }
}  // namespace annforge::simd
#endif
