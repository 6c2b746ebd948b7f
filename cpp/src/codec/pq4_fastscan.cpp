#include "annforge/codec/pq4_fastscan.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>

#include "annforge/common.h"

namespace annforge::codec::pq4 {

void quantize_lut(const float* lut, std::size_t m, QuantizedLut& out) {
  const std::size_t pm = padded_m(m);
  out.table.assign(pm * 16, 0);
  double bias = 0, sum_range = 0;
  float max_range = 0;
  std::vector<float> mins(m);
  for (std::size_t j = 0; j < m; ++j) {
    const float* t = lut + j * 16;
    const float lo = *std::min_element(t, t + 16), hi = *std::max_element(t, t + 16);
    mins[j] = lo;
    bias += lo;
    sum_range += static_cast<double>(hi) - lo;
    max_range = std::max(max_range, hi - lo);
  }
  // One scale for every table: each entry fits a byte and the total of the maxima fits 16 bits.
  double scale = max_range > 0 ? 255.0 / max_range : 1.0;
  if (sum_range * scale > 65535.0) scale = 65535.0 / sum_range;
  for (std::size_t j = 0; j < m; ++j)
    for (std::size_t c = 0; c < 16; ++c) {
      const double v = std::floor((static_cast<double>(lut[j * 16 + c]) - mins[j]) * scale + 0.5);
      out.table[j * 16 + c] = static_cast<std::uint8_t>(std::min(255.0, std::max(0.0, v)));
    }
  out.scale = static_cast<float>(scale);
  out.bias = static_cast<float>(bias);
}

namespace {

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
bool cpu_runs(simd::Level level) {
  __builtin_cpu_init();
  switch (level) {
    case simd::Level::Scalar: return true;
    case simd::Level::AVX2: return __builtin_cpu_supports("avx2");
    case simd::Level::AVX512: return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
    default: return false;
  }
}
#else
bool cpu_runs(simd::Level level) { return level == simd::Level::Scalar; }
#endif

ScanFn compiled(simd::Level level) {
  switch (level) {
    case simd::Level::Scalar: return simd::pq4_scan_scalar();
    case simd::Level::AVX2: return simd::pq4_scan_avx2();
    case simd::Level::AVX512: return simd::pq4_scan_avx512();
    default: return nullptr;
  }
}

simd::Level best_own_level() {
  simd::Level best = simd::Level::Scalar;
  for (auto l : {simd::Level::AVX2, simd::Level::AVX512})
    if (scan_kernel_for(l)) best = l;
  if (const char* env = std::getenv("ANNFORGE_SIMD"); env && *env) {
    try {
      const auto cap = simd::parse_level(env);
      while (static_cast<int>(best) > static_cast<int>(cap) && best != simd::Level::Scalar)
        best = best == simd::Level::AVX512 ? simd::Level::AVX2 : simd::Level::Scalar;
    } catch (const Error&) {
    }
  }
  return best;
}

std::atomic<int>& override_slot() {
  static std::atomic<int> slot{-1};
  return slot;
}

}  // namespace

ScanFn scan_kernel_for(simd::Level level) { return cpu_runs(level) ? compiled(level) : nullptr; }

simd::Level scan_level() {
  const int forced = override_slot().load(std::memory_order_acquire);
  if (forced >= 0) return static_cast<simd::Level>(forced);
  static const simd::Level own = best_own_level();
  if (simd::detected_level() == simd::Level::Scalar) return own;
  simd::Level level = simd::kernels().level;
  while (!scan_kernel_for(level)) level = level == simd::Level::AVX512 ? simd::Level::AVX2 : simd::Level::Scalar;
  return level;
}

ScanFn scan_kernel() { return scan_kernel_for(scan_level()); }

void set_scan_level_override(int level) {
  if (level >= 0) {
    ANNFORGE_CHECK(level <= 3 && scan_kernel_for(static_cast<simd::Level>(level)) != nullptr, ErrorKind::Value,
                   "fast-scan level '", simd::level_name(static_cast<simd::Level>(level)),
                   "' is not available on this CPU/build");
  }
  override_slot().store(level, std::memory_order_release);
}

}  // namespace annforge::codec::pq4
