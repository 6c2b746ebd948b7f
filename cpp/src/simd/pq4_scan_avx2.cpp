// 4-bit fast-scan accumulation with AVX2: two sub-quantizers per 256-bit register (one per 128-bit
// lane, as _mm256_shuffle_epi8 looks up within lanes), 16-bit accumulators, lanes summed at the end.
#include "annforge/simd/pq4_kernels.h"

#if defined(__AVX2__)
#include <immintrin.h>

namespace annforge::simd {
#include "pq4_scan_256.inc"
namespace {

// One or several tables against the same blocks (G = 1: the plain scan; ScanMultiFn): each pair of
// code rows is loaded and split into nibble indices once, then looked up in every table. At most two
// tables per pass: their eight accumulators and the indices fill the sixteen ymm registers.
template <std::size_t G>
void scan_multi_avx2_n(const std::uint8_t* blocks, std::size_t nblocks, std::size_t padded_m,
                       const std::uint8_t* const* tables, std::uint16_t* const* outs) {
  const std::size_t bytes = padded_m * 16;
  for (std::size_t b = 0; b < nblocks; ++b) {
    const std::uint8_t* blk = blocks + b * bytes;
    const std::uint8_t* ahead = blk + 2 * bytes;  // fetch two blocks ahead (lists are short streams)
    BlockSums256 sums[G];
    for (auto& s : sums) s = zero_sums256();
    for (std::size_t j = 0; j < padded_m; j += 2) {
      if (j % 4 == 0) _mm_prefetch(reinterpret_cast<const char*>(ahead + j * 16), _MM_HINT_T0);
      const NibbleIndices256 idx = nibble_indices256(blk + j * 16);
      for (std::size_t g = 0; g < G; ++g) accumulate_indices256(idx, tables[g] + j * 16, sums[g]);
    }
    for (std::size_t g = 0; g < G; ++g) store_block_sums256(sums[g], outs[g] + b * 32);
  }
}

void scan_avx2(const std::uint8_t* blocks, std::size_t nblocks, std::size_t padded_m, const std::uint8_t* table,
               std::uint16_t* out) {
  scan_multi_avx2_n<1>(blocks, nblocks, padded_m, &table, &out);
}

void scan_multi_avx2(const std::uint8_t* blocks, std::size_t nblocks, std::size_t padded_m,
                     const std::uint8_t* const* tables, std::size_t ntables, std::uint16_t* const* outs) {
  std::size_t t = 0;
  for (; t + 2 <= ntables; t += 2) scan_multi_avx2_n<2>(blocks, nblocks, padded_m, tables + t, outs + t);
  if (t < ntables) scan_avx2(blocks, nblocks, padded_m, tables[t], outs[t]);
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

Pq4ScanFn pq4_scan_avx2() { return &scan_avx2; }
Pq4BelowFn pq4_below_avx2() { return &below_avx2; }
Pq4ScanMultiFn pq4_scan_multi_avx2() { return &scan_multi_avx2; }

}  // namespace annforge::simd
#else
namespace annforge::simd {
Pq4ScanFn pq4_scan_avx2() { return nullptr; }
Pq4BelowFn pq4_below_avx2() { return nullptr; }
Pq4ScanMultiFn pq4_scan_multi_avx2() { return nullptr; }
}  // namespace annforge::simd
#endif
