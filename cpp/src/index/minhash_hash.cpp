// Hash functions for MinHash, written here: a short-token multiply-fold hash (C-MinHash's token hash),
// XXH64 (the older native schemes) and SHA-1 (datasketch's hash).
#include <cstring>

#include "annforge/index/minhash.h"
#include "annforge/util/fold_mul.h"
#include "annforge/util/xxh64.h"

namespace annforge::minhash {
namespace {

// XXH64's primes, lane step and final mix are shared with the file checksum (util/xxh64.h).
constexpr std::uint64_t P1 = util::kXxh64Prime1;
constexpr std::uint64_t P2 = util::kXxh64Prime2;
constexpr std::uint64_t P3 = util::kXxh64Prime3;
constexpr std::uint64_t P4 = util::kXxh64Prime4;
constexpr std::uint64_t P5 = util::kXxh64Prime5;
using util::rotl64;

inline std::uint32_t rotl32(std::uint32_t x, int r) { return (x << r) | (x >> (32 - r)); }
inline std::uint64_t load64(const unsigned char* p) { return util::load64_le(p); }
inline std::uint32_t load32(const unsigned char* p) { return util::load32_le(p); }

inline std::uint32_t load32_be(const unsigned char* p) {
  return (std::uint32_t(p[0]) << 24) | (std::uint32_t(p[1]) << 16) | (std::uint32_t(p[2]) << 8) |
         std::uint32_t(p[3]);
}

void sha1_block(std::uint32_t state[5], const unsigned char* block) {
  std::uint32_t w[80];
  for (int i = 0; i < 16; ++i) w[i] = load32_be(block + 4 * i);
  for (int i = 16; i < 80; ++i) w[i] = rotl32(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
  std::uint32_t a = state[0], b = state[1], c = state[2], d = state[3], e = state[4];
  for (int i = 0; i < 80; ++i) {
    std::uint32_t f, k;
    if (i < 20) {
      f = (b & c) | (~b & d);
      k = 0x5A827999u;
    } else if (i < 40) {
      f = b ^ c ^ d;
      k = 0x6ED9EBA1u;
    } else if (i < 60) {
      f = (b & c) | (b & d) | (c & d);
      k = 0x8F1BBCDCu;
    } else {
      f = b ^ c ^ d;
      k = 0xCA62C1D6u;
    }
    const std::uint32_t t = rotl32(a, 5) + f + e + k + w[i];
    e = d;
    d = c;
    c = rotl32(b, 30);
    b = a;
    a = t;
  }
  state[0] += a;
  state[1] += b;
  state[2] += c;
  state[3] += d;
  state[4] += e;
}

}  // namespace

std::uint64_t token_hash(const void* data, std::size_t n, std::uint64_t seed) noexcept {
  // Tokens are mostly short: up to 16 bytes are read as two (possibly overlapping) words, longer ones
  // 16 bytes per 128-bit multiply; the length and seed enter the final folds.
  const auto* p = static_cast<const unsigned char*>(data);
  std::uint64_t s = seed ^ P1;
  std::uint64_t a, b;
  if (n <= 16) {
    if (n >= 8) {
      a = load64(p);
      b = load64(p + n - 8);
    } else if (n >= 4) {
      a = load32(p);
      b = load32(p + n - 4);
    } else if (n > 0) {
      a = (std::uint64_t{p[0]} << 16) | (std::uint64_t{p[n >> 1]} << 8) | p[n - 1];
      b = 0;
    } else {
      a = b = 0;
    }
  } else {
    std::size_t left = n;
    while (left > 16) {
      s = util::fold_mul(load64(p) ^ P2, load64(p + 8) ^ s);
      p += 16;
      left -= 16;
    }
    a = load64(p + left - 16);
    b = load64(p + left - 8);
  }
  return util::fold_mul(P4 ^ static_cast<std::uint64_t>(n), util::fold_mul(a ^ P2, b ^ s));
}

std::uint64_t hash64(const void* data, std::size_t n, std::uint64_t seed) noexcept {
  const auto* p = static_cast<const unsigned char*>(data);
  const unsigned char* end = p + n;
  std::uint64_t h;
  if (n >= 32) {
    std::uint64_t v1 = seed + P1 + P2, v2 = seed + P2, v3 = seed, v4 = seed - P1;
    const unsigned char* limit = end - 32;
    do {
      v1 = util::xxh64_round(v1, load64(p));
      v2 = util::xxh64_round(v2, load64(p + 8));
      v3 = util::xxh64_round(v3, load64(p + 16));
      v4 = util::xxh64_round(v4, load64(p + 24));
      p += 32;
    } while (p <= limit);
    h = rotl64(v1, 1) + rotl64(v2, 7) + rotl64(v3, 12) + rotl64(v4, 18);
    h = util::xxh64_merge_round(h, v1);
    h = util::xxh64_merge_round(h, v2);
    h = util::xxh64_merge_round(h, v3);
    h = util::xxh64_merge_round(h, v4);
  } else {
    h = seed + P5;
  }
  h += static_cast<std::uint64_t>(n);
  while (end - p >= 8) {
    h ^= util::xxh64_round(0, load64(p));
    h = rotl64(h, 27) * P1 + P4;
    p += 8;
  }
  if (end - p >= 4) {
    h ^= static_cast<std::uint64_t>(load32(p)) * P1;
    h = rotl64(h, 23) * P2 + P3;
    p += 4;
  }
  while (p < end) {
    h ^= static_cast<std::uint64_t>(*p) * P5;
    h = rotl64(h, 11) * P1;
    ++p;
  }
  return util::xxh64_avalanche(h);
}

void sha1(const void* data, std::size_t n, unsigned char digest[20]) noexcept {
  std::uint32_t state[5] = {0x67452301u, 0xEFCDAB89u, 0x98BADCFEu, 0x10325476u, 0xC3D2E1F0u};
  const auto* p = static_cast<const unsigned char*>(data);
  std::size_t left = n;
  while (left >= 64) {
    sha1_block(state, p);
    p += 64;
    left -= 64;
  }
  // Final block(s): the rest, 0x80, zeros, then the bit length big-endian.
  unsigned char tail[128] = {0};
  if (left) std::memcpy(tail, p, left);
  tail[left] = 0x80;
  const std::size_t tail_len = left + 1 + 8 <= 64 ? 64 : 128;
  const std::uint64_t bits = static_cast<std::uint64_t>(n) * 8;
  for (int i = 0; i < 8; ++i) tail[tail_len - 1 - i] = static_cast<unsigned char>(bits >> (8 * i));
  sha1_block(state, tail);
  if (tail_len == 128) sha1_block(state, tail + 64);
  for (int i = 0; i < 5; ++i) {
    digest[4 * i] = static_cast<unsigned char>(state[i] >> 24);
    digest[4 * i + 1] = static_cast<unsigned char>(state[i] >> 16);
    digest[4 * i + 2] = static_cast<unsigned char>(state[i] >> 8);
    digest[4 * i + 3] = static_cast<unsigned char>(state[i]);
  }
}

std::uint32_t sha1_hash32(const void* data, std::size_t n) noexcept {
  unsigned char d[20];
  sha1(data, n, d);
  return load32(d);
}

}  // namespace annforge::minhash
