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
#include "annforge/simd/pq4_kernels.h"

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
using LutKernels = simd::Pq4LutKernels;
// `kernels` may be null (portable loops); search code passes lut_kernels() once per call.
void quantize_lut(const float* lut, std::size_t m, QuantizedLut& out, const LutKernels* kernels = nullptr);
// The kernels, their signatures (simd/pq4_kernels.h) and their selection (simd/dispatch.cpp) live in
// simd/; these names are the codec's view of them.
using ScanFn = simd::Pq4ScanFn;            // one table: out[b * 32 + i] = sum_j table[j*16 + code_j(b, i)]
using ScanMultiFn = simd::Pq4ScanMultiFn;  // the same sums for several tables while the codes are in L1
using BelowFn = simd::Pq4BelowFn;          // masks[b] bit i = acc[b * 32 + i] < bounds[b]

// The LUT kernels for scan_level(), or null when that level has none.
inline const LutKernels* lut_kernels() { return simd::pq4_lut_kernels(); }
// The scan kernel for the active level (see scan_level()).
inline ScanFn scan_kernel() { return simd::pq4_scan_kernel(); }
// The threshold-mask kernel of the same level.
inline BelowFn below_kernel() { return simd::pq4_below_kernel(); }
// The several-tables kernel of the active level, or null where it has none (scalar).
inline ScanMultiFn scan_multi_kernel() { return simd::pq4_scan_multi_kernel(); }
// The kernel for a level, or nullptr when it is not compiled in or this CPU cannot run it.
inline ScanFn scan_kernel_for(simd::Level level) { return simd::pq4_scan_kernel_for(level); }
// The level scan_kernel() uses (simd::pq4_scan_level()); set_scan_level_override() pins it (tests),
// -1 clears the override.
inline simd::Level scan_level() { return simd::pq4_scan_level(); }
inline void set_scan_level_override(int level) { simd::set_pq4_scan_level_override(level); }
// The AVX-512 VBMI + VNNI variant (see simd/pq4_kernels.h).
inline bool vbmi_scan_available() { return simd::pq4_vbmi_scan_available(); }
inline bool vbmi_scan_active() { return simd::pq4_vbmi_scan_active(); }
inline void set_vbmi_scan_override(int allow) { simd::set_pq4_vbmi_scan_override(allow); }

}  // namespace annforge::codec::pq4
