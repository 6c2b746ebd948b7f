#include "annforge/cluster/kmeans.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "annforge/common.h"
#include "annforge/parallel/executor.h"
#include "annforge/util/topk.h"

namespace annforge::cluster {

namespace {

constexpr std::size_t kPointChunk = 64;             // points per task (fixed: results do not depend on threads)
constexpr std::size_t kPackedBytes = 256 * 1024;    // centroid block streamed per kernel call (stays in L2)
constexpr std::size_t kPlusPlusPoolPerCentroid = 8; // k-means++ seeds from a pool of this many points per centroid
constexpr std::size_t kPlusPlusMinPool = 4096;

std::size_t div_up(std::size_t a, std::size_t b) { return (a + b - 1) / b; }

// `count` distinct indices in [0, n), in increasing order (partial Fisher-Yates with our own PRNG).
std::vector<std::size_t> sample_indices(std::size_t n, std::size_t count, SplitMix64& rng) {
  std::vector<std::size_t> perm(n);
  for (std::size_t i = 0; i < n; ++i) perm[i] = i;
  for (std::size_t i = 0; i < count; ++i) std::swap(perm[i], perm[i + rng.below(n - i)]);
  perm.resize(count);
  std::sort(perm.begin(), perm.end());
  return perm;
}

void normalise_rows(float* c, std::size_t k, std::size_t d) {
  for (std::size_t i = 0; i < k; ++i) {
    double s = 0;
    for (std::size_t j = 0; j < d; ++j) s += static_cast<double>(c[i * d + j]) * c[i * d + j];
    if (s > 0) {
      const float inv = static_cast<float>(1.0 / std::sqrt(s));
      for (std::size_t j = 0; j < d; ++j) c[i * d + j] *= inv;
    }
  }
}

// k-means++ seeding over a pool of points: each next centre is drawn with probability proportional
// to the squared distance to the nearest centre chosen so far.
void seed_plus_plus(const float* xs, std::size_t ns, std::size_t d, std::size_t k, SplitMix64& rng,
                    float* centroids, KMeansAccelerator* accelerator) {
  const auto& K = simd::kernels();
  const std::size_t pool_size = std::min(ns, std::max(kPlusPlusMinPool, k * kPlusPlusPoolPerCentroid));
  std::vector<float> pool_buf;
  const float* pool = xs;
  if (pool_size < ns) {
    const auto idx = sample_indices(ns, pool_size, rng);
    pool_buf.resize(pool_size * d);
    for (std::size_t i = 0; i < pool_size; ++i) std::copy(xs + idx[i] * d, xs + idx[i] * d + d, pool_buf.data() + i * d);
    pool = pool_buf.data();
  }
  std::vector<float> mind(pool_size, std::numeric_limits<float>::infinity()), dist(pool_size);
  std::size_t chosen = rng.below(pool_size);
  for (std::size_t c = 0; c < k; ++c) {
    std::copy(pool + chosen * d, pool + chosen * d + d, centroids + c * d);
    if (c + 1 == k) break;
    double total = 0;
    if (accelerator) {
      accelerator->lower_min_distances(pool, pool_size, d, centroids + c * d, mind.data());
      for (std::size_t i = 0; i < pool_size; ++i) total += mind[i];
    } else {
      K.l2_sqr_rows(centroids + c * d, pool, pool_size, d, dist.data());
      for (std::size_t i = 0; i < pool_size; ++i) {
        mind[i] = std::min(mind[i], dist[i]);
        total += mind[i];
      }
    }
    if (!(total > 0)) {  // every pool point coincides with a centre: any point will do
      chosen = rng.below(pool_size);
      continue;
    }
    double target = rng.uniform() * total, acc = 0;
    chosen = pool_size - 1;
    for (std::size_t i = 0; i < pool_size; ++i) {
      acc += mind[i];
      if (acc > target && mind[i] > 0) {
        chosen = i;
        break;
      }
    }
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------------
// PackedCentroids

PackedCentroids::PackedCentroids(const float* centroids, std::size_t k, std::size_t d)
    : kernels_(&simd::kernels()), k_(k), d_(d) {
  packed_.resize(kernels_->packed_size(k, d));
  kernels_->pack_rows(centroids, k, d, packed_.mutable_data());
  sq_norms_.resize(k);
  for (std::size_t j = 0; j < k; ++j) sq_norms_[j] = kernels_->dot(centroids + j * d, centroids + j * d, d);
}

void PackedCentroids::nearest(const float* x, std::size_t n, std::size_t ldx, std::size_t m, bool inner_product,
                              int num_threads, std::int32_t* labels, float* score) const {
  ANNFORGE_ASSERT(kernels_ != nullptr && m >= 1);
  const auto& K = *kernels_;
  const std::size_t d = d_, k = k_, panel = K.panel_rows;
  const std::size_t block = std::max(panel, kPackedBytes / (sizeof(float) * d) / panel * panel);
  const std::size_t chunks = div_up(n, kPointChunk);
  const std::size_t ldo = std::min(block, k);
  // Per-worker scratch, allocated once per call (not per chunk: small-d calls are dominated by it).
  struct Scratch {
    std::vector<float> dots, best, scores;
    std::vector<std::int32_t> best_label;
    std::vector<TopKBuffer> heaps;  // m > 1: most of the k scores are offered, so append and cut in batches
  };
  std::vector<Scratch> scratch(parallel::resolve_threads(num_threads));
  parallel::parallel_for(chunks, num_threads, [&](std::size_t chunk, std::size_t worker) {
    const std::size_t i0 = chunk * kPointChunk, ni = std::min(kPointChunk, n - i0);
    Scratch& s = scratch[worker];
    if (s.dots.size() < kPointChunk * ldo) s.dots.resize(kPointChunk * ldo);
    if (s.scores.size() < ldo) s.scores.resize(ldo);
    std::vector<float>& dots = s.dots;
    std::vector<float>& best = s.best;
    std::vector<std::int32_t>& best_label = s.best_label;
    std::vector<TopKBuffer>& heaps = s.heaps;
    if (m == 1) {
      best.assign(ni, std::numeric_limits<float>::infinity());
      best_label.assign(ni, -1);
    } else {
      heaps.resize(ni);
      for (auto& h : heaps) h.reset(m);
    }
    for (std::size_t b = 0; b < k; b += block) {
      const std::size_t nb = std::min(block, k - b);
      K.dot_packed(x + i0 * ldx, ni, ldx, packed_.data() + b * d, nb, d, dots.data(), ldo);
      for (std::size_t i = 0; i < ni; ++i) {
        const float* dot = dots.data() + i * ldo;
        if (m == 1) {
          // Two vectorisable passes instead of one with index bookkeeping (which the baseline ISA
          // cannot vectorise): the scores and their minimum, then the first index holding it. Same
          // answer as a sequential "first strict minimum" scan.
          const float* cn = sq_norms_.data() + b;
          const float sign = inner_product ? 0.0f : 1.0f, scale = inner_product ? -1.0f : -2.0f;
          float* __restrict sc = s.scores.data();
          constexpr std::size_t kLanes = 8;  // independent minima: a vector register, no reassociation
          float lane_lo[kLanes];
          for (std::size_t t = 0; t < kLanes; ++t) lane_lo[t] = std::numeric_limits<float>::infinity();
          std::size_t j = 0;
          for (; j + kLanes <= nb; j += kLanes)
            for (std::size_t t = 0; t < kLanes; ++t) {
              const float v = sign * cn[j + t] + scale * dot[j + t];
              sc[j + t] = v;
              lane_lo[t] = v < lane_lo[t] ? v : lane_lo[t];
            }
          float lo = std::numeric_limits<float>::infinity();
          for (; j < nb; ++j) {
            const float v = sign * cn[j] + scale * dot[j];
            sc[j] = v;
            lo = v < lo ? v : lo;
          }
          for (std::size_t t = 0; t < kLanes; ++t) lo = lane_lo[t] < lo ? lane_lo[t] : lo;
          float bs = best[i];
          std::int32_t bl = best_label[i];
          if (lo < bs) {
            j = 0;
            while (sc[j] != lo) ++j;
            bs = lo;
            bl = static_cast<std::int32_t>(b + j);
          }
          best[i] = bs;
          best_label[i] = bl;
        } else {
          TopKBuffer& heap = heaps[i];
          for (std::size_t j = 0; j < nb; ++j) {
            const float s = inner_product ? -dot[j] : sq_norms_[b + j] - 2.0f * dot[j];
            if (s <= heap.threshold()) heap.push(s, static_cast<idx_t>(b + j));
          }
        }
      }
    }
    for (std::size_t i = 0; i < ni; ++i) {
      const float xn = inner_product ? 0.0f : K.dot(x + (i0 + i) * ldx, x + (i0 + i) * ldx, d);
      auto finish = [&](float s) { return inner_product ? s : std::max(0.0f, s + xn); };
      if (m == 1) {
        // Every point gets a centre (callers index lists with it): when no score was finite and
        // ordered (overflow to inf, or NaN), the first centre, at distance +inf.
        labels[i0 + i] = best_label[i] < 0 ? 0 : best_label[i];
        score[i0 + i] = best_label[i] < 0 ? std::numeric_limits<float>::infinity() : finish(best[i]);
      } else {
        auto& sorted = heaps[i].sorted();
        for (std::size_t r = 0; r < m; ++r) {
          if (r < sorted.size()) {
            labels[(i0 + i) * m + r] = static_cast<std::int32_t>(sorted[r].second);
            score[(i0 + i) * m + r] = finish(sorted[r].first);
          } else {
            labels[(i0 + i) * m + r] = -1;
            score[(i0 + i) * m + r] = std::numeric_limits<float>::infinity();
          }
        }
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------------
// Lloyd iterations

KMeansResult kmeans(const float* x, std::size_t n, std::size_t d, std::size_t k, const KMeansOptions& opt) {
  ANNFORGE_CHECK(d >= 1, ErrorKind::Value, "k-means needs dim >= 1");
  ANNFORGE_CHECK(k >= 1, ErrorKind::Value, "k-means needs k >= 1, got ", k);
  ANNFORGE_CHECK(n >= k, ErrorKind::Value, "k-means needs at least k = ", k, " training points, got ", n);
  ANNFORGE_CHECK(k <= static_cast<std::size_t>(std::numeric_limits<std::int32_t>::max()), ErrorKind::Value,
                 "k-means: k is too large");
  ANNFORGE_CHECK(opt.niter >= 0, ErrorKind::Value, "k-means needs niter >= 0, got ", opt.niter);
  SplitMix64 rng(opt.seed * 0x2545F4914F6CDD1Dull + 0x1234567);

  // Training sample.
  std::vector<float> sample;
  const float* xs = x;
  std::size_t ns = n;
  if (opt.max_points_per_centroid > 0 && k <= n / opt.max_points_per_centroid &&
      n > k * opt.max_points_per_centroid) {
    ns = k * opt.max_points_per_centroid;
    const auto idx = sample_indices(n, ns, rng);
    sample.resize(ns * d);
    for (std::size_t i = 0; i < ns; ++i) std::copy(x + idx[i] * d, x + idx[i] * d + d, sample.data() + i * d);
    xs = sample.data();
  }

  KMeansResult res;
  res.centroids.resize(k * d);
  float* C = res.centroids.data();
  if (opt.init == KMeansInit::Random) {
    const auto idx = sample_indices(ns, k, rng);
    for (std::size_t c = 0; c < k; ++c) std::copy(xs + idx[c] * d, xs + idx[c] * d + d, C + c * d);
  } else {
    seed_plus_plus(xs, ns, d, k, rng, C, opt.accelerator);
  }
  if (opt.spherical) normalise_rows(C, k, d);

  std::vector<std::int32_t> labels(ns);
  std::vector<float> scores(ns);
  std::vector<double> sums(k * d);
  std::vector<std::size_t> counts(k);
  const std::size_t workers = parallel::resolve_threads(opt.num_threads);
  for (int it = 0; it < opt.niter; ++it) {
    if (opt.accelerator) {
      opt.accelerator->nearest(xs, ns, d, C, k, opt.spherical, labels.data(), scores.data());
    } else {
      PackedCentroids packed(C, k, d);
      packed.nearest(xs, ns, d, 1, opt.spherical, opt.num_threads, labels.data(), scores.data());
    }
    double objective = 0;
    for (std::size_t i = 0; i < ns; ++i) objective += opt.spherical ? 1.0 + scores[i] : scores[i];
    res.objective.push_back(objective);

    std::fill(counts.begin(), counts.end(), 0);
    for (std::size_t i = 0; i < ns; ++i) ++counts[static_cast<std::size_t>(labels[i])];
    std::fill(sums.begin(), sums.end(), 0.0);
    // Each task owns a range of centroids and adds its points in index order: a fixed summation order
    // whatever the split, and whole rows are read front to back (a split over dimensions would stride
    // through the sample once per chunk and stall on memory).
    const std::size_t tasks = std::min(k, workers);  // one task per worker: each pass skips the fewest rows
    const bool summed = opt.accelerator && opt.accelerator->centroid_sums(xs, ns, d, labels.data(), k, sums.data());
    if (!summed) parallel::parallel_for(tasks, opt.num_threads, [&](std::size_t t, std::size_t) {
      const std::size_t c0 = k * t / tasks, c1 = k * (t + 1) / tasks;
      for (std::size_t i = 0; i < ns; ++i) {
        const auto c = static_cast<std::size_t>(labels[i]);
        if (c < c0 || c >= c1) continue;
        double* __restrict s = sums.data() + c * d;
        const float* __restrict row = xs + i * d;
        for (std::size_t j = 0; j < d; ++j) s[j] += row[j];
      }
    });
    for (std::size_t c = 0; c < k; ++c) {
      if (counts[c] == 0) continue;
      const double inv = 1.0 / static_cast<double>(counts[c]);
      for (std::size_t j = 0; j < d; ++j) C[c * d + j] = static_cast<float>(sums[c * d + j] * inv);
    }
    // Empty clusters: split a large cluster in two (chosen with probability ~ its size), as faiss does.
    for (std::size_t c = 0; c < k; ++c) {
      if (counts[c] != 0) continue;
      std::size_t big = 0;
      for (std::size_t j = 0;; j = (j + 1) % k) {
        const double p = (static_cast<double>(counts[j]) - 1.0) / static_cast<double>(ns - k + 1);
        if (rng.uniform() < p) {
          big = j;
          break;
        }
      }
      constexpr float kEps = 1.0f / 1024.0f;
      for (std::size_t j = 0; j < d; ++j) {
        const float v = C[big * d + j];
        const float sign = (j % 2 == 0) ? 1.0f : -1.0f;
        C[c * d + j] = v * (1.0f + sign * kEps);
        C[big * d + j] = v * (1.0f - sign * kEps);
      }
      counts[c] = counts[big] / 2;
      counts[big] -= counts[c];
      ++res.empty_splits;
    }
    if (opt.spherical) normalise_rows(C, k, d);
  }

  if (!opt.assign_all) return res;
  res.assignment.resize(n);
  std::vector<float> final_scores(n);
  if (opt.accelerator) {
    opt.accelerator->nearest(x, n, d, C, k, opt.spherical, res.assignment.data(), final_scores.data());
  } else {
    PackedCentroids packed(C, k, d);
    packed.nearest(x, n, d, 1, opt.spherical, opt.num_threads, res.assignment.data(), final_scores.data());
  }
  return res;
}

}  // namespace annforge::cluster
