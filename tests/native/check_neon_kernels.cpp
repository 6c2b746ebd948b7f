// AArch64 check of the NEON kernel table against float64 references (pack layout, GEMM tails, output
// padding, binary16 conversions bit-exact with the scalar table). Not part of the build; from the repo
// root on an x86 machine with a cross compiler and qemu-user:
//
//   aarch64-linux-gnu-g++ -O2 -std=c++17 -static -DANNFORGE_HAVE_NEON=1 -Icpp/include -Icpp/src
//       cpp/src/simd/*.cpp cpp/src/common.cpp
//       tests/native/check_neon_kernels.cpp -o /tmp/check_neon && qemu-aarch64 /tmp/check_neon
//
// (every simd/ source: the dispatcher references each level's table, and the x86 files compile to null
// tables on AArch64; natively on AArch64, drop -static and the qemu prefix).
#include <cmath>
#include <cstdio>
#include <cstdint>
#include <random>
#include <vector>
#include <algorithm>
#include <cstring>
#include "annforge/simd/kernels.h"
using namespace annforge::simd;
static int bad = 0;
static void check(const char* what, double got, double ref, double mag, size_t d, size_t a = 0, size_t b = 0) {
  if (std::fabs(got - ref) > 1e-5 * mag + 1e-30) { if (bad++ < 20) std::printf("MISMATCH %s d=%zu %zu %zu got %g ref %g\n", what, d, a, b, got, ref); }
}
int main() {
  if (!level_available(Level::NEON)) { std::printf("NEON not available\n"); return 1; }
  const Kernels& N = kernels_for(Level::NEON);
  std::printf("detected=%s panel_rows=%zu\n", level_name(detected_level()), N.panel_rows);
  std::mt19937 rng(1); std::normal_distribution<float> nd; std::uniform_int_distribution<int> ub(0, 255);
  for (size_t d : {1, 3, 17, 97, 384, 1000}) {
    for (size_t n : {1, 5, 33}) {
      std::vector<float> q(d), x(n * d), out(n), sc(d); std::vector<std::uint16_t> h(n * d); std::vector<std::uint8_t> c(n * d);
      for (auto& v : q) v = nd(rng);
      for (auto& v : x) v = nd(rng);
      for (auto& v : sc) v = 0.01f + 0.05f * std::fabs(nd(rng));
      for (auto& v : c) v = (std::uint8_t)ub(rng);
      N.f32_to_f16(x.data(), h.data(), n * d);
      std::vector<float> xh(n * d); N.f16_to_f32(h.data(), xh.data(), n * d);
      auto refs = [&](const std::vector<float>& xs, bool l2, size_t i, double& mag) {
        double s = 0; mag = 0; for (size_t j = 0; j < d; ++j) { double t = l2 ? (double)q[j] - xs[i*d+j] : (double)q[j] * xs[i*d+j]; s += l2 ? t*t : t; mag += l2 ? t*t : std::fabs(t);} return s; };
      double mag;
      N.l2_sqr_rows(q.data(), x.data(), n, d, out.data());
      for (size_t i = 0; i < n; ++i) { double r = refs(x, true, i, mag); check("l2_rows", out[i], r, mag, d, i); check("l2", N.l2_sqr(q.data(), &x[i*d], d), r, mag, d, i); }
      N.dot_rows(q.data(), x.data(), n, d, out.data());
      for (size_t i = 0; i < n; ++i) { double r = refs(x, false, i, mag); check("dot_rows", out[i], r, mag, d, i); check("dot", N.dot(q.data(), &x[i*d], d), r, mag, d, i); }
      N.l2_sqr_f16_rows(q.data(), h.data(), n, d, out.data());
      for (size_t i = 0; i < n; ++i) { double r = refs(xh, true, i, mag); check("l2f16_rows", out[i], r, mag, d, i); check("l2f16", N.l2_sqr_f16(q.data(), &h[i*d], d), r, mag, d, i); }
      N.dot_f16_rows(q.data(), h.data(), n, d, out.data());
      for (size_t i = 0; i < n; ++i) { double r = refs(xh, false, i, mag); check("dotf16_rows", out[i], r, mag, d, i); check("dotf16", N.dot_f16(q.data(), &h[i*d], d), r, mag, d, i); }
      N.l2_sqr_sq8_rows(q.data(), c.data(), sc.data(), n, d, out.data());
      for (size_t i = 0; i < n; ++i) { double s = 0, m = 0; for (size_t j = 0; j < d; ++j) { double t = (double)q[j] - (double)c[i*d+j]*sc[j]; s += t*t; m += (std::fabs(q[j]) + c[i*d+j]*sc[j]) * (std::fabs(q[j]) + c[i*d+j]*sc[j]); }
        check("sq8_rows", out[i], s, m, d, i); check("sq8", N.l2_sqr_sq8(q.data(), &c[i*d], sc.data(), d), s, m, d, i); }
      N.dot_u8_rows(q.data(), c.data(), n, d, out.data());
      for (size_t i = 0; i < n; ++i) { double s = 0, m = 0; for (size_t j = 0; j < d; ++j) { s += (double)q[j]*c[i*d+j]; m += std::fabs(q[j])*c[i*d+j]; }
        check("u8_rows", out[i], s, m, d, i); check("u8", N.dot_u8(q.data(), &c[i*d], d), s, m, d, i); }
    }
    for (auto [nq, n] : std::vector<std::pair<size_t,size_t>>{{1,1},{5,5},{9,17},{33,257},{257,33},{8,8},{16,24}}) {
      const size_t ldq = d + 3, ldo = n + 5;
      std::vector<float> q(nq * ldq), x(n * d), packed(N.packed_size(n, d), -7.f), out(nq * ldo, -12345.f);
      for (auto& v : q) v = nd(rng);
      for (auto& v : x) v = nd(rng);
      N.pack_rows(x.data(), n, d, packed.data());
      for (size_t p = 0; p < packed.size(); ++p) { size_t pan = p / (8 * d), k = (p % (8 * d)) / 8, r = p % 8, row = pan * 8 + r;
        float want = row < n ? x[row * d + k] : 0.f; if (packed[p] != want) { if (bad++ < 20) std::printf("PACK d=%zu n=%zu p=%zu\n", d, n, p); } }
      N.dot_packed(q.data(), nq, ldq, packed.data(), n, d, out.data(), ldo);
      for (size_t i = 0; i < nq; ++i) for (size_t j = 0; j < ldo; ++j) {
        if (j >= n) { if (out[i*ldo+j] != -12345.f && bad++ < 20) std::printf("PAD clobbered\n"); continue; }
        double s = 0, m = 0; for (size_t k = 0; k < d; ++k) { double t = (double)q[i*ldq+k]*x[j*d+k]; s += t; m += std::fabs(t); }
        check("dot_packed", out[i*ldo+j], s, m, d, i, j); }
    }
  }
  // conversions bit-exact vs scalar
  const Kernels& S = kernels_for(Level::Scalar);
  std::vector<std::uint16_t> all(65536); for (size_t i = 0; i < 65536; ++i) all[i] = (std::uint16_t)i;
  std::vector<float> a(65536), b(65536); S.f16_to_f32(all.data(), a.data(), 65536); N.f16_to_f32(all.data(), b.data(), 65536);
  for (size_t i = 0; i < 65536; ++i) if (std::memcmp(&a[i], &b[i], 4) && bad++ < 20) std::printf("f16_to_f32 %zu\n", i);
  // selection: indices_at_least against a plain loop, every length up to 40 and a few bounds
  for (size_t n = 0; n <= 40; ++n) {
    std::vector<float> v(n + 1);
    for (auto& e : v) e = nd(rng);
    if (n > 5) v[5] = NAN;
    for (float bound : {-INFINITY, -0.3f, 0.0f, 0.7f, INFINITY}) {
      std::vector<std::uint32_t> got(n + 1), want;
      for (size_t j = 0; j < n; ++j) if (v[j] >= bound) want.push_back((std::uint32_t)j);
      const size_t c = N.indices_at_least(v.data(), n, bound, got.data());
      if (c != want.size() || !std::equal(want.begin(), want.end(), got.begin())) { if (bad++ < 20) std::printf("indices_at_least n=%zu\n", n); }
    }
  }
  // fwht: small integers keep every sum exact, so NEON must equal the scalar transform bit for bit
  for (size_t n = 1; n <= 1024; n *= 2) {
    std::vector<float> v(n), w;
    for (auto& e : v) e = static_cast<float>(static_cast<int>(nd(rng) * 4));
    w = v;
    S.fwht(v.data(), n);
    N.fwht(w.data(), n);
    if (v != w && bad++ < 20) std::printf("fwht n=%zu\n", n);
  }
  std::printf("%s (%d mismatches)\n", bad ? "FAIL" : "OK", bad);
  return bad != 0;
}
