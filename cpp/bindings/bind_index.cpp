#include "bind_index.h"

#include <chrono>
#include <cmath>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>

#include "annforge/index/flat.h"
#include "annforge/index/hnsw.h"
#include "annforge/index/ivf_rabitq.h"
#include "annforge/index/ivfpq.h"
#include "annforge/index/scann.h"

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

namespace {

// The C++ index behind a family's pybind object, as the base class every caller may hold.
VectorIndex& as_vector_index(const py::object& obj) {
  if (py::isinstance<FlatIndex>(obj)) return obj.cast<FlatIndex&>();
  if (py::isinstance<HNSWIndex>(obj)) return obj.cast<HNSWIndex&>();
  if (py::isinstance<IVFPQIndex>(obj)) return obj.cast<IVFPQIndex&>();
  if (py::isinstance<IVFRaBitQIndex>(obj)) return obj.cast<IVFRaBitQIndex&>();
  if (py::isinstance<ScaNNIndex>(obj)) return obj.cast<ScaNNIndex&>();
  fail(ErrorKind::Type, "expected a _core vector index, got ", Py_TYPE(obj.ptr())->tp_name);
}

}  // namespace

void bind_index_tests(py::module_& testing) {
  // Serialises `index` through a VectorIndex& and, from inside the sink (the bytes not yet out), starts a
  // thread that adds `x`, waiting up to `wait_s` for it. Returns (whether that add finished before the
  // bytes were out, the bytes). Serialisation holds the family's lock, so the add must wait and the bytes
  // must be the index without `x`.
  testing.def("_add_during_serialise", [](const py::object& index, const py::object& x, double wait_s) {
    VectorIndex& target = as_vector_index(index);
    const MatrixView rows = as_matrix(x, target.dim(), "vectors");
    std::vector<idx_t> added(rows.rows);
    std::vector<unsigned char> bytes;
    bool finished_inside = false;
    {
      py::gil_scoped_release release;
      std::mutex m;
      std::condition_variable cv;
      bool done = false;
      std::exception_ptr error;
      std::thread adder;
      const VectorIndex& base = target;
      try {
        base.serialise([&](const io::FileWriter& w) {
          adder = std::thread([&] {
            try {
              target.add(rows.data, rows.rows, nullptr, 1, added.data());
            } catch (...) {
              error = std::current_exception();
            }
            std::lock_guard<std::mutex> lk(m);
            done = true;
            cv.notify_all();
          });
          std::unique_lock<std::mutex> lk(m);
          finished_inside = cv.wait_for(lk, std::chrono::duration<double>(wait_s), [&] { return done; });
          lk.unlock();
          bytes = w.to_bytes();
        });
      } catch (...) {
        if (adder.joinable()) adder.join();
        throw;
      }
      adder.join();
      if (error) std::rethrow_exception(error);
    }
    return py::make_tuple(finished_inside, py::bytes(reinterpret_cast<const char*>(bytes.data()), bytes.size()));
  });
}

}  // namespace annforge::py_bindings
