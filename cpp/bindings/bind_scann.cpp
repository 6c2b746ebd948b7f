// ScaNNIndex bindings, plus private hooks exposing the anisotropic loss, eta and the coordinate-descent
// encoder so the tests can check them against a NumPy reference.
#include "annforge/index/scann.h"
#include "bind_index.h"

#include <cmath>
#include <limits>

namespace annforge::py_bindings {

namespace {

RefineKind reorder_from_py(const py::object& reorder) {
  if (reorder.is_none()) return RefineKind::None;
  if (!py::isinstance<py::str>(reorder)) fail(ErrorKind::Type, "reorder must be 'f32', 'f16', 'sq8' or None");
  const auto name = py::cast<std::string>(reorder);
  if (name == "none") fail(ErrorKind::Value, "reorder='none' is spelt reorder=None");
  return parse_refine(name);
}

double threshold_from_py(const py::object& threshold) {
  if (threshold.is_none()) return std::numeric_limits<double>::quiet_NaN();
  if (py::isinstance<py::bool_>(threshold) ||
      !(py::isinstance<py::float_>(threshold) || py::isinstance<py::int_>(threshold)))
    fail(ErrorKind::Type, "anisotropic_threshold must be a number or None");
  const double t = py::cast<double>(threshold);
  if (!std::isfinite(t) || t < 0) fail(ErrorKind::Value, "anisotropic_threshold must be finite and >= 0, got ", t);
  return t;
}

py::array_t<float> float_array(const std::vector<float>& v, std::vector<py::ssize_t> shape) {
  py::array_t<float> out(shape);
  std::copy(v.begin(), v.end(), out.mutable_data());
  return out;
}

void bind_scann_helpers(py::module_& m) {
  py::module_ testing = testing_module(m);
  m.def("_scann_eta", &scann::parallel_cost_multiplier, py::arg("threshold"), py::arg("sq_norm"), py::arg("dim"));
  testing.def(
      "_scann_loss",
      [](const py::object& x, const py::object& xq, double eta) {
        py::array ax = py::array::ensure(x);
        if (!ax || ax.ndim() != 2) fail(ErrorKind::Value, "x must be a 2-D array");
        const auto d = static_cast<std::size_t>(ax.shape(1));
        MatrixView a = as_matrix(x, d, "x"), b = as_matrix(xq, d, "x_quantized");
        if (a.rows != b.rows) fail(ErrorKind::Value, "x and x_quantized must have the same shape");
        py::array_t<double> out(static_cast<py::ssize_t>(a.rows));
        for (std::size_t i = 0; i < a.rows; ++i)
          out.mutable_data()[i] = scann::anisotropic_loss(a.data + i * d, b.data + i * d, d, eta);
        return out;
      },
      py::arg("x"), py::arg("x_quantized"), py::arg("eta"));
  // codebooks [m, 16, dpb]; residual, x: [dim]; codes: uint8 [m] starting point. Returns the new codes.
  testing.def(
      "_scann_encode",
      [](const py::array_t<float, py::array::c_style | py::array::forcecast>& codebooks,
         const py::array_t<float, py::array::c_style | py::array::forcecast>& residual,
         const py::array_t<float, py::array::c_style | py::array::forcecast>& x, double alpha, int rounds,
         const py::array_t<std::uint8_t, py::array::c_style | py::array::forcecast>& codes) {
        if (codebooks.ndim() != 3 || codebooks.shape(1) != 16) fail(ErrorKind::Value, "codebooks must be [m, 16, dpb]");
        const auto m = static_cast<std::size_t>(codebooks.shape(0)), dpb = static_cast<std::size_t>(codebooks.shape(2));
        if (static_cast<std::size_t>(residual.size()) != m * dpb || static_cast<std::size_t>(x.size()) != m * dpb ||
            static_cast<std::size_t>(codes.size()) != m)
          fail(ErrorKind::Value, "residual / x must hold m * dpb floats and codes m entries");
        py::array_t<std::uint8_t> out(static_cast<py::ssize_t>(m));
        std::copy(codes.data(), codes.data() + m, out.mutable_data());
        for (std::size_t j = 0; j < m; ++j)
          if (out.data()[j] >= 16) fail(ErrorKind::Value, "codes must be < 16");
        scann::encode_anisotropic(codebooks.data(), m, dpb, residual.data(), x.data(), alpha, rounds,
                                  out.mutable_data());
        return out;
      },
      py::arg("codebooks"), py::arg("residual"), py::arg("x"), py::arg("alpha"), py::arg("rounds"), py::arg("codes"));
}

}  // namespace

void bind_scann(py::module_& m) {
  bind_scann_helpers(m);
  py::class_<ScaNNIndex> cls(m, "ScaNNIndex");
  cls.def(py::init([](std::size_t dim, std::size_t num_leaves, std::size_t dims_per_block, const py::object& threshold,
                      const std::string& metric, const py::object& reorder, std::uint64_t seed) {
            const double t = threshold_from_py(threshold);
            const RefineKind kind = reorder_from_py(reorder);
            const Metric met = parse_metric(metric);
            return std::make_unique<ScaNNIndex>(dim, num_leaves, dims_per_block, t, met, kind, seed);
          }),
          py::arg("dim"), py::arg("num_leaves") = 0, py::arg("dims_per_block") = 2,
          py::arg("anisotropic_threshold") = 0.2, py::arg("metric") = "ip", py::arg("reorder") = "f32",
          py::arg("seed") = 0);
  bind_vector_index_methods<ScaNNIndex>(cls);
  cls.def(
         "train",
         [](ScaNNIndex& self, const py::object& x, int num_threads, const py::object& accelerator) {
           MatrixView v = as_matrix(x, self.dim(), "training vectors");
           auto* acc = accelerator_from(accelerator);
           py::gil_scoped_release release;
           self.train(v.data, v.rows, num_threads, acc);
         },
         py::arg("x"), py::arg("num_threads") = 0, py::arg("accelerator") = py::none())
      .def("set_training_options", &ScaNNIndex::set_training_options, py::arg("sample_size"),
           py::arg("codebook_iterations"), py::arg("encode_rounds"))
      .def_property_readonly("is_trained", &ScaNNIndex::is_trained)
      .def_property_readonly("num_leaves", &ScaNNIndex::num_leaves)
      .def_property_readonly("dims_per_block", &ScaNNIndex::dims_per_block)
      .def_property_readonly("num_blocks", &ScaNNIndex::num_blocks)
      .def_property_readonly("anisotropic", &ScaNNIndex::anisotropic)
      .def_property_readonly("anisotropic_threshold",
                             [](const ScaNNIndex& self) -> py::object {
                               if (std::isnan(self.threshold())) return py::none();
                               return py::float_(self.threshold());
                             })
      .def_property_readonly("reorder",
                             [](const ScaNNIndex& self) -> py::object {
                               if (self.refine() == RefineKind::None) return py::none();
                               return py::str(refine_name(self.refine()));
                             })
      .def_property_readonly("code_bytes", &ScaNNIndex::code_bytes)
      .def_property_readonly("refine_bytes", &ScaNNIndex::refine_bytes)
      .def("leaf_sizes",
           [](const ScaNNIndex& self) {
             const auto s = self.leaf_sizes();
             py::array_t<std::int64_t> out(static_cast<py::ssize_t>(s.size()));
             std::copy(s.begin(), s.end(), out.mutable_data());
             return out;
           })
      .def("leaf_centres",
           [](const ScaNNIndex& self) {
             const auto c = self.leaf_centres();
             return float_array(c, {static_cast<py::ssize_t>(c.size() / self.dim()), static_cast<py::ssize_t>(self.dim())});
           })
      .def("codebooks",
           [](const ScaNNIndex& self) {
             const auto c = self.codebooks();
             return float_array(c, {static_cast<py::ssize_t>(self.num_blocks()), 16,
                                    static_cast<py::ssize_t>(self.dims_per_block())});
           })
      .def_static(
          "load", [](const std::string& path, bool mmap) { return ScaNNIndex::read(open_reader(path, mmap)); },
          py::arg("path"), py::arg("mmap") = false)
      .def_static("from_bytes", [](const py::bytes& b) { return ScaNNIndex::read(bytes_reader(b)); });
}

}  // namespace annforge::py_bindings
