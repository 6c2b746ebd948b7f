// SplitMix64 (Steele, Lea & Flood 2014): the one copy of the generator and its finaliser. Small, fast,
// and the same stream on every platform (unlike std:: distributions), so seeded results and saved
// parameters are reproducible everywhere.
#pragma once

#include <cstdint>

namespace annforge::util {

constexpr std::uint64_t kSplitMix64Gamma = 0x9E3779B97F4A7C15ULL;

// The output mix alone: a bijection of 64-bit integers that spreads nearby inputs apart.
inline std::uint64_t splitmix64_mix(std::uint64_t z) noexcept {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// Advances `state` by one step and returns that step's output.
inline std::uint64_t splitmix64_next(std::uint64_t& state) noexcept {
  state += kSplitMix64Gamma;
  return splitmix64_mix(state);
}

// The output of one step from `x` (a stateless hash of x).
inline std::uint64_t splitmix64(std::uint64_t x) noexcept { return splitmix64_mix(x + kSplitMix64Gamma); }

class SplitMix64 {
 public:
  explicit SplitMix64(std::uint64_t seed) : state_(seed) {}
  std::uint64_t next() noexcept { return splitmix64_next(state_); }
  // Uniform in [0, n) (n > 0); the modulo bias is negligible for n << 2^64.
  std::uint64_t below(std::uint64_t n) noexcept { return next() % n; }
  double uniform() noexcept { return static_cast<double>(next() >> 11) * (1.0 / 9007199254740992.0); }

 private:
  std::uint64_t state_;
};

}  // namespace annforge::util
