#include "annforge/index/vector_index.h"

#include <cmath>
#include <limits>

#include "annforge/simd/kernels.h"
#include "annforge/storage/id_map.h"

namespace annforge {

double SearchKnobs::take(const std::string& name, double fallback) {
  auto it = values_.find(name);
  if (it == values_.end()) return fallback;
  const double v = it->second;
  values_.erase(it);
  return v;
}

long long SearchKnobs::take_int(const std::string& name, long long fallback, long long min_value) {
  const double v = take(name, static_cast<double>(fallback));
  ANNFORGE_CHECK(std::isfinite(v) && v == std::floor(v) && v >= static_cast<double>(min_value) && v < 9.0e15,
                 ErrorKind::Value, "search parameter '", name, "' must be an integer >= ", min_value, ", got ", v);
  return static_cast<long long>(v);
}

void SearchKnobs::reject_unknown(const char* family, const char* known) const {
  if (values_.empty()) return;
  std::string names;
  for (const auto& kv : values_) names += (names.empty() ? "'" : ", '") + kv.first + "'";
  fail(ErrorKind::Value, "unknown search parameter ", names, " for ", family, " (accepted: ", known, ")");
}

VectorIndex::VectorIndex(std::size_t dim, Metric metric) : dim_(dim), metric_(metric) {
  ANNFORGE_CHECK(dim >= 1 && dim <= (1u << 20), ErrorKind::Value, "dim must be in [1, 1048576], got ", dim);
}

namespace {

constexpr std::size_t kFiniteBlock = 1024;

// True when x[begin, end) holds a NaN or an infinity: the sum of x*0 is NaN exactly then. Independent
// lanes, because one float sum is a serial chain the compiler may not reorder (~0.4 us per 384-d query).
bool block_has_non_finite(const float* x, std::size_t begin, std::size_t end) {
  constexpr std::size_t kLanes = 16;
  float lanes[kLanes] = {};
  std::size_t i = begin;
  for (; i + kLanes <= end; i += kLanes)
    for (std::size_t l = 0; l < kLanes; ++l) lanes[l] += x[i + l] * 0.0f;
  float acc = 0.0f;
  for (; i < end; ++i) acc += x[i] * 0.0f;
  for (float lane : lanes) acc += lane;
  return acc != acc;
}

}  // namespace

void VectorIndex::check_finite(const float* x, std::size_t n, std::size_t dim, const char* what) {
  const std::size_t total = n * dim;
  for (std::size_t start = 0; start < total; start += kFiniteBlock) {
    const std::size_t end = start + kFiniteBlock < total ? start + kFiniteBlock : total;
    if (block_has_non_finite(x, start, end)) {
      for (std::size_t i = start; i < end; ++i)
        if (!std::isfinite(x[i]))
          fail(ErrorKind::Value, what, " contains ", std::isnan(x[i]) ? "NaN" : "infinity", " at row ", i / dim,
               ", column ", i % dim);
    }
  }
}

void VectorIndex::check_storable(const float* x, std::size_t n, const char* what) const {
  check_finite(x, n, dim_, what);
  if (metric_ == Metric::Cosine) return;
  for (std::size_t i = 0; i < n; ++i) {
    const float* row = x + i * dim_;
    // In double: the float sum would itself overflow for the rows this refuses. Lanes, as in check_finite.
    constexpr std::size_t kLanes = 8;
    double lanes[kLanes] = {};
    std::size_t j = 0;
    for (; j + kLanes <= dim_; j += kLanes)
      for (std::size_t l = 0; l < kLanes; ++l) lanes[l] += static_cast<double>(row[j + l]) * row[j + l];
    double sq = 0;
    for (; j < dim_; ++j) sq += static_cast<double>(row[j]) * row[j];
    for (double lane : lanes) sq += lane;
    if (!(sq <= static_cast<double>(kMaxLoadedSqNorm)))
      fail(ErrorKind::Value, what, " row ", i, " has a squared norm of ", sq, ", above ", kMaxLoadedSqNorm,
           ": its ", metric_name(metric_), " distances would overflow float32 (scale the data down)");
  }
}

void VectorIndex::check_k(long long k) {
  ANNFORGE_CHECK(k >= 1, ErrorKind::Value, "k must be >= 1, got ", k);
  ANNFORGE_CHECK(k <= kMaxK, ErrorKind::Value, "k must be <= ", kMaxK, ", got ", k);
}

void VectorIndex::check_loaded_finite(const float* x, std::size_t n, const std::string& origin, const char* what) {
  for (std::size_t start = 0; start < n; start += kFiniteBlock) {
    const std::size_t end = start + kFiniteBlock < n ? start + kFiniteBlock : n;
    if (block_has_non_finite(x, start, end)) fail(ErrorKind::IO, origin, ": corrupted ", what, ": holds NaN or infinity");
  }
}

void VectorIndex::check_loaded_finite_f16(const std::uint16_t* x, std::size_t n, const std::string& origin,
                                          const char* what) {
  std::uint16_t all_ones = 0;  // exponent bits all set means inf or NaN
  for (std::size_t i = 0; i < n; ++i) all_ones |= static_cast<std::uint16_t>((x[i] & 0x7c00u) == 0x7c00u);
  if (all_ones) fail(ErrorKind::IO, origin, ": corrupted ", what, ": holds NaN or infinity");
}

void VectorIndex::check_loaded_rows(const float* rows, std::size_t n, std::size_t dim, const std::string& origin,
                                    const char* what) {
  check_loaded_finite(rows, n * dim, origin, what);
  const auto& K = simd::kernels();
  for (std::size_t i = 0; i < n; ++i) {
    const float sq = K.dot(rows + i * dim, rows + i * dim, dim);
    if (!(sq <= kMaxLoadedSqNorm))
      fail(ErrorKind::IO, origin, ": corrupted ", what, ": row ", i, " has a squared norm above 1e37");
  }
}

void VectorIndex::prepare_rows(const float* x, std::size_t n, std::vector<float>& out) const {
  out.assign(x, x + n * dim_);
  if (metric_ != Metric::Cosine) return;
  const auto& K = simd::kernels();
  for (std::size_t i = 0; i < n; ++i) {
    float* row = out.data() + i * dim_;
    const float norm2 = K.dot(row, row, dim_);
    if (norm2 > 0.0f && std::isfinite(norm2)) {
      const float inv = 1.0f / std::sqrt(norm2);
      for (std::size_t j = 0; j < dim_; ++j) row[j] *= inv;
    } else if (!std::isfinite(norm2)) {
      // Finite inputs whose squared norm overflows float: normalise in double.
      double s = 0;
      for (std::size_t j = 0; j < dim_; ++j) s += static_cast<double>(row[j]) * row[j];
      const double inv = 1.0 / std::sqrt(s);
      for (std::size_t j = 0; j < dim_; ++j) row[j] = static_cast<float>(row[j] * inv);
    }
  }
}

void VectorIndex::assign_ids(const idx_t* ids, std::size_t n, idx_t* out_ids) {
  if (ids) {
    validate_new_ids(ids, n);
    for (std::size_t i = 0; i < n; ++i) {
      out_ids[i] = ids[i];
      // ids[i] <= 2^63 - 1, so the unsigned next id (at most 2^63) cannot overflow.
      const auto next = static_cast<std::uint64_t>(ids[i]) + 1;
      if (next > next_id_) next_id_ = next;
    }
  } else {
    // Automatic ids next_id_ .. next_id_ + n - 1 must all be <= 2^63 - 1. Checked before anything
    // changes, so a refused call leaves the index as it was.
    constexpr auto kIdLimit = static_cast<std::uint64_t>(std::numeric_limits<idx_t>::max()) + 1;  // 2^63
    ANNFORGE_CHECK(n <= kIdLimit - next_id_, ErrorKind::Value, "cannot assign ", n,
                   " automatic id(s): the index already used id ", next_id_ - 1, " and ids must fit in int64 (max ",
                   std::numeric_limits<idx_t>::max(), "); pass explicit ids below that");
    for (std::size_t i = 0; i < n; ++i) out_ids[i] = static_cast<idx_t>(next_id_ + i);
    next_id_ += n;
  }
}

void VectorIndex::write_common(io::ByteWriter& w) const {
  w.put(static_cast<std::uint64_t>(dim_)).put(static_cast<std::uint8_t>(metric_)).put(next_id_);
}

void VectorIndex::read_common(io::ByteReader& r) {
  const auto dim = r.read<std::uint64_t>();
  const auto metric = r.read<std::uint8_t>();
  const auto next = r.read<std::uint64_t>();  // at most 2^63: see next_id_
  if (dim < 1 || dim > (1u << 20)) r.corrupt("dimension out of range");
  if (metric > 2) r.corrupt("unknown metric code");
  if (next > static_cast<std::uint64_t>(std::numeric_limits<idx_t>::max()) + 1) r.corrupt("next id out of range");
  dim_ = static_cast<std::size_t>(dim);
  metric_ = static_cast<Metric>(metric);
  next_id_ = next;
}

void VectorIndex::serialise(const WriterSink& sink) const {
  hold_unchanged([&] {
    io::FileWriter w(kind());
    write(w);
    sink(w);
  });
}

void VectorIndex::save(const std::string& path) const {
  serialise([&](const io::FileWriter& w) { w.write_file(path); });
}

std::vector<unsigned char> VectorIndex::to_bytes() const {
  std::vector<unsigned char> out;
  serialise([&](const io::FileWriter& w) { out = w.to_bytes(); });
  return out;
}

}  // namespace annforge
