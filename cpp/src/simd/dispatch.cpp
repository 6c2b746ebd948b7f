// The one place that reads the CPU's features and ANNFORGE_SIMD, and picks every kernel table from
// them: the distance kernels (once per process: the best level this CPU runs, lowered by
// ANNFORGE_SIMD), the 4-bit PQ fast-scan kernels, the MinHash permutation kernels and the RaBitQ
// bit-plane kernels.
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>

#include "annforge/common.h"
#include "annforge/simd/kernels.h"
#include "annforge/simd/minhash_kernels.h"
#include "annforge/simd/pq4_kernels.h"
#include "annforge/simd/rabitq_kernels.h"

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
#endif

// The feature bits every selection below needs, read from the CPU once per process: CPUID traps to
// the hypervisor in a VM (tens of microseconds here), and the search paths ask on every call.
struct CpuFeatures {
  bool os_ymm = false, os_zmm = false;  // the OS saves the YMM / opmask+ZMM state (XCR0)
  bool avx = false, fma = false, f16c = false, avx2 = false;
  bool avx512f = false, avx512dq = false, avx512bw = false, avx512vl = false;
  bool avx512vbmi = false, avx512vnni = false, avx512vpopcntdq = false;
};

CpuFeatures read_cpu_features() {
  CpuFeatures f;
#ifdef ANNFORGE_X86
  unsigned r[4];
  cpuid(0, 0, r);
  const unsigned max_leaf = r[0];
  if (max_leaf < 1) return f;
  cpuid(1, 0, r);
  const bool osxsave = (r[2] >> 27) & 1;
  f.avx = (r[2] >> 28) & 1;
  f.fma = (r[2] >> 12) & 1;
  f.f16c = (r[2] >> 29) & 1;
  if (osxsave) {  // xgetbv faults without OSXSAVE
    const unsigned long long xcr0 = xgetbv0();
    f.os_ymm = (xcr0 & 0x6) == 0x6;
    f.os_zmm = (xcr0 & 0xe6) == 0xe6;
  }
  if (max_leaf < 7) return f;
  cpuid(7, 0, r);
  f.avx2 = (r[1] >> 5) & 1;
  f.avx512f = (r[1] >> 16) & 1;
  f.avx512dq = (r[1] >> 17) & 1;
  f.avx512bw = (r[1] >> 30) & 1;
  f.avx512vl = (r[1] >> 31) & 1;
  f.avx512vbmi = (r[2] >> 1) & 1;
  f.avx512vnni = (r[2] >> 11) & 1;
  f.avx512vpopcntdq = (r[2] >> 14) & 1;
#endif
  return f;
}

const CpuFeatures& cpu() {
  static const CpuFeatures features = read_cpu_features();
  return features;
}

// The distance-kernel tables: kernels_avx2.cpp needs AVX2 + FMA + F16C, kernels_avx512.cpp adds
// AVX-512 F/DQ/BW/VL (see their compile flags in CMakeLists.txt).
bool cpu_runs_avx2_kernels() {
  const CpuFeatures& f = cpu();
  return f.os_ymm && f.avx && f.fma && f.f16c && f.avx2;
}
bool cpu_runs_avx512_kernels() {
  const CpuFeatures& f = cpu();
  return cpu_runs_avx2_kernels() && f.os_zmm && f.avx512f && f.avx512dq && f.avx512bw && f.avx512vl;
}

bool cpu_supports(Level level) {
  switch (level) {
    case Level::Scalar: return true;
    case Level::AVX2: return cpu_runs_avx2_kernels();
    case Level::AVX512: return cpu_runs_avx512_kernels();
#if defined(__aarch64__) || defined(_M_ARM64)
    case Level::NEON: return true;  // Advanced SIMD is mandatory on AArch64
#else
    case Level::NEON: return false;
#endif
  }
  return false;
}

// ANNFORGE_SIMD, parsed; nothing when unset, empty or unknown (an unknown value must not make
// `import annforge` fail; simd_level() shows the truth).
std::optional<Level> requested_level() {
  const char* env = std::getenv("ANNFORGE_SIMD");
  if (!env || !*env) return std::nullopt;
  try {
    return parse_level(env);
  } catch (const Error&) {
    return std::nullopt;
  }
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
  if (const auto wanted = requested_level()) {
    if (static_cast<int>(*wanted) < static_cast<int>(best) && level_available(*wanted)) best = *wanted;
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

// --- 4-bit PQ fast-scan -------------------------------------------------------------------------------
namespace {

// The fast-scan files need less than the distance tables: pq4_scan_avx2.cpp is built with -mavx2 only,
// pq4_scan_avx512.cpp with AVX-512 F/BW, pq4_scan_vbmi_avx512.cpp adds VBMI + VNNI.
bool cpu_runs_pq4(Level level) {
  const CpuFeatures& f = cpu();
  switch (level) {
    case Level::Scalar: return true;
    case Level::AVX2: return f.os_ymm && f.avx2;
    case Level::AVX512: return f.os_zmm && f.avx512f && f.avx512bw;
    default: return false;
  }
}

bool cpu_runs_pq4_vbmi() {
  const CpuFeatures& f = cpu();
  return cpu_runs_pq4(Level::AVX512) && f.avx512vbmi && f.avx512vnni;
}

Pq4ScanFn compiled_pq4_scan(Level level) {
  switch (level) {
    case Level::Scalar: return pq4_scan_scalar();
    case Level::AVX2: return pq4_scan_avx2();
    case Level::AVX512: return pq4_scan_avx512();
    default: return nullptr;
  }
}

// The fast-scan's own best level, for builds without vector float kernels: ANNFORGE_SIMD caps it
// (a cap below AVX2, "neon" included, means the scalar scan).
Level best_pq4_level() {
  Level best = Level::Scalar;
  for (auto l : {Level::AVX2, Level::AVX512})
    if (pq4_scan_kernel_for(l)) best = l;
  if (const auto cap = requested_level()) {
    while (static_cast<int>(best) > static_cast<int>(*cap) && best != Level::Scalar)
      best = best == Level::AVX512 ? Level::AVX2 : Level::Scalar;
  }
  return best;
}

std::atomic<int>& pq4_override_slot() {
  static std::atomic<int> slot{-1};
  return slot;
}

std::atomic<int>& pq4_vbmi_slot() {
  static std::atomic<int> slot{-1};
  return slot;
}

}  // namespace

Pq4ScanFn pq4_scan_kernel_for(Level level) { return cpu_runs_pq4(level) ? compiled_pq4_scan(level) : nullptr; }

Level pq4_scan_level() {
  const int forced = pq4_override_slot().load(std::memory_order_acquire);
  if (forced >= 0) return static_cast<Level>(forced);
  static const Level own = best_pq4_level();
  if (detected_level() == Level::Scalar) return own;
  Level level = kernels().level;
  while (!pq4_scan_kernel_for(level)) level = level == Level::AVX512 ? Level::AVX2 : Level::Scalar;
  return level;
}

void set_pq4_scan_level_override(int level) {
  if (level >= 0) {
    ANNFORGE_CHECK(level <= 3 && pq4_scan_kernel_for(static_cast<Level>(level)) != nullptr, ErrorKind::Value,
                   "fast-scan level '", level_name(static_cast<Level>(level)), "' is not available on this CPU/build");
  }
  pq4_override_slot().store(level, std::memory_order_release);
}

bool pq4_vbmi_scan_available() {
  static const bool available = cpu_runs_pq4_vbmi() && pq4_scan_avx512vbmi() != nullptr;
  return available;
}

bool pq4_vbmi_scan_active() {
  return pq4_vbmi_slot().load(std::memory_order_acquire) != 0 && pq4_vbmi_scan_available() &&
         pq4_scan_level() == Level::AVX512;
}

void set_pq4_vbmi_scan_override(int allow) { pq4_vbmi_slot().store(allow, std::memory_order_release); }

Pq4ScanFn pq4_scan_kernel() {
  return pq4_vbmi_scan_active() ? pq4_scan_avx512vbmi() : pq4_scan_kernel_for(pq4_scan_level());
}

Pq4ScanMultiFn pq4_scan_multi_kernel() {
  if (pq4_vbmi_scan_active()) return pq4_scan_multi_avx512vbmi();
  switch (pq4_scan_level()) {
    case Level::AVX512: return pq4_scan_multi_avx512();
    case Level::AVX2: return pq4_scan_multi_avx2();
    default: return nullptr;
  }
}

Pq4BelowFn pq4_below_kernel() {
  Pq4BelowFn fn = nullptr;
  switch (pq4_scan_level()) {
    case Level::AVX512: fn = pq4_below_avx512(); break;
    case Level::AVX2: fn = pq4_below_avx2(); break;
    default: break;
  }
  return fn ? fn : pq4_below_scalar();
}

const Pq4LutKernels* pq4_lut_kernels() { return pq4_scan_level() == Level::AVX512 ? pq4_lut_avx512() : nullptr; }

// --- MinHash permutations -------------------------------------------------------------------------------
const MinHashKernels& minhash_kernels() {
  // Follows the distance kernels' active level, so ANNFORGE_SIMD / set_active_level() lower this one too.
  const MinHashKernels* table = nullptr;
  switch (kernels().level) {
    case Level::AVX512: table = minhash_kernels_avx512(); break;
    case Level::AVX2: table = minhash_kernels_avx2(); break;
    default: break;
  }
  return table ? *table : *minhash_kernels_scalar();
}

// --- RaBitQ bit-plane kernels ------------------------------------------------------------------------
namespace {
// rabitq_kernels_avx2.cpp needs AVX2, rabitq_kernels_avx512.cpp AVX-512 F/BW: both are implied by the
// distance tables' requirements for the same level. The VPOPCNTDQ variant needs that bit too.
const RaBitQKernels* compiled_rabitq(Level level) {
  switch (level) {
    case Level::AVX512:
      return rabitq_vpopcnt_available() ? rabitq_kernels_vpopcnt_avx512() : rabitq_kernels_avx512();
    case Level::AVX2: return rabitq_kernels_avx2();
    default: return rabitq_kernels_scalar();
  }
}
}  // namespace

bool rabitq_vpopcnt_available() {
  static const bool available =
      cpu_supports(Level::AVX512) && cpu().avx512vpopcntdq && rabitq_kernels_vpopcnt_avx512() != nullptr;
  return available;
}

const RaBitQKernels& rabitq_kernels() {
  const RaBitQKernels* table = compiled_rabitq(kernels().level);
  return table ? *table : *rabitq_kernels_scalar();
}

const RaBitQKernels& rabitq_kernels_for(Level level) {
  const RaBitQKernels* table = compiled_rabitq(level);
  if (!table || !cpu_supports(level)) {
    fail(ErrorKind::Value, "SIMD level '", level_name(level), "' is not available on this CPU/build");
  }
  return *table;
}

const RaBitQKernels& rabitq_kernels_avx512_plain() {
  const RaBitQKernels* table = rabitq_kernels_avx512();
  if (!table || !cpu_supports(Level::AVX512))
    fail(ErrorKind::Value, "SIMD level 'avx512' is not available on this CPU/build");
  return *table;
}

}  // namespace annforge::simd
