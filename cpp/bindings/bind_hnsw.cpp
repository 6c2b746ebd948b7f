// HNSWIndex bindings.
#include "annforge/index/hnsw.h"
#include "bind_index.h"

namespace annforge::py_bindings {

void bind_hnsw(py::module_& m) {
  py::class_<HNSWIndex> cls(m, "HNSWIndex");
  cls.def(py::init([](std::size_t dim, const std::string& metric, long long M, long long ef_construction,
                      unsigned long long seed, const std::string& storage) {
            if (M < 2 || M > 2048) fail(ErrorKind::Value, "M must be in [2, 2048], got ", M);
            if (ef_construction < 1 || ef_construction > (1 << 20))
              fail(ErrorKind::Value, "ef_construction must be in [1, 1048576], got ", ef_construction);
            return std::make_unique<HNSWIndex>(dim, parse_metric(metric), static_cast<std::size_t>(M),
                                               static_cast<std::size_t>(ef_construction), seed,
                                               parse_hnsw_storage(storage));
          }),
          py::arg("dim"), py::arg("metric") = "l2", py::arg("M") = 16, py::arg("ef_construction") = 200,
          py::arg("seed") = 0, py::arg("storage") = "f32");
  bind_vector_index_methods<HNSWIndex>(cls);
  cls.def_property_readonly("M", &HNSWIndex::M)
      .def_property_readonly("ef_construction", &HNSWIndex::ef_construction)
      .def_property_readonly("seed", &HNSWIndex::seed)
      .def_property_readonly("storage", [](const HNSWIndex& self) { return std::string(hnsw_storage_name(self.storage())); })
      .def_property("default_ef", &HNSWIndex::default_ef,
                    [](HNSWIndex& self, long long ef) {
                      if (ef < 1) fail(ErrorKind::Value, "ef must be >= 1, got ", ef);
                      self.set_default_ef(static_cast<std::size_t>(ef));
                    })
      .def("slot_count", &HNSWIndex::slot_count)
      .def("max_level", &HNSWIndex::max_level)
      .def_static(
          "load", [](const std::string& path, bool mmap) { return HNSWIndex::read(open_reader(path, mmap)); },
          py::arg("path"), py::arg("mmap") = false)
      .def_static("from_bytes", [](const py::bytes& b) { return HNSWIndex::read(bytes_reader(b)); });
}

}  // namespace annforge::py_bindings
