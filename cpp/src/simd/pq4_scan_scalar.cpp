// 4-bit fast-scan accumulation, portable reference (see codec/pq4_fastscan.h for the block layout).
#include "annforge/simd/pq4_kernels.h"

namespace annforge::simd {
namespace {

void scan_scalar(const std::uint8_t* blocks, std::size_t nblocks, std::size_t padded_m, const std::uint8_t* table,
                 std::uint16_t* out) {
  const std::size_t bytes = padded_m * 16;
  for (std::size_t b = 0; b < nblocks; ++b) {
    const std::uint8_t* blk = blocks + b * bytes;
    std::uint16_t acc[32] = {};
    for (std::size_t j = 0; j < padded_m; ++j) {
      const std::uint8_t* codes = blk + j * 16;
      const std::uint8_t* t = table + j * 16;
      for (std::size_t i = 0; i < 16; ++i) {
        acc[i] = static_cast<std::uint16_t>(acc[i] + t[codes[i] & 0x0f]);
        acc[i + 16] = static_cast<std::uint16_t>(acc[i + 16] + t[codes[i] >> 4]);
      }
    }
    for (std::size_t i = 0; i < 32; ++i) out[b * 32 + i] = acc[i];
  }
}

void below_scalar(const std::uint16_t* acc, std::size_t nblocks, const std::uint16_t* bounds,
                  std::uint32_t* masks) {
  for (std::size_t b = 0; b < nblocks; ++b) {
    std::uint32_t m = 0;
    for (std::uint32_t i = 0; i < 32; ++i) m |= static_cast<std::uint32_t>(acc[b * 32 + i] < bounds[b]) << i;
    masks[b] = m;
  }
}

}  // namespace

Pq4ScanFn pq4_scan_scalar() { return &scan_scalar; }
Pq4BelowFn pq4_below_scalar() { return &below_scalar; }

}  // namespace annforge::simd
