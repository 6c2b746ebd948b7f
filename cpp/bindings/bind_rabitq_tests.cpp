// Test hooks for the RaBitQ codec (in `annforge._core._testing`; no index uses the codec yet):
//
//   _RaBitQCodec(dim, metric, bits, seed, rotation="dense"|"hadamard")   .fit(centroid or rows) .encode(x) -> uint8 [n, record_bytes]
//       .estimate(q, codes, level=None, eps0=1.9, query_bits=None, stage_bits=None) -> (est, lower, upper)
//       .rotation() -> float32 [padded_dim, dim], .decode(codes) -> float32 [n, dim], .centroid, .padded_dim, .record_bytes, .bits, .num_factors
//   _rabitq_kernel(level, name, codes, nwords, cbits, qplanes) -> uint32 [n]   (one kernel, one level)
//   _rabitq_kernel_level() -> str   (the level the codec's default kernels run at now)
//   _rabitq_kernel_variants() -> [str]   (the level names above accepts here, AVX-512 variants included)
#include <cmath>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "annforge/codec/rabitq.h"
#include "annforge/simd/rabitq_kernels.h"
#include "bind_common.h"

#include <pybind11/stl.h>

namespace annforge::py_bindings {
namespace {

using U8Array = py::array_t<std::uint8_t, py::array::c_style | py::array::forcecast>;
using U64Array = py::array_t<std::uint64_t, py::array::c_style | py::array::forcecast>;

// A level name, or one of the AVX-512 variants by name: "avx512_plain" (byte look-up popcounts) and
// "avx512_vpopcnt" (VPOPCNTDQ; ValueError where this CPU lacks it).
const simd::RaBitQKernels& rabitq_table(const std::optional<std::string>& level) {
  if (!level) return simd::rabitq_kernels();
  if (*level == "avx512_plain") return simd::rabitq_kernels_avx512_plain();
  if (*level == "avx512_vpopcnt") {
    ANNFORGE_CHECK(simd::rabitq_vpopcnt_available(), ErrorKind::Value, "the AVX-512 VPOPCNTDQ kernels do not run here");
    return simd::rabitq_kernels_for(simd::Level::AVX512);
  }
  return simd::rabitq_kernels_for(simd::parse_level(level->c_str()));
}

class RaBitQCodecHook {
 public:
  RaBitQCodecHook(std::size_t dim, const std::string& metric, unsigned bits, std::uint64_t seed,
                  const std::string& rotation)
      : codec_(dim, parse_metric(metric), bits, seed, codec::RaBitQ::parse_rotation(rotation, "rotation")) {}

  // A 1-D input is the centroid; a 2-D input is data whose mean (of unit rows for cosine) becomes it.
  void fit(const py::handle& obj) {
    const std::size_t dim = codec_.dim();
    auto view = as_matrix(obj, dim, "fit data");
    ANNFORGE_CHECK(view.rows >= 1, ErrorKind::Value, "RaBitQ: fit needs at least one row");
    const py::array as_array = py::array::ensure(obj);
    const bool rows_given = as_array && as_array.ndim() == 2;
    std::vector<double> sum(dim, 0.0);
    for (std::size_t i = 0; i < view.rows; ++i) {
      const float* row = view.data + i * dim;
      double scale = 1.0;
      if (codec_.metric() == Metric::Cosine && rows_given) {
        double sq = 0;
        for (std::size_t j = 0; j < dim; ++j) sq += static_cast<double>(row[j]) * row[j];
        ANNFORGE_CHECK(sq > 0, ErrorKind::Value, "RaBitQ: cosine fit data has a zero row");
        scale = 1.0 / std::sqrt(sq);
      }
      for (std::size_t j = 0; j < dim; ++j) sum[j] += row[j] * scale;
    }
    centroid_.assign(dim, 0.0f);
    for (std::size_t j = 0; j < dim; ++j) centroid_[j] = static_cast<float>(sum[j] / view.rows);
    for (float c : centroid_)
      ANNFORGE_CHECK(std::isfinite(c), ErrorKind::Value, "RaBitQ: fit data contains NaN or infinity");
  }

  U8Array encode(const py::handle& obj) const {
    need_fit();
    auto view = as_matrix(obj, codec_.dim(), "x");
    std::vector<std::uint64_t> buffer(view.rows * codec_.record_bytes() / 8);
    auto* records = reinterpret_cast<std::uint8_t*>(buffer.data());
    {
      py::gil_scoped_release release;
      codec_.encode(view.data, view.rows, centroid_.data(), records);
    }
    U8Array out(std::vector<py::ssize_t>{static_cast<py::ssize_t>(view.rows),
                                         static_cast<py::ssize_t>(codec_.record_bytes())});
    if (!buffer.empty()) std::memcpy(out.mutable_data(), records, buffer.size() * 8);
    return out;
  }

  py::tuple estimate(const py::handle& query, const py::handle& codes_obj, const std::optional<std::string>& level,
                     double eps0, std::optional<unsigned> query_bits, std::optional<unsigned> stage_bits) const {
    need_fit();
    auto q = as_matrix(query, codec_.dim(), "query");
    ANNFORGE_CHECK(q.rows == 1, ErrorKind::Value, "RaBitQ: estimate takes one query, got ", q.rows);
    U8Array codes = U8Array::ensure(codes_obj);
    if (!codes) {
      PyErr_Clear();
      fail(ErrorKind::Type, "RaBitQ: codes must be a uint8 array");
    }
    ANNFORGE_CHECK(codes.ndim() == 2 && static_cast<std::size_t>(codes.shape(1)) == codec_.record_bytes(),
                   ErrorKind::Value, "RaBitQ: codes must have shape (n, ", codec_.record_bytes(), ")");
    const std::size_t n = static_cast<std::size_t>(codes.shape(0));
    const simd::RaBitQKernels& kernels = rabitq_table(level);
    // The kernels read the planes as 64-bit words: NumPy's own buffer when it is 8-byte aligned (it
    // normally is), an aligned copy otherwise.
    const std::uint8_t* records = codes.data();
    std::vector<std::uint64_t> aligned;
    if (reinterpret_cast<std::uintptr_t>(records) % 8 != 0) {
      aligned.resize(n * codec_.record_bytes() / 8);
      std::memcpy(aligned.data(), records, n * codec_.record_bytes());
      records = reinterpret_cast<const std::uint8_t*>(aligned.data());
    }
    py::array_t<float> est(static_cast<py::ssize_t>(n)), lower(static_cast<py::ssize_t>(n)),
        upper(static_cast<py::ssize_t>(n));
    codec::RaBitQ::Query prepared;
    codec_.prepare_query(q.data, centroid_.data(), query_bits.value_or(codec_.default_query_bits()), prepared);
    {
      py::gil_scoped_release release;
      codec_.estimate(prepared, records, n, stage_bits.value_or(codec_.bits()), eps0, kernels, est.mutable_data(),
                      lower.mutable_data(), upper.mutable_data());
    }
    return py::make_tuple(est, lower, upper);
  }

  // The vectors the codes stand for (codec decode against the fitted centroid).
  py::array_t<float> decode(const U8Array& codes) const {
    need_fit();
    const std::size_t rb = codec_.record_bytes();
    ANNFORGE_CHECK(codes.ndim() == 2 && static_cast<std::size_t>(codes.shape(1)) == rb, ErrorKind::Value,
                   "codes must be [n, ", rb, "]");
    const std::size_t n = static_cast<std::size_t>(codes.shape(0));
    py::array_t<float> out(std::vector<py::ssize_t>{static_cast<py::ssize_t>(n), static_cast<py::ssize_t>(codec_.dim())});
    std::vector<std::uint64_t> aligned(rb / 8);  // records are read as 64-bit words
    for (std::size_t i = 0; i < n; ++i) {
      std::memcpy(aligned.data(), codes.data() + i * rb, rb);
      codec_.decode(reinterpret_cast<const std::uint8_t*>(aligned.data()), centroid_.data(),
                    out.mutable_data() + i * codec_.dim());
    }
    return out;
  }

  py::array_t<float> rotation() const {
    py::array_t<float> out(std::vector<py::ssize_t>{static_cast<py::ssize_t>(codec_.padded_dim()),
                                                    static_cast<py::ssize_t>(codec_.dim())});
    const std::vector<float> matrix = codec_.rotation_matrix();
    std::memcpy(out.mutable_data(), matrix.data(), matrix.size() * sizeof(float));
    return out;
  }

  py::object centroid() const {
    if (centroid_.empty()) return py::none();
    py::array_t<float> out(static_cast<py::ssize_t>(centroid_.size()));
    std::memcpy(out.mutable_data(), centroid_.data(), centroid_.size() * sizeof(float));
    return std::move(out);
  }

  const codec::RaBitQ& codec() const { return codec_; }

 private:
  void need_fit() const {
    ANNFORGE_CHECK(!centroid_.empty(), ErrorKind::State, "RaBitQ: call fit() before encode() or estimate()");
  }

  codec::RaBitQ codec_;
  std::vector<float> centroid_;
};

py::array_t<std::uint32_t> run_rabitq_kernel(const std::string& level, const std::string& name,
                                             const py::handle& codes_obj, std::size_t nwords, std::size_t cbits,
                                             const py::handle& qplanes_obj, const py::object& rows_obj) {
  const simd::RaBitQKernels& kernels = rabitq_table(level);
  U64Array codes = U64Array::ensure(codes_obj), qplanes = U64Array::ensure(qplanes_obj);
  if (!codes || !qplanes) {
    PyErr_Clear();
    fail(ErrorKind::Type, "rabitq kernel: codes and qplanes must be uint64 arrays");
  }
  ANNFORGE_CHECK(codes.ndim() == 2 && qplanes.ndim() == 2 && static_cast<std::size_t>(qplanes.shape(1)) == nwords,
                 ErrorKind::Value, "rabitq kernel: codes (n, stride) and qplanes (qbits, nwords) expected");
  const std::size_t n = static_cast<std::size_t>(codes.shape(0)), stride = static_cast<std::size_t>(codes.shape(1));
  const std::size_t qbits = static_cast<std::size_t>(qplanes.shape(0));
  const std::size_t planes = name == "binary_dot" ? 1 : cbits;
  ANNFORGE_CHECK(qbits >= 1 && qbits <= 16 && cbits >= 1 && cbits <= 8 && planes * nwords <= stride, ErrorKind::Value,
                 "rabitq kernel: need 1 <= qbits <= 16, 1 <= cbits <= 8 and cbits * nwords <= stride");
  if (name == "binary_dot_rows") {  // the rows given (indices into codes), in their order
    ANNFORGE_CHECK(!rows_obj.is_none(), ErrorKind::Value, "rabitq kernel: binary_dot_rows needs rows");
    const auto rows = py::array_t<std::uint32_t, py::array::c_style | py::array::forcecast>::ensure(rows_obj);
    ANNFORGE_CHECK(rows && rows.ndim() == 1, ErrorKind::Value, "rabitq kernel: rows must be a 1-d integer array");
    for (py::ssize_t i = 0; i < rows.shape(0); ++i)
      ANNFORGE_CHECK(rows.data()[i] < n, ErrorKind::Value, "rabitq kernel: row out of range");
    py::array_t<std::uint32_t> out(rows.shape(0));
    kernels.binary_dot_rows(codes.data(), rows.data(), static_cast<std::size_t>(rows.shape(0)), stride, nwords,
                            qplanes.data(), qbits, out.mutable_data());
    return out;
  }
  py::array_t<std::uint32_t> out(static_cast<py::ssize_t>(n));
  if (name == "binary_dot")
    kernels.binary_dot(codes.data(), n, stride, nwords, qplanes.data(), qbits, out.mutable_data());
  else if (name == "multibit_dot")
    kernels.multibit_dot(codes.data(), n, stride, nwords, cbits, qplanes.data(), qbits, out.mutable_data());
  else
    fail(ErrorKind::Value, "unknown rabitq kernel '", name, "': expected binary_dot, binary_dot_rows or multibit_dot");
  return out;
}

}  // namespace

void bind_rabitq_tests(py::module_& testing) {
  py::class_<RaBitQCodecHook>(testing, "_RaBitQCodec")
      .def(py::init<std::size_t, const std::string&, unsigned, std::uint64_t, const std::string&>(), py::arg("dim"),
           py::arg("metric") = "l2", py::arg("bits") = 1, py::arg("seed") = 0, py::arg("rotation") = "dense")
      .def("fit", &RaBitQCodecHook::fit, py::arg("data"))
      .def("encode", &RaBitQCodecHook::encode, py::arg("x"))
      .def("estimate", &RaBitQCodecHook::estimate, py::arg("query"), py::arg("codes"), py::kw_only(),
           py::arg("level") = py::none(), py::arg("eps0") = codec::RaBitQ::kDefaultEps0,
           py::arg("query_bits") = py::none(), py::arg("stage_bits") = py::none())
      .def("rotation", &RaBitQCodecHook::rotation)
      .def("decode", &RaBitQCodecHook::decode, py::arg("codes"))
      .def_property_readonly("centroid", &RaBitQCodecHook::centroid)
      .def_property_readonly("padded_dim", [](const RaBitQCodecHook& h) { return h.codec().padded_dim(); })
      .def_property_readonly("record_bytes", [](const RaBitQCodecHook& h) { return h.codec().record_bytes(); })
      .def_property_readonly("bits", [](const RaBitQCodecHook& h) { return h.codec().bits(); })
      .def_property_readonly("num_factors",
                             [](const RaBitQCodecHook& h) { return codec::RaBitQ::num_factors(h.codec().bits()); })
      .def_property_readonly("default_query_bits",
                             [](const RaBitQCodecHook& h) { return h.codec().default_query_bits(); })
      .def_property_readonly("max_query_bits", [](const RaBitQCodecHook& h) { return h.codec().max_query_bits(); });
  testing.def("_rabitq_kernel", &run_rabitq_kernel, py::arg("level"), py::arg("name"), py::arg("codes"),
              py::arg("nwords"), py::arg("cbits"), py::arg("qplanes"), py::arg("rows") = py::none());
  testing.def("_rabitq_kernel_level", [] { return std::string(simd::level_name(simd::rabitq_kernels().level)); });
  // The kernel names _rabitq_kernel() and estimate(level=...) accept on this machine.
  testing.def("_rabitq_kernel_variants", [] {
    std::vector<std::string> names;
    for (auto level : {simd::Level::Scalar, simd::Level::NEON, simd::Level::AVX2, simd::Level::AVX512})
      if (simd::level_available(level)) names.emplace_back(simd::level_name(level));
    if (simd::level_available(simd::Level::AVX512)) names.emplace_back("avx512_plain");
    if (simd::rabitq_vpopcnt_available()) names.emplace_back("avx512_vpopcnt");
    return names;
  });
}

}  // namespace annforge::py_bindings
