// IVF-PQ on the GPU: per-query look-up tables, the scan of the probed lists with the query's table in
// shared memory (8-bit codes: m x 256 floats; 4-bit codes: m x 16 floats, two codes per byte), and
// exact re-ranking of the candidates from the stored f32 / f16 / sq8 copy. The distances follow the
// CPU index (cpp/src/index/ivfpq.cpp):
//   l2, residual codes      ||q - c||^2 + norm_term + sum_j lut[j][code_j],  lut = -2 <q_j, centre>
//   ip/cosine, residual     1 - <q, c> + sum_j lut[j][code_j],                lut = -<q_j, centre>
//   l2, plain codes         ||q||^2 + sum_j lut[j][code_j],                   lut = -2 <q_j, centre> + ||centre||^2
//   ip/cosine, plain codes  1 + sum_j lut[j][code_j]
// The CPU rounds 4-bit tables to 8 bits; here they stay in float (estimates at least as close).
#include <cuda_fp16.h>
#include <math_constants.h>

#include <algorithm>

#include "kernels.h"
#include "runtime.h"

namespace annforge::gpu {

namespace {

constexpr int kThreads = 256;

std::size_t div_up(std::size_t a, std::size_t b) { return (a + b - 1) / b; }

// Sum over the block (kThreads threads); every thread gets the result. `scratch` holds 32 floats.
__device__ float block_sum(float v, float* scratch) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();  // scratch may still be read from a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float total = 0.0f;
  for (int w = 0; w < kThreads / 32; ++w) total += scratch[w];
  return total;
}

__global__ void lut_kernel(IvfpqDevice ix, const float* __restrict__ queries, float* __restrict__ luts) {
  const std::size_t q = blockIdx.x;
  const std::size_t entries = ix.m * ix.ksub, dsub = ix.d / ix.m;
  const float* qv = queries + q * ix.d;
  const float factor = ix.l2 ? -2.0f : -1.0f;
  for (std::size_t e = threadIdx.x; e < entries; e += kThreads) {
    const std::size_t j = e / ix.ksub;
    const float* centre = ix.d_codebooks + e * dsub;  // (j * ksub + c) * dsub
    const float* qs = qv + j * dsub;
    float s = 0.0f;
    for (std::size_t t = 0; t < dsub; ++t) s = fmaf(qs[t], centre[t], s);
    float v = factor * s;
    if (ix.d_code_norms) v += ix.d_code_norms[e];
    luts[q * entries + e] = v;
  }
}

// Block (probe p, query q): every entry of the p-th probed list of query q.
__global__ void __launch_bounds__(kThreads) scan_kernel(IvfpqDevice ix, const float* __restrict__ queries,
                                                        const float* __restrict__ luts,
                                                        const std::int32_t* __restrict__ probes,
                                                        const float* __restrict__ coarse, std::size_t nprobe,
                                                        const std::int32_t* __restrict__ cand_offsets,
                                                        const std::uint8_t* __restrict__ mask, std::size_t ld,
                                                        float* __restrict__ dist, std::int32_t* __restrict__ labels,
                                                        bool lut_in_shared) {
  extern __shared__ float shared_lut[];
  __shared__ float scratch[32];
  const std::size_t p = blockIdx.x, q = blockIdx.y;
  const std::int32_t list = probes[q * nprobe + p];
  if (list < 0) return;  // fewer lists than nprobe (block-uniform)
  const std::int64_t begin = ix.d_list_offsets[list], end = ix.d_list_offsets[list + 1];
  const std::size_t entries = ix.m * ix.ksub;
  const float* qlut = luts + q * entries;
  const float* lut = qlut;
  if (lut_in_shared) {
    for (std::size_t e = threadIdx.x; e < entries; e += kThreads) shared_lut[e] = qlut[e];
    lut = shared_lut;
  }
  const float* qv = queries + q * ix.d;
  float base;
  if (ix.residual) {
    if (ix.l2) {
      base = coarse[q * nprobe + p];
    } else {
      const float* c = ix.d_centroids + static_cast<std::size_t>(list) * ix.d;
      float s = 0.0f;
      for (std::size_t t = threadIdx.x; t < ix.d; t += kThreads) s = fmaf(qv[t], c[t], s);
      base = 1.0f - block_sum(s, scratch);
    }
  } else if (ix.l2) {
    float s = 0.0f;
    for (std::size_t t = threadIdx.x; t < ix.d; t += kThreads) s = fmaf(qv[t], qv[t], s);
    base = block_sum(s, scratch);
  } else {
    base = 1.0f;
  }
  __syncthreads();  // the table is in shared memory
  const std::size_t out0 = q * ld + static_cast<std::size_t>(cand_offsets[q * nprobe + p]);
  const std::int64_t size = end - begin;
  for (std::int64_t i = threadIdx.x; i < size; i += kThreads) {
    const std::int64_t e = begin + i;
    const std::uint8_t* code = ix.d_codes + static_cast<std::size_t>(e) * ix.code_stride;
    float s = base;
    if (ix.d_norm_terms) s += ix.d_norm_terms[e];
    if (ix.nbits == 8) {
      for (std::size_t j = 0; j < ix.m; ++j) s += lut[j * 256 + code[j]];
    } else {
      for (std::size_t j = 0; j < ix.m; ++j) {
        const std::uint8_t byte = code[j >> 1];
        s += lut[j * 16 + ((j & 1) ? (byte >> 4) : (byte & 15))];
      }
    }
    if (mask && !mask[e]) s = CUDART_INF_F;
    dist[out0 + i] = s;
    labels[out0 + i] = static_cast<std::int32_t>(e);
  }
}

// One warp per (query, candidate): the exact distance from the re-ranking copy.
__global__ void rerank_kernel(IvfpqDevice ix, const float* __restrict__ queries, std::size_t nq,
                              const std::int32_t* __restrict__ labels, std::size_t count, float* __restrict__ dist) {
  const std::size_t warp = (blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (warp >= nq * count) return;
  const std::int32_t e = labels[warp];
  if (e < 0) {
    if (lane == 0) dist[warp] = CUDART_INF_F;
    return;
  }
  const std::size_t d = ix.d;
  const float* qv = queries + (warp / count) * d;
  float s = 0.0f;
  for (std::size_t j = lane; j < d; j += 32) {
    float x;
    if (ix.refine == 1) {
      x = static_cast<const float*>(ix.d_refine)[static_cast<std::size_t>(e) * d + j];
    } else if (ix.refine == 2) {
      x = __half2float(static_cast<const __half*>(ix.d_refine)[static_cast<std::size_t>(e) * d + j]);
    } else {
      const std::uint8_t c = static_cast<const std::uint8_t*>(ix.d_refine)[static_cast<std::size_t>(e) * d + j];
      x = ix.d_sq8_offset[j] + static_cast<float>(c) * ix.d_sq8_scale[j];
    }
    if (ix.l2) {
      const float t = qv[j] - x;
      s = fmaf(t, t, s);
    } else {
      s = fmaf(qv[j], x, s);
    }
  }
  for (int off = 16; off > 0; off >>= 1) s += __shfl_down_sync(0xffffffffu, s, off);
  if (lane == 0) dist[warp] = ix.l2 ? s : 1.0f - s;
}

}  // namespace

void ivfpq_luts(const IvfpqDevice& ix, const float* d_queries, std::size_t nq, float* d_luts, cudaStream_t stream) {
  if (nq == 0) return;
  ANNFORGE_ASSERT(nq <= 0x7fffffffu);
  lut_kernel<<<static_cast<unsigned>(nq), kThreads, 0, stream>>>(ix, d_queries, d_luts);
  ANNFORGE_CUDA_CHECK_LAUNCH("lut_kernel");
}

void ivfpq_scan(const IvfpqDevice& ix, const float* d_queries, const float* d_luts, std::size_t nq,
                const std::int32_t* d_probes, const float* d_coarse, std::size_t nprobe,
                const std::int32_t* d_cand_offsets, const std::uint8_t* d_mask, std::size_t ld, float* d_dist,
                std::int32_t* d_labels, cudaStream_t stream) {
  if (nq == 0 || nprobe == 0) return;
  ANNFORGE_ASSERT(nq <= 65535 && nprobe <= 0x7fffffffu);
  const std::size_t lut_bytes = ix.m * ix.ksub * sizeof(float);
  int device = 0, optin = 0;
  ANNFORGE_CUDA_CHECK(cudaGetDevice(&device));
  ANNFORGE_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  // The static part (scratch) takes 128 bytes of the block's shared memory.
  const bool in_shared = lut_bytes + 128 <= static_cast<std::size_t>(optin);
  const std::size_t dyn = in_shared ? lut_bytes : 0;
  if (dyn > 48 * 1024)
    ANNFORGE_CUDA_CHECK(cudaFuncSetAttribute(scan_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             static_cast<int>(dyn)));
  const dim3 grid(static_cast<unsigned>(nprobe), static_cast<unsigned>(nq));
  scan_kernel<<<grid, kThreads, dyn, stream>>>(ix, d_queries, d_luts, d_probes, d_coarse, nprobe, d_cand_offsets,
                                               d_mask, ld, d_dist, d_labels, in_shared);
  ANNFORGE_CUDA_CHECK_LAUNCH("scan_kernel");
}

void ivfpq_rerank(const IvfpqDevice& ix, const float* d_queries, std::size_t nq, const std::int32_t* d_labels,
                  std::size_t count, float* d_dist, cudaStream_t stream) {
  if (nq == 0 || count == 0) return;
  ANNFORGE_ASSERT(ix.refine >= 1 && ix.refine <= 3);
  const unsigned grid = static_cast<unsigned>(div_up(nq * count * 32, kThreads));
  rerank_kernel<<<grid, kThreads, 0, stream>>>(ix, d_queries, nq, d_labels, count, d_dist);
  ANNFORGE_CUDA_CHECK_LAUNCH("rerank_kernel");
}

}  // namespace annforge::gpu
