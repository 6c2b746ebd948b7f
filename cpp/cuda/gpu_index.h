// GPU copies of the exact and IVF-PQ indexes, and the GPU k-means accelerator. Host code: the data
// lives on one device, queries come from and results go to host memory. The Python layer builds them
// from a CPU index (to_gpu) and maps the returned row / entry numbers to ids.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "annforge/cluster/kmeans.h"
#include "annforge/common.h"
#include "kernels.h"
#include "runtime.h"

namespace annforge::gpu {

// Owns a KnnWorkspace.
struct WorkspaceDeleter {
  void operator()(KnnWorkspace* ws) const { delete_knn_workspace(ws); }
};
using WorkspacePtr = std::unique_ptr<KnnWorkspace, WorkspaceDeleter>;

// Exact search over n rows stored as f32 or f16 (cosine: the caller passes normalised rows).
class GpuFlat {
 public:
  GpuFlat(int device, const float* x, std::size_t n, std::size_t d, Metric metric, bool f16);
  std::size_t size() const noexcept { return n_; }
  std::size_t dim() const noexcept { return d_; }
  int device() const noexcept { return device_; }
  bool f16() const noexcept { return f16_; }
  std::size_t memory_bytes() const noexcept;
  // labels: row numbers (-1 padding), sorted by (distance, row). mask: n bytes (0 = excluded) or null.
  void search(const float* q, std::size_t nq, std::size_t k, const std::uint8_t* mask, std::int64_t* labels,
              float* dist);

 private:
  int device_;
  std::size_t n_, d_;
  Metric metric_;
  bool f16_;
  Stream stream_;
  DeviceBuffer<float> base_f32_;
  DeviceBuffer<std::uint16_t> base_f16_;
  DeviceBuffer<float> norms_;
  DeviceBuffer<float> queries_, query_norms_, out_d_;
  DeviceBuffer<std::int32_t> out_l_;
  DeviceBuffer<std::uint8_t> mask_;
  WorkspacePtr ws_;
};

// The flat arrays of a trained IVFPQIndex (IVFPQIndex::Layout) plus its shape.
struct IvfpqHostLayout {
  std::size_t d = 0, nlist = 0, m = 0, nbits = 8;
  Metric metric = Metric::L2;
  bool residual = true;
  int refine = 0;  // 0 none, 1 f32, 2 f16, 3 sq8
  std::vector<float> rotation, centroids, codebooks, code_norms, sq8_offset, sq8_scale, norm_terms;
  std::vector<std::int64_t> list_offsets;
  std::vector<std::uint8_t> codes;   // total x m, one code per byte
  std::vector<std::uint8_t> refine_rows;
};

class GpuIVFPQ {
 public:
  GpuIVFPQ(int device, const IvfpqHostLayout& layout);
  std::size_t size() const noexcept { return dev_.total; }
  int device() const noexcept { return device_; }
  std::size_t memory_bytes() const noexcept;
  // labels: entry numbers in list order (-1 padding). mask: one byte per entry or null.
  void search(const float* q, std::size_t nq, std::size_t k, std::size_t nprobe, std::size_t refine_factor,
              const std::uint8_t* mask, std::int64_t* labels, float* dist);

 private:
  int device_;
  Metric metric_;
  bool has_rotation_;
  std::vector<std::int64_t> list_offsets_;  // host copy (candidate offsets per query)
  Stream stream_;
  IvfpqDevice dev_;
  DeviceBuffer<float> centroids_, centroid_norms_, codebooks_, code_norms_, norm_terms_, sq8_offset_, sq8_scale_,
      rotation_;
  DeviceBuffer<std::int64_t> list_offsets_dev_;
  DeviceBuffer<std::uint8_t> codes_, refine_, mask_;
  // Per-search scratch.
  DeviceBuffer<float> queries_, rotated_, query_norms_, coarse_d_, luts_, cand_d_, best_d_, out_d_;
  DeviceBuffer<std::int32_t> probes_, cand_offsets_, cand_l_, widths_, best_l_, out_l_;
  WorkspacePtr ws_;
};

// cluster::kmeans's distance steps on one device. Keeps the last matrices it was given on the device
// (k-means passes the same sample every iteration); valid for the duration of one kmeans() call.
class GpuKMeansAccelerator final : public cluster::KMeansAccelerator {
 public:
  explicit GpuKMeansAccelerator(int device);
  void nearest(const float* x, std::size_t n, std::size_t d, const float* centroids, std::size_t k,
               bool inner_product, std::int32_t* labels, float* score) override;
  void lower_min_distances(const float* pool, std::size_t n, std::size_t d, const float* centre,
                           float* mind) override;
  bool centroid_sums(const float* x, std::size_t n, std::size_t d, const std::int32_t* labels, std::size_t k,
                     double* sums) override;

 private:
  struct Cached {
    const float* host = nullptr;
    std::size_t n = 0, d = 0;
    DeviceBuffer<float> data, norms;
  };
  // Uploads x unless it is the matrix cached in `slot`.
  void ensure(Cached& slot, const float* x, std::size_t n, std::size_t d, bool norms);

  int device_;
  Stream stream_;
  Cached points_, pool_;
  DeviceBuffer<float> centroids_, centroid_norms_, centre_, mind_, out_d_;
  DeviceBuffer<std::int32_t> out_l_, labels_;
  DeviceBuffer<double> sums_;
  WorkspacePtr ws_;
};

}  // namespace annforge::gpu
