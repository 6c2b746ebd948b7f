// k-means clustering and "nearest centroids for many points", shared by IVF-PQ (coarse quantizer and
// product-quantizer codebooks) and the ScaNN partition tree.
//
// Assignment goes through the packed many-to-many kernel (K.pack_rows + K.dot_packed) with centroid
// norms: ||x - c||^2 = ||x||^2 + ||c||^2 - 2<x, c>. Work is split into fixed chunks of points whose
// size does not depend on the thread count, and every reduction runs in a fixed order, so results for a
// seed are bit-identical whatever num_threads is.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "annforge/simd/kernels.h"
#include "annforge/storage/aligned_buffer.h"
#include "annforge/util/splitmix64.h"

namespace annforge::cluster {

// The seeded generator of k-means++ and sampling (util/splitmix64.h).
using util::SplitMix64;

// A fixed set of centroids, packed once for the many-to-many kernel, answering "which m centroids are
// nearest" for batches of points. Remembers the kernel table it was packed with (panel sizes differ
// between SIMD levels), so a level switch between construction and use stays correct.
class PackedCentroids {
 public:
  PackedCentroids() = default;
  // `centroids`: k x d row-major. The data is copied.
  PackedCentroids(const float* centroids, std::size_t k, std::size_t d);

  std::size_t k() const noexcept { return k_; }
  std::size_t d() const noexcept { return d_; }
  const float* sq_norms() const noexcept { return sq_norms_.data(); }

  // For each of the n points (rows of x, stride ldx floats), the m nearest centroids, nearest first:
  // labels[i*m + r] and score[i*m + r]. With `inner_product` false the score is the squared L2
  // distance; with it true the score is -<x, c> (so "smaller is closer" either way). Ties go to the
  // lower centroid index; rows with m > k are padded with label -1 and score +inf. With m = 1 every
  // point gets a valid label: centroid 0 at score +inf when no score was finite (overflow or NaN).
  void nearest(const float* x, std::size_t n, std::size_t ldx, std::size_t m, bool inner_product, int num_threads,
               std::int32_t* labels, float* score) const;

 private:
  const simd::Kernels* kernels_ = nullptr;
  std::size_t k_ = 0, d_ = 0;
  AlignedBuffer<float> packed_;
  std::vector<float> sq_norms_;
};

enum class KMeansInit : std::uint8_t { KMeansPlusPlus = 0, Random = 1 };

// The two heavy steps of kmeans(), offloaded to faster hardware when one is given (the optional CUDA
// module implements it). Sampling, the seeding draws, the updates and the splits stay in kmeans(), so
// the result has the CPU k-means's quality; only float rounding of the distances differs.
class KMeansAccelerator {
 public:
  virtual ~KMeansAccelerator() = default;
  // labels[i] = the nearest of the k centroids (k x d) to row i of x (n x d), ties to the lower index;
  // score[i] = its squared l2 distance, or -<x, c> with inner_product.
  virtual void nearest(const float* x, std::size_t n, std::size_t d, const float* centroids, std::size_t k,
                       bool inner_product, std::int32_t* labels, float* score) = 0;
  // mind[i] = min(mind[i], ||pool_i - centre||^2) for the n rows of pool (k-means++ seeding).
  virtual void lower_min_distances(const float* pool, std::size_t n, std::size_t d, const float* centre,
                                   float* mind) = 0;
  // sums[c * d + j] += x[i * d + j] over the rows i with labels[i] == c (sums arrive zeroed). May sum in
  // any order; return false to leave the update to the CPU.
  virtual bool centroid_sums(const float* x, std::size_t n, std::size_t d, const std::int32_t* labels, std::size_t k,
                             double* sums) {
    return false;
  }
};

struct KMeansOptions {
  int niter = 20;
  std::uint64_t seed = 0;
  KMeansInit init = KMeansInit::KMeansPlusPlus;
  // Train on at most this many points per centroid (a seeded random subsample); 0 = use all points.
  std::size_t max_points_per_centroid = 256;
  // Spherical k-means (ip / cosine): centroids are renormalised to unit length after every update and
  // points are assigned by largest inner product.
  bool spherical = false;
  // Compute KMeansResult::assignment for every input point (one more pass over all n points).
  bool assign_all = true;
  int num_threads = 0;
  // Runs the assignment and seeding distance steps when set (not owned).
  KMeansAccelerator* accelerator = nullptr;
};

struct KMeansResult {
  std::vector<float> centroids;          // k x d
  std::vector<std::int32_t> assignment;  // n: nearest centroid of every input point (empty: !assign_all)
  // Sum over the training sample of the squared distance to the assigned centroid (spherical: sum of
  // 1 - <x, c>), measured at each iteration's assignment step: non-increasing apart from splits.
  std::vector<double> objective;
  std::size_t empty_splits = 0;  // how many empty clusters were re-seeded by splitting a large one
};

// Lloyd's k-means. Throws ValueError when k < 1, k > n, or n == 0.
KMeansResult kmeans(const float* x, std::size_t n, std::size_t d, std::size_t k, const KMeansOptions& options);

}  // namespace annforge::cluster
