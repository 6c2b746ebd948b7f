// The RaBitQ bit-plane kernels for AVX-512 F/BW (this file alone gets those flags): 512
// bits of a plane at a time, the last partial chunk through a masked load, bytes counted with the nibble
// look-up (vpshufb), up to four query planes weighted inside the bytes, then summed with vpsadbw.
// VPOPCNTDQ is not assumed (the AVX-512 level does not require it).
#include <cstddef>
#include <cstdint>

#include "annforge/simd/rabitq_kernels.h"

#if defined(ANNFORGE_HAVE_AVX512)
#include <immintrin.h>
#endif

namespace annforge::simd {
#if defined(ANNFORGE_HAVE_AVX512)
namespace {

inline __m512i popcount_bytes(__m512i v) {
  // Bytes 0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4 (the bit count of each nibble) in every 128-bit lane.
  const __m512i lut = _mm512_set4_epi32(0x04030302, 0x03020201, 0x03020201, 0x02010100);
  const __m512i low = _mm512_set1_epi8(0x0f);
  const __m512i lo = _mm512_and_si512(v, low);
  const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
  return _mm512_add_epi8(_mm512_shuffle_epi8(lut, lo), _mm512_shuffle_epi8(lut, hi));
}

// Words [w, w + 8) of `p`, zeros past nwords.
inline __m512i load_words(const std::uint64_t* p, std::size_t w, std::size_t nwords) {
  const std::size_t left = nwords - w;
  const __mmask8 mask = left >= 8 ? __mmask8(0xff) : static_cast<__mmask8>((1u << left) - 1);
  return _mm512_maskz_loadu_epi64(mask, p + w);
}

// group[g]: the byte sums of query planes 4g .. 4g+3 (weights 2^(j - 4g)) in 64-bit lanes, qbits <= 16.
struct PlaneSums {
  __m512i group[4] = {_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512(),
                      _mm512_setzero_si512()};
};

void double_and_add(PlaneSums& s, const std::uint64_t* plane, const std::uint64_t* qplanes, std::size_t nwords,
                    std::size_t qbits) {
  for (std::size_t g = 0; g * 4 < qbits; ++g) s.group[g] = _mm512_add_epi64(s.group[g], s.group[g]);
  for (std::size_t w = 0; w < nwords; w += 8) {
    const __m512i c = load_words(plane, w, nwords);
    for (std::size_t g = 0; g * 4 < qbits; ++g) {
      const std::size_t j0 = g * 4, j1 = j0 + 4 < qbits ? j0 + 4 : qbits;
      __m512i weighted = _mm512_setzero_si512();
      for (std::size_t j = j1; j-- > j0;) {  // Horner: weighted = sum 2^(j-j0) * count_j, per byte
        const __m512i q = load_words(qplanes + j * nwords, w, nwords);
        weighted = _mm512_add_epi8(_mm512_add_epi8(weighted, weighted), popcount_bytes(_mm512_and_si512(c, q)));
      }
      s.group[g] = _mm512_add_epi64(s.group[g], _mm512_sad_epu8(weighted, _mm512_setzero_si512()));
    }
  }
}

std::uint64_t total(const PlaneSums& s, std::size_t qbits) {
  std::uint64_t sum = 0;
  for (std::size_t g = 0; g * 4 < qbits; ++g) {
    alignas(64) std::uint64_t lanes[8];
    _mm512_store_si512(lanes, s.group[g]);
    std::uint64_t group = 0;
    for (int l = 0; l < 8; ++l) group += lanes[l];
    sum += group << (4 * g);
  }
  return sum;
}

}  // namespace

#include "rabitq_kernels.inc"

namespace {
const RaBitQKernels kTable = {Level::AVX512, &binary_dot_body, &multibit_dot_body};
}  // namespace

const RaBitQKernels* rabitq_kernels_avx512() { return &kTable; }
#else
const RaBitQKernels* rabitq_kernels_avx512() { return nullptr; }
#endif
}  // namespace annforge::simd
