// MinHash permutation kernels: the same plain loops (cpp/src/simd/minhash_perm.inc) compiled once per
// SIMD level, picked at run time by the dispatcher from the active kernel level.
#pragma once

#include <cstddef>
#include <cstdint>

namespace annforge::simd {

// C-MinHash constants: u = sigma(token) * M1, shift[j] = j * M1, pi(z) = (z ^ (z >> 16)) * M2.
constexpr std::uint32_t kCMinHashM1 = 0x85EBCA6Bu;
constexpr std::uint32_t kCMinHashM2 = 0xC2B2AE35u;

// sig[j] = min(sig[j], (a_j * h + b_j) mod (2^61-1)) for every h in hv; h must be < 2^61 - 1;
// a_j = a_hi[j] * 2^32 + a_lo[j].
using MinHashPermuteFn = void (*)(const std::uint64_t* hv, std::size_t n, const std::uint64_t* a_hi,
                                  const std::uint64_t* a_lo, const std::uint64_t* b, std::size_t num_perm,
                                  std::uint64_t* sig);
// sig[j] = min(sig[j], pi(u + shift[j])) for every u (C-MinHash).
using CMinHashFn = void (*)(const std::uint32_t* u, std::size_t n, const std::uint32_t* shift, std::size_t num_perm,
                            std::uint32_t* sig);

struct MinHashKernels {
  MinHashPermuteFn permute_mersenne;
  CMinHashFn cminhash;
};

// Per level (cpp/src/simd/minhash_perm_{scalar,avx2,avx512}.cpp); nullptr when not compiled in.
const MinHashKernels* minhash_kernels_scalar();
const MinHashKernels* minhash_kernels_avx2();
const MinHashKernels* minhash_kernels_avx512();

// The table of the active kernel level (kernels().level), so ANNFORGE_SIMD and set_active_level()
// move it too; the portable table where that level has none (dispatch.cpp).
const MinHashKernels& minhash_kernels();

}  // namespace annforge::simd
