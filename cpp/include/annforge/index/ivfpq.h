// IVF-PQ: an inverted file over a k-means coarse quantizer, with product-quantized residuals in each
// list, optional OPQ rotation, and exact re-ranking from a full-precision (f32 / f16 / sq8) copy.
//
//   coarse quantizer  nlist centroids (k-means, cluster/kmeans.h), probed with the packed GEMM kernel.
//                     nlist >= 16384 would want an HNSW graph over the centroids: probe_lists() is the
//                     single place to plug it in once the HNSW family lands (flat is used meanwhile).
//   codec             residual x - c_list (or x itself with residual = false) encoded by a ProductQuantizer; nbits = 8 scans codes with float
//                     tables, nbits = 4 uses the fast-scan layout (codec/pq4_fastscan.h) with 8-bit tables
//                     and 16-bit SIMD accumulation. For l2 the decomposition
//                       ||q - c - r||^2 = ||q - c||^2 + (||c + r||^2 - ||c||^2) - 2 <q, r>
//                     stores the middle term per vector (4 bytes), so the look-up table (-2 <q_j, centre>)
//                     depends on the query only: it is built and quantised once per query, not per list.
//   lists             invlists::InvertedLists (codes, ids, the re-ranking copy, norm terms), scanned by
//                     invlists/probe_scan.h like ScaNN's leaves.
//   re-ranking        refine_factor * k candidates rescored exactly from the stored copy.
#pragma once

#include <cstdint>
#include <limits>
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

class IVFPQIndex final : public ListIndex {
 public:
  // residual = true encodes x - c_list (faiss "IVF..,PQ.." / "..x4fsr"); false encodes x itself, the
  // lists only partitioning the data (faiss "IVF..,PQ..x4fs"): on normalised sentence embeddings the
  // latter ranks better at the same code size. opq = true learns an OPQ rotation (codec/opq.h) in
  // train() unless one is set already.
  IVFPQIndex(std::size_t dim, std::size_t nlist, std::size_t m, std::size_t nbits, Metric metric,
             RefineKind refine, std::uint64_t seed, bool residual = true, bool opq = false);
  static std::unique_ptr<IVFPQIndex> read(const std::shared_ptr<io::FileReader>& reader);

  // Learns the OPQ rotation (opq, when none is set), the coarse centroids, the PQ codebooks (on
  // residuals) and the sq8 ranges. Needs
  // n >= max(nlist, 2^nbits) rows. Training again discards every stored vector. `accelerator` (may be
  // null) runs the coarse k-means's distance steps (the CUDA module's GPU k-means).
  void train(const float* x, std::size_t n, int num_threads, cluster::KMeansAccelerator* accelerator = nullptr);
  // An orthonormal d x d matrix R (row-major) applied as x -> R x before everything else (OPQ). Only
  // before training; with opq, train() learns R unless it was set here.
  void set_rotation(const float* rotation);
  std::vector<float> rotation() const;
  std::vector<float> coarse_centroids() const;
  std::vector<std::size_t> list_sizes() const;
  std::size_t nlist() const noexcept { return nlist_; }
  std::size_t m() const noexcept { return m_; }
  std::size_t nbits() const noexcept { return nbits_; }
  RefineKind refine() const noexcept { return refine_; }
  bool residual() const noexcept { return residual_; }
  // Bytes of PQ code per vector (nbits * m / 8) and of the re-ranking copy.
  std::size_t code_bytes() const noexcept;
  std::size_t refine_bytes() const noexcept;

  // The trained state as plain arrays, the lists concatenated in list order (what a GPU copy uploads).
  struct Layout {
    std::vector<float> rotation, centroids, codebooks, code_norms, sq8_offset, sq8_scale;
    std::vector<std::uint64_t> list_offsets;  // nlist + 1: list l holds entries [offsets[l], offsets[l+1])
    std::vector<std::uint8_t> codes;          // m bytes per entry, one per sub-quantizer (4-bit codes unpacked)
    std::vector<idx_t> ids;
    std::vector<float> norm_terms;            // per entry for l2 with residuals, else empty
    std::vector<std::uint8_t> refine;         // refine_bytes() per entry
  };
  Layout layout() const;  // ValueError when untrained

  io::Kind kind() const override { return io::Kind::IVFPQ; }
  void add(const float* x, std::size_t n, const idx_t* ids, int num_threads, idx_t* out_ids) override;
  // Knobs: nprobe (default min(nlist, 16)), refine_factor (default 4; ignored when refine is none).
  void search(const float* q, std::size_t nq, std::size_t k, SearchOptions& opt, idx_t* out_ids,
              float* out_dist) const override;
  std::size_t memory_bytes() const override;

 private:
  template <class>
  friend class detail::ProbeAdaptor;  // the probe scan calls prepare_query, list_offset, finish_query
  struct QueryScratch;

  // reconstruct(): the re-ranking copy when there is one, else the PQ reconstruction (centroid + decoded
  // residual), rotated back.
  void decode_entry(idx_t location, float* row, std::uint8_t* code) const override;
  void prepare_queries(const float* q, std::size_t nq, std::vector<float>& out) const override {
    transform(q, nq, out);
  }

  // Cosine normalisation, then the OPQ rotation.
  void transform(const float* x, std::size_t n, std::vector<float>& out) const;
  void derive_tables();  // packed coarse centroids and code-word norms (after train / load)
  float norm_term(std::size_t list, const std::uint8_t* code) const;
  // l2 with residual codes keeps a norm term per vector; without residuals the code-word norms go
  // into the look-up table instead.
  bool norm_terms_stored() const noexcept { return metric_ == Metric::L2 && residual_; }
  // The nprobe lists to visit per query, with ||q - c||^2.
  void probe_lists(const float* q, std::size_t nq, std::size_t nprobe, int num_threads, std::int32_t* lists,
                   float* dist) const;
  void write(io::FileWriter& w) const override;
  void encode_refine(const float* row, std::uint8_t* out) const;
  // Dimensions per step of the bounded f32 l2 re-ranking (VectorCodec::distance_within).
  std::size_t refine_chunk() const noexcept;
  void decode_refine(const std::uint8_t* stored, float* out) const;
  void unrotate(float* row) const;
  // One query's float look-up table (m x ksub: each code's share of the distance) into `lut`, and
  // ||q||^2 into `query_term` where list_offset needs it.
  void prepare_query(const float* q, QueryScratch& s, float* lut, float& query_term) const;
  // What the table leaves out of the distance to list `list`'s entries (coarse_dist = ||q - c||^2).
  float list_offset(const float* q, std::size_t list, float coarse_dist, float query_term) const;
  // Re-ranks (or sorts) the query's candidates (labelled by location) and writes its row of k results.
  void finish_query(const float* q, std::size_t k, QueryScratch& s, std::vector<std::pair<float, idx_t>>& found,
                    idx_t* ids, float* dist) const;

  std::size_t nlist_, m_, nbits_;
  RefineKind refine_;
  std::uint64_t seed_;
  bool residual_;
  bool opq_;  // learn the rotation in train() (a loaded index: whether it has one)

  std::vector<float> rotation_;          // d x d, empty = identity
  std::vector<float> centroids_;         // nlist x d (rotated space)
  cluster::PackedCentroids coarse_;      // centroids_, packed for the GEMM kernel
  codec::ProductQuantizer pq_;
  std::vector<float> code_norms_;        // l2 without residuals: ||code word||^2 per (sub-space, code)
  VectorCodec refine_codec_;             // the re-ranking copy's code (refine_)
  // lists_ (ListIndex) holds per list the codes, ids, the re-ranking copy (as payload) and, for l2 with
  // residuals, the norm terms ||c + r||^2 - ||c||^2 of the decoded vectors.
};

}  // namespace annforge
