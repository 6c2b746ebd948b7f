#include "annforge/index/scann.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <mutex>

#include "annforge/index/list_sections.h"
#include "annforge/parallel/executor.h"
#include "annforge/simd/kernels.h"
#include "annforge/util/topk.h"

namespace annforge {

namespace {

constexpr std::uint32_t kTagMeta = io::make_tag("META");
constexpr std::uint32_t kTagCentres = io::make_tag("CENT");
constexpr std::uint32_t kTagCodebooks = io::make_tag("AHCB");

// 8192 rows (512 per centre of a block) give the same recall as 16384 or 65536 on MiniLM at half the training time.
constexpr std::size_t kDefaultSampleSize = 8192;
constexpr std::size_t kMaxLeaves = std::size_t(1) << 24;

using invlists::location_list;

std::size_t checked_blocks(std::size_t dim, std::size_t dpb) {
  ANNFORGE_CHECK(dpb >= 1, ErrorKind::Value, "dims_per_block must be >= 1, got ", dpb);
  ANNFORGE_CHECK(dim >= 1 && dim % dpb == 0, ErrorKind::Value, "dim (", dim,
                 ") must be a multiple of dims_per_block (", dpb, ")");
  return dim / dpb;
}

// Solves the small symmetric positive (semi-)definite system A c = b in place (Gaussian elimination with
// partial pivoting, double precision). Returns false when A is singular.
bool solve_small(std::vector<double>& A, std::vector<double>& b, std::size_t n) {
  for (std::size_t col = 0; col < n; ++col) {
    std::size_t pivot = col;
    for (std::size_t r = col + 1; r < n; ++r)
      if (std::fabs(A[r * n + col]) > std::fabs(A[pivot * n + col])) pivot = r;
    if (std::fabs(A[pivot * n + col]) < 1e-12) return false;
    if (pivot != col) {
      for (std::size_t c = 0; c < n; ++c) std::swap(A[col * n + c], A[pivot * n + c]);
      std::swap(b[col], b[pivot]);
    }
    for (std::size_t r = col + 1; r < n; ++r) {
      const double f = A[r * n + col] / A[col * n + col];
      for (std::size_t c = col; c < n; ++c) A[r * n + c] -= f * A[col * n + c];
      b[r] -= f * b[col];
    }
  }
  for (std::size_t col = n; col-- > 0;) {
    double v = b[col];
    for (std::size_t c = col + 1; c < n; ++c) v -= A[col * n + c] * b[c];
    b[col] = v / A[col * n + col];
  }
  return true;
}

// ~10% of the leaves (at least 8): recall@10 around 0.9-0.95 on 384-d sentence embeddings with sqrt(n) leaves.
std::size_t default_leaves_to_search(std::size_t leaves) {
  return std::min(leaves, std::max<std::size_t>(8, (leaves + 9) / 10));
}

}  // namespace

// ---------------------------------------------------------------------------------------------------
// The anisotropic loss and encoder

namespace scann {

double parallel_cost_multiplier(double threshold, double sq_norm, std::size_t dim) {
  if (dim < 2 || !(sq_norm > 0) || !std::isfinite(threshold)) return 1.0;
  const double t = std::min(threshold * threshold / sq_norm, 1.0 - 1e-6);
  return (static_cast<double>(dim) - 1.0) * t / (1.0 - t);
}

double anisotropic_loss(const float* x, const float* x_quantized, std::size_t dim, double eta) {
  double sq_norm = 0, err = 0, par = 0;
  for (std::size_t i = 0; i < dim; ++i) {
    const double e = static_cast<double>(x[i]) - x_quantized[i];
    sq_norm += static_cast<double>(x[i]) * x[i];
    err += e * e;
    par += e * x[i];
  }
  if (!(sq_norm > 0)) return err;
  const double par_sq = par * par / sq_norm;
  return eta * par_sq + (err - par_sq);
}

PreparedBooks prepare_books(const float* codebooks, std::size_t m, std::size_t dpb) {
  constexpr std::size_t K = ScaNNIndex::kCentres;
  PreparedBooks p;
  p.m = m;
  p.dpb = dpb;
  p.transposed.resize(m * dpb * K);
  p.sq_norms.assign(m * K, 0.0f);
  for (std::size_t j = 0; j < m; ++j)
    for (std::size_t c = 0; c < K; ++c)
      for (std::size_t t = 0; t < dpb; ++t) {
        const float v = codebooks[(j * K + c) * dpb + t];
        p.transposed[(j * dpb + t) * K + c] = v;
        p.sq_norms[j * K + c] += v * v;
      }
  return p;
}

void encode_anisotropic(const PreparedBooks& books, const float* residual, const float* x, double alpha, int rounds,
                        std::uint8_t* codes) {
  constexpr std::size_t K = ScaNNIndex::kCentres;
  const std::size_t m = books.m, dpb = books.dpb;
  const float a = static_cast<float>(alpha);
  // s = <r - r~, x>, the only coupling between blocks.
  double s = 0;
  for (std::size_t j = 0; j < m; ++j)
    for (std::size_t t = 0; t < dpb; ++t)
      s += (static_cast<double>(residual[j * dpb + t]) - books.transposed[(j * dpb + t) * K + codes[j]]) *
           x[j * dpb + t];
  float cx[K], rc[K];
  for (int round = 0; round < rounds; ++round) {
    bool changed = false;
    for (std::size_t j = 0; j < m; ++j) {
      const float* r = residual + j * dpb;
      const float* xb = x + j * dpb;
      const float* bt = books.transposed.data() + j * dpb * K;
      const float* norms = books.sq_norms.data() + j * K;
      // For every centre c: ||r_j - c||^2 - ||r_j||^2 = ||c||^2 - 2 <r_j, c>, and <c, x_j>. Laid out
      // centre-major so the 16-wide loops vectorise.
      for (std::size_t c = 0; c < K; ++c) cx[c] = rc[c] = 0.0f;
      for (std::size_t t = 0; t < dpb; ++t) {
        const float xt = xb[t], rt = r[t];
        for (std::size_t c = 0; c < K; ++c) {
          cx[c] += bt[t * K + c] * xt;
          rc[c] += bt[t * K + c] * rt;
        }
      }
      double rx = 0;
      for (std::size_t t = 0; t < dpb; ++t) rx += static_cast<double>(r[t]) * xb[t];
      const double u = s - (rx - cx[codes[j]]) + rx;  // s_rest + <r_j, x_j>
      const float uf = static_cast<float>(u);
      float best = std::numeric_limits<float>::infinity();
      std::size_t best_c = codes[j];
      for (std::size_t c = 0; c < K; ++c) {
        const float p = uf - cx[c];
        const float cost = (norms[c] - 2.0f * rc[c]) + a * p * p;
        if (cost < best) {  // strict: ties keep the lower index
          best = cost;
          best_c = c;
        }
      }
      if (best_c != codes[j]) {
        changed = true;
        codes[j] = static_cast<std::uint8_t>(best_c);
      }
      s = u - cx[best_c];
    }
    if (!changed) break;
  }
}

void encode_anisotropic(const float* codebooks, std::size_t m, std::size_t dpb, const float* residual,
                        const float* x, double alpha, int rounds, std::uint8_t* codes) {
  encode_anisotropic(prepare_books(codebooks, m, dpb), residual, x, alpha, rounds, codes);
}

}  // namespace scann

ScaNNIndex::ScaNNIndex(std::size_t dim, std::size_t num_leaves, std::size_t dims_per_block, double threshold,
                       Metric metric, RefineKind refine, std::uint64_t seed)
    : ListIndex(dim, metric), num_leaves_(num_leaves), dpb_(dims_per_block),
      m_(checked_blocks(dim, dims_per_block)), threshold_(threshold), refine_(refine), seed_(seed),
      pq_(dim, m_, 4), refine_codec_(refine, dim, metric) {
  ANNFORGE_CHECK(num_leaves <= kMaxLeaves, ErrorKind::Value, "num_leaves must be <= ", kMaxLeaves, ", got ",
                 num_leaves);
  ANNFORGE_CHECK(std::isnan(threshold) || (std::isfinite(threshold) && threshold >= 0), ErrorKind::Value,
                 "anisotropic_threshold must be a finite number >= 0 or None, got ", threshold);
}

void ScaNNIndex::set_training_options(std::size_t sample_size, int codebook_iterations, int encode_rounds) {
  ANNFORGE_CHECK(codebook_iterations >= 0 && encode_rounds >= 0, ErrorKind::Value,
                 "training iterations must be >= 0");
  std::unique_lock<parallel::WriterPreferringMutex> lock(mutex_);
  sample_size_ = sample_size;
  codebook_iterations_ = codebook_iterations;
  encode_rounds_ = encode_rounds;
}

std::size_t ScaNNIndex::num_leaves() const {
  std::shared_lock<parallel::WriterPreferringMutex> lock(mutex_);
  return num_leaves_;
}

bool ScaNNIndex::anisotropic() const noexcept { return anisotropic_for_metric(); }
bool ScaNNIndex::anisotropic_for_metric() const noexcept { return metric_ != Metric::L2 && !std::isnan(threshold_); }

std::size_t ScaNNIndex::refine_bytes() const noexcept { return refine_codec_.code_bytes(); }

std::vector<float> ScaNNIndex::leaf_centres() const {
  std::shared_lock<parallel::WriterPreferringMutex> lock(mutex_);
  return centres_;
}

std::vector<float> ScaNNIndex::codebooks() const {
  std::shared_lock<parallel::WriterPreferringMutex> lock(mutex_);
  return pq_.codebooks();
}

std::vector<std::size_t> ScaNNIndex::leaf_sizes() const {
  std::shared_lock<parallel::WriterPreferringMutex> lock(mutex_);
  return lists_.list_sizes();
}

float ScaNNIndex::norm_term(std::size_t leaf, const std::uint8_t* code) const {
  std::vector<float> r(dim_);
  pq_.decode(code, r.data());
  const auto& K = simd::kernels();
  return K.dot(r.data(), r.data(), dim_) + 2.0f * K.dot(centres_.data() + leaf * dim_, r.data(), dim_);
}

void ScaNNIndex::encode(const float* rows, std::size_t n, const std::int32_t* leaves, const float* centres,
                        const codec::ProductQuantizer& pq, int num_threads, std::uint8_t* codes) const {
  const std::size_t d = dim_, m = m_;
  std::vector<float> residuals(n * d);
  parallel::parallel_for((n + 255) / 256, num_threads, [&](std::size_t t, std::size_t) {
    for (std::size_t i = t * 256; i < std::min(n, t * 256 + 256); ++i) {
      const float* c = centres + static_cast<std::size_t>(leaves[i]) * d;
      for (std::size_t j = 0; j < d; ++j) residuals[i * d + j] = rows[i * d + j] - c[j];
    }
  });
  pq.encode(residuals.data(), n, codes, num_threads);  // nearest centres: the isotropic codes
  if (!anisotropic_for_metric() || encode_rounds_ == 0) return;
  const scann::PreparedBooks books = scann::prepare_books(pq.codebooks().data(), m, dpb_);
  parallel::parallel_for((n + 63) / 64, num_threads, [&](std::size_t t, std::size_t) {
    for (std::size_t i = t * 64; i < std::min(n, t * 64 + 64); ++i) {
      const float* x = rows + i * d;
      double sq = 0;
      for (std::size_t j = 0; j < d; ++j) sq += static_cast<double>(x[j]) * x[j];
      if (!(sq > 0)) continue;
      const double eta = scann::parallel_cost_multiplier(threshold_, sq, d);
      scann::encode_anisotropic(books, residuals.data() + i * d, x, (eta - 1.0) / sq, encode_rounds_, codes + i * m);
    }
  });
}

// ---------------------------------------------------------------------------------------------------
// Training

void ScaNNIndex::train(const float* x, std::size_t n, int num_threads, cluster::KMeansAccelerator* accelerator) {
  (void)parallel::resolve_threads(num_threads);
  check_storable(x, n, "training vectors");
  std::size_t leaves, sample_size;
  int codebook_iterations;
  {
    std::shared_lock<parallel::WriterPreferringMutex> lock(mutex_);
    leaves = num_leaves_;
    sample_size = sample_size_;
    codebook_iterations = codebook_iterations_;
  }
  ANNFORGE_CHECK(n >= kCentres, ErrorKind::Value, "training needs at least ", kCentres, " vectors, got ", n);
  if (leaves == 0) leaves = std::max<std::size_t>(1, static_cast<std::size_t>(std::llround(std::sqrt(double(n)))));
  ANNFORGE_CHECK(n >= leaves, ErrorKind::Value, "training needs at least num_leaves = ", leaves, " vectors, got ", n);
  std::vector<float> xt;
  prepare_rows(x, n, xt);
  const std::size_t d = dim_, m = m_;
  const bool ip = use_inner_product();

  // ScaNN trains its tree with 10 Lloyd iterations by default; more barely moves recall here.
  auto tree = train_partition(xt.data(), n, d, leaves, seed_, ip, num_threads, accelerator);
  cluster::PackedCentroids packed(tree.centroids.data(), leaves, d);

  // Codebooks from an evenly spaced sample of residuals.
  const std::size_t ns = std::min(n, sample_size ? std::max(sample_size, kCentres) : kDefaultSampleSize);
  std::vector<float> sample(ns * d), residuals(ns * d);
  for (std::size_t i = 0; i < ns; ++i) {
    const std::size_t row = i * n / ns;
    std::copy(xt.data() + row * d, xt.data() + (row + 1) * d, sample.data() + i * d);
  }
  std::vector<std::int32_t> labels(ns);
  std::vector<float> scores(ns);
  packed.nearest(sample.data(), ns, d, 1, ip, num_threads, labels.data(), scores.data());
  for (std::size_t i = 0; i < ns; ++i) {
    const float* c = tree.centroids.data() + static_cast<std::size_t>(labels[i]) * d;
    for (std::size_t j = 0; j < d; ++j) residuals[i * d + j] = sample[i * d + j] - c[j];
  }
  codec::ProductQuantizer pq(d, m, 4);
  pq.train(residuals.data(), ns, seed_ + 17, num_threads);

  // Codebook update for the anisotropic loss (block coordinate descent on the training sample): with the
  // codes fixed, the loss sum_i ||e_i||^2 + alpha_i <e_i, x_i>^2 is quadratic in the centres of one block,
  // and the centres of one block do not interact (each point uses one), so every centre solves its own
  // dpb x dpb system  sum_i (I + alpha_i x_ij x_ij^T) c = sum_i (r_ij + alpha_i u_i x_ij),
  // u_i = <r_i - r~_i, x_i> with block j's contribution taken out. Blocks are swept in order, updating
  // <e_i, x_i> as we go, and then the codes are re-encoded; the loss never increases.
  //
  // Kept because it gives the better recall. Ablation on the 62,678 x 384 MiniLM embeddings, 250 leaves all
  // searched, dims_per_block 2, T = 0.2, recall@10 at reorder_k = 10 / 20 / 40 (bench/bench_scann.py ablation):
  //   unit norms:        isotropic 0.850 / 0.980 / 0.997, anisotropic codes + k-means codebooks 0.858 / 0.986 /
  //                      0.999, + weighted codebooks 0.863 / 0.988 / 0.999;
  //   log-normal norms (x * exp(N(0, 0.3))):
  //                      isotropic 0.692 / 0.830 / 0.914, anisotropic codes + k-means codebooks 0.682 / 0.808 /
  //                      0.884 (worse: the codes fight codebooks fitted for the plain error), + weighted codebooks
  //                      0.719 / 0.843 / 0.913. (PyPI scann 1.4.2 on the same data: isotropic 0.698 / 0.840 / 0.917,
  //                      anisotropic 0.680 / 0.799 / 0.875: it keeps k-means-style codebooks and loses there.)
  // codebook_iterations = 0 keeps the k-means codebooks for that comparison.
  if (anisotropic_for_metric() && codebook_iterations > 0) {
    std::vector<double> alpha(ns);
    for (std::size_t i = 0; i < ns; ++i) {
      double sq = 0;
      for (std::size_t j = 0; j < d; ++j) sq += static_cast<double>(sample[i * d + j]) * sample[i * d + j];
      alpha[i] = sq > 0 ? (scann::parallel_cost_multiplier(threshold_, sq, d) - 1.0) / sq : 0.0;
    }
    std::vector<std::uint8_t> codes(ns * m);
    pq.encode(residuals.data(), ns, codes.data(), num_threads);
    std::vector<float> books = pq.codebooks();
    const std::size_t dpb = dpb_;
    std::vector<double> s(ns);
    std::vector<double> A(kCentres * dpb * dpb), b(kCentres * dpb), Ac(dpb * dpb), bc(dpb);
    for (int iter = 0; iter < codebook_iterations; ++iter) {
      const scann::PreparedBooks prepared = scann::prepare_books(books.data(), m, dpb);
      parallel::parallel_for((ns + 63) / 64, num_threads, [&](std::size_t t, std::size_t) {
        for (std::size_t i = t * 64; i < std::min(ns, t * 64 + 64); ++i)
          scann::encode_anisotropic(prepared, residuals.data() + i * d, sample.data() + i * d, alpha[i],
                                    encode_rounds_ > 0 ? encode_rounds_ : 4, codes.data() + i * m);
      });
      for (std::size_t i = 0; i < ns; ++i) {  // s_i = <e_i, x_i>
        double v = 0;
        for (std::size_t j = 0; j < m; ++j) {
          const float* c = books.data() + (j * kCentres + codes[i * m + j]) * dpb;
          for (std::size_t t = 0; t < dpb; ++t)
            v += (static_cast<double>(residuals[i * d + j * dpb + t]) - c[t]) * sample[i * d + j * dpb + t];
        }
        s[i] = v;
      }
      for (std::size_t j = 0; j < m; ++j) {
        std::fill(A.begin(), A.end(), 0.0);
        std::fill(b.begin(), b.end(), 0.0);
        float* book = books.data() + j * kCentres * dpb;
        for (std::size_t i = 0; i < ns; ++i) {
          const std::size_t c = codes[i * m + j];
          const float* xb = sample.data() + i * d + j * dpb;
          const float* rb = residuals.data() + i * d + j * dpb;
          double cx = 0;
          for (std::size_t t = 0; t < dpb; ++t) cx += static_cast<double>(book[c * dpb + t]) * xb[t];
          const double u = s[i] + cx, a = alpha[i];
          s[i] = u;  // block j taken out; added back below once the centre is final
          double* Ai = A.data() + c * dpb * dpb;
          double* bi = b.data() + c * dpb;
          for (std::size_t t = 0; t < dpb; ++t) {
            Ai[t * dpb + t] += 1.0;
            for (std::size_t v = 0; v < dpb; ++v) Ai[t * dpb + v] += a * xb[t] * xb[v];
            bi[t] += rb[t] + a * u * xb[t];
          }
        }
        for (std::size_t c = 0; c < kCentres; ++c) {
          std::copy(A.begin() + c * dpb * dpb, A.begin() + (c + 1) * dpb * dpb, Ac.begin());
          std::copy(b.begin() + c * dpb, b.begin() + (c + 1) * dpb, bc.begin());
          if (Ac[0] == 0.0) continue;  // unused centre: keep it
          if (!solve_small(Ac, bc, dpb)) continue;
          bool finite = true;
          for (double v : bc) finite = finite && std::isfinite(v);
          if (!finite) continue;
          for (std::size_t t = 0; t < dpb; ++t) book[c * dpb + t] = static_cast<float>(bc[t]);
        }
        for (std::size_t i = 0; i < ns; ++i) {
          const float* cv = book + codes[i * m + j] * dpb;
          const float* xb = sample.data() + i * d + j * dpb;
          double cx = 0;
          for (std::size_t t = 0; t < dpb; ++t) cx += static_cast<double>(cv[t]) * xb[t];
          s[i] -= cx;
        }
      }
    }
    pq.set_codebooks(books.data());
  }

  VectorCodec refine_codec(refine_, d, metric_);
  refine_codec.train(xt.data(), n);  // sq8 ranges; nothing for the other codes

  std::unique_lock<parallel::WriterPreferringMutex> lock(mutex_);
  num_leaves_ = leaves;
  centres_ = std::move(tree.centroids);
  packed_ = std::move(packed);
  pq_ = std::move(pq);
  refine_codec_ = std::move(refine_codec);
  lists_ = invlists::InvertedLists(num_leaves_, m_, 4, refine_bytes(), metric_ == Metric::L2);
  trained_ = true;
}

// ---------------------------------------------------------------------------------------------------
// Updates

void ScaNNIndex::encode_refine(const float* row, std::uint8_t* out) const { refine_codec_.encode(row, out); }

void ScaNNIndex::decode_refine(const std::uint8_t* stored, float* out) const { refine_codec_.decode(stored, out); }

void ScaNNIndex::add(const float* x, std::size_t n, const idx_t* ids, int num_threads, idx_t* out_ids) {
  (void)parallel::resolve_threads(num_threads);
  {
    std::shared_lock<parallel::WriterPreferringMutex> lock(mutex_);
    check_trained();
  }
  check_storable(x, n, "vectors");
  if (ids) validate_new_ids(ids, n);
  std::vector<float> rows;
  prepare_rows(x, n, rows);

  std::unique_lock<parallel::WriterPreferringMutex> lock(mutex_);
  check_trained();
  std::vector<std::int32_t> leaf(n);
  std::vector<float> scores(n);
  packed_.nearest(rows.data(), n, dim_, 1, use_inner_product(), num_threads, leaf.data(), scores.data());
  std::vector<std::uint8_t> codes(n * m_);
  encode(rows.data(), n, leaf.data(), centres_.data(), pq_, num_threads, codes.data());

  assign_ids(ids, n, out_ids);
  for (std::size_t i = 0; i < n; ++i) {
    lists_.remove(out_ids[i]);  // upsert
    const auto l = static_cast<std::size_t>(leaf[i]);
    const std::uint8_t* code = codes.data() + i * m_;
    std::uint8_t* stored = lists_.append(l, out_ids[i], code, metric_ == Metric::L2 ? norm_term(l, code) : 0.0f);
    if (stored) encode_refine(rows.data() + i * dim_, stored);
  }
}

void ScaNNIndex::decode_entry(idx_t loc, float* row, std::uint8_t* code) const {
  if (refine_ != RefineKind::None) {
    decode_refine(lists_.payload_at(loc), row);
    return;
  }
  lists_.code_at(loc, code);
  pq_.decode(code, row);
  const float* c = centres_.data() + location_list(loc) * dim_;
  for (std::size_t j = 0; j < dim_; ++j) row[j] += c[j];
}

std::size_t ScaNNIndex::memory_bytes() const {
  std::shared_lock<parallel::WriterPreferringMutex> lock(mutex_);
  return lists_.memory_bytes() + (2 * centres_.size() + pq_.codebooks().size()) * sizeof(float);
}

// ---------------------------------------------------------------------------------------------------
// Search

// Per-worker buffers reused across the queries of one search call.
struct ScaNNIndex::QueryScratch {
  std::vector<float> ip_table;
  VectorCodec::Query refine_query;  // the query folded for the reorder code
};

void ScaNNIndex::prepare_query(const float* qv, QueryScratch& s, float* lut, float&) const {
  const std::size_t entries = m_ * kCentres;
  if (s.ip_table.size() != entries) s.ip_table.resize(entries);
  const float factor = metric_ == Metric::L2 ? -2.0f : -1.0f;
  pq_.inner_product_table(qv, s.ip_table.data());
  for (std::size_t i = 0; i < entries; ++i) lut[i] = factor * s.ip_table[i];
}

float ScaNNIndex::list_offset(const float*, std::size_t, float probe_score, float) const {
  // l2: ||q - c||^2 + norm_term - 2 <q, r~>;  ip: 1 - <q, c> - <q, r~> (the probe score is -<q, c>). The
  // table holds the last term.
  return metric_ == Metric::L2 ? probe_score : 1.0f + probe_score;
}

void ScaNNIndex::finish_query(const float* qv, std::size_t k, QueryScratch& s,
                              std::vector<std::pair<float, idx_t>>& found, idx_t* ids, float* out_dist) const {
  if (refine_ == RefineKind::None) {
    write_row_by_id(found, [&](idx_t loc) { return lists_.id_at(loc); }, k, ids, out_dist);
    return;
  }
  refine_codec_.prepare(qv, s.refine_query);
  TopK best(k);
  for (const auto& e : found)
    best.push(refine_codec_.distance(s.refine_query, lists_.payload_at(e.second)), lists_.id_at(e.second));
  write_row(best.sorted(), k, ids, out_dist);
}

void ScaNNIndex::search(const float* q, std::size_t nq, std::size_t k, SearchOptions& opt, idx_t* out_ids,
                        float* out_dist) const {
  check_k(k);
  std::size_t leaves_now;
  {
    std::shared_lock<parallel::WriterPreferringMutex> lock(mutex_);
    leaves_now = std::max<std::size_t>(num_leaves_, 1);
  }
  const auto leaves_knob =
      opt.knobs.take_int("leaves_to_search", static_cast<long long>(default_leaves_to_search(leaves_now)), 1);
  const auto reorder_knob =
      opt.knobs.take_int("reorder_k", static_cast<long long>(std::max<std::size_t>(100, 4 * k)), 1);
  opt.knobs.reject_unknown("ScaNNIndex", "leaves_to_search, reorder_k");
  std::vector<float> Q;
  std::size_t threads;
  const ReadLock lock = begin_search(q, nq, opt, Q, threads);
  if (nq == 0) return;
  const std::size_t probes = std::min<std::size_t>(num_leaves_, static_cast<std::size_t>(leaves_knob));
  const bool rerank = refine_ != RefineKind::None;
  const std::size_t candidates =
      rerank ? std::min<std::size_t>(std::max<std::size_t>(k, static_cast<std::size_t>(reorder_knob)), std::size_t(1) << 24)
             : k;

  std::vector<std::int32_t> probe(nq * probes);
  std::vector<float> probe_score(nq * probes);
  packed_.nearest(Q.data(), nq, dim_, probes, use_inner_product(), static_cast<int>(threads), probe.data(),
                  probe_score.data());
  scan_probes(*this, {Q.data(), probe.data(), probe_score.data(), nq, probes}, k, candidates, threads, opt.filter,
              out_ids, out_dist);
}

// ---------------------------------------------------------------------------------------------------
// Serialization

void ScaNNIndex::write(io::FileWriter& w) const {  // the caller holds the lock (hold_unchanged)
  // A file is an index ready to search: loading refuses untrained ones, so none is written.
  ANNFORGE_CHECK(trained_, ErrorKind::State, "index is not trained: call train(x) before saving it");
  io::ByteWriter meta;
  write_common(meta);
  meta.put(static_cast<std::uint64_t>(num_leaves_))
      .put(static_cast<std::uint64_t>(dpb_))
      .put(threshold_)
      .put(static_cast<std::uint8_t>(refine_))
      .put(seed_)
      .put(static_cast<std::uint8_t>(trained_ ? 1 : 0));
  w.add_owned(kTagMeta, meta.take());
  if (!trained_) return;
  w.add(kTagCentres, centres_.data(), centres_.size() * sizeof(float));
  w.add(kTagCodebooks, pq_.codebooks().data(), pq_.codebooks().size() * sizeof(float));
  write_refine_params(w, refine_codec_);
  write_list_sections(w, lists_);
}

std::unique_ptr<ScaNNIndex> ScaNNIndex::read(const std::shared_ptr<io::FileReader>& reader) {
  reader->expect_kind(io::Kind::ScaNN);
  const std::string& origin = reader->origin();
  auto corrupt = [&](const char* why) { fail(ErrorKind::IO, origin, ": corrupted ScaNNIndex: ", why); };
  const io::Bytes meta_bytes = reader->section(kTagMeta);
  io::ByteReader meta(meta_bytes, "ScaNNIndex metadata");
  const auto dim = meta.read<std::uint64_t>();
  const auto metric = meta.read<std::uint8_t>();
  (void)meta.read<idx_t>();
  const auto leaves = meta.read<std::uint64_t>(), dpb = meta.read<std::uint64_t>();
  const auto threshold = meta.read<double>();
  const auto refine = meta.read<std::uint8_t>();
  const auto seed = meta.read<std::uint64_t>();
  const auto trained = meta.read<std::uint8_t>();
  meta.expect_end();
  if (dim < 1 || dim > (1u << 20) || metric > 2) corrupt("dimension or metric out of range");
  if (leaves > kMaxLeaves || (trained && leaves < 1)) corrupt("num_leaves out of range");
  if (dpb < 1 || dpb > dim || dim % dpb != 0) corrupt("invalid dims_per_block");
  if (!(std::isnan(threshold) || (std::isfinite(threshold) && threshold >= 0))) corrupt("invalid threshold");
  if (refine > 3 || trained > 1) corrupt("invalid flags");
  if (!trained) corrupt("the index is not trained (only trained indexes are saved)");

  auto index = std::make_unique<ScaNNIndex>(dim, leaves, dpb, threshold, static_cast<Metric>(metric),
                                            static_cast<RefineKind>(refine), seed);
  io::ByteReader common(meta_bytes, "ScaNNIndex metadata");
  index->read_common(common);
  const std::size_t d = dim, m = dim / dpb;
  auto floats = [&](std::uint32_t tag, std::size_t count, std::vector<float>& out) {
    out = read_float_section(*reader, "ScaNNIndex", tag, count);
  };
  floats(kTagCentres, leaves * d, index->centres_);
  check_loaded_rows(index->centres_.data(), leaves, d, origin, "ScaNNIndex leaf centres");
  std::vector<float> books;
  floats(kTagCodebooks, m * kCentres * dpb, books);
  check_loaded_rows(books.data(), m * kCentres, dpb, origin, "ScaNNIndex codebooks");
  index->pq_.set_codebooks(books.data());
  read_refine_params(*reader, "ScaNNIndex", index->refine_codec_);

  index->lists_ = invlists::InvertedLists(leaves, m, 4, index->refine_bytes(), index->metric_ == Metric::L2);
  const ScaNNIndex& loaded = *index;
  read_list_sections(
      *reader, {"ScaNNIndex", "leaf", "reorder"}, [&](idx_t id) { return loaded.id_below_next(id); },
      [&](const std::uint8_t* stored, std::size_t entries) {
        if (refine == static_cast<std::uint8_t>(RefineKind::F32))
          check_loaded_finite(reinterpret_cast<const float*>(stored), entries * d, origin, "ScaNNIndex reorder vectors");
        if (refine == static_cast<std::uint8_t>(RefineKind::F16))
          check_loaded_finite_f16(reinterpret_cast<const std::uint16_t*>(stored), entries * d, origin,
                                  "ScaNNIndex reorder vectors");
      },
      index->lists_);
  index->trained_ = true;
  index->packed_ = cluster::PackedCentroids(index->centres_.data(), leaves, d);
  if (index->metric_ == Metric::L2 &&  // recomputed from the codes rather than stored
      !index->lists_.set_norm_terms([&](std::size_t l, const std::uint8_t* code) { return loaded.norm_term(l, code); }))
    corrupt("a vector's norm term is not finite");
  return index;
}

}  // namespace annforge
