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

inline __m512i popcount_bytes_impl(__m512i v) {
  // Bytes 0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4 (the bit count of each nibble) in every 128-bit lane.
  const __m512i lut = _mm512_set4_epi32(0x04030302, 0x03020201, 0x03020201, 0x02010100);
  const __m512i low = _mm512_set1_epi8(0x0f);
  const __m512i lo = _mm512_and_si512(v, low);
  const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
  return _mm512_add_epi8(_mm512_shuffle_epi8(lut, lo), _mm512_shuffle_epi8(lut, hi));
}

#include "rabitq_words_avx512.inc"

struct V {
  using Reg = __m512i;
  static constexpr std::size_t kWords = 8;
  static Reg zero() { return _mm512_setzero_si512(); }
  static Reg add64(Reg a, Reg b) { return _mm512_add_epi64(a, b); }
  static Reg add8(Reg a, Reg b) { return _mm512_add_epi8(a, b); }
  static Reg and_bits(Reg a, Reg b) { return _mm512_and_si512(a, b); }
  static Reg popcount_bytes(Reg v) { return popcount_bytes_impl(v); }
  static Reg sum_bytes(Reg v) { return _mm512_sad_epu8(v, zero()); }
  static Reg load_words(const std::uint64_t* p, std::size_t w, std::size_t nwords) {
    return load_words_512(p, w, nwords);
  }
  static std::uint64_t lane_total(Reg v) { return lane_total_512(v); }
};

#include "rabitq_bytewise.inc"

}  // namespace

#include "rabitq_kernels.inc"

namespace {
const RaBitQKernels kTable = {Level::AVX512, &binary_dot_body, &multibit_dot_body, &binary_dot_rows_body};
}  // namespace

const RaBitQKernels* rabitq_kernels_avx512() { return &kTable; }
#else
const RaBitQKernels* rabitq_kernels_avx512() { return nullptr; }
#endif
}  // namespace annforge::simd
