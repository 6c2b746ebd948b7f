// ScaNN-style index (Guo et al., ICML 2020, "Accelerating Large-Scale Inference with Anisotropic Vector
// Quantization"): a k-means partition tree with one level of leaves, score-aware (anisotropic) 4-bit
// product-quantized residuals scanned with the fast-scan kernels, and exact reorder of the best candidates.
//
//   leaves      num_leaves k-means centres (spherical k-means for ip / cosine: unit-length centres, points
//               and queries go to the leaves of largest inner product; l2: plain k-means).
//   codes       the residual r = x - c_leaf cut into m = dim / dims_per_block blocks, each replaced by one of
//               16 centres (4 bits), so codes use the fast-scan layout of codec/pq4_fastscan.h.
//   anisotropy  for ip / cosine the codes minimise the score-aware loss
//                 l(x, x~) = h_par ||e_par||^2 + h_perp ||e_perp||^2,   e = x - x~ split along / across x,
//               with eta = h_par / h_perp = (d - 1) t / (1 - t), t = T^2 / ||x||^2 (ScaNN's
//               ComputeParallelCostMultiplier; T = anisotropic_threshold). Encoding is coordinate descent over
//               the blocks starting from the nearest (isotropic) codes; the codebooks get a weighted
//               least-squares update per block (see scann.cpp for why that one is kept). l2 uses plain codes.
//   reorder     the reorder_k best candidates are rescored exactly from an f32 / f16 / sq8 copy.
#pragma once

#include <cstdint>
#include <memory>
#include <shared_mutex>
#include <string>
#include <utility>
#include <vector>

#include "annforge/cluster/kmeans.h"
#include "annforge/codec/pq.h"
#include "annforge/index/list_index.h"
#include "annforge/storage/vector_codec.h"

namespace annforge {

namespace scann {

// eta = h_par / h_perp for a datapoint of squared norm `sq_norm` in `dim` dimensions and threshold T
// (ScaNN's ComputeParallelCostMultiplier). t = T^2 / ||x||^2 is capped just below 1 (a datapoint shorter
// than T would otherwise get a negative orthogonal weight). Returns 1 (isotropic) for dim < 2 or a zero
// vector.
double parallel_cost_multiplier(double threshold, double sq_norm, std::size_t dim);

// Score-aware loss of one residual error e = x - x~ against datapoint x, with h_perp = 1:
//   eta <e, x>^2 / ||x||^2 + (||e||^2 - <e, x>^2 / ||x||^2).
double anisotropic_loss(const float* x, const float* x_quantized, std::size_t dim, double eta);

// Coordinate descent over the blocks: codes[j] is re-chosen, block after block, to minimise
// ||r - r~||^2 + alpha <r - r~, x>^2 with the other blocks fixed, `rounds` sweeps (stops early when a
// sweep changes nothing). codes must hold a starting point (e.g. the nearest centres). alpha = (eta - 1) /
// ||x||^2. `codebooks`: m x 16 x dpb.
struct PreparedBooks {
  std::size_t m = 0, dpb = 0;
  std::vector<float> transposed;  // [m][dpb][16]
  std::vector<float> sq_norms;    // [m][16]
};
PreparedBooks prepare_books(const float* codebooks, std::size_t m, std::size_t dpb);
void encode_anisotropic(const PreparedBooks& books, const float* residual, const float* x, double alpha, int rounds,
                        std::uint8_t* codes);
void encode_anisotropic(const float* codebooks, std::size_t m, std::size_t dpb, const float* residual,
                        const float* x, double alpha, int rounds, std::uint8_t* codes);

}  // namespace scann

class ScaNNIndex final : public ListIndex {
 public:
  static constexpr std::size_t kCentres = 16;

  // num_leaves = 0: round(sqrt(n)) chosen at train(). threshold NaN (or metric l2): isotropic codes.
  ScaNNIndex(std::size_t dim, std::size_t num_leaves, std::size_t dims_per_block, double threshold, Metric metric,
             RefineKind refine, std::uint64_t seed);
  static std::unique_ptr<ScaNNIndex> read(const std::shared_ptr<io::FileReader>& reader);

  // Training options (not stored in files). sample_size 0 = min(n, 8192); codebook_iterations 0 keeps the
  // plain k-means codebooks (ablation); encode_rounds is the coordinate-descent sweeps per encoding.
  void set_training_options(std::size_t sample_size, int codebook_iterations, int encode_rounds);

  // `accelerator` (may be null) runs the leaf k-means's distance steps (the CUDA module's GPU k-means).
  void train(const float* x, std::size_t n, int num_threads, cluster::KMeansAccelerator* accelerator = nullptr);
  std::size_t num_leaves() const;
  std::size_t dims_per_block() const noexcept { return dpb_; }
  std::size_t num_blocks() const noexcept { return m_; }
  double threshold() const noexcept { return threshold_; }
  bool anisotropic() const noexcept;
  RefineKind refine() const noexcept { return refine_; }
  std::size_t refine_bytes() const noexcept;
  std::size_t code_bytes() const noexcept { return (m_ + 1) / 2; }
  std::vector<float> leaf_centres() const;
  std::vector<float> codebooks() const;  // m x 16 x dpb
  std::vector<std::size_t> leaf_sizes() const;

  io::Kind kind() const override { return io::Kind::ScaNN; }
  void add(const float* x, std::size_t n, const idx_t* ids, int num_threads, idx_t* out_ids) override;
  // Knobs: leaves_to_search (default min(num_leaves, max(8, ceil(num_leaves / 10)))), reorder_k (default max(100, 4 k);
  // ignored when reorder is none).
  void search(const float* q, std::size_t nq, std::size_t k, SearchOptions& opt, idx_t* out_ids,
              float* out_dist) const override;
  std::size_t memory_bytes() const override;

 private:
  template <class>
  friend class detail::ProbeAdaptor;  // the probe scan calls prepare_query, list_offset, finish_query
  struct QueryScratch;

  // reconstruct(): the reorder copy when there is one, else leaf centre + decoded residual.
  void decode_entry(idx_t location, float* row, std::uint8_t* code) const override;
  void prepare_queries(const float* q, std::size_t nq, std::vector<float>& out) const override {
    prepare_rows(q, nq, out);
  }

  bool use_inner_product() const noexcept { return metric_ != Metric::L2; }
  bool anisotropic_for_metric() const noexcept;
  // Encodes rows (already prepared) against their leaves; codes n x m.
  void encode(const float* rows, std::size_t n, const std::int32_t* leaves, const float* centres,
              const codec::ProductQuantizer& pq, int num_threads, std::uint8_t* codes) const;
  float norm_term(std::size_t leaf, const std::uint8_t* code) const;
  void write(io::FileWriter& w) const override;
  void encode_refine(const float* row, std::uint8_t* out) const;
  void decode_refine(const std::uint8_t* stored, float* out) const;
  // One query's float look-up table (m x 16: each code's share of the distance) into `lut`.
  void prepare_query(const float* q, QueryScratch& s, float* lut, float& query_term) const;
  // What the table leaves out of the distance to leaf `leaf`'s entries (probe_score: the coarse score).
  float list_offset(const float* q, std::size_t leaf, float probe_score, float query_term) const;
  // Re-ranks (or sorts) the query's candidates (labelled by location) and writes its row of k results.
  void finish_query(const float* q, std::size_t k, QueryScratch& s, std::vector<std::pair<float, idx_t>>& found,
                    idx_t* ids, float* dist) const;

  std::size_t num_leaves_, dpb_, m_;
  double threshold_;
  RefineKind refine_;
  std::uint64_t seed_;
  std::size_t sample_size_ = 0;
  int codebook_iterations_ = 4, encode_rounds_ = 4;

  std::vector<float> centres_;        // num_leaves x d
  cluster::PackedCentroids packed_;   // centres_, packed for the GEMM kernel
  codec::ProductQuantizer pq_;        // m blocks x 16 centres x dpb (nbits 4)
  VectorCodec refine_codec_;          // the reorder copy's code (refine_)
  // lists_ (ListIndex) holds per leaf the codes, ids, the reorder copy (as payload) and, for l2, the norm
  // terms ||c + r~||^2 - ||c||^2.
};

}  // namespace annforge
