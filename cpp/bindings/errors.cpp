// The one place where C++ errors become Python exceptions, and the checked array conversions.
#include <limits>

#include "bind_common.h"

namespace annforge::py_bindings {

void register_errors(py::module_& m) {
  // Local to this module: a global translator sits in pybind11's internals, shared by every pybind11
  // module built against the same internals ABI (any GCC or clang with libstdc++), so it would also
  // turn other modules' std::length_error into MemoryError, and their global translators would run
  // on our exceptions first. Local translators are tried before the global ones.
  py::register_local_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const annforge::Error& e) {
      switch (e.kind()) {
        case ErrorKind::Type: PyErr_SetString(PyExc_TypeError, e.what()); return;
        case ErrorKind::IO: PyErr_SetString(PyExc_OSError, e.what()); return;
        case ErrorKind::Value:
        case ErrorKind::State: PyErr_SetString(PyExc_ValueError, e.what()); return;
      }
      PyErr_SetString(PyExc_RuntimeError, e.what());
    } catch (const std::bad_alloc&) {
      PyErr_SetString(PyExc_MemoryError, "annforge: out of memory");
    } catch (const std::length_error& e) {
      PyErr_SetString(PyExc_MemoryError, e.what());
    }
  });
}

MatrixView as_matrix(const py::handle& obj, std::size_t cols, const char* what) {
  MatrixView v;
  try {
    v.owner = FloatArray::ensure(obj);
  } catch (const py::error_already_set&) {
    v.owner = FloatArray();
  }
  if (!v.owner) {
    PyErr_Clear();
    fail(ErrorKind::Type, what, " must be a numeric array-like of float32-convertible values");
  }
  if (v.owner.ndim() == 1) {
    v.rows = 1;
    v.cols = static_cast<std::size_t>(v.owner.shape(0));
  } else if (v.owner.ndim() == 2) {
    v.rows = static_cast<std::size_t>(v.owner.shape(0));
    v.cols = static_cast<std::size_t>(v.owner.shape(1));
  } else {
    fail(ErrorKind::Value, what, " must have shape (n, ", cols, ") or (", cols, ",), got an array of rank ",
         v.owner.ndim());
  }
  if (cols != 0 && v.cols != cols) {
    fail(ErrorKind::Value, what, " has dimension ", v.cols, " but the index has dimension ", cols);
  }
  v.data = v.owner.data();
  return v;
}

IdArray as_ids(const py::handle& obj, std::size_t n, const char* what) {
  py::array arr;
  try {
    arr = py::array::ensure(obj);
  } catch (const py::error_already_set&) {
  }
  if (!arr) {
    PyErr_Clear();
    fail(ErrorKind::Type, what, " must be an array-like of integers");
  }
  if (arr.size() > 0 && !(arr.dtype().kind() == 'i' || arr.dtype().kind() == 'u')) {
    fail(ErrorKind::Type, what, " must hold integers, got dtype ", std::string(py::str(arr.dtype())));
  }
  if (arr.dtype().kind() == 'u' && arr.itemsize() == 8) {
    // uint64 values above INT64_MAX would wrap to negative ids silently; refuse them by value below.
    auto u = py::array_t<std::uint64_t, py::array::c_style | py::array::forcecast>::ensure(arr);
    const auto* p = u.data();
    for (py::ssize_t i = 0; i < u.size(); ++i)
      if (p[i] > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
        fail(ErrorKind::Value, what, " holds ", p[i], ", which does not fit in int64");
  }
  IdArray ids = IdArray::ensure(arr);
  if (ids.ndim() > 1) fail(ErrorKind::Value, what, " must be one-dimensional, got rank ", ids.ndim());
  if (n != std::numeric_limits<std::size_t>::max() && static_cast<std::size_t>(ids.size()) != n) {
    fail(ErrorKind::Value, what, " has ", ids.size(), " entries but there are ", n, " vectors");
  }
  return ids;
}

cluster::KMeansAccelerator* accelerator_from(const py::object& obj) {
  if (obj.is_none()) return nullptr;
  if (!py::isinstance<py::capsule>(obj)) fail(ErrorKind::Type, "accelerator must be None or a k-means accelerator capsule");
  const auto cap = py::reinterpret_borrow<py::capsule>(obj);
  const char* name = cap.name();
  if (!name || std::string(name) != kAcceleratorCapsule)
    fail(ErrorKind::Type, "accelerator must be a capsule named ", kAcceleratorCapsule);
  return cap.get_pointer<cluster::KMeansAccelerator>();
}

}  // namespace annforge::py_bindings
