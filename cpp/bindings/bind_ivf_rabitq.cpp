// IVFRaBitQIndex bindings and, in `_core._testing`, the fast-scan estimates of one list with their bounds.
#include "annforge/index/ivf_rabitq.h"
#include "bind_index.h"

namespace annforge::py_bindings {

namespace {

RefineKind rabitq_refine_from_py(const py::object& refine) {
  if (refine.is_none()) return RefineKind::None;
  if (!py::isinstance<py::str>(refine)) fail(ErrorKind::Type, "refine must be a string or None");
  const auto name = py::cast<std::string>(refine);
  if (name == "none") fail(ErrorKind::Value, "refine='none' is spelt refine=None");
  return parse_refine(name);
}

template <class T>
py::array_t<T> to_array(const std::vector<T>& v) {
  py::array_t<T> a(static_cast<py::ssize_t>(v.size()));
  std::copy(v.begin(), v.end(), a.mutable_data());
  return a;
}

}  // namespace

void bind_ivf_rabitq(py::module_& m, py::module_& testing) {
  py::class_<IVFRaBitQIndex> cls(m, "IVFRaBitQIndex");
  cls.def(py::init([](std::size_t dim, std::size_t nlist, unsigned bits, const std::string& metric,
                      const py::object& refine, std::uint64_t seed) {
            return std::make_unique<IVFRaBitQIndex>(dim, nlist, bits, parse_metric(metric),
                                                    rabitq_refine_from_py(refine), seed);
          }),
          py::arg("dim"), py::arg("nlist"), py::arg("bits") = 1, py::arg("metric") = "l2",
          py::arg("refine") = "f32", py::arg("seed") = 0);
  bind_vector_index_methods<IVFRaBitQIndex>(cls);
  cls.def(
         "train",
         [](IVFRaBitQIndex& self, const py::object& x, int num_threads) {
           MatrixView v = as_matrix(x, self.dim(), "training vectors");
           py::gil_scoped_release release;
           self.train(v.data, v.rows, num_threads);
         },
         py::arg("x"), py::arg("num_threads") = 0)
      .def_property_readonly("is_trained", &IVFRaBitQIndex::is_trained)
      .def_property_readonly("nlist", &IVFRaBitQIndex::nlist)
      .def_property_readonly("bits", &IVFRaBitQIndex::bits)
      .def_property_readonly("refine",
                             [](const IVFRaBitQIndex& self) -> py::object {
                               if (self.refine() == RefineKind::None) return py::none();
                               return py::str(refine_name(self.refine()));
                             })
      .def_property_readonly("code_bytes", &IVFRaBitQIndex::code_bytes)
      .def_property_readonly("refine_bytes", &IVFRaBitQIndex::refine_bytes)
      .def("list_sizes", [](const IVFRaBitQIndex& self) {
        const auto s = self.list_sizes();
        return to_array(std::vector<std::int64_t>(s.begin(), s.end()));
      })
      .def("coarse_centroids",
           [](const IVFRaBitQIndex& self) {
             const auto c = self.coarse_centroids();
             py::array_t<float> out({static_cast<py::ssize_t>(c.size() / self.dim()), static_cast<py::ssize_t>(self.dim())});
             std::copy(c.begin(), c.end(), out.mutable_data());
             return out;
           })
      .def_static(
          "load", [](const std::string& path, bool mmap) { return IVFRaBitQIndex::read(open_reader(path, mmap)); },
          py::arg("path"), py::arg("mmap") = false)
      .def_static("from_bytes", [](const py::bytes& b) { return IVFRaBitQIndex::read(bytes_reader(b)); });

  testing.def(
      "ivf_rabitq_list_estimates",
      [](const IVFRaBitQIndex& index, const py::object& q, std::size_t list, double eps0) {
        MatrixView v = as_matrix(q, index.dim(), "query");
        if (v.rows != 1) fail(ErrorKind::Value, "one query expected");
        std::vector<idx_t> ids;
        std::vector<float> est, lower, upper;
        {
          py::gil_scoped_release release;
          index.list_estimates(v.data, list, ids, est, lower, upper, eps0);
        }
        return py::make_tuple(to_array(ids), to_array(est), to_array(lower), to_array(upper));
      },
      py::arg("index"), py::arg("q"), py::arg("list"), py::arg("eps0") = 1.9,
      "(ids, estimates, lower, upper) of the fast-scan stage for every entry of one list.");
}

}  // namespace annforge::py_bindings
