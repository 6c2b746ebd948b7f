// FlatIndex bindings.
#include "annforge/index/flat.h"
#include "bind_index.h"

namespace annforge::py_bindings {

void bind_flat(py::module_& m) {
  py::class_<FlatIndex> cls(m, "FlatIndex");
  cls.def(py::init([](std::size_t dim, const std::string& metric) {
            return std::make_unique<FlatIndex>(dim, parse_metric(metric));
          }),
          py::arg("dim"), py::arg("metric") = "l2");
  bind_vector_index_methods<FlatIndex>(cls);
  cls.def(
         "search_range",
         [](const FlatIndex& self, const py::object& q, double radius, const py::object& filter, int num_threads) {
           MatrixView v = as_matrix(q, self.dim(), "queries");
           auto selector = make_selector(filter);
           RangeResult r;
           {
             py::gil_scoped_release release;
             r = self.search_range(v.data, v.rows, static_cast<float>(radius), num_threads, selector.get());
           }
           py::array_t<std::int64_t> lims(static_cast<py::ssize_t>(r.lims.size()));
           py::array_t<idx_t> ids(static_cast<py::ssize_t>(r.ids.size()));
           py::array_t<float> dist(static_cast<py::ssize_t>(r.distances.size()));
           std::copy(r.lims.begin(), r.lims.end(), lims.mutable_data());
           std::copy(r.ids.begin(), r.ids.end(), ids.mutable_data());
           std::copy(r.distances.begin(), r.distances.end(), dist.mutable_data());
           return py::make_tuple(lims, ids, dist);
         },
         py::arg("q"), py::arg("radius"), py::arg("filter") = py::none(), py::arg("num_threads") = 0)
      .def_static(
          "load", [](const std::string& path, bool mmap) { return FlatIndex::read(open_reader(path, mmap)); },
          py::arg("path"), py::arg("mmap") = false)
      .def_static("from_bytes", [](const py::bytes& b) { return FlatIndex::read(bytes_reader(b)); });
}

}  // namespace annforge::py_bindings
