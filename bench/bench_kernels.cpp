// Micro-benchmark (and exhaustive f16 check) of the distance kernels; not part of the build.
//
//   ninja -C build/dev annforge_core
//   g++ -O2 -std=c++17 -Icpp/include bench/bench_kernels.cpp build/dev/libannforge_core.a -lpthread \
//       -o build/bench_kernels
//   build/bench_kernels            # timings at every available level
//   build/bench_kernels exhaustive # also compare f32_to_f16 with scalar for all 2^32 bit patterns
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "annforge/simd/kernels.h"

using namespace annforge::simd;

static double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Best of `reps` runs of f(), in seconds.
template <class F>
static double best_of(int reps, F&& f) {
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const double t0 = now();
    f();
    const double t = now() - t0;
    if (t < best) best = t;
  }
  return best;
}

#if defined(__x86_64__)
// FMA throughput peak of one core: 16 independent chains.
__attribute__((target("avx512f,fma"), noinline)) static double peak_avx512(long iters) {
  double t0 = now();
  __asm__ volatile(
      "vxorps %%zmm0,%%zmm0,%%zmm0\n"
      "1:\n"
      "vfmadd231ps %%zmm16,%%zmm17,%%zmm0\n vfmadd231ps %%zmm16,%%zmm17,%%zmm1\n"
      "vfmadd231ps %%zmm16,%%zmm17,%%zmm2\n vfmadd231ps %%zmm16,%%zmm17,%%zmm3\n"
      "vfmadd231ps %%zmm16,%%zmm17,%%zmm4\n vfmadd231ps %%zmm16,%%zmm17,%%zmm5\n"
      "vfmadd231ps %%zmm16,%%zmm17,%%zmm6\n vfmadd231ps %%zmm16,%%zmm17,%%zmm7\n"
      "vfmadd231ps %%zmm16,%%zmm17,%%zmm8\n vfmadd231ps %%zmm16,%%zmm17,%%zmm9\n"
      "vfmadd231ps %%zmm16,%%zmm17,%%zmm10\n vfmadd231ps %%zmm16,%%zmm17,%%zmm11\n"
      "vfmadd231ps %%zmm16,%%zmm17,%%zmm12\n vfmadd231ps %%zmm16,%%zmm17,%%zmm13\n"
      "vfmadd231ps %%zmm16,%%zmm17,%%zmm14\n vfmadd231ps %%zmm16,%%zmm17,%%zmm15\n"
      "dec %0\n jnz 1b\n"
      : "+r"(iters)
      :
      : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11",
        "xmm12", "xmm13", "xmm14", "xmm15", "cc");
  return now() - t0;
}
__attribute__((target("avx2,fma"), noinline)) static double peak_avx2(long iters) {
  double t0 = now();
  __asm__ volatile(
      "1:\n"
      "vfmadd231ps %%ymm14,%%ymm15,%%ymm0\n vfmadd231ps %%ymm14,%%ymm15,%%ymm1\n"
      "vfmadd231ps %%ymm14,%%ymm15,%%ymm2\n vfmadd231ps %%ymm14,%%ymm15,%%ymm3\n"
      "vfmadd231ps %%ymm14,%%ymm15,%%ymm4\n vfmadd231ps %%ymm14,%%ymm15,%%ymm5\n"
      "vfmadd231ps %%ymm14,%%ymm15,%%ymm6\n vfmadd231ps %%ymm14,%%ymm15,%%ymm7\n"
      "vfmadd231ps %%ymm14,%%ymm15,%%ymm8\n vfmadd231ps %%ymm14,%%ymm15,%%ymm9\n"
      "vfmadd231ps %%ymm14,%%ymm15,%%ymm10\n vfmadd231ps %%ymm14,%%ymm15,%%ymm11\n"
      "dec %0\n jnz 1b\n"
      : "+r"(iters)
      :
      : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "cc");
  return now() - t0;
}
#endif

static float bits_to_float(std::uint32_t b) {
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}

int main(int argc, char** argv) {
  const bool exhaustive = argc > 1 && std::strcmp(argv[1], "exhaustive") == 0;
  std::mt19937 rng(1);
  std::normal_distribution<float> nd;

#if defined(__x86_64__)
  if (level_available(Level::AVX512)) {
    const long it = 20000000;
    const double t = best_of(3, [&] { peak_avx512(it); });
    std::printf("peak FMA avx512: %.1f GFLOP/s (one core)\n", it * 16.0 * 32 / t / 1e9);
  }
  if (level_available(Level::AVX2)) {
    const long it = 20000000;
    const double t = best_of(3, [&] { peak_avx2(it); });
    std::printf("peak FMA avx2:   %.1f GFLOP/s (one core)\n", it * 12.0 * 16 / t / 1e9);
  }
#endif

  for (Level lv : {Level::Scalar, Level::NEON, Level::AVX2, Level::AVX512}) {
    if (!level_available(lv)) continue;
    const Kernels& K = kernels_for(lv);
    std::printf("== %s (panel_rows %zu)\n", level_name(lv), K.panel_rows);

    {  // dot_packed: nq = 1000 queries x 256-row blocks, d = 384
      const std::size_t nq = 1000, n = 256, d = 384;
      std::vector<float> q(nq * d), x(n * d), out(nq * n), packed(K.packed_size(n, d));
      for (auto& v : q) v = nd(rng);
      for (auto& v : x) v = nd(rng);
      const double tp = best_of(20, [&] { K.pack_rows(x.data(), n, d, packed.data()); });
      const int reps = lv == Level::Scalar ? 2 : 10;
      const double t = best_of(reps, [&] { K.dot_packed(q.data(), nq, d, packed.data(), n, d, out.data(), n); });
      std::printf("dot_packed nq=%zu n=%zu d=%zu: %.2f ms, %.1f GFLOP/s; pack_rows %.1f us\n", nq, n, d, t * 1e3,
                  2.0 * nq * n * d / t / 1e9, tp * 1e6);
    }
    {  // one query against 100k rows, d = 384 (memory-bound scan, 154 MB)
      const std::size_t n = 100000, d = 384;
      std::vector<float> q(d), x(n * d), out(n);
      for (auto& v : q) v = nd(rng);
      for (std::size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(i % 97) * 0.01f;
      const double t = best_of(5, [&] { K.l2_sqr_rows(q.data(), x.data(), n, d, out.data()); });
      std::printf("l2_sqr_rows n=%zu d=%zu: %.2f ms, %.2f M rows/s, %.1f GB/s\n", n, d, t * 1e3, n / t / 1e6,
                  n * d * 4.0 / t / 1e9);
      const std::size_t nc = 2000;  // cache-resident block (3 MB)
      const double tc = best_of(50, [&] { K.l2_sqr_rows(q.data(), x.data(), nc, d, out.data()); });
      std::printf("l2_sqr_rows n=%zu d=%zu (cache): %.2f M rows/s\n", nc, d, nc / tc / 1e6);
      std::vector<std::uint16_t> h(n * d);
      K.f32_to_f16(x.data(), h.data(), n * d);
      const double th = best_of(5, [&] { K.l2_sqr_f16_rows(q.data(), h.data(), n, d, out.data()); });
      std::printf("l2_sqr_f16_rows n=%zu d=%zu: %.2f M rows/s\n", n, d, n / th / 1e6);
      std::vector<std::uint8_t> c(n * d);
      for (std::size_t i = 0; i < c.size(); ++i) c[i] = static_cast<std::uint8_t>(i * 7);
      std::vector<float> s(d, 0.01f);
      const double ts = best_of(5, [&] { K.l2_sqr_sq8_rows(q.data(), c.data(), s.data(), n, d, out.data()); });
      std::printf("l2_sqr_sq8_rows n=%zu d=%zu: %.2f M rows/s\n", n, d, n / ts / 1e6);
    }
    if (exhaustive && lv != Level::Scalar) {
      const Kernels& S = kernels_for(Level::Scalar);
      const std::size_t chunk = 1u << 20;
      std::vector<float> in(chunk);
      std::vector<std::uint16_t> a(chunk), b(chunk);
      std::uint64_t bad = 0;
      for (std::uint64_t base = 0; base < (1ull << 32); base += chunk) {
        for (std::size_t i = 0; i < chunk; ++i) in[i] = bits_to_float(static_cast<std::uint32_t>(base + i));
        S.f32_to_f16(in.data(), a.data(), chunk);
        K.f32_to_f16(in.data(), b.data(), chunk);
        for (std::size_t i = 0; i < chunk; ++i) bad += a[i] != b[i];
      }
      std::vector<std::uint16_t> all(65536);
      std::vector<float> fa(65536), fb(65536);
      for (std::size_t i = 0; i < 65536; ++i) all[i] = static_cast<std::uint16_t>(i);
      S.f16_to_f32(all.data(), fa.data(), 65536);
      K.f16_to_f32(all.data(), fb.data(), 65536);
      std::uint64_t bad16 = 0;
      for (std::size_t i = 0; i < 65536; ++i) bad16 += std::memcmp(&fa[i], &fb[i], 4) != 0;
      std::printf("exhaustive: f32_to_f16 mismatches vs scalar %llu / 2^32; f16_to_f32 %llu / 2^16\n",
                  static_cast<unsigned long long>(bad), static_cast<unsigned long long>(bad16));
    }
  }
  return 0;
}
