#include "bind_index.h"

#include <cmath>

namespace annforge::py_bindings {

std::unique_ptr<IdSelector> make_selector(const py::object& filter) {
  if (filter.is_none()) return nullptr;
  if (PyCallable_Check(filter.ptr())) return std::make_unique<PyCallableSelector>(filter);
  IdArray ids = as_ids(filter, std::numeric_limits<std::size_t>::max(), "filter");
  return std::make_unique<IdSetSelector>(ids.data(), static_cast<std::size_t>(ids.size()));
}

long long as_k(const py::handle& k) {
  if (PyBool_Check(k.ptr())) fail(ErrorKind::Type, "k must be an integer, got bool");
  int overflow = 0;
  const long long v = PyLong_AsLongLongAndOverflow(k.ptr(), &overflow);
  if (v == -1 && PyErr_Occurred()) {
    PyErr_Clear();
    fail(ErrorKind::Type, "k must be an integer, got ", Py_TYPE(k.ptr())->tp_name);
  }
  if (overflow > 0) fail(ErrorKind::Value, "k must be <= ", VectorIndex::kMaxK, ", got ", std::string(py::str(k)));
  if (overflow < 0) fail(ErrorKind::Value, "k must be >= 1, got ", std::string(py::str(k)));
  return v;
}

SearchKnobs make_knobs(const py::dict& params) {
  SearchKnobs knobs;
  for (auto item : params) {
    const auto name = py::cast<std::string>(item.first);
    py::handle value = item.second;
    if (PyBool_Check(value.ptr()) || !(PyLong_Check(value.ptr()) || PyFloat_Check(value.ptr()) ||
                                       py::hasattr(value, "__index__") || py::hasattr(value, "__float__")))
      fail(ErrorKind::Type, "search parameter '", name, "' must be a number");
    knobs.set(name, py::cast<double>(value));
  }
  return knobs;
}

std::shared_ptr<io::FileReader> open_reader(const std::string& path, bool mmap) {
  py::gil_scoped_release release;
  return io::FileReader::open(path, mmap);
}

std::shared_ptr<io::FileReader> bytes_reader(const py::bytes& data) {
  char* buf = nullptr;
  py::ssize_t len = 0;
  if (PYBIND11_BYTES_AS_STRING_AND_SIZE(data.ptr(), &buf, &len) != 0) throw py::error_already_set();
  py::gil_scoped_release release;
  return io::FileReader::from_bytes(buf, static_cast<std::size_t>(len));
}

}  // namespace annforge::py_bindings
