// Kernels of the RaBitQ estimator's hot loop (the codec is codec/rabitq.h): integer inner products of
// bit-plane codes with a bit-plane quantized query, the same plain loops (cpp/src/simd/rabitq_kernels.inc)
// compiled once per SIMD level and picked at run time by the dispatcher.
//
// A value of `bits` bits per dimension over nwords * 64 dimensions is stored as `bits` planes of nwords
// 64-bit words each; bit t of word w of a plane is one bit of dimension w * 64 + t. Query planes are
// least significant first (plane j has weight 2^j); code planes are most significant first (plane a of
// a `cbits`-bit code has weight 2^(cbits - 1 - a)), so plane 0 of every code is its 1-bit (sign) code.
// qbits and cbits are at most 16 and 8. All sums are exact integers: every level returns the same numbers.
#pragma once

#include <cstddef>
#include <cstdint>

#include "annforge/simd/kernels.h"

namespace annforge::simd {

// out[i] = sum_{j < qbits} 2^j * popcount(code_i AND qplanes[j]),  code_i = codes + i * stride (words).
using RaBitQBinaryDotFn = void (*)(const std::uint64_t* codes, std::size_t n, std::size_t stride,
                                   std::size_t nwords, const std::uint64_t* qplanes, std::size_t qbits,
                                   std::uint32_t* out);
// out[i] = sum_{a < cbits} 2^(cbits-1-a) * sum_{j < qbits} 2^j * popcount(plane a of code i AND qplanes[j]),
// plane a of code i at codes + i * stride + a * nwords: the inner product of the cbits-bit unsigned code
// with the qbits-bit unsigned query. The sum must fit in 32 bits (the codec checks the dimension).
using RaBitQMultiDotFn = void (*)(const std::uint64_t* codes, std::size_t n, std::size_t stride,
                                  std::size_t nwords, std::size_t cbits, const std::uint64_t* qplanes,
                                  std::size_t qbits, std::uint32_t* out);

// binary_dot over chosen rows: out[i] = the binary_dot sum of code rows[i] (codes + rows[i] * stride), so
// a caller reads only the codes it needs (the quantized graph skips visited neighbours' lines).
using RaBitQBinaryDotRowsFn = void (*)(const std::uint64_t* codes, const std::uint32_t* rows, std::size_t n,
                                       std::size_t stride, std::size_t nwords, const std::uint64_t* qplanes,
                                       std::size_t qbits, std::uint32_t* out);

struct RaBitQKernels {
  Level level;
  RaBitQBinaryDotFn binary_dot;
  RaBitQMultiDotFn multibit_dot;
  RaBitQBinaryDotRowsFn binary_dot_rows;
};

// Per level (cpp/src/simd/rabitq_kernels_{scalar,avx2,avx512}.cpp); nullptr when not compiled in. NEON
// builds use the scalar table.
const RaBitQKernels* rabitq_kernels_scalar();
const RaBitQKernels* rabitq_kernels_avx2();
const RaBitQKernels* rabitq_kernels_avx512();
// The AVX-512 level's variant for CPUs with VPOPCNTDQ (rabitq_kernels_vpopcnt_avx512.cpp): same sums.
const RaBitQKernels* rabitq_kernels_vpopcnt_avx512();

// Selection (dispatch.cpp): the table of the active kernel level (kernels().level), so ANNFORGE_SIMD and
// set_active_level() move it too; the scalar table where that level has none. At the AVX-512 level it is
// the VPOPCNTDQ variant whenever this CPU runs it.
const RaBitQKernels& rabitq_kernels();
// The table for one level (AVX-512: the VPOPCNTDQ variant where it runs); ValueError when that level is
// not available here (NEON: the scalar table).
const RaBitQKernels& rabitq_kernels_for(Level level);
// The plain AVX-512 table, also on CPUs with VPOPCNTDQ (tests); ValueError where AVX-512 is unavailable.
const RaBitQKernels& rabitq_kernels_avx512_plain();
// True when the VPOPCNTDQ variant is compiled in and this CPU runs it.
bool rabitq_vpopcnt_available();

}  // namespace annforge::simd
