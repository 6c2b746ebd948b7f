// IVF-RaBitQ: an inverted file whose lists hold RaBitQ codes (codec/rabitq.h) of each vector's residual
// from its list centroid, scanned with the 4-bit fast-scan kernels, then re-ranked (faiss's
// IndexIVFRaBitQFastScan, with annforge's shared list store).
//
//   coarse quantizer  nlist k-means centroids (ListIndex::train_partition), probed by l2.
//   codes             the codec's record per vector (bits planes + factors) as payload; its 1-bit sign code
//                     also as padded_dim / 4 fast-scan nibbles in the lists' block layout (4 rotated
//                     dimensions per nibble), and the 1-bit factors in a compact per-list array.
//   scan              per probed list: q' = R q - R c (R c kept per list), the table of 16 partial sums of
//                     q' per group of 4 dimensions (RaBitQ::fastscan_lut), quantised to 8 bits and summed
//                     by the fast-scan kernel; each 16-bit sum is turned into the 1-bit distance estimate
//                     with the vector's factors (RaBitQ::estimate_sign). The estimator scales the sum by a
//                     per-vector factor, so the distance is not the additive "offset + sum" that the
//                     shared probe scheduler (invlists/probe_scan.h) and its 16-bit pre-filter assume:
//                     this index drives the same kernels (scan, LUT quantisation) and the same list store
//                     with its own per-query loop.
//   re-ranking        refine_factor * k candidates of the fast scan; with bits > 1 they are re-estimated
//                     from the full multi-bit code with its error bound, and with a refine copy those whose
//                     lower bound is below the k-th smallest upper bound get exact distances (all of them
//                     when bits == 1).
#pragma once

#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "annforge/cluster/kmeans.h"
#include "annforge/codec/rabitq.h"
#include "annforge/index/list_index.h"
#include "annforge/storage/vector_codec.h"

namespace annforge {

class IVFRaBitQIndex final : public ListIndex {
 public:
  // bits in 1..8 (1: sign codes only), refine: the exact re-ranking copy (or none).
  IVFRaBitQIndex(std::size_t dim, std::size_t nlist, unsigned bits, Metric metric, RefineKind refine,
                 std::uint64_t seed);
  static std::unique_ptr<IVFRaBitQIndex> read(const std::shared_ptr<io::FileReader>& reader);

  // Learns the coarse centroids (and the sq8 ranges). Needs n >= nlist rows. Training again discards
  // every stored vector.
  void train(const float* x, std::size_t n, int num_threads);
  std::size_t nlist() const noexcept { return nlist_; }
  unsigned bits() const noexcept { return codec_.bits(); }
  RefineKind refine() const noexcept { return refine_; }
  std::vector<std::size_t> list_sizes() const;
  std::vector<float> coarse_centroids() const;
  // Bytes per vector: fast-scan nibbles, the codec record, the compact factors and the refine copy.
  std::size_t code_bytes() const noexcept;
  std::size_t refine_bytes() const noexcept { return refine_codec_.code_bytes(); }

  io::Kind kind() const override { return io::Kind::IVFRaBitQ; }
  void add(const float* x, std::size_t n, const idx_t* ids, int num_threads, idx_t* out_ids) override;
  std::size_t remove(const idx_t* ids, std::size_t n) override;
  // Knobs: nprobe (default min(nlist, 16)), refine_factor (fast-scan candidates per result, default 10).
  void search(const float* q, std::size_t nq, std::size_t k, SearchOptions& opt, idx_t* out_ids,
              float* out_dist) const override;
  std::size_t memory_bytes() const override;

  // Test hook: the fast-scan estimates with their bounds (+- eps0 sigma, widened by the table's rounding) of every stored vector in `list` for one query
  // (in list order), next to their ids.
  void list_estimates(const float* q, std::size_t list, std::vector<idx_t>& ids, std::vector<float>& est,
                      std::vector<float>& lower, std::vector<float>& upper, double eps0) const;

 private:
  struct Scratch;
  void decode_entry(idx_t location, float* row, std::uint8_t* code) const override;
  void prepare_queries(const float* q, std::size_t nq, std::vector<float>& out) const override {
    prepare_rows(q, nq, out);
  }
  void write(io::FileWriter& w) const override;
  void derive_tables();  // packed and rotated centroids (after train / load)
  // Appends one prepared row's record (already encoded) to `list` (the caller holds the write lock).
  void append_entry(std::size_t list, idx_t id, const std::uint8_t* record, const float* row);
  // Scans one list for one query into s.heap (the fast-scan stage).
  void scan_list(const float* q, std::size_t list, Scratch& s, const IdSelector* filter) const;
  void finish(const float* q, std::size_t k, Scratch& s, idx_t* ids, float* dist) const;
  const std::uint8_t* record_at(idx_t loc) const { return lists_.payload_at(loc); }
  std::size_t record_bytes() const noexcept { return codec_.record_bytes(); }
  // Per entry: the record, then the refine copy, padded to 8 bytes (records stay 8-byte aligned).
  std::size_t payload_bytes() const noexcept { return record_bytes() + (refine_bytes() + 7) / 8 * 8; }
  // Removes `id` from the lists and its compact factors (the write lock is held); false if absent.
  bool erase_entry(idx_t id);

  std::size_t nlist_;
  RefineKind refine_;
  std::uint64_t seed_;
  codec::RaBitQ codec_;               // metric l2 or ip (cosine rows are normalised first)
  std::vector<float> centroids_;      // nlist x dim
  std::vector<float> rotated_;        // nlist x padded_dim: R c per list
  cluster::PackedCentroids coarse_;
  VectorCodec refine_codec_;
  // Per list, kFactors floats per entry (the 1-bit factors, in list order: entries move with the
  // lists' own "last entry fills the hole" removal).
  static constexpr std::size_t kFactors = 4;
  std::vector<std::vector<float>> factors_;
  // lists_ (ListIndex): codes = the sign nibbles (m = padded_dim / 4, 4 bits), payload = the codec record
  // followed by the refine copy.
};

}  // namespace annforge
