// Exact k-NN on the GPU: a shared-memory tiled matrix product (queries x base rows) whose epilogue
// turns dot products into distances, followed after every chunk of rows by a block-wise top-k merge,
// so at most (query tile x chunk) distances exist at any time. Also the small helpers the other GPU
// code shares (norms, normalisation, f16 conversion, k-means++ distances).
#include <cuda_fp16.h>
#include <math_constants.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels.h"
#include "runtime.h"

namespace annforge::gpu {

namespace {

constexpr int kThreads = 256;  // every kernel here: 8 warps per block
constexpr int kTileN = 128;    // base rows per GEMM block
constexpr int kTileK = 16;     // dimensions per shared-memory step (a multiple of 4)
constexpr int kPad = 4;        // shared-memory row padding against bank conflicts on the transposed stores
constexpr std::size_t kChunkRows = 16384;               // base rows per chunk (one selection per chunk)
constexpr std::size_t kDistanceBudget = 64u << 20;      // floats of distances alive at once (256 MiB)

std::size_t div_up(std::size_t a, std::size_t b) { return (a + b - 1) / b; }

__device__ __forceinline__ float load_value(const float* p, std::size_t i) { return p[i]; }
__device__ __forceinline__ float load_value(const __half* p, std::size_t i) { return __half2float(p[i]); }

// Orderable unsigned key of a float (ascending keys = ascending floats, -0 just below +0).
__device__ __forceinline__ unsigned float_key(float v) {
  const unsigned u = __float_as_uint(v);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ __forceinline__ float key_float(unsigned key) {
  return __uint_as_float((key & 0x80000000u) ? (key & 0x7fffffffu) : ~key);
}
// Strict order of (distance, label) with label -1 (padding) last among equal distances.
__device__ __forceinline__ bool after(float da, int la, float db, int lb) {
  return da > db || (da == db && static_cast<unsigned>(la) > static_cast<unsigned>(lb));
}

// Four consecutive values of a row starting at column c (zeros past d). kVec: d % 4 == 0 and the rows
// are 16-byte (f32) / 8-byte (f16) aligned, so one vector load fetches them.
template <bool kVec>
__device__ __forceinline__ float4 load4(const float* row, std::size_t c, std::size_t d) {
  if (kVec) return c < d ? *reinterpret_cast<const float4*>(row + c) : make_float4(0.f, 0.f, 0.f, 0.f);
  return make_float4(c < d ? row[c] : 0.f, c + 1 < d ? row[c + 1] : 0.f, c + 2 < d ? row[c + 2] : 0.f,
                     c + 3 < d ? row[c + 3] : 0.f);
}
template <bool kVec>
__device__ __forceinline__ float4 load4(const __half* row, std::size_t c, std::size_t d) {
  if (kVec) {
    if (c >= d) return make_float4(0.f, 0.f, 0.f, 0.f);
    const uint2 raw = *reinterpret_cast<const uint2*>(row + c);
    const float2 lo = __half22float2(*reinterpret_cast<const __half2*>(&raw.x));
    const float2 hi = __half22float2(*reinterpret_cast<const __half2*>(&raw.y));
    return make_float4(lo.x, lo.y, hi.x, hi.y);
  }
  return make_float4(c < d ? __half2float(row[c]) : 0.f, c + 1 < d ? __half2float(row[c + 1]) : 0.f,
                     c + 2 < d ? __half2float(row[c + 2]) : 0.f, c + 3 < d ? __half2float(row[c + 3]) : 0.f);
}

// out[row][col] for a tile of kTileM = 16 * TM rows of `a` (queries) and kTileN rows of `b` (base):
// thread (ty, tx) computes rows ty + 16 * i and columns tx + 16 * j. Rows of `a` past `rows` and
// columns past the segment's end are computed from zeros and never written. The next kTileK slice is
// fetched into registers while the current one is multiplied from shared memory.
//
// Column c of the tile maps to base row col_base + blockIdx.z * seg_stride + c, and the output goes to
// out[(row * segments + blockIdx.z) * ldo + c]: with segments > 1 each query gets one output row per
// segment of the base (small batches keep the GPU busy by splitting the base).
template <int TM, typename T, bool kVec>
__global__ void __launch_bounds__(kThreads, TM == 8 ? 2 : 1) gemm_nt_kernel(const float* __restrict__ a, const float* __restrict__ a_norms,
                                                           std::size_t rows, const T* __restrict__ b,
                                                           const float* __restrict__ b_norms, std::size_t nb,
                                                           std::size_t col_base, std::size_t seg_stride,
                                                           std::size_t seg_cols, std::size_t d, int epilogue,
                                                           const std::uint8_t* __restrict__ mask, float* __restrict__ out,
                                                           std::size_t ldo, int segments) {
  constexpr int kTileM = 16 * TM;
  constexpr int kQuads = kTileK / 4;                                   // 4-value groups per row slice
  constexpr int kASlots = (kTileM * kQuads + kThreads - 1) / kThreads;  // groups each thread loads
  constexpr int kBSlots = (kTileN * kQuads + kThreads - 1) / kThreads;
  __shared__ float as[kTileK][kTileM + kPad];
  __shared__ float bs[kTileK][kTileN + kPad];
  const int tid = threadIdx.x, ty = tid / 16, tx = tid % 16;
  const std::size_t row0 = static_cast<std::size_t>(blockIdx.y) * kTileM;
  const std::size_t col0 = static_cast<std::size_t>(blockIdx.x) * kTileN;  // within the segment
  const std::size_t seg = blockIdx.z;
  const std::size_t seg_begin = col_base + seg * seg_stride;  // base row of column 0
  // Columns of this segment that exist: [0, cols_here).
  std::size_t cols_here = 0;
  if (seg_begin < nb) cols_here = min(seg_cols, nb - seg_begin);
  if (col0 >= cols_here || row0 >= rows) return;  // block-uniform

  float4 ra[kASlots], rb[kBSlots];
  auto fetch = [&](std::size_t k0) {
#pragma unroll
    for (int s = 0; s < kASlots; ++s) {
      const int slot = tid + s * kThreads;
      const std::size_t r = row0 + slot / kQuads;
      ra[s] = (slot < kTileM * kQuads && r < rows) ? load4<kVec>(a + r * d, k0 + (slot % kQuads) * 4, d)
                                                   : make_float4(0.f, 0.f, 0.f, 0.f);
    }
#pragma unroll
    for (int s = 0; s < kBSlots; ++s) {
      const int slot = tid + s * kThreads;
      const std::size_t lc = col0 + slot / kQuads;
      rb[s] = (slot < kTileN * kQuads && lc < cols_here)
                  ? load4<kVec>(b + (seg_begin + lc) * d, k0 + (slot % kQuads) * 4, d)
                  : make_float4(0.f, 0.f, 0.f, 0.f);
    }
  };
  auto stash = [&]() {  // registers -> shared memory, transposed (k-major)
#pragma unroll
    for (int s = 0; s < kASlots; ++s) {
      const int slot = tid + s * kThreads;
      if (slot >= kTileM * kQuads) continue;
      const int r = slot / kQuads, c = (slot % kQuads) * 4;
      as[c][r] = ra[s].x;
      as[c + 1][r] = ra[s].y;
      as[c + 2][r] = ra[s].z;
      as[c + 3][r] = ra[s].w;
    }
#pragma unroll
    for (int s = 0; s < kBSlots; ++s) {
      const int slot = tid + s * kThreads;
      if (slot >= kTileN * kQuads) continue;
      const int r = slot / kQuads, c = (slot % kQuads) * 4;
      bs[c][r] = rb[s].x;
      bs[c + 1][r] = rb[s].y;
      bs[c + 2][r] = rb[s].z;
      bs[c + 3][r] = rb[s].w;
    }
  };

  float acc[TM][8];
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < 8; ++j) acc[i][j] = 0.0f;

  fetch(0);
  stash();
  __syncthreads();
  for (std::size_t k0 = 0; k0 < d; k0 += kTileK) {
    const bool more = k0 + kTileK < d;  // block-uniform
    if (more) fetch(k0 + kTileK);       // in flight during the products below
#pragma unroll
    for (int kk = 0; kk < kTileK; ++kk) {
      float av[TM], bv[8];
#pragma unroll
      for (int i = 0; i < TM; ++i) av[i] = as[kk][ty + 16 * i];
#pragma unroll
      for (int j = 0; j < 8; ++j) bv[j] = bs[kk][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
    }
    __syncthreads();  // everyone is done reading this slice
    if (more) {
      stash();
      __syncthreads();
    }
  }

#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const std::size_t r = row0 + ty + 16 * i;
    if (r >= rows) continue;
    const float qn = (epilogue == static_cast<int>(Epilogue::L2)) ? a_norms[r] : 0.0f;
    float* orow = out + (r * static_cast<std::size_t>(segments) + seg) * ldo;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const std::size_t lc = col0 + tx + 16 * j;
      if (lc >= cols_here) continue;
      const std::size_t g = seg_begin + lc;
      float v;
      if (epilogue == static_cast<int>(Epilogue::L2)) v = fmaxf(0.0f, qn + b_norms[g] - 2.0f * acc[i][j]);
      else if (epilogue == static_cast<int>(Epilogue::OneMinusDot)) v = 1.0f - acc[i][j];
      else v = acc[i][j];
      if (mask && !mask[g]) v = CUDART_INF_F;
      orow[lc] = v;
    }
  }
}

// Where a selection row finds its candidates.
struct SelectSource {
  const float* dist;
  const std::int32_t* labels;  // explicit labels, or null: label = first_label(row) + column
  const std::int32_t* widths;  // explicit per-row widths (with labels)
  std::size_t ld;
  // Implicit mode (knn chunks): row = query * segments + segment; its columns are base rows
  // [col_base + segment * seg_stride, ...) limited to seg_cols and to n.
  int segments;
  std::size_t col_base, seg_stride, seg_cols, n;
};

// One block per row: merges the row's candidates with distance <= the current k-th best into the
// running best list (sorted, in shared memory). When more candidates pass than the sort holds, a
// radix select over the float keys finds the k-th smallest first and only what is below it (plus
// ties, as room allows) is sorted.
__global__ void __launch_bounds__(kThreads) select_kernel(SelectSource src, int k, float* __restrict__ best_d,
                                                          std::int32_t* __restrict__ best_l) {
  __shared__ float sd[kSortCapacity];
  __shared__ std::int32_t sl[kSortCapacity];
  __shared__ unsigned hist[256];
  __shared__ int s_count;
  __shared__ int s_bin, s_rem;
  const int tid = threadIdx.x;
  const std::size_t row = blockIdx.x;

  int width;
  std::int64_t first_label = 0;
  if (src.labels) {
    width = src.widths[row];
  } else {
    const std::size_t seg = row % static_cast<std::size_t>(src.segments);
    const std::size_t begin = src.col_base + seg * src.seg_stride;
    width = begin < src.n ? static_cast<int>(min(src.seg_cols, src.n - begin)) : 0;
    first_label = static_cast<std::int64_t>(begin);
  }
  const float* drow = src.dist + row * src.ld;
  const std::int32_t* lrow = src.labels ? src.labels + row * src.ld : nullptr;
  float* bd = best_d + row * static_cast<std::size_t>(k);
  std::int32_t* bl = best_l + row * static_cast<std::size_t>(k);
  const float tau = bd[k - 1];  // +inf until k entries are known
  auto label_of = [&](int c) { return lrow ? lrow[c] : static_cast<std::int32_t>(first_label + c); };
  auto passes = [&](float v) { return v <= tau && v < CUDART_INF_F; };

  if (k == 1) {  // nearest only: a block-wide minimum of (distance, label)
    float best = bd[0];
    std::int32_t best_label = bl[0];
    for (int c = tid; c < width; c += kThreads) {
      const float v = drow[c];
      if (!passes(v)) continue;
      const std::int32_t l = label_of(c);
      if (after(best, best_label, v, l)) best = v, best_label = l;
    }
    sd[tid] = best;
    sl[tid] = best_label;
    __syncthreads();
    for (int s = kThreads / 2; s > 0; s >>= 1) {
      if (tid < s && after(sd[tid], sl[tid], sd[tid + s], sl[tid + s])) {
        sd[tid] = sd[tid + s];
        sl[tid] = sl[tid + s];
      }
      __syncthreads();
    }
    if (tid == 0) {
      bd[0] = sd[0];
      bl[0] = sl[0];
    }
    return;
  }

  const int cap = static_cast<int>(kSortCapacity) - k;
  if (tid == 0) s_count = 0;
  __syncthreads();
  for (int c = tid; c < width; c += kThreads) {
    const float v = drow[c];
    if (!passes(v)) continue;
    const int p = atomicAdd(&s_count, 1);
    if (p < cap) {
      sd[k + p] = v;
      sl[k + p] = label_of(c);
    }
  }
  __syncthreads();
  int count = s_count;
  if (count == 0) return;  // nothing can enter (block-uniform)
  if (count > cap) {
    // The k-th smallest passing value, 8 bits of its key at a time (count > cap >= k, so it exists).
    unsigned prefix = 0, high_mask = 0;
    int remaining = k;
    for (int shift = 24; shift >= 0; shift -= 8) {
      for (int i = tid; i < 256; i += kThreads) hist[i] = 0;
      __syncthreads();
      for (int c = tid; c < width; c += kThreads) {
        const float v = drow[c];
        if (!passes(v)) continue;
        const unsigned key = float_key(v);
        if ((key & high_mask) == prefix) atomicAdd(&hist[(key >> shift) & 255u], 1u);
      }
      __syncthreads();
      if (tid == 0) {
        unsigned seen = 0;
        int bin = 0;
        for (; bin < 255; ++bin) {
          if (seen + hist[bin] >= static_cast<unsigned>(remaining)) break;
          seen += hist[bin];
        }
        s_bin = bin;
        s_rem = remaining - static_cast<int>(seen);
      }
      __syncthreads();
      prefix |= static_cast<unsigned>(s_bin) << shift;
      high_mask |= 255u << shift;
      remaining = s_rem;
      __syncthreads();  // every thread has read s_bin / s_rem before thread 0 may write them again
    }
    const float kth = key_float(prefix);
    if (tid == 0) s_count = 0;
    __syncthreads();
    for (int c = tid; c < width; c += kThreads) {  // fewer than k values lie strictly below kth
      const float v = drow[c];
      if (passes(v) && v < kth) {
        const int p = atomicAdd(&s_count, 1);
        if (p < cap) {
          sd[k + p] = v;
          sl[k + p] = label_of(c);
        }
      }
    }
    __syncthreads();
    // Ties with the k-th value, while room remains. (More than cap - k exact ties of one distance is
    // the one case where which tied labels survive is not the lowest ones.)
    for (int c = tid; c < width; c += kThreads) {
      const float v = drow[c];
      if (passes(v) && v == kth) {
        const int p = atomicAdd(&s_count, 1);
        if (p < cap) {
          sd[k + p] = v;
          sl[k + p] = label_of(c);
        }
      }
    }
    __syncthreads();
    count = min(s_count, cap);
  }
  for (int t = tid; t < k; t += kThreads) {
    sd[t] = bd[t];
    sl[t] = bl[t];
  }
  const int total = k + count;
  int size = 1;
  while (size < total) size <<= 1;  // <= kSortCapacity since count <= cap
  for (int t = total + tid; t < size; t += kThreads) {
    sd[t] = CUDART_INF_F;
    sl[t] = -1;
  }
  __syncthreads();
  // Bitonic sort of sd / sl [0, size), ascending by (distance, label).
  for (int block = 2; block <= size; block <<= 1) {
    for (int stride = block >> 1; stride > 0; stride >>= 1) {
      for (int i = tid; i < size / 2; i += kThreads) {
        const int lo = 2 * i - (i & (stride - 1)), hi = lo + stride;
        const bool ascending = (lo & block) == 0;
        if (after(sd[lo], sl[lo], sd[hi], sl[hi]) == ascending) {
          const float td = sd[lo];
          sd[lo] = sd[hi];
          sd[hi] = td;
          const std::int32_t tl = sl[lo];
          sl[lo] = sl[hi];
          sl[hi] = tl;
        }
      }
      __syncthreads();
    }
  }
  for (int t = tid; t < k; t += kThreads) {
    bd[t] = sd[t];
    bl[t] = sl[t];
  }
}

__global__ void fill_kernel(float* dist, std::int32_t* labels, std::size_t n) {
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x) {
    dist[i] = CUDART_INF_F;
    labels[i] = -1;
  }
}

// Direct distances of the winners (one warp per result entry): no ||q||^2 + ||x||^2 - 2<q,x>
// cancellation, the same way the CPU FlatIndex recomputes its winners.
template <typename T>
__global__ void rescore_kernel(const float* __restrict__ q, const T* __restrict__ base, std::size_t d,
                               const std::int32_t* __restrict__ labels, std::size_t nq, std::size_t k, bool l2,
                               float* __restrict__ dist) {
  const std::size_t warp = (blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (warp >= nq * k) return;
  const std::int32_t label = labels[warp];
  if (label < 0) {
    if (lane == 0) dist[warp] = CUDART_INF_F;
    return;
  }
  const float* qv = q + (warp / k) * d;
  const T* xv = base + static_cast<std::size_t>(label) * d;
  float s = 0.0f;
  for (std::size_t j = lane; j < d; j += 32) {
    const float x = load_value(xv, j);
    if (l2) {
      const float t = qv[j] - x;
      s = fmaf(t, t, s);
    } else {
      s = fmaf(qv[j], x, s);
    }
  }
  for (int off = 16; off > 0; off >>= 1) s += __shfl_down_sync(0xffffffffu, s, off);
  if (lane == 0) dist[warp] = l2 ? s : 1.0f - s;
}

// Re-sorts each row of k entries by (distance, label) after rescoring (one thread per row: k is small
// next to the rest of the work; insertion sort on an almost sorted row).
__global__ void sort_rows_kernel(float* dist, std::int32_t* labels, std::size_t rows, std::size_t k) {
  const std::size_t r = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x;
  if (r >= rows) return;
  float* dv = dist + r * k;
  std::int32_t* lv = labels + r * k;
  for (std::size_t i = 1; i < k; ++i) {
    const float x = dv[i];
    const std::int32_t l = lv[i];
    std::size_t j = i;
    while (j > 0 && after(dv[j - 1], lv[j - 1], x, l)) {
      dv[j] = dv[j - 1];
      lv[j] = lv[j - 1];
      --j;
    }
    dv[j] = x;
    lv[j] = l;
  }
}

template <typename T>
__global__ void row_norms_kernel(const T* __restrict__ x, std::size_t n, std::size_t d, float* __restrict__ norms) {
  const std::size_t warp = (blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (warp >= n) return;
  float s = 0.0f;
  for (std::size_t j = lane; j < d; j += 32) {
    const float v = load_value(x, warp * d + j);
    s = fmaf(v, v, s);
  }
  for (int off = 16; off > 0; off >>= 1) s += __shfl_down_sync(0xffffffffu, s, off);
  if (lane == 0) norms[warp] = s;
}

__global__ void normalize_kernel(float* x, std::size_t n, std::size_t d) {
  const std::size_t warp = (blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (warp >= n) return;
  float* row = x + warp * d;
  float s = 0.0f;
  for (std::size_t j = lane; j < d; j += 32) s = fmaf(row[j], row[j], s);
  for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);  // every lane gets the sum
  if (s > 0.0f) {
    const float inv = rsqrtf(s);
    for (std::size_t j = lane; j < d; j += 32) row[j] *= inv;
  }
}

__global__ void to_half_kernel(const float* x, std::size_t n, __half* out) {
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x)
    out[i] = __float2half_rn(x[i]);
}

__global__ void lower_min_kernel(const float* __restrict__ pool, std::size_t n, std::size_t d,
                                 const float* __restrict__ centre, float* __restrict__ mind) {
  const std::size_t warp = (blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (warp >= n) return;
  const float* row = pool + warp * d;
  float s = 0.0f;
  for (std::size_t j = lane; j < d; j += 32) {
    const float t = row[j] - centre[j];
    s = fmaf(t, t, s);
  }
  for (int off = 16; off > 0; off >>= 1) s += __shfl_down_sync(0xffffffffu, s, off);
  if (lane == 0) mind[warp] = fminf(mind[warp], s);
}

__global__ void centroid_sums_kernel(const float* __restrict__ x, std::size_t n, std::size_t d,
                                     const std::int32_t* __restrict__ labels, double* __restrict__ sums) {
  const std::size_t total = n * d;
  for (std::size_t e = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<std::size_t>(gridDim.x) * blockDim.x) {
    const std::size_t i = e / d, j = e % d;
    atomicAdd(sums + static_cast<std::size_t>(labels[i]) * d + j, static_cast<double>(x[e]));
  }
}

unsigned grid_for_warps(std::size_t warps) {
  return static_cast<unsigned>(div_up(warps * 32, kThreads));
}
unsigned grid_stride_blocks(std::size_t n) {
  return static_cast<unsigned>(std::min<std::size_t>(div_up(std::max<std::size_t>(n, 1), kThreads), 65535));
}

int sm_count() {
  int device = 0, sms = 0;
  ANNFORGE_CUDA_CHECK(cudaGetDevice(&device));
  ANNFORGE_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  return std::max(sms, 1);
}

template <int TM, typename T>
void launch_gemm_typed(const dim3& grid, bool vec, const float* a, const float* a_norms, std::size_t rows, const T* b,
                       const float* b_norms, std::size_t nb, std::size_t col_base, std::size_t seg_stride,
                       std::size_t seg_cols, std::size_t d, int ep, const std::uint8_t* mask, float* out,
                       std::size_t ldo, int segments, cudaStream_t stream) {
  if (vec)
    gemm_nt_kernel<TM, T, true><<<grid, kThreads, 0, stream>>>(a, a_norms, rows, b, b_norms, nb, col_base, seg_stride,
                                                              seg_cols, d, ep, mask, out, ldo, segments);
  else
    gemm_nt_kernel<TM, T, false><<<grid, kThreads, 0, stream>>>(a, a_norms, rows, b, b_norms, nb, col_base,
                                                               seg_stride, seg_cols, d, ep, mask, out, ldo, segments);
}

// One launch of the GEMM with the right query-tile height (16 rows for small batches, 128 for large).
void launch_gemm(const float* a, const float* a_norms, std::size_t rows, const void* b, bool b_f16,
                 const float* b_norms, std::size_t nb, std::size_t col_base, std::size_t seg_stride,
                 std::size_t seg_cols, int segments, std::size_t d, Epilogue e, const std::uint8_t* mask, float* out,
                 std::size_t ldo, cudaStream_t stream) {
  const bool tall = rows > 32;
  const std::size_t tile_m = tall ? 128 : 16;
  ANNFORGE_ASSERT(div_up(rows, tile_m) <= 65535 && segments >= 1 && segments <= 65535);
  const dim3 grid(static_cast<unsigned>(div_up(seg_cols, kTileN)), static_cast<unsigned>(div_up(rows, tile_m)),
                  static_cast<unsigned>(segments));
  const int ep = static_cast<int>(e);
  // Vector loads need every row start aligned: d % 4 == 0 and aligned base pointers.
  const bool vec = d % 4 == 0 && reinterpret_cast<std::uintptr_t>(a) % 16 == 0 &&
                   reinterpret_cast<std::uintptr_t>(b) % (b_f16 ? 8 : 16) == 0;
  if (b_f16) {
    const auto* bh = static_cast<const __half*>(b);
    if (tall)
      launch_gemm_typed<8>(grid, vec, a, a_norms, rows, bh, b_norms, nb, col_base, seg_stride, seg_cols, d, ep, mask,
                           out, ldo, segments, stream);
    else
      launch_gemm_typed<1>(grid, vec, a, a_norms, rows, bh, b_norms, nb, col_base, seg_stride, seg_cols, d, ep, mask,
                           out, ldo, segments, stream);
  } else {
    const auto* bf = static_cast<const float*>(b);
    if (tall)
      launch_gemm_typed<8>(grid, vec, a, a_norms, rows, bf, b_norms, nb, col_base, seg_stride, seg_cols, d, ep, mask,
                           out, ldo, segments, stream);
    else
      launch_gemm_typed<1>(grid, vec, a, a_norms, rows, bf, b_norms, nb, col_base, seg_stride, seg_cols, d, ep, mask,
                           out, ldo, segments, stream);
  }
  ANNFORGE_CUDA_CHECK_LAUNCH("gemm_nt_kernel");
}

}  // namespace

struct KnnWorkspace {
  DeviceBuffer<float> dist;            // query tile x segments x chunk
  DeviceBuffer<float> best_d;          // query tile x segments x k
  DeviceBuffer<std::int32_t> best_l;
  DeviceBuffer<std::int32_t> widths;   // merge step: per-row widths
};

KnnWorkspace* new_knn_workspace() { return new KnnWorkspace(); }
void delete_knn_workspace(KnnWorkspace* ws) { delete ws; }

void fill_empty(float* d_dist, std::int32_t* d_labels, std::size_t n, cudaStream_t stream) {
  if (n == 0) return;
  fill_kernel<<<grid_stride_blocks(n), kThreads, 0, stream>>>(d_dist, d_labels, n);
  ANNFORGE_CUDA_CHECK_LAUNCH("fill_kernel");
}

void select_rows(const float* d_dist, const std::int32_t* d_labels, const std::int32_t* d_widths, std::size_t ld,
                 std::size_t rows, std::size_t k, float* d_best_d, std::int32_t* d_best_l, cudaStream_t stream) {
  ANNFORGE_ASSERT(k >= 1 && k <= kMaxK);
  if (rows == 0) return;
  ANNFORGE_ASSERT(rows <= 0x7fffffffu);
  SelectSource src{d_dist, d_labels, d_widths, ld, 1, 0, 0, 0, 0};
  select_kernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(src, static_cast<int>(k), d_best_d, d_best_l);
  ANNFORGE_CUDA_CHECK_LAUNCH("select_kernel");
}

void knn(const KnnProblem& p, KnnWorkspace& ws, std::int32_t* d_labels, float* d_dist, cudaStream_t stream) {
  ANNFORGE_ASSERT(p.k >= 1 && p.k <= kMaxK);
  ANNFORGE_ASSERT(p.n < 0x7fffffffu);
  ANNFORGE_ASSERT(p.metric == Epilogue::L2 || p.metric == Epilogue::OneMinusDot);
  const std::size_t k = p.k;
  if (p.nq == 0) return;
  if (p.n == 0) {
    fill_empty(d_dist, d_labels, p.nq * k, stream);
    return;
  }
  // Split the base into segments when the batch alone cannot fill the GPU; each (query, segment) pair
  // keeps its own best list and the lists are merged at the end.
  const std::size_t blocks_wanted = 4 * static_cast<std::size_t>(sm_count());
  std::size_t segments = std::min(div_up(blocks_wanted, p.nq), div_up(p.n, kChunkRows));
  segments = std::max<std::size_t>(1, std::min<std::size_t>(segments, 1024));
  const std::size_t seg_len = div_up(p.n, segments);
  const std::size_t chunk = std::min(kChunkRows, div_up(seg_len, kTileN) * kTileN);
  const std::size_t tile_q =
      std::max<std::size_t>(1, std::min(p.nq, kDistanceBudget / (segments * chunk)));

  ws.dist.resize(tile_q * segments * chunk);
  ws.best_d.resize(tile_q * segments * k);
  ws.best_l.resize(tile_q * segments * k);
  if (segments > 1) {
    ws.widths.resize(tile_q);
    std::vector<std::int32_t> widths(tile_q, static_cast<std::int32_t>(segments * k));
    ws.widths.upload(widths.data(), tile_q, stream);
  }
  const bool l2 = p.metric == Epilogue::L2;

  for (std::size_t q0 = 0; q0 < p.nq; q0 += tile_q) {
    const std::size_t tq = std::min(tile_q, p.nq - q0);
    const float* qs = p.d_queries + q0 * p.d;
    const float* qn = l2 ? p.d_query_norms + q0 : nullptr;
    const std::size_t rows = tq * segments;
    fill_empty(ws.best_d.data(), ws.best_l.data(), rows * k, stream);
    for (std::size_t off = 0; off < seg_len; off += chunk) {
      const std::size_t cols = std::min(chunk, seg_len - off);
      launch_gemm(qs, qn, tq, p.d_base, p.base_f16, p.d_base_norms, p.n, off, seg_len, cols,
                  static_cast<int>(segments), p.d, p.metric, p.d_mask, ws.dist.data(), chunk, stream);
      SelectSource src{ws.dist.data(), nullptr, nullptr, chunk, static_cast<int>(segments), off, seg_len, cols, p.n};
      select_kernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(src, static_cast<int>(k), ws.best_d.data(),
                                                                         ws.best_l.data());
      ANNFORGE_CUDA_CHECK_LAUNCH("select_kernel");
    }
    float* out_d = d_dist + q0 * k;
    std::int32_t* out_l = d_labels + q0 * k;
    if (segments > 1) {
      fill_empty(out_d, out_l, tq * k, stream);
      select_rows(ws.best_d.data(), ws.best_l.data(), ws.widths.data(), segments * k, tq, k, out_d, out_l, stream);
    } else {
      ANNFORGE_CUDA_CHECK(cudaMemcpyAsync(out_d, ws.best_d.data(), tq * k * sizeof(float), cudaMemcpyDeviceToDevice,
                                          stream));
      ANNFORGE_CUDA_CHECK(cudaMemcpyAsync(out_l, ws.best_l.data(), tq * k * sizeof(std::int32_t),
                                          cudaMemcpyDeviceToDevice, stream));
    }
    if (p.exact_distances) {
      const unsigned grid = grid_for_warps(tq * k);
      if (p.base_f16)
        rescore_kernel<__half><<<grid, kThreads, 0, stream>>>(qs, static_cast<const __half*>(p.d_base), p.d, out_l, tq,
                                                              k, l2, out_d);
      else
        rescore_kernel<float><<<grid, kThreads, 0, stream>>>(qs, static_cast<const float*>(p.d_base), p.d, out_l, tq,
                                                             k, l2, out_d);
      ANNFORGE_CUDA_CHECK_LAUNCH("rescore_kernel");
      sort_rows_kernel<<<static_cast<unsigned>(div_up(tq, kThreads)), kThreads, 0, stream>>>(out_d, out_l, tq, k);
      ANNFORGE_CUDA_CHECK_LAUNCH("sort_rows_kernel");
    }
  }
}

void matmul_nt(const float* d_a, const float* d_a_norms, std::size_t rows, const float* d_b, const float* d_b_norms,
               std::size_t cols, std::size_t d, Epilogue e, float* d_out, cudaStream_t stream) {
  if (rows == 0 || cols == 0) return;
  launch_gemm(d_a, d_a_norms, rows, d_b, false, d_b_norms, cols, 0, 0, cols, 1, d, e, nullptr, d_out, cols, stream);
}

void row_norms(const void* d_x, bool f16, std::size_t n, std::size_t d, float* d_norms, cudaStream_t stream) {
  if (n == 0) return;
  if (f16)
    row_norms_kernel<__half><<<grid_for_warps(n), kThreads, 0, stream>>>(static_cast<const __half*>(d_x), n, d, d_norms);
  else
    row_norms_kernel<float><<<grid_for_warps(n), kThreads, 0, stream>>>(static_cast<const float*>(d_x), n, d, d_norms);
  ANNFORGE_CUDA_CHECK_LAUNCH("row_norms_kernel");
}

void normalize_rows(float* d_x, std::size_t n, std::size_t d, cudaStream_t stream) {
  if (n == 0) return;
  normalize_kernel<<<grid_for_warps(n), kThreads, 0, stream>>>(d_x, n, d);
  ANNFORGE_CUDA_CHECK_LAUNCH("normalize_kernel");
}

void to_half(const float* d_x, std::size_t count, void* d_out, cudaStream_t stream) {
  if (count == 0) return;
  to_half_kernel<<<grid_stride_blocks(count), kThreads, 0, stream>>>(d_x, count, static_cast<__half*>(d_out));
  ANNFORGE_CUDA_CHECK_LAUNCH("to_half_kernel");
}

void centroid_sums(const float* d_x, std::size_t n, std::size_t d, const std::int32_t* d_labels, double* d_sums,
                   cudaStream_t stream) {
  if (n == 0 || d == 0) return;
  const unsigned blocks = static_cast<unsigned>(std::min<std::size_t>(div_up(n * d, kThreads), 65535u * 4));
  centroid_sums_kernel<<<blocks, kThreads, 0, stream>>>(d_x, n, d, d_labels, d_sums);
  ANNFORGE_CUDA_CHECK_LAUNCH("centroid_sums_kernel");
}

void lower_min_distances(const float* d_pool, std::size_t n, std::size_t d, const float* d_centre, float* d_mind,
                         cudaStream_t stream) {
  if (n == 0) return;
  lower_min_kernel<<<grid_for_warps(n), kThreads, 0, stream>>>(d_pool, n, d, d_centre, d_mind);
  ANNFORGE_CUDA_CHECK_LAUNCH("lower_min_kernel");
}

}  // namespace annforge::gpu
