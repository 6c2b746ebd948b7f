// Exact k-NN by scanning every stored vector.
//
// Batches go through the packed many-to-many kernel (register-tiled GEMM on blocks of rows) with
// top-k selection per query; single queries stream the rows through the one-to-many kernel. The
// distances of the returned neighbours are recomputed with the direct kernels, so they do not carry
// the cancellation error of the ||q||^2 + ||x||^2 - 2<q,x> expansion.
#pragma once

#include <memory>
#include <shared_mutex>
#include <vector>

#include "annforge/parallel/shared_mutex.h"
#include "annforge/index/vector_index.h"
#include "annforge/storage/aligned_buffer.h"
#include "annforge/storage/id_map.h"

namespace annforge {

class FlatIndex final : public VectorIndex {
 public:
  FlatIndex(std::size_t dim, Metric metric);
  // Loads a FlatIndex; with a mapped reader the vectors stay in the mapping until first modified.
  static std::unique_ptr<FlatIndex> read(const std::shared_ptr<io::FileReader>& reader);

  io::Kind kind() const override { return io::Kind::Flat; }
  std::size_t size() const override;
  void add(const float* x, std::size_t n, const idx_t* ids, int num_threads, idx_t* out_ids) override;
  void search(const float* q, std::size_t nq, std::size_t k, SearchOptions& opt, idx_t* out_ids,
              float* out_dist) const override;
  std::size_t remove(const idx_t* ids, std::size_t n) override;
  bool contains(idx_t id) const override;
  std::vector<idx_t> ids() const override;
  void reconstruct(const idx_t* ids, std::size_t n, float* out) const override;
  std::size_t memory_bytes() const override;

  // Every stored vector with distance < radius, nearest first.
  RangeResult search_range(const float* q, std::size_t nq, float radius, int num_threads,
                           const IdSelector* filter) const;

 private:
  void write(io::FileWriter& w) const override;
  void hold_unchanged(const std::function<void()>& fn) const override;
  struct Candidates;
  void search_locked(const float* q, std::size_t nq, std::size_t k, int num_threads, const IdSelector* filter,
                     idx_t* out_ids, float* out_dist) const;

  mutable parallel::WriterPreferringMutex mutex_;  // searches share it; add/remove take it exclusively
  AlignedBuffer<float> vectors_;     // size() * dim, row-major (normalised for cosine)
  AlignedBuffer<float> sq_norms_;    // ||x||^2 per row (used by the l2 expansion)
  AlignedBuffer<idx_t> slot_ids_;    // external id of each row
  IdMap slot_of_;                    // external id -> row
};

}  // namespace annforge
