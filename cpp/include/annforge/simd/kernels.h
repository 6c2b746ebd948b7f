// The distance-kernel function table and its run-time dispatch.
//
// Every SIMD level fills one `Kernels` table (kernels_{scalar,avx2,avx512,neon}.cpp, each compiled with
// its own target flags). The active table is chosen once, at first use, from the CPU's features and the
// ANNFORGE_SIMD environment variable (which can only lower the level). Kernels take a batch (one query
// against many rows, or a block of queries against a packed block of rows) so that dispatch costs one
// indirect call per batch, not per element.
//
// dispatch.cpp is the only place that reads the CPU's features and ANNFORGE_SIMD; it also selects the
// 4-bit fast-scan kernels (simd/pq4_kernels.h), the MinHash permutation kernels
// (simd/minhash_kernels.h) and the RaBitQ bit-plane kernels (simd/rabitq_kernels.h).
#pragma once

#include <cstddef>
#include <cstdint>

namespace annforge::simd {

enum class Level : std::uint8_t { Scalar = 0, NEON = 1, AVX2 = 2, AVX512 = 3 };

const char* level_name(Level level);

struct Kernels {
  Level level;

  // --- float32, one pair ---------------------------------------------------------------------------
  float (*l2_sqr)(const float* a, const float* b, std::size_t d);
  float (*dot)(const float* a, const float* b, std::size_t d);

  // --- float32, one query against n contiguous rows (row i starts at x + i * d) ---------------------
  void (*l2_sqr_rows)(const float* q, const float* x, std::size_t n, std::size_t d, float* out);
  void (*dot_rows)(const float* q, const float* x, std::size_t n, std::size_t d, float* out);

  // --- float32, blocked many-to-many ------------------------------------------------------------------
  // Rows are first packed into panels of `panel_rows` rows, interleaved by dimension
  // (panel p holds rows p*R .. p*R+R-1 as packed[p*R*d + k*R + r] = x[(p*R + r)*d + k], zero-padded),
  // so that the register-tiled kernel streams them with aligned vector loads.
  std::size_t panel_rows;
  // Size in floats of the packed buffer for n rows.
  std::size_t (*packed_size)(std::size_t n, std::size_t d);
  void (*pack_rows)(const float* x, std::size_t n, std::size_t d, float* packed);
  // out[i * ldo + j] = <q_i, x_j> for i < nq, j < n; q_i starts at q + i * ldq.
  void (*dot_packed)(const float* q, std::size_t nq, std::size_t ldq, const float* packed, std::size_t n,
                     std::size_t d, float* out, std::size_t ldo);

  // --- float16 storage (IEEE binary16 bit patterns), query stays float32 ---------------------------
  float (*l2_sqr_f16)(const float* q, const std::uint16_t* x, std::size_t d);
  float (*dot_f16)(const float* q, const std::uint16_t* x, std::size_t d);
  void (*l2_sqr_f16_rows)(const float* q, const std::uint16_t* x, std::size_t n, std::size_t d, float* out);
  void (*dot_f16_rows)(const float* q, const std::uint16_t* x, std::size_t n, std::size_t d, float* out);
  void (*f32_to_f16)(const float* in, std::uint16_t* out, std::size_t n);  // round to nearest even
  void (*f16_to_f32)(const std::uint16_t* in, float* out, std::size_t n);

  // --- int8 scalar quantization (sq8): x_hat[j] = offset[j] + code[j] * scale[j] --------------------
  // The caller folds the offset into the query once per search:
  //   l2:  sum_j (q[j] - offset[j] - code[j] * scale[j])^2  = l2_sqr_sq8(q - offset, code, scale)
  //   ip:  sum_j q[j] * x_hat[j] = <q, offset> + dot_u8(q * scale, code)
  float (*l2_sqr_sq8)(const float* q_shifted, const std::uint8_t* code, const float* scale, std::size_t d);
  float (*dot_u8)(const float* w, const std::uint8_t* code, std::size_t d);
  void (*l2_sqr_sq8_rows)(const float* q_shifted, const std::uint8_t* codes, const float* scale, std::size_t n,
                          std::size_t d, float* out);
  void (*dot_u8_rows)(const float* w, const std::uint8_t* codes, std::size_t n, std::size_t d, float* out);

  // --- selection ------------------------------------------------------------------------------------
  // Writes the indices j < n with x[j] >= bound (NaN never qualifies), in increasing order, to out (room
  // for n) and returns their count: the vector pre-test of top-k scans over a block of scores.
  std::size_t (*indices_at_least)(const float* x, std::size_t n, float bound, std::uint32_t* out);

  // --- transforms -------------------------------------------------------------------------------------
  // Unnormalised fast Walsh-Hadamard transform in place (x <- H x, H entries +-1), n a power of two: the
  // O(n log n) core of the structured rotation of codec/rabitq.h.
  void (*fwht)(float* x, std::size_t n);
};

// Tables compiled into this binary; each returns nullptr when the level was not compiled in.
const Kernels* scalar_kernels();
const Kernels* avx2_kernels();
const Kernels* avx512_kernels();
const Kernels* neon_kernels();

// The best level this CPU supports among those compiled in (ignores ANNFORGE_SIMD).
Level detected_level();
// True when `level` is compiled in and this CPU can run it.
bool level_available(Level level);
// The table for `level`; throws annforge::Error when it is not available here.
const Kernels& kernels_for(Level level);
// The active table: detected level, lowered by ANNFORGE_SIMD, unless set_active_level() changed it.
const Kernels& kernels();
// Lower or raise the active level at run time (tests, benchmarks). Throws when not available.
void set_active_level(Level level);
Level parse_level(const char* name);  // "scalar" | "neon" | "avx2" | "avx512"; throws on anything else

}  // namespace annforge::simd
