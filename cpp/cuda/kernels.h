// Host-side entry points of the GPU kernels (implemented in knn.cu and ivfpq.cu). Every pointer named
// `d_*` is device memory; all work is queued on `stream` and errors are thrown as gpu::DeviceError.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace annforge::gpu {

// Largest k (or re-ranking candidate count) one selection handles: the block sorts k plus up to
// kSortCapacity - k candidates in shared memory.
constexpr std::size_t kMaxK = 1024;
constexpr std::size_t kSortCapacity = 4096;

enum class Epilogue : int {
  L2 = 0,    // max(0, ||q||^2 + ||x||^2 - 2 <q, x>)
  OneMinusDot = 1,  // 1 - <q, x>   (ip / cosine distances)
  Raw = 2,   // <q, x>            (matrix products: OPQ rotation)
};

// Reusable device scratch for knn(): grown on demand, kept between calls.
struct KnnWorkspace;
KnnWorkspace* new_knn_workspace();
void delete_knn_workspace(KnnWorkspace* ws);

struct KnnProblem {
  const float* d_queries = nullptr;  // nq x d
  const float* d_query_norms = nullptr;  // nq (L2 only)
  std::size_t nq = 0;
  const void* d_base = nullptr;     // n x d, float or __half (base_f16)
  bool base_f16 = false;
  const float* d_base_norms = nullptr;  // n (L2 only)
  std::size_t n = 0, d = 0;
  const std::uint8_t* d_mask = nullptr;  // n bytes, 0 = excluded; null = all rows
  Epilogue metric = Epilogue::L2;   // L2 or OneMinusDot
  std::size_t k = 1;
  bool exact_distances = true;  // recompute the winners' distances directly (no expansion error)
};

// The k nearest rows of the base for every query: d_labels / d_dist (nq x k, device) hold row numbers
// and distances sorted by (distance, row), padded with -1 / +inf. The full nq x n distance matrix is
// never stored: rows are processed in chunks, each followed by a block-wise top-k merge.
void knn(const KnnProblem& p, KnnWorkspace& ws, std::int32_t* d_labels, float* d_dist, cudaStream_t stream);

// out (rows x cols) = epilogue(a (rows x d) . b (cols x d)^T); norms as for knn (may be null for Raw).
void matmul_nt(const float* d_a, const float* d_a_norms, std::size_t rows, const float* d_b, const float* d_b_norms,
               std::size_t cols, std::size_t d, Epilogue e, float* d_out, cudaStream_t stream);

// norms[i] = ||x_i||^2 for n rows of d floats (or halves).
void row_norms(const void* d_x, bool f16, std::size_t n, std::size_t d, float* d_norms, cudaStream_t stream);
// In place: rows scaled to unit length (zero rows stay zero).
void normalize_rows(float* d_x, std::size_t n, std::size_t d, cudaStream_t stream);
// f32 -> f16 (round to nearest).
void to_half(const float* d_x, std::size_t count, void* d_out, cudaStream_t stream);

// sums[labels[i] * d + j] += x[i * d + j] (double atomics; sums must be zeroed; labels in [0, k)).
void centroid_sums(const float* d_x, std::size_t n, std::size_t d, const std::int32_t* d_labels, double* d_sums,
                   cudaStream_t stream);

// mind[i] = min(mind[i], ||pool_i - centre||^2) (k-means++ seeding).
void lower_min_distances(const float* d_pool, std::size_t n, std::size_t d, const float* d_centre, float* d_mind,
                         cudaStream_t stream);

// Per-row selection over explicit candidates: for row r, the candidates are (dist[r * ld + c],
// labels[r * ld + c]) for c < widths[r]; the row's running best list (best_d / best_l, r * k ...,
// sorted, +inf / -1 padded) is merged with them in place. Entries with infinite distance never enter.
void select_rows(const float* d_dist, const std::int32_t* d_labels, const std::int32_t* d_widths, std::size_t ld,
                 std::size_t rows, std::size_t k, float* d_best_d, std::int32_t* d_best_l, cudaStream_t stream);
// Fills n distances with +inf and labels with -1.
void fill_empty(float* d_dist, std::int32_t* d_labels, std::size_t n, cudaStream_t stream);

// --- IVF-PQ ------------------------------------------------------------------------------------------

struct IvfpqDevice {
  std::size_t d = 0, m = 0, ksub = 0, nbits = 8, nlist = 0, total = 0;
  bool residual = true;
  bool l2 = true;                // metric l2 (else ip / cosine: 1 - <q, x>)
  const float* d_centroids = nullptr;   // nlist x d
  const float* d_codebooks = nullptr;   // m x ksub x dsub
  const float* d_code_norms = nullptr;  // m x ksub (l2 without residuals) or null
  const std::int64_t* d_list_offsets = nullptr;  // nlist + 1
  const std::uint8_t* d_codes = nullptr;  // total x code_stride
  std::size_t code_stride = 0;            // bytes per entry: m (8-bit) or (m + 1) / 2 (4-bit, two per byte)
  const float* d_norm_terms = nullptr;    // total (l2 with residuals) or null
  int refine = 0;                         // 0 none, 1 f32, 2 f16, 3 sq8
  const void* d_refine = nullptr;         // total x refine row
  const float* d_sq8_offset = nullptr;
  const float* d_sq8_scale = nullptr;
};

// Look-up tables of nq queries: lut[q][j * ksub + c] = factor <q_j, centre_jc> (+ code norm).
void ivfpq_luts(const IvfpqDevice& ix, const float* d_queries, std::size_t nq, float* d_luts, cudaStream_t stream);
// Distances of every entry of the probed lists: query q's candidates are written at row q of
// (d_dist, d_labels) (stride ld), probe p's list starting at d_cand_offsets[q * nprobe + p]; labels are
// entry numbers. `d_coarse` holds ||q - c||^2 of each probe. Masked entries get +inf.
void ivfpq_scan(const IvfpqDevice& ix, const float* d_queries, const float* d_luts, std::size_t nq,
                const std::int32_t* d_probes, const float* d_coarse, std::size_t nprobe,
                const std::int32_t* d_cand_offsets, const std::uint8_t* d_mask, std::size_t ld, float* d_dist,
                std::int32_t* d_labels, cudaStream_t stream);
// Exact distances of each query's `count` candidates (entry numbers, -1 = none -> +inf) from the
// re-ranking copy, in place of d_dist.
void ivfpq_rerank(const IvfpqDevice& ix, const float* d_queries, std::size_t nq, const std::int32_t* d_labels,
                  std::size_t count, float* d_dist, cudaStream_t stream);

}  // namespace annforge::gpu
