// Hierarchical navigable small-world graph (HNSW) over a vector store.
//
// Layout (for locality, as hnswlib does): level 0 is one contiguous record per slot,
//   [u32 links[2M]][padding][stored vector],
// so expanding a node touches one record. Each slot's level-0 header word (link count | deleted bit)
// lives in a separate dense array: with M = 16 and 384-d f32 the record is then exactly 1664 bytes,
// 26 cache lines with the vector cache-line aligned and no padding (the header inside the record
// would cost a 64-byte pad per vector), and the headers of 100k nodes (400 KB) stay in cache for the
// deleted checks of a search. Upper levels live apart (per slot: level x [count, M links]).
// Stored vectors are f32, f16 or sq8. With sq8 an f32 copy is kept beside the graph and the final
// candidates are re-ranked with it (faiss "refine"); f16 re-ranks with the f16 vectors themselves
// (exact to the stored precision), so f16 halves the vector bytes and sq8 does not save memory — it
// speeds up traversal by reading 4x fewer bytes.
//
// Concurrency: `update_mutex_` serialises writers (add/remove/save) against each other; `rw_mutex_`
// is held shared by searches and by the parallel insertion phase, and exclusively only for the short
// moments that grow storage or change the id map / deleted bits. During insertion, links are written
// under striped per-node locks (never two held at once) and read lock-free by searches, which only
// ever see valid slot numbers (< capacity). New and reused slots carry the deleted bit until their
// insertion completes, so a search never returns a half-written vector, and remove() completes only
// after in-flight searches left (exclusive lock), so a removed id is never returned afterwards.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <vector>

#include "annforge/codec/rabitq.h"
#include "annforge/index/vector_index.h"
#include "annforge/storage/aligned_buffer.h"
#include "annforge/storage/id_map.h"
#include "annforge/storage/vector_codec.h"

namespace annforge {

// RABITQ / RABITQ_F16: the quantized graph (hnsw_rabitq.cpp). The graph is built and searched on its
// upper levels exactly as with f32 / f16 vectors, and each level-0 record also holds the RaBitQ codes
// (1 bit per rotated dimension, relative to one global centre) of the node's level-0 neighbours:
//   [u32 links[2M]][2M neighbour code records][padding][stored vector].
// Level-0 search scores all neighbours of a node from that one contiguous block, lets only those
// whose error bound says they might beat the current results into the candidate queue, and computes
// exact distances (f32 or f16 vectors: the re-rank precision) only for the candidates it expands.
enum class HnswStorage : std::uint8_t { F32 = 0, F16 = 1, SQ8 = 2, RABITQ = 3, RABITQ_F16 = 4 };
// "f32" | "f16" | "sq8" | "rabitq" | "rabitq-f16" (RaBitQ graph codes, f16 re-rank vectors).
HnswStorage parse_hnsw_storage(const std::string& name);
const char* hnsw_storage_name(HnswStorage s);

class HNSWIndex final : public VectorIndex {
 public:
  // code_rotation: the RaBitQ codes' rotation (quantized storages only). Files written before it was
  // recorded (no RQRT section) used the dense one.
  HNSWIndex(std::size_t dim, Metric metric, std::size_t M = 16, std::size_t ef_construction = 200,
            std::uint64_t seed = 0, HnswStorage storage = HnswStorage::F32,
            codec::RaBitQ::Rotation code_rotation = codec::RaBitQ::Rotation::Hadamard);
  static std::unique_ptr<HNSWIndex> read(const std::shared_ptr<io::FileReader>& reader);

  io::Kind kind() const override { return io::Kind::HNSW; }
  std::size_t size() const override;
  void add(const float* x, std::size_t n, const idx_t* ids, int num_threads, idx_t* out_ids) override;
  void search(const float* q, std::size_t nq, std::size_t k, SearchOptions& opt, idx_t* out_ids,
              float* out_dist) const override;
  std::size_t remove(const idx_t* ids, std::size_t n) override;
  bool contains(idx_t id) const override;
  std::vector<idx_t> ids() const override;
  void reconstruct(const idx_t* ids, std::size_t n, float* out) const override;
  std::size_t memory_bytes() const override;

  std::size_t M() const noexcept { return M_; }
  std::size_t ef_construction() const noexcept { return ef_construction_; }
  std::uint64_t seed() const noexcept { return seed_; }
  HnswStorage storage() const noexcept { return storage_; }
  bool quantized() const noexcept { return rabitq_ != nullptr; }
  // The codes' rotation; only meaningful when quantized().
  codec::RaBitQ::Rotation code_rotation() const noexcept { return code_rotation_; }
  // Quantized graph only: true when every level-0 neighbour code equals the code of the node the link
  // points to (what add/remove/reuse keep up; files are checked the same way on load). For tests.
  bool code_blocks_in_sync() const;
  std::size_t default_ef() const noexcept { return default_ef_.load(); }
  void set_default_ef(std::size_t ef);
  // Slots in use (live + removed awaiting reuse) and the top level, for introspection and tests.
  std::size_t slot_count() const;
  int max_level() const;
  // Ids of live vectors that a level-0 walk from the entry point cannot reach (following every link,
  // removed nodes included, as a search does). Empty for a healthy graph; for tests and diagnostics.
  std::vector<idx_t> unreachable_ids() const;

 private:
  void write(io::FileWriter& w) const override;
  void hold_unchanged(const std::function<void()>& fn) const override;
  using Query = VectorCodec::Query;
  struct Scratch;
  using Slot = std::uint32_t;
  static constexpr std::uint32_t kDeletedBit = 1u << 31;
  static constexpr std::uint32_t kCountMask = 0xffffu;
  static constexpr Slot kNoSlot = 0xffffffffu;
  static constexpr std::size_t kLockStripes = 4096;
  static constexpr std::size_t kPrefetchAhead = 3;  // neighbours whose whole vector is in flight
  // Quantized graph: default of the search knob `bound` (eps0 of codec/rabitq.h). Measured on MiniLM
  // 20k (ip): 1.9 is fastest from recall 0.98 up, 1.0 about 1.4x faster at 0.95.
  static constexpr double kDefaultBound = 1.9;

  // --- record access --------------------------------------------------------------------------
  unsigned char* record(Slot s) { return records_.mutable_data() + static_cast<std::size_t>(s) * record_bytes_; }
  const unsigned char* record(Slot s) const { return records_.data() + static_cast<std::size_t>(s) * record_bytes_; }
  // Level-0 links of `s` (the count is in its header word).
  std::uint32_t* links0(Slot s) { return reinterpret_cast<std::uint32_t*>(record(s)); }
  const std::uint32_t* links0(Slot s) const { return reinterpret_cast<const std::uint32_t*>(record(s)); }
  std::uint32_t* header0(Slot s) { return headers_.mutable_data() + s; }
  const std::uint32_t* header0(Slot s) const { return headers_.data() + s; }
  const unsigned char* vec(Slot s) const { return record(s) + vector_offset_; }
  void prefetch_vector_tail(Slot s) const;  // every cache line of the stored vector but the first
  // Header word (count, and on level 0 the deleted bit) and links of `s` at `level`.
  std::uint32_t* link_header(Slot s, int level);
  const std::uint32_t* link_header(Slot s, int level) const;
  std::uint32_t* link_ids(Slot s, int level);
  const std::uint32_t* link_ids(Slot s, int level) const;
  std::size_t max_links(int level) const { return level == 0 ? 2 * M_ : M_; }
  bool is_deleted(Slot s) const;
  // Marks the slot holding `id` deleted and reusable (the write locks are held); false when absent.
  bool tombstone(idx_t id);

  // --- distances --------------------------------------------------------------------------------
  void prepare_query(const float* q, Query& out) const { codec_.prepare(q, out); }
  float distance(const Query& q, Slot s) const { return codec_.distance(q, vec(s)); }  // stored representation
  float exact_distance(const float* q, Slot s) const;  // against the f32 copy / best available
  void decode(Slot s, float* out) const;
  // The stored vector of `s` as f32: a pointer into the record for f32 storage, else decoded.
  const float* node_as_query(Slot s, std::vector<float>& buffer) const;

  // --- graph ---------------------------------------------------------------------------------------
  using Cand = std::pair<float, Slot>;
  Slot greedy_descent(const Query& q, Slot entry, int top_level, int stop_level) const;
  // The same walk on the quantized graph, by code estimates: one cache line per neighbour (its code)
  // instead of its whole vector.
  Slot greedy_descent_quantized(const codec::RaBitQ::Query& rq, Slot entry, int top_level, Scratch& scratch) const;
  // Neighbour-expansion policies of search_layer (src/index/hnsw_internal.h): OneHop measures every
  // neighbour; TwoHop (level 0, selective filters) measures only allowed ones, reaching past the rest.
  struct OneHop;
  struct TwoHop;
  // Best-first (beam) search at one level. `results` gets up to ef (distance, slot) pairs that pass `accept`.
  template <typename Expansion = OneHop, typename Accept>
  void search_layer(const Query& q, Slot entry, std::size_t ef, int level, Accept&& accept, Scratch& scratch,
                    std::vector<Cand>& results) const;
  // How search() answers under a filter: exact scan of the allowed set or a graph walk (hnsw_filter_plan.cpp).
  struct FilterPlan;
  FilterPlan plan_filter(const IdSelector& filter, std::size_t ef, std::size_t k) const;  // rw_mutex_ held
  void select_heuristic(std::vector<Cand>& candidates, std::size_t m) const;
  void insert(Slot s, const float* row, Scratch& scratch);
  void repair_before_reuse(Slot s, Scratch& scratch);
  void reconnect_unreachable(Scratch& scratch);
  std::size_t reconnect_pass(Slot entry, int top, Scratch& scratch);  // returns the nodes it linked
  void connect(Slot s, int level, const std::vector<Cand>& neighbours, Scratch& scratch);
  int draw_level(std::uint64_t salt) const;
  std::mutex& node_lock(Slot s) const { return node_locks_[s % kLockStripes]; }
  void grow_to(std::size_t slots);
  void search_one(const float* q, std::size_t k, std::size_t ef, const IdSelector* filter,
                  const std::vector<Slot>* allowed, const std::uint64_t* allowed_bits, bool two_hop,
                  const codec::RaBitQ::Query* code_query, float bound, idx_t* out_ids, float* out_dist,
                  Scratch& scratch) const;
  void brute_force(const Query& q, const float* raw, std::size_t k, const std::vector<Slot>& slots,
                   const IdSelector* filter, std::vector<Cand>& out) const;
  void validate_loaded() const;
  void check_query_k(std::size_t k) const;

  // --- quantized graph (hnsw_rabitq.cpp) --------------------------------------------------------------
  unsigned char* self_code(Slot s) { return self_codes_.mutable_data() + static_cast<std::size_t>(s) * rq_bytes_; }
  const unsigned char* self_code(Slot s) const { return self_codes_.data() + static_cast<std::size_t>(s) * rq_bytes_; }
  unsigned char* code_block(Slot s) { return record(s) + links_bytes_; }
  const unsigned char* code_block(Slot s) const { return record(s) + links_bytes_; }
  // First add: the centre the codes are relative to (mean of the batch).
  void set_code_centre(const float* rows, std::size_t n);
  void encode_self_codes(const float* rows, const std::vector<Slot>& slots, std::size_t threads);
  // Rewrites the code block of `s` from its current level-0 links (caller holds node_lock(s)).
  void sync_code_block(Slot s);
  // After slots were reused with new vectors: every block entry that points to one of them.
  void refresh_codes_of(const std::vector<Slot>& reused);
  // Level-0 walk steered by the neighbour codes, results with exact distances (sorted).
  template <typename Accept>
  // `bound`: the half-width multiplier (eps0 of codec/rabitq.h) of the error bound that keys the
  // candidate queue and drops neighbours that cannot beat the results.
  void search_quantized(const codec::RaBitQ::Query& rq, Slot entry, std::size_t ef, float bound, Accept&& accept,
                        Scratch& scratch, std::vector<Cand>& results) const;
  // search_one's level-0 step on the quantized graph, for the acceptances search_one uses (a one-hop walk).
  void search_level0_quantized(const codec::RaBitQ::Query& rq, Slot entry, std::size_t ef, float bound,
                               const IdSelector* filter,
                               const std::uint64_t* allowed_bits, bool tombstones, Scratch& scratch,
                               std::vector<Cand>& results) const;
  // Every query of a search() call rotated and quantized at once (rw_mutex_ held, centre set).
  void prepare_code_queries(const float* q, std::size_t nq, std::vector<codec::RaBitQ::Query>& out) const;
  void write_quantized(io::FileWriter& w) const;
  void read_quantized(const io::FileReader& reader, const std::string& origin);

  // --- parameters ---------------------------------------------------------------------------------
  std::size_t M_, ef_construction_;
  std::uint64_t seed_;
  HnswStorage storage_;
  codec::RaBitQ::Rotation code_rotation_;
  double level_mult_;
  std::atomic<std::size_t> default_ef_{64};
  std::size_t code_bytes_ = 0, links_bytes_ = 0, vector_offset_ = 0, record_bytes_ = 0;
  // Quantized graph: the RaBitQ codec (null otherwise), bytes of one code record, its centre (empty
  // until the first add) and each slot's own code, which the neighbour blocks copy.
  std::unique_ptr<codec::RaBitQ> rabitq_;
  std::size_t rq_bytes_ = 0;
  std::vector<float> rq_centre_;
  AlignedBuffer<unsigned char> self_codes_;
  // The stored vectors' code; sq8 is trained on the first add() (later values outside the ranges clamp).
  VectorCodec codec_;

  // --- data -----------------------------------------------------------------------------------
  AlignedBuffer<unsigned char> records_;       // slot_count_ records of record_bytes_
  AlignedBuffer<std::uint32_t> headers_;       // per slot: level-0 link count | deleted bit
  AlignedBuffer<float> exact_;                 // sq8 only: f32 copy per slot for re-ranking
  std::vector<std::vector<std::uint32_t>> upper_;  // per slot: level x (1 + M) words
  std::vector<std::uint8_t> levels_;
  AlignedBuffer<idx_t> slot_ids_;  // external id per slot (-1 when free)
  IdMap slot_of_;
  std::vector<Slot> free_slots_;
  std::size_t slot_count_ = 0, live_ = 0;
  // Entry point and top level, packed so searches read them consistently: (level << 32) | slot.
  std::atomic<std::uint64_t> entry_{kNoSlot};
  // False only when no slot carries the deleted bit, so searches can skip reading it.
  std::atomic<bool> has_tombstones_{false};
  // Set by add() before its insertion phase: whether removed (not merely pending) slots exist.
  bool skip_removed_in_build_ = false;
  // Insertions since the last reachability repair (reconnect_unreachable), which runs once they reach
  // an eighth of the slots: amortised O(links) per insertion however add() is batched.
  std::size_t inserts_since_repair_ = 0;

  mutable std::mutex update_mutex_;
  mutable std::shared_mutex rw_mutex_;
  std::mutex entry_mutex_;
  mutable std::unique_ptr<std::mutex[]> node_locks_;
};

}  // namespace annforge
