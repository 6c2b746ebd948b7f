// popcount of one 64-bit word for the RaBitQ kernel files: the builtin where the compiler has one (each
// file's own flags decide whether that is the POPCNT instruction), a portable bit count elsewhere.
#pragma once

#include <cstdint>

namespace annforge::simd {

inline unsigned popcount64(std::uint64_t x) {
#if defined(__GNUC__) || defined(__clang__)
  return static_cast<unsigned>(__builtin_popcountll(x));
#else
  x = x - ((x >> 1) & 0x5555555555555555ULL);
  x = (x & 0x3333333333333333ULL) + ((x >> 2) & 0x3333333333333333ULL);
  x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0FULL;
  return static_cast<unsigned>((x * 0x0101010101010101ULL) >> 56);
#endif
}

}  // namespace annforge::simd
