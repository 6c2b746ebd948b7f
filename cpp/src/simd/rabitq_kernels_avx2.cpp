// The RaBitQ bit-plane kernels for AVX2 (this file alone gets -mavx2): 256 bits of a plane at a time (the
// last partial chunk through a masked load), bytes counted with the nibble look-up (vpshufb), up to four
// query planes weighted inside the bytes (8 * 15 fits), then summed with vpsadbw.
#include <cstddef>
#include <cstdint>

#include "annforge/simd/rabitq_kernels.h"

#if defined(ANNFORGE_HAVE_AVX2)
#include <immintrin.h>
#endif

namespace annforge::simd {
#if defined(ANNFORGE_HAVE_AVX2)
namespace {

inline __m256i popcount_bytes_impl(__m256i v) {
  const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                       0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  const __m256i low = _mm256_set1_epi8(0x0f);
  const __m256i lo = _mm256_and_si256(v, low);
  const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
  return _mm256_add_epi8(_mm256_shuffle_epi8(lut, lo), _mm256_shuffle_epi8(lut, hi));
}

// Words [w, w + 4) of `p`, zeros past nwords (vpmaskmovq does not touch the masked-off words).
inline __m256i load_words_impl(const std::uint64_t* p, std::size_t w, std::size_t nwords) {
  const std::size_t left = nwords - w;
  if (left >= 4) return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + w));
  const __m256i lane = _mm256_setr_epi64x(0, 1, 2, 3);
  const __m256i mask = _mm256_cmpgt_epi64(_mm256_set1_epi64x(static_cast<long long>(left)), lane);
  return _mm256_maskload_epi64(reinterpret_cast<const long long*>(p + w), mask);
}

struct V {
  using Reg = __m256i;
  static constexpr std::size_t kWords = 4;
  static Reg zero() { return _mm256_setzero_si256(); }
  static Reg add64(Reg a, Reg b) { return _mm256_add_epi64(a, b); }
  static Reg add8(Reg a, Reg b) { return _mm256_add_epi8(a, b); }
  static Reg and_bits(Reg a, Reg b) { return _mm256_and_si256(a, b); }
  static Reg popcount_bytes(Reg v) { return popcount_bytes_impl(v); }
  static Reg sum_bytes(Reg v) { return _mm256_sad_epu8(v, zero()); }
  static Reg load_words(const std::uint64_t* p, std::size_t w, std::size_t nwords) {
    return load_words_impl(p, w, nwords);
  }
  static std::uint64_t lane_total(Reg v) {
    alignas(32) std::uint64_t lanes[4];
    _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), v);
    return lanes[0] + lanes[1] + lanes[2] + lanes[3];
  }
};

#include "rabitq_bytewise.inc"

}  // namespace

#include "rabitq_kernels.inc"

namespace {
const RaBitQKernels kTable = {Level::AVX2, &binary_dot_body, &multibit_dot_body, &binary_dot_rows_body};
}  // namespace

const RaBitQKernels* rabitq_kernels_avx2() { return &kTable; }
#else
const RaBitQKernels* rabitq_kernels_avx2() { return nullptr; }
#endif
}  // namespace annforge::simd
