// Picks the kernel table once per process: the best level this CPU runs, lowered by ANNFORGE_SIMD.
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>

#include "annforge/common.h"
#include "annforge/simd/kernels.h"

#if defined(__x86_64__) || defined(_M_X64)
#define ANNFORGE_X86 1
#if defined(_MSC_VER)
#include <intrin.h>
#else
#include <cpuid.h>
#endif
#endif

namespace annforge::simd {

// Weak fallbacks would be GCC-only; instead each optional level file is always compiled and returns
// nullptr when its instruction set was not enabled for this build (see CMakeLists.txt).

const char* level_name(Level level) {
  switch (level) {
    case Level::Scalar: return "scalar";
    case Level::NEON: return "neon";
    case Level::AVX2: return "avx2";
    case Level::AVX512: return "avx512";
  }
  return "unknown";
}

Level parse_level(const char* name) {
  const std::string s = name ? name : "";
  if (s == "scalar") return Level::Scalar;
  if (s == "neon") return Level::NEON;
  if (s == "avx2") return Level::AVX2;
  if (s == "avx512") return Level::AVX512;
  fail(ErrorKind::Value, "unknown SIMD level '", s, "': expected one of scalar, neon, avx2, avx512");
}

namespace {

#ifdef ANNFORGE_X86
void cpuid(unsigned leaf, unsigned sub, unsigned regs[4]) {
#if defined(_MSC_VER)
  int r[4];
  __cpuidex(r, static_cast<int>(leaf), static_cast<int>(sub));
  for (int i = 0; i < 4; ++i) regs[i] = static_cast<unsigned>(r[i]);
#else
  __cpuid_count(leaf, sub, regs[0], regs[1], regs[2], regs[3]);
#endif
}

unsigned long long xgetbv0() {
#if defined(_MSC_VER)
  return _xgetbv(0);
#else
  unsigned lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (static_cast<unsigned long long>(hi) << 32) | lo;
#endif
}

bool cpu_has_avx2_fma_f16c() {
  unsigned r[4];
  cpuid(0, 0, r);
  if (r[0] < 7) return false;
  cpuid(1, 0, r);
  const bool osxsave = (r[2] >> 27) & 1, avx = (r[2] >> 28) & 1, fma = (r[2] >> 12) & 1, f16c = (r[2] >> 29) & 1;
  if (!(osxsave && avx && fma && f16c)) return false;
  if ((xgetbv0() & 0x6) != 0x6) return false;  // OS saves XMM and YMM state
  cpuid(7, 0, r);
  return (r[1] >> 5) & 1;  // AVX2
}

bool cpu_has_avx512() {
  if (!cpu_has_avx2_fma_f16c()) return false;
  if ((xgetbv0() & 0xe6) != 0xe6) return false;  // OS saves opmask and ZMM state
  unsigned r[4];
  cpuid(7, 0, r);
  const bool f = (r[1] >> 16) & 1, dq = (r[1] >> 17) & 1, bw = (r[1] >> 30) & 1, vl = (r[1] >> 31) & 1;
  return f && dq && bw && vl;
}
#endif

bool cpu_supports(Level level) {
  switch (level) {
    case Level::Scalar: return true;
#ifdef ANNFORGE_X86
    // Read once: CPUID traps to the hypervisor in a VM (tens of microseconds here), and the search
    // paths ask on every call.
    case Level::AVX2: {
      static const bool has = cpu_has_avx2_fma_f16c();
      return has;
    }
    case Level::AVX512: {
      static const bool has = cpu_has_avx512();
      return has;
    }
    case Level::NEON: return false;
#else
    case Level::AVX2:
    case Level::AVX512: return false;
#if defined(__aarch64__) || defined(_M_ARM64)
    case Level::NEON: return true;  // Advanced SIMD is mandatory on AArch64
#else
    case Level::NEON: return false;
#endif
#endif
  }
  return false;
}

const Kernels* compiled_table(Level level) {
  switch (level) {
    case Level::Scalar: return scalar_kernels();
    case Level::NEON: return neon_kernels();
    case Level::AVX2: return avx2_kernels();
    case Level::AVX512: return avx512_kernels();
  }
  return nullptr;
}

const Kernels* initial_table() {
  Level best = detected_level();
  if (const char* env = std::getenv("ANNFORGE_SIMD"); env && *env) {
    Level wanted;
    try {
      wanted = parse_level(env);
    } catch (const Error&) {
      wanted = best;  // an unknown value must not make `import annforge` fail; simd_level() shows the truth
    }
    if (static_cast<int>(wanted) < static_cast<int>(best) && level_available(wanted)) best = wanted;
  }
  return compiled_table(best);
}

std::atomic<const Kernels*>& active_slot() {
  static std::atomic<const Kernels*> slot{initial_table()};
  return slot;
}

}  // namespace

bool level_available(Level level) { return compiled_table(level) != nullptr && cpu_supports(level); }

Level detected_level() {
  for (Level l : {Level::AVX512, Level::AVX2, Level::NEON}) {
    if (level_available(l)) return l;
  }
  return Level::Scalar;
}

const Kernels& kernels_for(Level level) {
  if (!level_available(level)) {
    fail(ErrorKind::Value, "SIMD level '", level_name(level), "' is not available on this CPU/build");
  }
  return *compiled_table(level);
}

const Kernels& kernels() { return *active_slot().load(std::memory_order_acquire); }

void set_active_level(Level level) { active_slot().store(&kernels_for(level), std::memory_order_release); }

}  // namespace annforge::simd
