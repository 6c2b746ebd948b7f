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

void VectorIndex::check_finite(const float* x, std::size_t n, std::size_t dim, const char* what) {
  const std::size_t total = n * dim;
  // Sum of x*0 is NaN exactly when some element is NaN or infinite; blocks keep it cheap and vectorisable.
  constexpr std::size_t kBlock = 1024;
  for (std::size_t start = 0; start < total; start += kBlock) {
    const std::size_t end = start + kBlock < total ? start + kBlock : total;
    float acc = 0.0f;
    for (std::size_t i = start; i < end; ++i) acc += x[i] * 0.0f;
    if (acc != acc) {
      for (std::size_t i = start; i < end; ++i)
        if (!std::isfinite(x[i]))
          fail(ErrorKind::Value, what, " contains ", std::isnan(x[i]) ? "NaN" : "infinity", " at row ", i / dim,
               ", column ", i % dim);
    }
  }
}

void VectorIndex::check_k(std::size_t k) {
  ANNFORGE_CHECK(k >= 1, ErrorKind::Value, "k must be >= 1, got ", k);
  ANNFORGE_CHECK(k <= (1u << 24), ErrorKind::Value, "k must be <= 16777216, got ", k);
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
      if (ids[i] >= next_id_) next_id_ = ids[i] + 1;
    }
  } else {
    ANNFORGE_CHECK(next_id_ <= std::numeric_limits<idx_t>::max() - static_cast<idx_t>(n), ErrorKind::Value,
                   "automatic ids would overflow int64");
    for (std::size_t i = 0; i < n; ++i) out_ids[i] = next_id_ + static_cast<idx_t>(i);
    next_id_ += static_cast<idx_t>(n);
  }
}

void VectorIndex::write_common(io::ByteWriter& w) const {
  w.put(static_cast<std::uint64_t>(dim_)).put(static_cast<std::uint8_t>(metric_)).put(next_id_);
}

void VectorIndex::read_common(io::ByteReader& r) {
  const auto dim = r.read<std::uint64_t>();
  const auto metric = r.read<std::uint8_t>();
  const auto next = r.read<idx_t>();
  if (dim < 1 || dim > (1u << 20)) r.corrupt("dimension out of range");
  if (metric > 2) r.corrupt("unknown metric code");
  if (next < 0) r.corrupt("negative next id");
  dim_ = static_cast<std::size_t>(dim);
  metric_ = static_cast<Metric>(metric);
  next_id_ = next;
}

void VectorIndex::save(const std::string& path) const {
  io::FileWriter w(kind());
  write(w);
  w.write_file(path);
}

std::vector<unsigned char> VectorIndex::to_bytes() const {
  io::FileWriter w(kind());
  write(w);
  return w.to_bytes();
}

}  // namespace annforge
