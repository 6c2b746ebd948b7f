#include "annforge/index/ivfpq.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <mutex>

#include "annforge/codec/opq.h"
#include "annforge/index/list_sections.h"
#include "annforge/parallel/executor.h"
#include "annforge/simd/kernels.h"
#include "annforge/storage/prefetch.h"
#include "annforge/util/topk.h"

namespace annforge {

namespace {

constexpr std::uint32_t kTagMeta = io::make_tag("META");
constexpr std::uint32_t kTagCentroids = io::make_tag("CENT");
constexpr std::uint32_t kTagCodebooks = io::make_tag("PQCB");
constexpr std::uint32_t kTagRotation = io::make_tag("ROTM");

using invlists::location_list;

}  // namespace

IVFPQIndex::IVFPQIndex(std::size_t dim, std::size_t nlist, std::size_t m, std::size_t nbits, Metric metric,
                       RefineKind refine, std::uint64_t seed, bool residual, bool opq)
    : ListIndex(dim, metric), nlist_(nlist), m_(m), nbits_(nbits), refine_(refine), seed_(seed),
      residual_(residual), opq_(opq), pq_(dim, m, nbits), refine_codec_(refine, dim, metric) {
  ANNFORGE_CHECK(nlist >= 1 && nlist <= (std::size_t(1) << 24), ErrorKind::Value,
                 "nlist must be in [1, 16777216], got ", nlist);
}

std::size_t IVFPQIndex::code_bytes() const noexcept { return (nbits_ * m_ + 7) / 8; }

std::size_t IVFPQIndex::refine_bytes() const noexcept { return refine_codec_.code_bytes(); }

namespace {
// Whether the d x d row-major matrix has orthonormal rows, R R^T = I within 1e-3 per entry (a rotation
// must not change distances). Finite entries are checked first, so no product can overflow.
bool is_orthonormal(const float* r, std::size_t d) {
  for (std::size_t i = 0; i < d * d; ++i)
    if (!std::isfinite(r[i])) return false;
  const auto& K = simd::kernels();  // d^2 / 2 dot products: SIMD keeps a 1024-d check well under a second
  for (std::size_t i = 0; i < d; ++i)
    for (std::size_t j = i; j < d; ++j) {
      const float s = K.dot(r + i * d, r + j * d, d);
      if (!(std::fabs(s - (i == j ? 1.0f : 0.0f)) < 1e-3f)) return false;
    }
  return true;
}
}  // namespace

void IVFPQIndex::set_rotation(const float* rotation) {
  std::unique_lock<parallel::WriterPreferringMutex> lock(mutex_);
  ANNFORGE_CHECK(!trained_, ErrorKind::State, "the rotation must be set before train()");
  const std::size_t d = dim_;
  for (std::size_t i = 0; i < d * d; ++i)
    ANNFORGE_CHECK(std::isfinite(rotation[i]), ErrorKind::Value, "rotation contains NaN or infinity");
  ANNFORGE_CHECK(is_orthonormal(rotation, d), ErrorKind::Value, "rotation must be an orthonormal matrix");
  rotation_.assign(rotation, rotation + d * d);
}

std::vector<float> IVFPQIndex::rotation() const {
  std::shared_lock<parallel::WriterPreferringMutex> lock(mutex_);
  return rotation_;
}

std::vector<float> IVFPQIndex::coarse_centroids() const {
  std::shared_lock<parallel::WriterPreferringMutex> lock(mutex_);
  return centroids_;
}

std::vector<std::size_t> IVFPQIndex::list_sizes() const {
  std::shared_lock<parallel::WriterPreferringMutex> lock(mutex_);
  return lists_.list_sizes();
}

void IVFPQIndex::transform(const float* x, std::size_t n, std::vector<float>& out) const {
  prepare_rows(x, n, out);
  if (rotation_.empty()) return;
  const auto& K = simd::kernels();
  std::vector<float> row(dim_);
  for (std::size_t i = 0; i < n; ++i) {
    float* r = out.data() + i * dim_;
    K.dot_rows(r, rotation_.data(), dim_, dim_, row.data());  // (R x)_i = <R_i, x>
    std::copy(row.begin(), row.end(), r);
  }
}

void IVFPQIndex::unrotate(float* row) const {
  if (rotation_.empty()) return;
  std::vector<float> out(dim_, 0.0f);
  for (std::size_t i = 0; i < dim_; ++i)  // x = R^T y
    for (std::size_t j = 0; j < dim_; ++j) out[j] += rotation_[i * dim_ + j] * row[i];
  std::copy(out.begin(), out.end(), row);
}

void IVFPQIndex::derive_tables() {
  coarse_ = cluster::PackedCentroids(centroids_.data(), nlist_, dim_);
  // l2 without residuals: ||code word||^2 goes into every query's look-up table (scan_list), and it
  // depends on the codebooks only.
  code_norms_.clear();
  if (metric_ == Metric::L2 && !residual_) {
    const auto& K = simd::kernels();
    const std::size_t entries = m_ * pq_.ksub(), dsub = pq_.dsub();
    const float* words = pq_.codebooks().data();
    code_norms_.resize(entries);
    for (std::size_t i = 0; i < entries; ++i) code_norms_[i] = K.dot(words + i * dsub, words + i * dsub, dsub);
  }
}

float IVFPQIndex::norm_term(std::size_t list, const std::uint8_t* code) const {
  std::vector<float> r(dim_);
  pq_.decode(code, r.data());
  const auto& K = simd::kernels();
  if (!residual_) return K.dot(r.data(), r.data(), dim_);  // ||r||^2
  return K.dot(r.data(), r.data(), dim_) + 2.0f * K.dot(centroids_.data() + list * dim_, r.data(), dim_);
}

// ---------------------------------------------------------------------------------------------------
// Training

void IVFPQIndex::train(const float* x, std::size_t n, int num_threads, cluster::KMeansAccelerator* accelerator) {
  (void)parallel::resolve_threads(num_threads);
  check_storable(x, n, "training vectors");
  ANNFORGE_CHECK(n >= nlist_, ErrorKind::Value, "training needs at least nlist = ", nlist_, " vectors, got ", n);
  ANNFORGE_CHECK(n >= pq_.ksub(), ErrorKind::Value, "training needs at least 2^nbits = ", pq_.ksub(),
                 " vectors, got ", n);
  std::vector<float> rotation;
  {
    std::shared_lock<parallel::WriterPreferringMutex> lock(mutex_);
    rotation = rotation_;
  }
  if (opq_ && rotation.empty()) {
    // OPQ sees the rows as the index does before its rotation: normalised for cosine.
    std::vector<float> prepared;
    const float* rows = x;
    if (metric_ == Metric::Cosine) {
      prepare_rows(x, n, prepared);
      rows = prepared.data();
    }
    codec::OPQOptions options;
    options.seed = seed_;
    options.num_threads = num_threads;
    rotation = codec::train_opq_rotation(rows, n, dim_, m_, nbits_, options);
    std::unique_lock<parallel::WriterPreferringMutex> lock(mutex_);
    ANNFORGE_CHECK(!trained_ && rotation_.empty(), ErrorKind::State, "the index was trained concurrently");
    rotation_ = rotation;
  }
  // Rows as training sees them: a transformed copy only when there is something to transform (a
  // 100k x 384 copy costs as much as a few k-means iterations in page faults alone).
  std::vector<float> transformed;
  const float* xt = x;
  if (metric_ == Metric::Cosine || !rotation.empty()) {
    transform(x, n, transformed);
    xt = transformed.data();
  }
  const std::size_t d = dim_;

  auto coarse = train_partition(xt, n, d, nlist_, seed_, false, num_threads, accelerator);
  cluster::PackedCentroids packed(coarse.centroids.data(), nlist_, d);

  // PQ codebooks on the residuals of an evenly spaced sample (at most 256 rows per PQ centre).
  const std::size_t ns = std::min(n, pq_.ksub() * 256);
  std::vector<float> residuals(ns * d);
  for (std::size_t i = 0; i < ns; ++i) {
    const std::size_t row = i * n / ns;
    std::copy(xt + row * d, xt + (row + 1) * d, residuals.data() + i * d);
  }
  if (residual_) {
    std::vector<std::int32_t> labels(ns);
    std::vector<float> scores(ns);
    packed.nearest(residuals.data(), ns, d, 1, false, num_threads, labels.data(), scores.data());
    for (std::size_t i = 0; i < ns; ++i) {
      const float* c = coarse.centroids.data() + static_cast<std::size_t>(labels[i]) * d;
      for (std::size_t j = 0; j < d; ++j) residuals[i * d + j] -= c[j];
    }
  }
  codec::ProductQuantizer pq(d, m_, nbits_);
  pq.train(residuals.data(), ns, seed_ + 17, num_threads);

  VectorCodec refine_codec(refine_, d, metric_);
  refine_codec.train(xt, n);  // sq8 ranges; nothing for the other codes

  std::unique_lock<parallel::WriterPreferringMutex> lock(mutex_);
  centroids_ = std::move(coarse.centroids);
  pq_ = std::move(pq);
  refine_codec_ = std::move(refine_codec);
  lists_ = invlists::InvertedLists(nlist_, m_, nbits_, refine_bytes(), norm_terms_stored());
  trained_ = true;
  derive_tables();
}

// ---------------------------------------------------------------------------------------------------
// Updates

void IVFPQIndex::encode_refine(const float* row, std::uint8_t* out) const { refine_codec_.encode(row, out); }

void IVFPQIndex::decode_refine(const std::uint8_t* stored, float* out) const { refine_codec_.decode(stored, out); }

void IVFPQIndex::add(const float* x, std::size_t n, const idx_t* ids, int num_threads, idx_t* out_ids) {
  (void)parallel::resolve_threads(num_threads);
  {
    std::shared_lock<parallel::WriterPreferringMutex> lock(mutex_);
    check_trained();
  }
  check_storable(x, n, "vectors");
  if (ids) validate_new_ids(ids, n);
  std::vector<float> rows;
  transform(x, n, rows);
  const std::size_t d = dim_;

  std::unique_lock<parallel::WriterPreferringMutex> lock(mutex_);
  check_trained();  // (train() may not run concurrently with the encoding below)
  std::vector<std::int32_t> lists(n);
  std::vector<float> scores(n);
  coarse_.nearest(rows.data(), n, d, 1, false, num_threads, lists.data(), scores.data());
  std::vector<float> residuals;
  if (residual_) {
    residuals.resize(n * d);
    parallel::parallel_for((n + 255) / 256, num_threads, [&](std::size_t t, std::size_t) {
      for (std::size_t i = t * 256; i < std::min(n, t * 256 + 256); ++i) {
        const float* c = centroids_.data() + static_cast<std::size_t>(lists[i]) * d;
        for (std::size_t j = 0; j < d; ++j) residuals[i * d + j] = rows[i * d + j] - c[j];
      }
    });
  }
  std::vector<std::uint8_t> codes(n * m_);
  pq_.encode(residual_ ? residuals.data() : rows.data(), n, codes.data(), num_threads);

  assign_ids(ids, n, out_ids);
  for (std::size_t i = 0; i < n; ++i) {
    lists_.remove(out_ids[i]);  // upsert
    const auto list = static_cast<std::size_t>(lists[i]);
    const std::uint8_t* code = codes.data() + i * m_;
    std::uint8_t* stored = lists_.append(list, out_ids[i], code, norm_terms_stored() ? norm_term(list, code) : 0.0f);
    if (stored) encode_refine(rows.data() + i * d, stored);
  }
}

void IVFPQIndex::decode_entry(idx_t loc, float* row, std::uint8_t* code) const {
  if (refine_ != RefineKind::None) {
    decode_refine(lists_.payload_at(loc), row);
  } else {
    lists_.code_at(loc, code);
    pq_.decode(code, row);
    if (residual_) {
      const float* c = centroids_.data() + location_list(loc) * dim_;
      for (std::size_t j = 0; j < dim_; ++j) row[j] += c[j];
    }
  }
  unrotate(row);
}

std::size_t IVFPQIndex::memory_bytes() const {
  std::shared_lock<parallel::WriterPreferringMutex> lock(mutex_);
  std::size_t bytes =
      lists_.memory_bytes() +
      (centroids_.size() + rotation_.size() + pq_.codebooks().size() + code_norms_.size()) * sizeof(float);
  bytes += centroids_.size() * sizeof(float);  // packed copy for the GEMM kernel
  return bytes;
}

// ---------------------------------------------------------------------------------------------------
// Search

void IVFPQIndex::probe_lists(const float* q, std::size_t nq, std::size_t nprobe, int num_threads,
                             std::int32_t* lists, float* dist) const {
  // Hook for an HNSW coarse quantizer (nlist >= 16384); flat GEMM scan of the centroids for now.
  // Lists are ranked by l2 for every metric: vectors were assigned to their l2-nearest centroid.
  coarse_.nearest(q, nq, dim_, nprobe, false, num_threads, lists, dist);
}

std::size_t IVFPQIndex::refine_chunk() const noexcept {
  return std::min(dim_, (dim_ / 4 + 15) / 16 * 16);  // about a quarter of a row, whole cache lines
}

// Per-worker buffers reused across the queries of one search call.
struct IVFPQIndex::QueryScratch {
  std::vector<float> ip_table;             // m x ksub: <q_j, c_jc>
  VectorCodec::Query refine_query;         // the query folded for the re-ranking code
};

void IVFPQIndex::search(const float* q, std::size_t nq, std::size_t k, SearchOptions& opt, idx_t* out_ids,
                        float* out_dist) const {
  check_k(k);
  const auto nprobe_knob = opt.knobs.take_int("nprobe", static_cast<long long>(std::min<std::size_t>(nlist_, 16)), 1);
  const auto refine_factor = opt.knobs.take_int("refine_factor", 4, 1);
  opt.knobs.reject_unknown("IVFPQIndex", "nprobe, refine_factor");
  std::vector<float> Q;
  std::size_t threads;
  const ReadLock lock = begin_search(q, nq, opt, Q, threads);
  if (nq == 0) return;
  const std::size_t nprobe = std::min<std::size_t>(nlist_, static_cast<std::size_t>(nprobe_knob));
  const bool rerank = refine_ != RefineKind::None;
  const std::size_t candidates =
      rerank ? std::min<std::size_t>(k * static_cast<std::size_t>(refine_factor), std::size_t(1) << 24) : k;
  std::vector<std::int32_t> probe(nq * nprobe);
  std::vector<float> probe_dist(nq * nprobe);
  probe_lists(Q.data(), nq, nprobe, static_cast<int>(threads), probe.data(), probe_dist.data());
  scan_probes(*this, {Q.data(), probe.data(), probe_dist.data(), nq, nprobe}, k, candidates, threads, opt.filter,
              out_ids, out_dist);
}

void IVFPQIndex::prepare_query(const float* qv, QueryScratch& s, float* lut, float& query_term) const {
  const std::size_t entries = m_ * pq_.ksub(), d = dim_;
  if (s.ip_table.size() != entries) s.ip_table.resize(entries);
  if (!residual_ && metric_ == Metric::L2) query_term = simd::kernels().dot(qv, qv, d);  // ||q||^2
  pq_.inner_product_table(qv, s.ip_table.data());
  const float factor = metric_ == Metric::L2 ? -2.0f : -1.0f;
  if (code_norms_.empty()) {
    for (std::size_t i = 0; i < entries; ++i) lut[i] = factor * s.ip_table[i];
  } else {
    for (std::size_t i = 0; i < entries; ++i) lut[i] = factor * s.ip_table[i] + code_norms_[i];
  }
}

float IVFPQIndex::list_offset(const float* qv, std::size_t list, float coarse_dist, float query_term) const {
  // l2: ||q - c||^2 + norm_term - 2 <q, r>;  ip: 1 - <q, c> - <q, r>.  The table holds the last term.
  // Without residuals c is 0: l2 ||q||^2 + (||r||^2 - 2 <q, r>), ip 1 - <q, r>; ||r||^2 is a sum over
  // sub-spaces, so the table holds all of the bracket and there is no per-vector term to add.
  const bool l2 = metric_ == Metric::L2;
  if (!residual_) return l2 ? query_term : 1.0f;
  return l2 ? coarse_dist : 1.0f - simd::kernels().dot(qv, centroids_.data() + list * dim_, dim_);
}

void IVFPQIndex::finish_query(const float* qv, std::size_t k, QueryScratch& s, std::vector<std::pair<float, idx_t>>& found,
                              idx_t* ids, float* dist) const {
  if (refine_ == RefineKind::None) {
    write_row_by_id(found, [&](idx_t loc) { return lists_.id_at(loc); }, k, ids, dist);
    return;
  }
  refine_codec_.prepare(qv, s.refine_query);
  const std::size_t rb = refine_bytes(), chunk = refine_chunk();
  TopK best(k);
  // The stored vectors are scattered: fetch a few candidates ahead. f32 l2 rows are read a chunk at
  // a time and most candidates stop after the first one (see distance_within): fetch that much.
  constexpr std::size_t kAhead = 2;
  const bool chunked = refine_ == RefineKind::F32 && metric_ == Metric::L2;
  const std::size_t ahead_bytes = chunked ? chunk * sizeof(float) : rb;
  auto stored = [&](const std::pair<float, idx_t>& e) { return lists_.payload_at(e.second); };
  for (std::size_t i = 0; i < std::min(kAhead, found.size()); ++i) prefetch_range(stored(found[i]), ahead_bytes);
  for (std::size_t i = 0; i < found.size(); ++i) {
    if (i + kAhead < found.size()) prefetch_range(stored(found[i + kAhead]), ahead_bytes);
    const auto& e = found[i];
    // A candidate whose distance exceeds the k-th best cannot enter `best` (ties may: strict bound).
    const float dv = refine_codec_.distance_within(s.refine_query, stored(e), best.threshold(), chunk);
    best.push(dv, lists_.id_at(e.second));
  }
  write_row(best.sorted(), k, ids, dist);
}

IVFPQIndex::Layout IVFPQIndex::layout() const {
  std::shared_lock<parallel::WriterPreferringMutex> lock(mutex_);
  check_trained();
  Layout out;
  out.rotation = rotation_;
  out.centroids = centroids_;
  out.codebooks = pq_.codebooks();
  out.code_norms = code_norms_;
  out.sq8_offset = refine_codec_.sq8_offset();
  out.sq8_scale = refine_codec_.sq8_scale();
  out.list_offsets.resize(nlist_ + 1, 0);
  for (std::size_t l = 0; l < nlist_; ++l) out.list_offsets[l + 1] = out.list_offsets[l] + lists_.list_size(l);
  const std::size_t total = out.list_offsets[nlist_], rb = refine_bytes();
  out.codes.resize(total * m_);
  out.ids.resize(total);
  if (norm_terms_stored()) out.norm_terms.resize(total);
  out.refine.resize(total * rb);
  for (std::size_t l = 0; l < nlist_; ++l) {
    const invlists::ListView L = lists_.list(l);
    const std::size_t base = out.list_offsets[l];
    for (std::size_t i = 0; i < L.size; ++i) {
      lists_.code_at(l, i, out.codes.data() + (base + i) * m_);
      out.ids[base + i] = L.ids[i];
      if (L.norm_terms) out.norm_terms[base + i] = L.norm_terms[i];
    }
    if (rb) std::memcpy(out.refine.data() + base * rb, lists_.stored_payload(l), L.size * rb);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------
// Serialization

void IVFPQIndex::write(io::FileWriter& w) const {  // the caller holds the lock (hold_unchanged)
  // A file is an index ready to search: loading refuses untrained ones, so none is written.
  ANNFORGE_CHECK(trained_, ErrorKind::State, "index is not trained: call train(x) before saving it");
  io::ByteWriter meta;
  write_common(meta);
  meta.put(static_cast<std::uint64_t>(nlist_))
      .put(static_cast<std::uint64_t>(m_))
      .put(static_cast<std::uint64_t>(nbits_))
      .put(static_cast<std::uint8_t>(refine_))
      .put(seed_)
      .put(static_cast<std::uint8_t>(trained_ ? 1 : 0))
      .put(static_cast<std::uint8_t>(rotation_.empty() ? 0 : 1))
      .put(static_cast<std::uint8_t>(residual_ ? 1 : 0));
  w.add_owned(kTagMeta, meta.take());
  if (!rotation_.empty()) w.add(kTagRotation, rotation_.data(), rotation_.size() * sizeof(float));
  if (!trained_) return;
  w.add(kTagCentroids, centroids_.data(), centroids_.size() * sizeof(float));
  w.add(kTagCodebooks, pq_.codebooks().data(), pq_.codebooks().size() * sizeof(float));
  write_refine_params(w, refine_codec_);
  write_list_sections(w, lists_);
}

std::unique_ptr<IVFPQIndex> IVFPQIndex::read(const std::shared_ptr<io::FileReader>& reader) {
  reader->expect_kind(io::Kind::IVFPQ);
  const std::string& origin = reader->origin();
  auto corrupt = [&](const char* why) { fail(ErrorKind::IO, origin, ": corrupted IVFPQIndex: ", why); };
  const io::Bytes meta_bytes = reader->section(kTagMeta);
  io::ByteReader meta(meta_bytes, "IVFPQIndex metadata");
  const auto dim = meta.read<std::uint64_t>();
  const auto metric = meta.read<std::uint8_t>();
  (void)meta.read<idx_t>();
  const auto nlist = meta.read<std::uint64_t>(), m = meta.read<std::uint64_t>(), nbits = meta.read<std::uint64_t>();
  const auto refine = meta.read<std::uint8_t>();
  const auto seed = meta.read<std::uint64_t>();
  const auto trained = meta.read<std::uint8_t>(), has_rotation = meta.read<std::uint8_t>();
  // Files written before the flag existed encode residuals.
  const std::uint8_t residual = meta.remaining() > 0 ? meta.read<std::uint8_t>() : std::uint8_t(1);
  meta.expect_end();
  if (dim < 1 || dim > (1u << 20) || metric > 2) corrupt("dimension or metric out of range");
  if (nlist < 1 || nlist > (std::uint64_t(1) << 24)) corrupt("nlist out of range");
  if (m < 1 || m > dim || dim % m != 0 || (nbits != 4 && nbits != 8)) corrupt("invalid product quantizer shape");
  if (refine > 3 || trained > 1 || has_rotation > 1 || residual > 1) corrupt("invalid flags");
  if (!trained) corrupt("the index is not trained (only trained indexes are saved)");

  auto index = std::make_unique<IVFPQIndex>(dim, nlist, m, nbits, static_cast<Metric>(metric),
                                            static_cast<RefineKind>(refine), seed, residual == 1, has_rotation == 1);
  io::ByteReader common(meta_bytes, "IVFPQIndex metadata");
  index->read_common(common);
  const std::size_t d = dim;
  auto floats = [&](std::uint32_t tag, std::size_t count, std::vector<float>& out) {
    out = read_float_section(*reader, "IVFPQIndex", tag, count);
  };
  if (has_rotation) {
    floats(kTagRotation, d * d, index->rotation_);
    if (!is_orthonormal(index->rotation_.data(), d)) corrupt("the OPQ rotation is not orthonormal");
  }

  floats(kTagCentroids, nlist * d, index->centroids_);
  check_loaded_rows(index->centroids_.data(), nlist, d, origin, "IVFPQIndex coarse centroids");
  std::vector<float> codebooks;
  const std::size_t dsub = d / m;
  floats(kTagCodebooks, m * index->pq_.ksub() * dsub, codebooks);
  check_loaded_rows(codebooks.data(), m * index->pq_.ksub(), dsub, origin, "IVFPQIndex codebooks");
  index->pq_.set_codebooks(codebooks.data());
  read_refine_params(*reader, "IVFPQIndex", index->refine_codec_);

  index->lists_ = invlists::InvertedLists(nlist, m, nbits, index->refine_bytes(), index->norm_terms_stored());
  const IVFPQIndex& loaded = *index;
  read_list_sections(
      *reader, {"IVFPQIndex", "list", "re-ranking"}, [&](idx_t id) { return loaded.id_below_next(id); },
      [&](const std::uint8_t* stored, std::size_t entries) {
        if (refine == static_cast<std::uint8_t>(RefineKind::F32))
          check_loaded_finite(reinterpret_cast<const float*>(stored), entries * d, origin,
                              "IVFPQIndex re-ranking vectors");
        if (refine == static_cast<std::uint8_t>(RefineKind::F16))
          check_loaded_finite_f16(reinterpret_cast<const std::uint16_t*>(stored), entries * d, origin,
                                  "IVFPQIndex re-ranking vectors");
      },
      index->lists_);
  index->trained_ = true;
  index->derive_tables();
  if (index->norm_terms_stored() &&  // recomputed from the codes rather than stored
      !index->lists_.set_norm_terms([&](std::size_t l, const std::uint8_t* code) { return loaded.norm_term(l, code); }))
    corrupt("a vector's norm term is not finite");
  return index;
}

}  // namespace annforge
