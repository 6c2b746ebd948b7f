// The core steps of XXH64 (Collet's xxHash, 64-bit variant), written once: MinHash's token hash
// (index/minhash_hash.cpp) and the file format's streaming checksum (io/format.cpp) are built on them.
#pragma once

#include <cstdint>
#include <cstring>

namespace annforge::util {

constexpr std::uint64_t kXxh64Prime1 = 0x9E3779B185EBCA87ULL;
constexpr std::uint64_t kXxh64Prime2 = 0xC2B2AE3D27D4EB4FULL;
constexpr std::uint64_t kXxh64Prime3 = 0x165667B19E3779F9ULL;
constexpr std::uint64_t kXxh64Prime4 = 0x85EBCA77C2B2AE63ULL;
constexpr std::uint64_t kXxh64Prime5 = 0x27D4EB2F165667C5ULL;

inline std::uint64_t rotl64(std::uint64_t x, int r) noexcept { return (x << r) | (x >> (64 - r)); }

// Little-endian loads regardless of the host: one memcpy load on little-endian hosts (a byte-assembly
// loop was not folded into one load by GCC and cost a third of MinHash's token hash), bytes assembled
// elsewhere.
#if defined(__BYTE_ORDER__) && defined(__ORDER_LITTLE_ENDIAN__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__ || \
    defined(_MSC_VER)
inline std::uint64_t load64_le(const unsigned char* p) noexcept {
  std::uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}
inline std::uint32_t load32_le(const unsigned char* p) noexcept {
  std::uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
#else
inline std::uint64_t load64_le(const unsigned char* p) noexcept {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}
inline std::uint32_t load32_le(const unsigned char* p) noexcept {
  return std::uint32_t(p[0]) | (std::uint32_t(p[1]) << 8) | (std::uint32_t(p[2]) << 16) |
         (std::uint32_t(p[3]) << 24);
}
#endif

// One lane step: the lane absorbs 8 input bytes.
inline std::uint64_t xxh64_round(std::uint64_t acc, std::uint64_t input) noexcept {
  acc += input * kXxh64Prime2;
  acc = rotl64(acc, 31);
  return acc * kXxh64Prime1;
}

// Folds one finished lane into the hash (inputs of 32 bytes or more).
inline std::uint64_t xxh64_merge_round(std::uint64_t acc, std::uint64_t lane) noexcept {
  acc ^= xxh64_round(0, lane);
  return acc * kXxh64Prime1 + kXxh64Prime4;
}

// The final mix: every input bit reaches every output bit.
inline std::uint64_t xxh64_avalanche(std::uint64_t h) noexcept {
  h ^= h >> 33;
  h *= kXxh64Prime2;
  h ^= h >> 29;
  h *= kXxh64Prime3;
  h ^= h >> 32;
  return h;
}

}  // namespace annforge::util
