// File-format helpers shared by every family.
#include "annforge/io/format.h"
#include "bind_common.h"

namespace annforge::py_bindings {

void bind_io(py::module_& m) {
  m.def(
      "file_kind",
      [](const std::string& path) {
        std::uint32_t kind;
        {
          py::gil_scoped_release release;
          kind = io::file_kind(path);
        }
        return std::string(io::kind_name(kind));
      },
      py::arg("path"), "Class name of the index stored in `path` (header and directory checked; loading verifies the rest).");
  m.def(
      "bytes_kind",
      [](const py::bytes& data) {
        const std::string s = data;
        return std::string(io::kind_name(io::FileReader::from_bytes(s.data(), s.size())->kind()));
      },
      py::arg("data"));
  m.attr("FORMAT_VERSION") = io::kFormatVersion;
}

}  // namespace annforge::py_bindings
