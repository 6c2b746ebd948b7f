// The RaBitQ bit-plane kernels for AVX-512 CPUs with VPOPCNTDQ (Ice Lake and later, Zen 4): this file
// alone gets -mavx512vpopcntdq. vpopcntq counts each 64-bit word in one instruction, so the query planes
// fold by Horner in 64-bit lanes (no byte look-up, no vpsadbw). The dispatcher hands this table out at
// the AVX-512 level only when the CPU reports VPOPCNTDQ.
#include <cstddef>
#include <cstdint>

#include "annforge/simd/rabitq_kernels.h"

#if defined(ANNFORGE_HAVE_AVX512)
#if defined(__GNUC__) && !defined(__clang__)
// GCC 12's avx512fintrin.h trips its own -Wuninitialized in _mm512_undefined_* (GCC bug 105593).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>
#endif

namespace annforge::simd {
#if defined(ANNFORGE_HAVE_AVX512)
namespace {

#include "rabitq_words_avx512.inc"

struct PlaneSums {
  __m512i lanes = _mm512_setzero_si512();
};

void double_and_add(PlaneSums& s, const std::uint64_t* plane, const std::uint64_t* qplanes, std::size_t nwords,
                    std::size_t qbits) {
  __m512i acc = _mm512_add_epi64(s.lanes, s.lanes);
  for (std::size_t w = 0; w < nwords; w += 8) {
    const __m512i c = load_words_512(plane, w, nwords);
    __m512i weighted = _mm512_setzero_si512();
    for (std::size_t j = qbits; j-- > 0;) {  // Horner: weighted = sum 2^j * count_j, per 64-bit lane
      const __m512i q = load_words_512(qplanes + j * nwords, w, nwords);
      weighted = _mm512_add_epi64(_mm512_add_epi64(weighted, weighted), _mm512_popcnt_epi64(_mm512_and_si512(c, q)));
    }
    acc = _mm512_add_epi64(acc, weighted);
  }
  s.lanes = acc;
}

std::uint64_t total(const PlaneSums& s, std::size_t) { return lane_total_512(s.lanes); }

}  // namespace

#include "rabitq_kernels.inc"

namespace {

// binary_dot_rows for codes of at most 8 words whose sums fit in 16 bits (384-d: 64 * 6 * 15 with 4 query
// bits): the query planes stay in registers, and the lane sums of four codes are packed into the 16-bit
// fields of one vector, so one horizontal reduction serves four codes (it dominated the kernel's time).
// The same integers as the generic loop, which takes every other shape.
void binary_dot_rows_short(const std::uint64_t* codes, const std::uint32_t* rows, std::size_t n, std::size_t stride,
                           std::size_t nwords, const std::uint64_t* qplanes, std::size_t qbits, std::uint32_t* out) {
  if (nwords > 8 || 64 * nwords * ((std::uint64_t{1} << qbits) - 1) >= (1u << 16)) {
    binary_dot_rows_body(codes, rows, n, stride, nwords, qplanes, qbits, out);
    return;
  }
  const __mmask8 mask = static_cast<__mmask8>((1u << nwords) - 1);
  auto reduce = [](__m512i v) {
    const __m256i h = _mm256_add_epi64(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1));
    const __m128i x = _mm_add_epi64(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
    return static_cast<std::uint64_t>(_mm_cvtsi128_si64(_mm_add_epi64(x, _mm_unpackhi_epi64(x, x))));
  };
  __m512i q[16];
  for (std::size_t j = 0; j < qbits; ++j) q[j] = _mm512_maskz_loadu_epi64(mask, qplanes + j * nwords);
  auto weighted = [&](std::uint32_t row) {
    const __m512i c = _mm512_maskz_loadu_epi64(mask, codes + static_cast<std::size_t>(row) * stride);
    __m512i w = _mm512_setzero_si512();
    for (std::size_t j = qbits; j-- > 0;) w = _mm512_add_epi64(_mm512_add_epi64(w, w), _mm512_popcnt_epi64(_mm512_and_si512(c, q[j])));
    return w;
  };
  std::size_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const __m512i packed = _mm512_add_epi64(
        _mm512_add_epi64(weighted(rows[i]), _mm512_slli_epi64(weighted(rows[i + 1]), 16)),
        _mm512_add_epi64(_mm512_slli_epi64(weighted(rows[i + 2]), 32), _mm512_slli_epi64(weighted(rows[i + 3]), 48)));
    const std::uint64_t sums = reduce(packed);
    for (std::size_t k = 0; k < 4; ++k) out[i + k] = static_cast<std::uint32_t>((sums >> (16 * k)) & 0xffffu);
  }
  for (; i < n; ++i) out[i] = static_cast<std::uint32_t>(reduce(weighted(rows[i])));
}

const RaBitQKernels kTable = {Level::AVX512, &binary_dot_body, &multibit_dot_body, &binary_dot_rows_short};
}  // namespace

const RaBitQKernels* rabitq_kernels_vpopcnt_avx512() { return &kTable; }
#else
const RaBitQKernels* rabitq_kernels_vpopcnt_avx512() { return nullptr; }
#endif
}  // namespace annforge::simd
