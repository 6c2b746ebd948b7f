// The RaBitQ bit-plane kernels for AVX-512 CPUs with VPOPCNTDQ (Ice Lake and later, Zen 4): this file
// alone gets -mavx512vpopcntdq. vpopcntq counts each 64-bit word in one instruction, so the query planes
// fold by Horner in 64-bit lanes (no byte look-up, no vpsadbw). The dispatcher hands this table out at
// the AVX-512 level only when the CPU reports VPOPCNTDQ.
#include <cstddef>
#include <cstdint>

#include "annforge/simd/rabitq_kernels.h"

#if defined(ANNFORGE_HAVE_AVX512)
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
const RaBitQKernels kTable = {Level::AVX512, &binary_dot_body, &multibit_dot_body};
}  // namespace

const RaBitQKernels* rabitq_kernels_vpopcnt_avx512() { return &kTable; }
#else
const RaBitQKernels* rabitq_kernels_vpopcnt_avx512() { return nullptr; }
#endif
}  // namespace annforge::simd
