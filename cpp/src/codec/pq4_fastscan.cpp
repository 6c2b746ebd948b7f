#include "annforge/codec/pq4_fastscan.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>

#include "annforge/common.h"

#if defined(_MSC_VER) && defined(_M_X64)
#include <intrin.h>
#endif

namespace annforge::codec::pq4 {

void quantize_lut(const float* lut, std::size_t m, QuantizedLut& out, const LutKernels* kernels) {
  // Runs once per (query, probed list): allocation-free, float only.
  const std::size_t pm = padded_m(m);
  if (out.table.size() != pm * 16) out.table.assign(pm * 16, 0);  // padded tables stay zero
  out.mins.resize(m);
  out.maxs.resize(m);
  float* mins = out.mins.data();
  float* maxs = out.maxs.data();
  if (kernels) {
    kernels->min_max(lut, m, mins, maxs);
  } else {
    for (std::size_t j = 0; j < m; ++j) {
      const float* t = lut + j * 16;
      float lo = t[0], hi = t[0];
      for (std::size_t c = 1; c < 16; ++c) {
        lo = t[c] < lo ? t[c] : lo;
        hi = t[c] > hi ? t[c] : hi;
      }
      mins[j] = lo;
      maxs[j] = hi;
    }
  }
  float bias = 0, sum_range = 0, max_range = 0;
  for (std::size_t j = 0; j < m; ++j) {
    const float range = maxs[j] - mins[j];
    bias += mins[j];
    sum_range += range;
    max_range = range > max_range ? range : max_range;
  }
  // One scale for every table: each entry fits a byte, and the sum of the m largest entries (each
  // rounded up by at most 1/2) stays below 65536, so 16-bit sums never wrap.
  float scale = max_range > 0 ? 255.0f / max_range : 1.0f;
  const float budget = 65535.0f - static_cast<float>(pm) - 1.0f;
  if (sum_range * scale > budget) scale = budget / sum_range;
  if (kernels) {
    kernels->encode(lut, m, mins, scale, out.table.data());
  } else {
    for (std::size_t j = 0; j < m; ++j) {
      const float* t = lut + j * 16;
      const float lo = mins[j];
      std::uint8_t* o = out.table.data() + j * 16;
      for (std::size_t c = 0; c < 16; ++c) {
        const float v = (t[c] - lo) * scale + 0.5f;  // >= 0.5: truncation rounds to nearest
        o[c] = static_cast<std::uint8_t>(v < 255.0f ? v : 255.0f);
      }
    }
  }
  out.scale = scale;
  out.bias = bias;
}

const LutKernels* lut_kernels() {
  return scan_level() == simd::Level::AVX512 ? simd::pq4_lut_avx512() : nullptr;
}

namespace {

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
bool cpu_runs_uncached(simd::Level level) {
  __builtin_cpu_init();
  switch (level) {
    case simd::Level::Scalar: return true;
    case simd::Level::AVX2: return __builtin_cpu_supports("avx2");
    case simd::Level::AVX512: return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
    default: return false;
  }
}
bool cpu_runs_vbmi() {
  __builtin_cpu_init();
  return cpu_runs_uncached(simd::Level::AVX512) && __builtin_cpu_supports("avx512vbmi") &&
         __builtin_cpu_supports("avx512vnni");
}
#elif defined(_MSC_VER) && defined(_M_X64)
// MSVC has no __builtin_cpu_supports: read CPUID leaf 7 and check the OS saves the YMM/ZMM state.
bool cpu_runs_uncached(simd::Level level) {
  if (level == simd::Level::Scalar) return true;
  int r[4];
  __cpuid(r, 0);
  if (r[0] < 7) return false;
  __cpuid(r, 1);
  const bool osxsave = (r[2] >> 27) & 1;
  if (!osxsave) return false;
  const unsigned long long xcr0 = _xgetbv(0);
  __cpuidex(r, 7, 0);
  const bool avx2 = (r[1] >> 5) & 1, avx512f = (r[1] >> 16) & 1, avx512bw = (r[1] >> 30) & 1;
  switch (level) {
    case simd::Level::AVX2: return avx2 && (xcr0 & 0x6) == 0x6;
    case simd::Level::AVX512: return avx512f && avx512bw && (xcr0 & 0xe6) == 0xe6;
    default: return false;
  }
}
bool cpu_runs_vbmi() {
  if (!cpu_runs_uncached(simd::Level::AVX512)) return false;
  int r[4];
  __cpuidex(r, 7, 0);
  return ((r[2] >> 1) & 1) && ((r[2] >> 11) & 1);  // ECX: AVX512_VBMI, AVX512_VNNI
}
#else
bool cpu_runs_uncached(simd::Level level) { return level == simd::Level::Scalar; }
bool cpu_runs_vbmi() { return false; }
#endif

// Asked on every search call: read the CPU once (CPUID traps to the hypervisor in a VM).
bool cpu_runs(simd::Level level) {
  static const bool avx2 = cpu_runs_uncached(simd::Level::AVX2), avx512 = cpu_runs_uncached(simd::Level::AVX512);
  switch (level) {
    case simd::Level::Scalar: return true;
    case simd::Level::AVX2: return avx2;
    case simd::Level::AVX512: return avx512;
    default: return false;
  }
}

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

std::atomic<int>& vbmi_slot() {
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

bool vbmi_scan_available() {
  static const bool available = cpu_runs_vbmi() && simd::pq4_scan_avx512vbmi() != nullptr;
  return available;
}

bool vbmi_scan_active() {
  return vbmi_slot().load(std::memory_order_acquire) != 0 && vbmi_scan_available() &&
         scan_level() == simd::Level::AVX512;
}

void set_vbmi_scan_override(int allow) { vbmi_slot().store(allow, std::memory_order_release); }

ScanMultiFn scan_multi_kernel() {
  if (vbmi_scan_active()) return simd::pq4_scan_multi_avx512vbmi();
  switch (scan_level()) {
    case simd::Level::AVX512: return simd::pq4_scan_multi_avx512();
    case simd::Level::AVX2: return simd::pq4_scan_multi_avx2();
    default: return nullptr;
  }
}

ScanFn scan_kernel() { return vbmi_scan_active() ? simd::pq4_scan_avx512vbmi() : scan_kernel_for(scan_level()); }

BelowFn below_kernel() {
  BelowFn fn = nullptr;
  switch (scan_level()) {
    case simd::Level::AVX512: fn = simd::pq4_below_avx512(); break;
    case simd::Level::AVX2: fn = simd::pq4_below_avx2(); break;
    default: break;
  }
  return fn ? fn : simd::pq4_below_scalar();
}

void set_scan_level_override(int level) {
  if (level >= 0) {
    ANNFORGE_CHECK(level <= 3 && scan_kernel_for(static_cast<simd::Level>(level)) != nullptr, ErrorKind::Value,
                   "fast-scan level '", simd::level_name(static_cast<simd::Level>(level)),
                   "' is not available on this CPU/build");
  }
  override_slot().store(level, std::memory_order_release);
}

}  // namespace annforge::codec::pq4
