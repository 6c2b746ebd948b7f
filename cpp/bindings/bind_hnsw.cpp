// HNSWIndex bindings.
#include "annforge/index/hnsw.h"
#include "bind_index.h"

#include <cstring>

namespace annforge::py_bindings {

void bind_hnsw(py::module_& m) {
  py::class_<HNSWIndex> cls(m, "HNSWIndex");
  cls.def(py::init([](std::size_t dim, const std::string& metric, long long M, long long ef_construction,
                      unsigned long long seed, const std::string& storage, const std::string& code_rotation) {
            if (M < 2 || M > 2048) fail(ErrorKind::Value, "M must be in [2, 2048], got ", M);
            if (ef_construction < 1 || ef_construction > (1 << 20))
              fail(ErrorKind::Value, "ef_construction must be in [1, 1048576], got ", ef_construction);
            const auto rotation = codec::RaBitQ::parse_rotation(code_rotation, "code_rotation");
            return std::make_unique<HNSWIndex>(dim, parse_metric(metric), static_cast<std::size_t>(M),
                                               static_cast<std::size_t>(ef_construction), seed,
                                               parse_hnsw_storage(storage), rotation);
          }),
          py::arg("dim"), py::arg("metric") = "l2", py::arg("M") = 16, py::arg("ef_construction") = 200,
          py::arg("seed") = 0, py::arg("storage") = "f32", py::arg("code_rotation") = "hadamard");
  bind_vector_index_methods<HNSWIndex>(cls);
  cls.def_property_readonly("M", &HNSWIndex::M)
      .def_property_readonly("ef_construction", &HNSWIndex::ef_construction)
      .def_property_readonly("seed", &HNSWIndex::seed)
      .def_property_readonly("storage", [](const HNSWIndex& self) { return std::string(hnsw_storage_name(self.storage())); })
      .def_property_readonly("code_rotation",
                             [](const HNSWIndex& self) -> py::object {
                               if (!self.quantized()) return py::none();
                               return py::str(codec::RaBitQ::rotation_name(self.code_rotation()));
                             })
      .def_property("default_ef", &HNSWIndex::default_ef,
                    [](HNSWIndex& self, long long ef) {
                      if (ef < 1) fail(ErrorKind::Value, "ef must be >= 1, got ", ef);
                      self.set_default_ef(static_cast<std::size_t>(ef));
                    })
      .def("slot_count", &HNSWIndex::slot_count)
      .def("code_blocks_in_sync",
           [](const HNSWIndex& self) {
             py::gil_scoped_release release;
             return self.code_blocks_in_sync();
           })
      .def("max_level", &HNSWIndex::max_level)
      .def("unreachable_ids",
           [](const HNSWIndex& self) {
             std::vector<idx_t> ids;
             {
               py::gil_scoped_release release;
               ids = self.unreachable_ids();
             }
             return py::array_t<idx_t>(static_cast<py::ssize_t>(ids.size()), ids.data());
           })
      .def_static(
          "load", [](const std::string& path, bool mmap) { return HNSWIndex::read(open_reader(path, mmap)); },
          py::arg("path"), py::arg("mmap") = false)
      .def_static("from_bytes", [](const py::bytes& b) { return HNSWIndex::read(bytes_reader(b)); });

  // Test hook: rewrites one u32 inside a section and re-seals the file with valid checksums, so tests
  // can check that loading validates the graph itself (not only the checksums).
  py::module_ testing = testing_module(m);
  testing.def("_hnsw_patch_u32_for_tests", [](const py::bytes& data, const std::string& tag, std::size_t word,
                                              std::uint32_t value) {
    auto reader = bytes_reader(data);
    io::FileWriter w(io::Kind::HNSW);
    std::vector<std::vector<unsigned char>> copies;
    for (const char* t : {"META", "REC0", "REC1", "HDR0", "IDS ", "LVLS", "UPPR", "EXAC", "SQ8P", "RQCT", "RQSC", "RQRT"}) {
      char name[5] = {t[0], t[1], t[2], t[3], 0};
      const std::uint32_t code = io::make_tag(name);
      if (!reader->has(code)) continue;
      const io::Bytes b = reader->section(code);
      std::vector<unsigned char> bytes(b.data, b.data + b.size);
      if (tag == t) {
        if ((word + 1) * 4 > bytes.size()) fail(ErrorKind::Value, "word out of range");
        std::memcpy(bytes.data() + word * 4, &value, 4);
      }
      w.add_owned(code, std::move(bytes));
    }
    const auto out = w.to_bytes();
    return py::bytes(reinterpret_cast<const char*>(out.data()), out.size());
  });
}

}  // namespace annforge::py_bindings
