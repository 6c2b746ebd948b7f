// The MinHash permutation loops (Mersenne-61 and C-MinHash) at the baseline instruction set: the table
// for scalar builds and levels without their own copy.
#include <cstddef>
#include <cstdint>

#include "annforge/simd/minhash_kernels.h"

namespace annforge::simd {
#include "minhash_perm.inc"

namespace {
void permute_mersenne_scalar(const std::uint64_t* hv, std::size_t n, const std::uint64_t* a_hi,
                             const std::uint64_t* a_lo, const std::uint64_t* b, std::size_t num_perm,
                             std::uint64_t* sig) {
  permute_mersenne_body(hv, n, a_hi, a_lo, b, num_perm, sig);
}
void cminhash_scalar(const std::uint32_t* u, std::size_t n, const std::uint32_t* shift, std::size_t num_perm,
                     std::uint32_t* sig) {
  cminhash_body(u, n, shift, num_perm, sig);
}
const MinHashKernels kTable = {&permute_mersenne_scalar, &cminhash_scalar};
}  // namespace

const MinHashKernels* minhash_kernels_scalar() { return &kTable; }
}  // namespace annforge::simd
