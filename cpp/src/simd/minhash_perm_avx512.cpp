// The MinHash permutation loops (Mersenne-61 and C-MinHash) compiled for AVX-512 (this file alone gets
// -mavx512f -mavx512dq -mavx512vl).
#include <cstddef>
#include <cstdint>

#include "annforge/simd/minhash_kernels.h"

namespace annforge::simd {
#if defined(ANNFORGE_HAVE_AVX512)
#include "minhash_perm.inc"

namespace {
void permute_mersenne_avx512(const std::uint64_t* hv, std::size_t n, const std::uint64_t* a_hi,
                           const std::uint64_t* a_lo, const std::uint64_t* b, std::size_t num_perm,
                           std::uint64_t* sig) {
  permute_mersenne_body(hv, n, a_hi, a_lo, b, num_perm, sig);
}
void cminhash_avx512(const std::uint32_t* u, std::size_t n, const std::uint32_t* shift, std::size_t num_perm,
                  std::uint32_t* sig) {
  cminhash_body(u, n, shift, num_perm, sig);
}
const MinHashKernels kTable = {&permute_mersenne_avx512, &cminhash_avx512};
}  // namespace

const MinHashKernels* minhash_kernels_avx512() { return &kTable; }
#else
const MinHashKernels* minhash_kernels_avx512() { return nullptr; }
#endif
}  // namespace annforge::simd
