// IVF-RaBitQ: training, updates, the fast-scan search and re-ranking, serialization (see index/ivf_rabitq.h).
#include "annforge/index/ivf_rabitq.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <mutex>

#include "annforge/codec/pq4_fastscan.h"
#include "annforge/index/list_sections.h"
#include "annforge/parallel/executor.h"
#include "annforge/storage/prefetch.h"
#include "annforge/util/topk.h"

namespace annforge {

namespace {

constexpr std::uint32_t kTagMeta = io::make_tag("META");
constexpr std::uint32_t kTagCentroids = io::make_tag("CENT");

namespace pq4 = codec::pq4;
using invlists::location_list;
using invlists::location_offset;

// The codec's metric: cosine rows are normalised by the index (prepare_rows), then scored as ip.
Metric codec_metric(Metric metric) { return metric == Metric::L2 ? Metric::L2 : Metric::IP; }

}  // namespace

IVFRaBitQIndex::IVFRaBitQIndex(std::size_t dim, std::size_t nlist, unsigned bits, Metric metric, RefineKind refine,
                               std::uint64_t seed)
    : ListIndex(dim, metric), nlist_(nlist), refine_(refine), seed_(seed),
      codec_(dim, codec_metric(metric), bits, seed), refine_codec_(refine, dim, metric) {
  ANNFORGE_CHECK(nlist >= 1 && nlist <= (std::size_t(1) << 24), ErrorKind::Value,
                 "nlist must be in [1, 16777216], got ", nlist);
}

std::size_t IVFRaBitQIndex::code_bytes() const noexcept {
  return codec_.padded_dim() / 8 + codec_.record_bytes() + kFactors * sizeof(float);
}

std::vector<std::size_t> IVFRaBitQIndex::list_sizes() const {
  std::shared_lock<parallel::WriterPreferringMutex> lock(mutex_);
  return lists_.list_sizes();
}

std::vector<float> IVFRaBitQIndex::coarse_centroids() const {
  std::shared_lock<parallel::WriterPreferringMutex> lock(mutex_);
  return centroids_;
}

void IVFRaBitQIndex::derive_tables() {
  coarse_ = cluster::PackedCentroids(centroids_.data(), nlist_, dim_);
  const std::size_t D = codec_.padded_dim();
  rotated_.resize(nlist_ * D);
  for (std::size_t l = 0; l < nlist_; ++l) codec_.rotate(centroids_.data() + l * dim_, rotated_.data() + l * D);
}

// ---------------------------------------------------------------------------------------------------
// Training and updates

void IVFRaBitQIndex::train(const float* x, std::size_t n, int num_threads) {
  (void)parallel::resolve_threads(num_threads);
  check_storable(x, n, "training vectors");
  ANNFORGE_CHECK(n >= nlist_, ErrorKind::Value, "training needs at least nlist = ", nlist_, " vectors, got ", n);
  std::vector<float> prepared;
  const float* xt = x;
  if (metric_ == Metric::Cosine) {
    prepare_rows(x, n, prepared);
    xt = prepared.data();
  }
  auto coarse = train_partition(xt, n, dim_, nlist_, seed_, false, num_threads, nullptr);
  VectorCodec refine_codec(refine_, dim_, metric_);
  refine_codec.train(xt, n);  // sq8 ranges; nothing for the other codes

  std::unique_lock<parallel::WriterPreferringMutex> lock(mutex_);
  centroids_ = std::move(coarse.centroids);
  refine_codec_ = std::move(refine_codec);
  lists_ = invlists::InvertedLists(nlist_, codec_.padded_dim() / 4, 4, payload_bytes(), false);
  factors_.assign(nlist_, {});
  trained_ = true;
  derive_tables();
}

void IVFRaBitQIndex::append_entry(std::size_t list, idx_t id, const std::uint8_t* record, const float* row) {
  std::vector<std::uint8_t> nibbles(codec_.padded_dim() / 4);
  codec_.sign_nibbles(record, nibbles.data());
  std::uint8_t* stored = lists_.append(list, id, nibbles.data());
  std::memcpy(stored, record, record_bytes());
  if (row && refine_ != RefineKind::None) refine_codec_.encode(row, stored + record_bytes());
  const auto* f = reinterpret_cast<const float*>(record + codec_.factor_offset());
  factors_[list].insert(factors_[list].end(), f, f + kFactors);
}

void IVFRaBitQIndex::add(const float* x, std::size_t n, const idx_t* ids, int num_threads, idx_t* out_ids) {
  (void)parallel::resolve_threads(num_threads);
  {
    std::shared_lock<parallel::WriterPreferringMutex> lock(mutex_);
    check_trained();
  }
  check_storable(x, n, "vectors");
  if (ids) validate_new_ids(ids, n);
  std::vector<float> rows;
  prepare_rows(x, n, rows);
  const std::size_t d = dim_, rb = record_bytes();

  std::unique_lock<parallel::WriterPreferringMutex> lock(mutex_);
  check_trained();
  std::vector<std::int32_t> lists(n);
  std::vector<float> scores(n);
  coarse_.nearest(rows.data(), n, d, 1, false, num_threads, lists.data(), scores.data());
  // Encode list by list (one centroid per encode call), in parallel over chunks of a list's rows.
  std::vector<std::uint8_t> records(n * rb);
  std::vector<std::size_t> order(n);
  for (std::size_t i = 0; i < n; ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return lists[a] < lists[b]; });
  struct Run { std::size_t begin, end; };
  std::vector<Run> runs;
  for (std::size_t i = 0; i < n;) {
    std::size_t j = i;
    while (j < n && lists[order[j]] == lists[order[i]] && j - i < 256) ++j;
    runs.push_back({i, j});
    i = j;
  }
  parallel::parallel_for(runs.size(), num_threads, [&](std::size_t r, std::size_t) {
    const Run run = runs[r];
    const std::size_t m = run.end - run.begin;
    std::vector<float> batch(m * d);
    for (std::size_t t = 0; t < m; ++t)
      std::memcpy(batch.data() + t * d, rows.data() + order[run.begin + t] * d, d * sizeof(float));
    std::vector<std::uint8_t> out(m * rb);
    const auto list = static_cast<std::size_t>(lists[order[run.begin]]);
    codec_.encode(batch.data(), m, centroids_.data() + list * d, out.data());
    for (std::size_t t = 0; t < m; ++t) std::memcpy(records.data() + order[run.begin + t] * rb, out.data() + t * rb, rb);
  });

  assign_ids(ids, n, out_ids);
  for (std::size_t i = 0; i < n; ++i) {
    erase_entry(out_ids[i]);  // upsert: the old entry goes first
    append_entry(static_cast<std::size_t>(lists[i]), out_ids[i], records.data() + i * rb, rows.data() + i * d);
  }
}

bool IVFRaBitQIndex::erase_entry(idx_t id) {
  const idx_t loc = lists_.find(id);
  if (loc == IdMap::kMissing) return false;
  // Mirror the lists' removal: the list's last entry moves into the hole.
  std::vector<float>& F = factors_[location_list(loc)];
  const std::size_t off = location_offset(loc), last = F.size() / kFactors - 1;
  std::copy(F.begin() + last * kFactors, F.begin() + (last + 1) * kFactors, F.begin() + off * kFactors);
  F.resize(last * kFactors);
  return lists_.remove(id);
}

std::size_t IVFRaBitQIndex::remove(const idx_t* ids, std::size_t n) {
  std::unique_lock<parallel::WriterPreferringMutex> lock(mutex_);
  std::size_t removed = 0;
  for (std::size_t i = 0; i < n; ++i) removed += erase_entry(ids[i]) ? 1 : 0;
  return removed;
}

void IVFRaBitQIndex::decode_entry(idx_t loc, float* row, std::uint8_t*) const {
  const std::uint8_t* stored = record_at(loc);
  if (refine_ != RefineKind::None) {
    refine_codec_.decode(stored + record_bytes(), row);
  } else {
    codec_.decode(stored, centroids_.data() + location_list(loc) * dim_, row);
  }
}

std::size_t IVFRaBitQIndex::memory_bytes() const {
  std::shared_lock<parallel::WriterPreferringMutex> lock(mutex_);
  std::size_t bytes = lists_.memory_bytes() + (2 * centroids_.size() + rotated_.size()) * sizeof(float) +
                      codec_.rotation_bytes();
  for (const auto& F : factors_) bytes += F.capacity() * sizeof(float);
  return bytes;
}

// ---------------------------------------------------------------------------------------------------
// Search

struct IVFRaBitQIndex::Scratch {
  std::vector<float> rq, lut;                  // R q; the float table of the list being scanned
  pq4::QuantizedLut qlut;
  std::vector<std::uint16_t> acc;
  codec::RaBitQ::FloatQuery fq;
  TopKBuffer heap;                             // fast-scan candidates, labelled by location
  std::vector<std::pair<float, idx_t>> order;  // candidates by list, for the multi-bit stage
  std::vector<float> lower, upper, est;
  VectorCodec::Query refine_query;
};

void IVFRaBitQIndex::scan_list(const float* q, std::size_t list, Scratch& s, const IdSelector* filter) const {
  const invlists::ListView v = lists_.list(list);
  const std::size_t n = v.size;
  if (n == 0) return;
  const std::size_t D = codec_.padded_dim(), m = D / 4;
  codec_.prepare_float_query(q, s.rq.data(), centroids_.data() + list * dim_, rotated_.data() + list * D, s.fq);
  s.lut.resize(m * 16);
  codec_.fastscan_lut(s.fq, s.lut.data());
  pq4::quantize_lut(s.lut.data(), m, s.qlut, pq4::lut_kernels());
  const std::size_t nblocks = pq4::blocks_for(n);
  s.acc.resize(nblocks * pq4::kBlock);
  pq4::scan_kernel()(v.codes, nblocks, pq4::padded_m(m), s.qlut.table.data(), s.acc.data());
  // <b, q'> ~= bias + sum / scale (codec/pq4_fastscan.h).
  const codec::RaBitQ::SignLinear est = codec_.sign_linear(s.fq);
  const float inv_scale = 1.0f / s.qlut.scale, bias = s.qlut.bias;
  const float* F = factors_[list].data();
  TopKBuffer& heap = s.heap;
  float thr = heap.threshold();
  for (std::size_t i = 0; i < n; ++i) {
    const float dist = est(F + i * kFactors, bias + static_cast<float>(s.acc[i]) * inv_scale);
    if (!(dist <= thr) || (filter && !filter->contains(v.ids[i]))) continue;
    heap.push(dist, invlists::pack_location(list, i));
    thr = heap.threshold();
  }
}

void IVFRaBitQIndex::finish(const float* q, std::size_t k, Scratch& s, idx_t* ids, float* dist) const {
  std::vector<std::pair<float, idx_t>>& found = s.heap.sorted();
  const bool exact = refine_ != RefineKind::None;
  if (codec_.bits() == 1) {
    if (!exact) {
      write_row_by_id(found, [&](idx_t loc) { return lists_.id_at(loc); }, k, ids, dist);
      return;
    }
    refine_codec_.prepare(q, s.refine_query);
    TopK best(k);
    // The copies are scattered: fetch a couple of candidates ahead; f32 l2 stops summing a row once it
    // exceeds the k-th best (VectorCodec::distance_within), so only its first chunk is fetched.
    const std::size_t chunk = std::min(dim_, (dim_ / 4 + 15) / 16 * 16);
    const bool chunked = refine_ == RefineKind::F32 && metric_ == Metric::L2;
    const std::size_t ahead_bytes = chunked ? chunk * sizeof(float) : refine_bytes();
    constexpr std::size_t kAhead = 2;
    auto copy_of = [&](std::size_t i) { return record_at(found[i].second) + record_bytes(); };
    for (std::size_t i = 0; i < std::min(kAhead, found.size()); ++i) prefetch_range(copy_of(i), ahead_bytes);
    for (std::size_t i = 0; i < found.size(); ++i) {
      if (i + kAhead < found.size()) prefetch_range(copy_of(i + kAhead), ahead_bytes);
      best.push(refine_codec_.distance_within(s.refine_query, copy_of(i), best.threshold(), chunk),
                lists_.id_at(found[i].second));
    }
    write_row(best.sorted(), k, ids, dist);
    return;
  }
  // Multi-bit stage: re-estimate every candidate from its full code, list by list (one float query each).
  const std::size_t nc = found.size(), D = codec_.padded_dim();
  s.order.assign(found.begin(), found.end());
  std::sort(s.order.begin(), s.order.end(), [](const auto& a, const auto& b) { return a.second < b.second; });
  s.est.resize(nc);
  s.lower.resize(nc);
  s.upper.resize(nc);
  std::size_t current = std::numeric_limits<std::size_t>::max();
  for (std::size_t i = 0; i < nc; ++i) {
    const std::size_t list = location_list(s.order[i].second);
    if (list != current) {
      codec_.prepare_float_query(q, s.rq.data(), centroids_.data() + list * dim_, rotated_.data() + list * D, s.fq);
      s.lut.resize(D / 4 * 16);
      codec_.fastscan_lut(s.fq, s.lut.data());
      current = list;
    }
    s.est[i] = codec_.estimate_full(s.fq, record_at(s.order[i].second), codec::RaBitQ::kDefaultEps0, &s.lower[i],
                                    &s.upper[i], s.lut.data());
  }
  TopK best(k);
  if (!exact) {
    for (std::size_t i = 0; i < nc; ++i) best.push(s.est[i], lists_.id_at(s.order[i].second));
    write_row(best.sorted(), k, ids, dist);
    return;
  }
  // Exact distances only where the bound leaves a chance: lower bound <= the k-th smallest upper bound.
  float cut = std::numeric_limits<float>::infinity();
  if (nc > k) {
    std::vector<float> up(s.upper.begin(), s.upper.end());
    std::nth_element(up.begin(), up.begin() + static_cast<std::ptrdiff_t>(k - 1), up.end());
    cut = up[k - 1];
  }
  refine_codec_.prepare(q, s.refine_query);
  for (std::size_t i = 0; i < nc; ++i) {
    if (!(s.lower[i] <= cut)) continue;
    const idx_t loc = s.order[i].second;
    best.push(refine_codec_.distance(s.refine_query, record_at(loc) + record_bytes()), lists_.id_at(loc));
  }
  write_row(best.sorted(), k, ids, dist);
}

void IVFRaBitQIndex::search(const float* q, std::size_t nq, std::size_t k, SearchOptions& opt, idx_t* out_ids,
                            float* out_dist) const {
  check_k(k);
  const auto nprobe_knob = opt.knobs.take_int("nprobe", static_cast<long long>(std::min<std::size_t>(nlist_, 16)), 1);
  const auto refine_factor = opt.knobs.take_int("refine_factor", 10, 1);
  opt.knobs.reject_unknown("IVFRaBitQIndex", "nprobe, refine_factor");
  std::vector<float> Q;
  std::size_t threads;
  const ReadLock lock = begin_search(q, nq, opt, Q, threads);
  if (nq == 0) return;
  const std::size_t nprobe = std::min<std::size_t>(nlist_, static_cast<std::size_t>(nprobe_knob));
  const std::size_t candidates = std::min<std::size_t>(k * static_cast<std::size_t>(refine_factor), std::size_t(1) << 24);
  std::vector<std::int32_t> probe(nq * nprobe);
  std::vector<float> probe_dist(nq * nprobe);
  coarse_.nearest(Q.data(), nq, dim_, nprobe, false, static_cast<int>(threads), probe.data(), probe_dist.data());
  std::vector<Scratch> scratch(threads);
  const std::size_t D = codec_.padded_dim();
  std::vector<float> rotated_queries(nq * D);  // R q, all at once through the GEMM kernel
  codec_.rotate_rows(Q.data(), nq, rotated_queries.data());
  parallel::parallel_for(nq, static_cast<int>(threads), [&](std::size_t qi, std::size_t w) {
    Scratch& s = scratch[w];
    const float* qv = Q.data() + qi * dim_;
    s.rq.assign(rotated_queries.begin() + static_cast<std::ptrdiff_t>(qi * D),
                rotated_queries.begin() + static_cast<std::ptrdiff_t>((qi + 1) * D));
    s.heap.reset(candidates);
    for (std::size_t p = 0; p < nprobe; ++p) {
      const std::int32_t list = probe[qi * nprobe + p];
      if (list >= 0) scan_list(qv, static_cast<std::size_t>(list), s, opt.filter);
    }
    finish(qv, k, s, out_ids + qi * k, out_dist + qi * k);
  });
}

void IVFRaBitQIndex::list_estimates(const float* q, std::size_t list, std::vector<idx_t>& ids, std::vector<float>& est,
                                    std::vector<float>& lower, std::vector<float>& upper, double eps0) const {
  std::vector<float> Q;
  check_storable(q, 1, "queries");
  prepare_rows(q, 1, Q);
  ReadLock lock(mutex_);
  check_trained();
  ANNFORGE_CHECK(list < nlist_, ErrorKind::Value, "list must be below nlist = ", nlist_);
  ANNFORGE_CHECK(eps0 >= 0 && std::isfinite(eps0), ErrorKind::Value, "eps0 must be finite and >= 0");
  Scratch s;
  const std::size_t D = codec_.padded_dim(), m = D / 4;
  s.rq.resize(D);
  codec_.rotate(Q.data(), s.rq.data());
  const invlists::ListView v = lists_.list(list);
  const std::size_t n = v.size;
  ids.assign(v.ids, v.ids + n);
  est.resize(n);
  lower.resize(n);
  upper.resize(n);
  if (n == 0) return;
  codec_.prepare_float_query(Q.data(), s.rq.data(), centroids_.data() + list * dim_, rotated_.data() + list * D, s.fq);
  s.lut.resize(m * 16);
  codec_.fastscan_lut(s.fq, s.lut.data());
  pq4::quantize_lut(s.lut.data(), m, s.qlut, pq4::lut_kernels());
  const std::size_t nblocks = pq4::blocks_for(n);
  s.acc.resize(nblocks * pq4::kBlock);
  pq4::scan_kernel()(v.codes, nblocks, pq4::padded_m(m), s.qlut.table.data(), s.acc.data());
  // Each of the m quantised entries is off by at most half a step (1 / scale) from its table value.
  const double table_error = 0.5 * static_cast<double>(m) / s.qlut.scale;
  for (std::size_t i = 0; i < n; ++i) {
    const double bit_dot = s.qlut.bias + static_cast<double>(s.acc[i]) / s.qlut.scale;
    est[i] = codec_.estimate_sign(s.fq, factors_[list].data() + i * kFactors, bit_dot, table_error, eps0,
                                  &lower[i], &upper[i]);
  }
}

// ---------------------------------------------------------------------------------------------------
// Serialization

void IVFRaBitQIndex::write(io::FileWriter& w) const {  // the caller holds the lock (hold_unchanged)
  ANNFORGE_CHECK(trained_, ErrorKind::State, "index is not trained: call train(x) before saving it");
  io::ByteWriter meta;
  write_common(meta);
  meta.put(static_cast<std::uint64_t>(nlist_))
      .put(static_cast<std::uint64_t>(codec_.bits()))
      .put(static_cast<std::uint8_t>(refine_))
      .put(seed_);
  w.add_owned(kTagMeta, meta.take());
  w.add(kTagCentroids, centroids_.data(), centroids_.size() * sizeof(float));
  write_refine_params(w, refine_codec_);
  write_list_sections(w, lists_);
}

std::unique_ptr<IVFRaBitQIndex> IVFRaBitQIndex::read(const std::shared_ptr<io::FileReader>& reader) {
  reader->expect_kind(io::Kind::IVFRaBitQ);
  const std::string& origin = reader->origin();
  auto corrupt = [&](const char* why) { fail(ErrorKind::IO, origin, ": corrupted IVFRaBitQIndex: ", why); };
  const io::Bytes meta_bytes = reader->section(kTagMeta);
  io::ByteReader meta(meta_bytes, "IVFRaBitQIndex metadata");
  const auto dim = meta.read<std::uint64_t>();
  const auto metric = meta.read<std::uint8_t>();
  (void)meta.read<idx_t>();
  const auto nlist = meta.read<std::uint64_t>(), bits = meta.read<std::uint64_t>();
  const auto refine = meta.read<std::uint8_t>();
  const auto seed = meta.read<std::uint64_t>();
  meta.expect_end();
  if (dim < 1 || dim > 4096 || metric > 2) corrupt("dimension or metric out of range");
  if (nlist < 1 || nlist > (std::uint64_t(1) << 24)) corrupt("nlist out of range");
  if (bits < 1 || bits > 8) corrupt("bits out of range");
  if (refine > 3) corrupt("invalid flags");
  auto index = std::make_unique<IVFRaBitQIndex>(dim, nlist, static_cast<unsigned>(bits), static_cast<Metric>(metric),
                                                static_cast<RefineKind>(refine), seed);
  io::ByteReader common(meta_bytes, "IVFRaBitQIndex metadata");
  index->read_common(common);
  const std::size_t d = dim;
  index->centroids_ = read_float_section(*reader, "IVFRaBitQIndex", kTagCentroids, nlist * d);
  check_loaded_rows(index->centroids_.data(), nlist, d, origin, "IVFRaBitQIndex coarse centroids");
  read_refine_params(*reader, "IVFRaBitQIndex", index->refine_codec_);
  const codec::RaBitQ& C = index->codec_;
  const std::size_t rb = C.record_bytes(), pb = index->payload_bytes(), nf = codec::RaBitQ::num_factors(C.bits());
  index->lists_ = invlists::InvertedLists(nlist, C.padded_dim() / 4, 4, pb, false);
  const IVFRaBitQIndex& loaded = *index;
  read_list_sections(
      *reader, {"IVFRaBitQIndex", "list", "record"}, [&](idx_t id) { return loaded.id_below_next(id); },
      [&](const std::uint8_t* stored, std::size_t entries) {
        for (std::size_t i = 0; i < entries; ++i) {
          const std::uint8_t* p = stored + i * pb;
          float f[8];
          std::memcpy(f, p + C.factor_offset(), nf * sizeof(float));
          for (std::size_t j = 0; j < nf; ++j)
            if (!std::isfinite(f[j]) || std::fabs(f[j]) > 1e30f) corrupt("a code's factors are not finite");
          if (refine == static_cast<std::uint8_t>(RefineKind::F32))
            check_loaded_finite(reinterpret_cast<const float*>(p + rb), d, origin, "IVFRaBitQIndex re-ranking vectors");
          if (refine == static_cast<std::uint8_t>(RefineKind::F16))
            check_loaded_finite_f16(reinterpret_cast<const std::uint16_t*>(p + rb), d, origin,
                                    "IVFRaBitQIndex re-ranking vectors");
        }
      },
      index->lists_);
  // The fast-scan nibbles must be the records' sign codes, and the compact factors come from the records.
  index->factors_.assign(nlist, {});
  std::vector<std::uint8_t> nibbles(C.padded_dim() / 4), stored_code(C.padded_dim() / 4);
  for (std::size_t l = 0; l < nlist; ++l) {
    const std::size_t n = index->lists_.list_size(l);
    std::vector<float>& F = index->factors_[l];
    F.resize(n * kFactors);
    for (std::size_t i = 0; i < n; ++i) {
      const std::uint8_t* record = index->lists_.payload_at(invlists::pack_location(l, i));
      C.sign_nibbles(record, nibbles.data());
      index->lists_.code_at(l, i, stored_code.data());
      if (nibbles != stored_code) corrupt("the fast-scan codes do not match the stored records");
      std::memcpy(F.data() + i * kFactors, record + C.factor_offset(), kFactors * sizeof(float));
    }
  }
  index->trained_ = true;
  index->derive_tables();
  return index;
}

}  // namespace annforge
