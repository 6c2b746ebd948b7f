// Kernel signatures of the 4-bit PQ fast-scan and their run-time selection. The block layout and the
// look-up-table quantisation they work on are described in codec/pq4_fastscan.h (the codec that uses
// them); this header sits in simd/ so the kernel files include nothing above their own layer.
#pragma once

#include <cstddef>
#include <cstdint>

#include "annforge/simd/kernels.h"

namespace annforge::simd {

// out[b * 32 + i] = sum_j table[j * 16 + code_j(block b, vector i)]  for b < nblocks.
using Pq4ScanFn = void (*)(const std::uint8_t* blocks, std::size_t nblocks, std::size_t padded_m,
                           const std::uint8_t* table, std::uint16_t* out);

// The same sums for several look-up tables at once: outs[t][b * 32 + i] for table t < ntables (any
// number). The list-major search scans a list for a group of queries while its codes are in L1.
using Pq4ScanMultiFn = void (*)(const std::uint8_t* blocks, std::size_t nblocks, std::size_t padded_m,
                                const std::uint8_t* const* tables, std::size_t ntables,
                                std::uint16_t* const* outs);

// masks[b] bit i = (acc[b * 32 + i] < bounds[b]) for b < nblocks: which 16-bit sums of block b can
// still enter a result heap (the search then computes float distances for those only).
using Pq4BelowFn = void (*)(const std::uint16_t* acc, std::size_t nblocks, const std::uint16_t* bounds,
                            std::uint32_t* masks);

// Vectorised pieces of the look-up-table quantisation (the same bits as the portable loops).
struct Pq4LutKernels {
  // mins[j], maxs[j] of table j (16 floats each), j < m.
  void (*min_max)(const float* lut, std::size_t m, float* mins, float* maxs);
  // out[j*16+c] = truncate(min(255, (lut[j*16+c] - mins[j]) * scale + 0.5)), no fused multiply-add.
  void (*encode)(const float* lut, std::size_t m, const float* mins, float scale, std::uint8_t* out);
};

// --- per level: cpp/src/simd/pq4_scan_{scalar,avx2,avx512,vbmi_avx512}.cpp; nullptr when not compiled in
Pq4ScanFn pq4_scan_scalar();
Pq4ScanFn pq4_scan_avx2();
Pq4ScanFn pq4_scan_avx512();
Pq4ScanFn pq4_scan_avx512vbmi();  // AVX-512 VBMI + VNNI
Pq4ScanMultiFn pq4_scan_multi_avx512vbmi();
Pq4ScanMultiFn pq4_scan_multi_avx2();
Pq4ScanMultiFn pq4_scan_multi_avx512();
Pq4BelowFn pq4_below_scalar();
Pq4BelowFn pq4_below_avx2();
Pq4BelowFn pq4_below_avx512();
const Pq4LutKernels* pq4_lut_avx512();

// --- selection (cpp/src/simd/dispatch.cpp) ------------------------------------------------------------
// The scan kernel for a level, or nullptr when it is not compiled in or this CPU cannot run it.
Pq4ScanFn pq4_scan_kernel_for(Level level);
// The level the fast-scan runs at: the active kernel level (kernels().level) capped to what this CPU
// runs; while the build has no vector float kernels (detected_level() == Scalar) it follows the CPU's
// own best level, lowered by ANNFORGE_SIMD. set_pq4_scan_level_override() pins it (tests).
Level pq4_scan_level();
// -1 clears the override; otherwise a Level the fast-scan can run here (ValueError if not).
void set_pq4_scan_level_override(int level);
// At the AVX-512 level a second kernel serves CPUs with VBMI + VNNI (pq4_scan_vbmi_avx512.cpp): the
// same sums with fewer operations; pq4_scan_kernel() takes it whenever it can run.
bool pq4_vbmi_scan_available();  // compiled in, and this CPU runs it
bool pq4_vbmi_scan_active();     // pq4_scan_kernel() returns it now
// Tests: 0 keeps pq4_scan_kernel() on the plain AVX-512 kernel, 1 or -1 (the default) allows VBMI.
void set_pq4_vbmi_scan_override(int allow);
Pq4ScanFn pq4_scan_kernel();             // the active level's scan
Pq4ScanMultiFn pq4_scan_multi_kernel();  // null where the level has none (scalar)
Pq4BelowFn pq4_below_kernel();           // never null
const Pq4LutKernels* pq4_lut_kernels();  // null where the level has none

}  // namespace annforge::simd
