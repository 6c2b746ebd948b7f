// 4-bit PQ "fast-scan" (André et al.; faiss's PQ4 fast-scan): codes of 32 vectors are interleaved in
// a block so that one 16-byte look-up table per sub-quantizer can be applied to 32 (AVX2: 2 x 16,
// AVX-512: 4 x 16) codes at once with a byte shuffle, accumulating in 16-bit integers.
//
// Block layout (padded_m(m) sub-quantizers, 16 bytes each, block_bytes(m) bytes per block):
//   byte (j * 16 + i) of a block = code_j(vector i) | code_j(vector i + 16) << 4,   i < 16
// Unused slots and padded sub-quantizers hold code 0.
//
// Look-up tables are quantised to uint8 with one scale and per-table offsets chosen so that the sum
// of the m table maxima is <= 65535: the 16-bit sums are then exact at every SIMD level, and scalar,
// AVX2 and AVX-512 return bit-identical results.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "annforge/simd/kernels.h"

namespace annforge::codec::pq4 {

constexpr std::size_t kBlock = 32;

inline std::size_t padded_m(std::size_t m) { return (m + 1) & ~std::size_t(1); }
inline std::size_t block_bytes(std::size_t m) { return padded_m(m) * 16; }
inline std::size_t blocks_for(std::size_t n) { return (n + kBlock - 1) / kBlock; }

// Code of sub-quantizer j of the vector in `slot`, and its update.
inline std::uint8_t get_code(const std::uint8_t* blocks, std::size_t m, std::size_t slot, std::size_t j) {
  const std::uint8_t byte = blocks[(slot / kBlock) * block_bytes(m) + j * 16 + (slot % 16)];
  return (slot % kBlock) < 16 ? (byte & 0x0f) : (byte >> 4);
}
inline void set_code(std::uint8_t* blocks, std::size_t m, std::size_t slot, std::size_t j, std::uint8_t code) {
  std::uint8_t& byte = blocks[(slot / kBlock) * block_bytes(m) + j * 16 + (slot % 16)];
  if ((slot % kBlock) < 16)
    byte = static_cast<std::uint8_t>((byte & 0xf0) | (code & 0x0f));
  else
    byte = static_cast<std::uint8_t>((byte & 0x0f) | ((code & 0x0f) << 4));
}

// Float tables (m x 16) -> uint8 tables (padded_m(m) x 16) with distance ~= bias + sum / scale.
struct QuantizedLut {
  std::vector<std::uint8_t> table;
  float scale = 1.0f;
  float bias = 0.0f;
  std::vector<float> mins, maxs;  // scratch (per-table offsets and maxima)
};
// Vectorised pieces of quantize_lut (they give the same bits as the portable loops).
struct LutKernels {
  // mins[j], maxs[j] of table j (16 floats each), j < m.
  void (*min_max)(const float* lut, std::size_t m, float* mins, float* maxs);
  // out[j*16+c] = truncate(min(255, (lut[j*16+c] - mins[j]) * scale + 0.5)), no fused multiply-add.
  void (*encode)(const float* lut, std::size_t m, const float* mins, float scale, std::uint8_t* out);
};
// `kernels` may be null (portable loops); search code passes lut_kernels() once per call.
void quantize_lut(const float* lut, std::size_t m, QuantizedLut& out, const LutKernels* kernels = nullptr);
// The LUT kernels for scan_level(), or null when that level has none.
const LutKernels* lut_kernels();

// out[b * 32 + i] = sum_j table[j * 16 + code_j(block b, vector i)]  for b < nblocks.
using ScanFn = void (*)(const std::uint8_t* blocks, std::size_t nblocks, std::size_t padded_m,
                        const std::uint8_t* table, std::uint16_t* out);

// The same sums for several look-up tables at once: outs[t][b * 32 + i] for table t < ntables (any
// number). The list-major search scans a list for a group of queries while its codes are in L1.
using ScanMultiFn = void (*)(const std::uint8_t* blocks, std::size_t nblocks, std::size_t padded_m,
                             const std::uint8_t* const* tables, std::size_t ntables, std::uint16_t* const* outs);

// masks[b] bit i = (acc[b * 32 + i] < bounds[b]) for b < nblocks: which 16-bit sums of block b can
// still enter a result heap (the search then computes float distances for those only).
using BelowFn = void (*)(const std::uint16_t* acc, std::size_t nblocks, const std::uint16_t* bounds,
                         std::uint32_t* masks);

// The scan kernel for the active level (see scan_level()).
ScanFn scan_kernel();
// The threshold-mask kernel of the same level.
BelowFn below_kernel();
// The kernel for a level, or nullptr when it is not compiled in or this CPU cannot run it.
ScanFn scan_kernel_for(simd::Level level);
// The level scan_kernel() uses: the active kernel level (simd::kernels().level) capped to what this
// CPU runs; while the build has no vector float kernels (detected_level() == Scalar) it follows the
// CPU's own best level, lowered by ANNFORGE_SIMD. set_scan_level_override() pins it (tests).
simd::Level scan_level();
// -1 clears the override.
void set_scan_level_override(int level);
// At the AVX-512 level a second kernel serves CPUs with VBMI + VNNI: the same sums with fewer
// operations (cpp/src/simd/pq4_scan_vbmi_avx512.cpp). scan_kernel() takes it whenever it can run.
bool vbmi_scan_available();  // compiled in, and this CPU runs it
bool vbmi_scan_active();     // scan_kernel() returns it now
// Tests: 0 keeps scan_kernel() on the plain AVX-512 kernel, 1 or -1 (the default) allows VBMI.
void set_vbmi_scan_override(int allow);
// The several-tables kernel of the active level, or null where it has none (scalar).
ScanMultiFn scan_multi_kernel();

}  // namespace annforge::codec::pq4

namespace annforge::simd {
// Implemented in cpp/src/simd/pq4_scan_{scalar,avx2,avx512}.cpp; nullptr when not compiled in.
codec::pq4::ScanFn pq4_scan_scalar();
codec::pq4::ScanFn pq4_scan_avx2();
codec::pq4::ScanFn pq4_scan_avx512();
codec::pq4::ScanFn pq4_scan_avx512vbmi();  // AVX-512 VBMI + VNNI; nullptr when not compiled in
codec::pq4::ScanMultiFn pq4_scan_multi_avx512vbmi();
codec::pq4::ScanMultiFn pq4_scan_multi_avx2();    // nullptr when not compiled in
codec::pq4::ScanMultiFn pq4_scan_multi_avx512();  // nullptr when not compiled in
codec::pq4::BelowFn pq4_below_scalar();
codec::pq4::BelowFn pq4_below_avx2();  // nullptr when not compiled in
codec::pq4::BelowFn pq4_below_avx512();
const codec::pq4::LutKernels* pq4_lut_avx512();
}  // namespace annforge::simd
