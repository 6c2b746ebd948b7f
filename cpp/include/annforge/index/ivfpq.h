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
//   lists             per list: codes, ids and the re-ranking copy, kept dense; a global id -> (list,
//                     offset) map makes remove/upsert O(1) (the last entry of the list moves into the hole).
//   re-ranking        refine_factor * k candidates rescored exactly from the stored copy.
#pragma once

#include <cstdint>
#include <limits>
#include <memory>
#include <shared_mutex>
#include <string>
#include <vector>

#include "annforge/parallel/shared_mutex.h"
#include "annforge/cluster/kmeans.h"
#include "annforge/codec/pq.h"
#include "annforge/index/vector_index.h"
#include "annforge/storage/aligned_buffer.h"
#include "annforge/storage/id_map.h"
#include "annforge/storage/vector_codec.h"

namespace annforge {

class IVFPQIndex final : public VectorIndex {
 public:
  // residual = true encodes x - c_list (faiss "IVF..,PQ.." / "..x4fsr"); false encodes x itself, the
  // lists only partitioning the data (faiss "IVF..,PQ..x4fs"): on normalised sentence embeddings the
  // latter ranks better at the same code size.
  IVFPQIndex(std::size_t dim, std::size_t nlist, std::size_t m, std::size_t nbits, Metric metric,
             RefineKind refine, std::uint64_t seed, bool residual = true);
  static std::unique_ptr<IVFPQIndex> read(const std::shared_ptr<io::FileReader>& reader);

  // Learns the coarse centroids, the PQ codebooks (on residuals) and the sq8 ranges. Needs
  // n >= max(nlist, 2^nbits) rows. Training again discards every stored vector. `accelerator` (may be
  // null) runs the coarse k-means's distance steps (the CUDA module's GPU k-means).
  void train(const float* x, std::size_t n, int num_threads, cluster::KMeansAccelerator* accelerator = nullptr);
  bool is_trained() const;
  // An orthonormal d x d matrix R (row-major) applied as x -> R x before everything else (OPQ). Only
  // before training; the Python layer learns R (alternating Procrustes).
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
  std::size_t size() const override;
  void add(const float* x, std::size_t n, const idx_t* ids, int num_threads, idx_t* out_ids) override;
  // Knobs: nprobe (default min(nlist, 16)), refine_factor (default 4; ignored when refine is none).
  void search(const float* q, std::size_t nq, std::size_t k, SearchOptions& opt, idx_t* out_ids,
              float* out_dist) const override;
  std::size_t remove(const idx_t* ids, std::size_t n) override;
  bool contains(idx_t id) const override;
  std::vector<idx_t> ids() const override;
  // The re-ranking copy when there is one, else the PQ reconstruction (centroid + decoded residual).
  void reconstruct(const idx_t* ids, std::size_t n, float* out) const override;
  std::size_t memory_bytes() const override;

 private:
  void write(io::FileWriter& w) const override;
  void hold_unchanged(const std::function<void()>& fn) const override;
  struct InvertedList {
    AlignedBuffer<std::uint8_t> codes;   // nbits 8: size * m bytes; nbits 4: fast-scan blocks
    AlignedBuffer<idx_t> ids;            // external id per entry
    AlignedBuffer<std::uint8_t> refine;  // size * refine_bytes()
    AlignedBuffer<float> norm_terms;     // l2 + residual only: ||c + r||^2 - ||c||^2 of the decoded vector
    // l2 only: per block of 32 slots, a lower bound of that block's norm_terms (removals may leave it
    // lower than needed: still a bound). Lets the fast-scan search reject 16-bit sums against the heap
    // threshold before any float work.
    std::vector<float> block_floor;
    std::size_t size() const noexcept { return ids.size(); }
  };
  struct QueryScratch;
  struct QueryState;

  void check_trained() const;
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
  void append(std::size_t list, idx_t id, const std::uint8_t* code, const float* row);
  void erase_at(std::size_t list, std::size_t offset);
  static void lower_floor(InvertedList& L, std::size_t slot, float term);
  void encode_refine(const float* row, std::uint8_t* out) const;
  // Dimensions per step of the bounded f32 l2 re-ranking (VectorCodec::distance_within).
  std::size_t refine_chunk() const noexcept;
  void decode_refine(const std::uint8_t* stored, float* out) const;
  void unrotate(float* row) const;
  // Look-up tables of one query (into `st`, or s.lut for 8-bit codes) and an empty candidate heap.
  void prepare_query(const float* q, std::size_t candidates, QueryScratch& s, QueryState& st) const;
  // 4-bit codes: `summed` may hold the list's 16-bit sums for this query already (list-major search).
  void scan_list(const float* q, std::size_t list, float coarse_dist, QueryScratch& s, QueryState& st,
                 const IdSelector* filter, const std::uint16_t* summed = nullptr) const;
  // Re-ranks (or sorts) the query's candidates and writes its row of k results.
  void finish_query(const float* q, std::size_t k, QueryScratch& s, QueryState& st, idx_t* ids, float* dist) const;

  std::size_t nlist_, m_, nbits_;
  RefineKind refine_;
  std::uint64_t seed_;
  bool residual_;
  bool trained_ = false;

  mutable parallel::WriterPreferringMutex mutex_;
  std::vector<float> rotation_;          // d x d, empty = identity
  std::vector<float> centroids_;         // nlist x d (rotated space)
  cluster::PackedCentroids coarse_;      // centroids_, packed for the GEMM kernel
  codec::ProductQuantizer pq_;
  std::vector<float> code_norms_;        // l2 without residuals: ||code word||^2 per (sub-space, code)
  VectorCodec refine_codec_;             // the re-ranking copy's code (refine_)
  std::vector<InvertedList> lists_;
  IdMap where_;                          // id -> (list << 32) | offset
};

}  // namespace annforge
