// Generic bindings for every VectorIndex family: add / search / remove / save / bytes / introspection,
// with the GIL released around all core work. A family binds its constructor and extras, then calls
// bind_vector_index_methods() on its class object.
#pragma once

#include <limits>
#include <memory>

#include "annforge/index/vector_index.h"
#include "bind_common.h"

namespace annforge::py_bindings {

// A filter given by Python: None, an array-like of allowed ids, or a callable id -> bool.
class PyCallableSelector final : public IdSelector {
 public:
  explicit PyCallableSelector(py::object fn) : fn_(std::move(fn)) {}
  bool contains(idx_t id) const override {
    py::gil_scoped_acquire gil;
    const py::object answer = fn_(id);  // an exception propagates to the search caller
    if (PyBool_Check(answer.ptr())) return answer.ptr() == Py_True;
    // numpy's bool scalar (what `lambda i: mask[i]` returns) is the one other boolean accepted.
    const std::string type_name = Py_TYPE(answer.ptr())->tp_name;
    if (type_name == "numpy.bool" || type_name == "numpy.bool_") return PyObject_IsTrue(answer.ptr()) == 1;
    fail(ErrorKind::Type, "the search filter ", describe(), " must return a bool, but returned ", type_name,
         " for id ", id);
  }
  bool thread_safe() const override { return false; }

 private:
  std::string describe() const {  // the callable as the user wrote it: its repr
    std::string r = py::repr(fn_);
    return r.size() > 80 ? r.substr(0, 77) + "..." : r;
  }
  py::object fn_;
};

std::unique_ptr<IdSelector> make_selector(const py::object& filter);
// A Python integer k as long long; one beyond its range is a ValueError (not pybind's TypeError).
long long as_k(const py::handle& k);
SearchKnobs make_knobs(const py::dict& params);

template <typename Index, typename PyClass>
void bind_vector_index_methods(PyClass& cls) {
  cls.def_property_readonly("dim", &Index::dim)
      .def_property_readonly("metric", [](const Index& self) { return std::string(metric_name(self.metric())); })
      .def("__len__", &Index::size)
      .def(
          "add",
          [](Index& self, const py::object& x, const py::object& ids, int num_threads) {
            MatrixView v = as_matrix(x, self.dim(), "vectors");
            IdArray id_arr;
            const idx_t* id_ptr = nullptr;
            if (!ids.is_none()) {
              id_arr = as_ids(ids, v.rows, "ids");
              id_ptr = id_arr.data();
            }
            IdArray out(static_cast<py::ssize_t>(v.rows));
            idx_t* out_ptr = out.mutable_data();
            {
              py::gil_scoped_release release;
              self.add(v.data, v.rows, id_ptr, num_threads, out_ptr);
            }
            return out;
          },
          py::arg("x"), py::arg("ids") = py::none(), py::arg("num_threads") = 0)
      .def(
          "search",
          [](const Index& self, const py::object& q, const py::object& k_obj, const py::object& filter,
             int num_threads, const py::dict& params) {
            const long long k = as_k(k_obj);
            Index::check_k(k);  // before the nq x k output is allocated
            MatrixView v = as_matrix(q, self.dim(), "queries");
            SearchOptions opt;
            opt.num_threads = num_threads;
            opt.knobs = make_knobs(params);
            auto selector = make_selector(filter);
            opt.filter = selector.get();
            const auto kk = static_cast<std::size_t>(k);
            if (v.rows != 0 && kk > std::numeric_limits<std::size_t>::max() / 16 / v.rows)
              fail(ErrorKind::Value, "k = ", k, " is too large");
            py::array_t<idx_t> ids({static_cast<py::ssize_t>(v.rows), static_cast<py::ssize_t>(k)});
            py::array_t<float> dist({static_cast<py::ssize_t>(v.rows), static_cast<py::ssize_t>(k)});
            idx_t* ip = ids.mutable_data();
            float* dp = dist.mutable_data();
            {
              py::gil_scoped_release release;
              self.search(v.data, v.rows, kk, opt, ip, dp);
            }
            return py::make_tuple(ids, dist);
          },
          py::arg("q"), py::arg("k"), py::arg("filter") = py::none(), py::arg("num_threads") = 0,
          py::arg("params") = py::dict())
      .def(
          "remove",
          [](Index& self, const py::object& ids) {
            IdArray arr = as_ids(ids, std::numeric_limits<std::size_t>::max(), "ids");
            const idx_t* p = arr.data();
            const auto n = static_cast<std::size_t>(arr.size());
            py::gil_scoped_release release;
            return self.remove(p, n);
          },
          py::arg("ids"))
      .def("__contains__", [](const Index& self, idx_t id) { return self.contains(id); })
      .def("ids",
           [](const Index& self) {
             std::vector<idx_t> v;
             {
               py::gil_scoped_release release;
               v = self.ids();
             }
             py::array_t<idx_t> out(static_cast<py::ssize_t>(v.size()));
             std::copy(v.begin(), v.end(), out.mutable_data());
             return out;
           })
      .def(
          "reconstruct",
          [](const Index& self, const py::object& ids) {
            IdArray arr = as_ids(ids, std::numeric_limits<std::size_t>::max(), "ids");
            py::array_t<float> out({static_cast<py::ssize_t>(arr.size()), static_cast<py::ssize_t>(self.dim())});
            const idx_t* p = arr.data();
            float* o = out.mutable_data();
            const auto n = static_cast<std::size_t>(arr.size());
            {
              py::gil_scoped_release release;
              self.reconstruct(p, n, o);
            }
            return out;
          },
          py::arg("ids"))
      .def("memory_bytes", &Index::memory_bytes)
      .def(
          "save",
          [](const Index& self, const std::string& path) {
            py::gil_scoped_release release;
            self.save(path);
          },
          py::arg("path"))
      .def("to_bytes", [](const Index& self) {
        std::vector<unsigned char> b;
        {
          py::gil_scoped_release release;
          b = self.to_bytes();
        }
        return py::bytes(reinterpret_cast<const char*>(b.data()), b.size());
      });
}

// Loader helpers: open a file or a bytes object and hand the reader to the family's read().
std::shared_ptr<io::FileReader> open_reader(const std::string& path, bool mmap);
std::shared_ptr<io::FileReader> bytes_reader(const py::bytes& data);

}  // namespace annforge::py_bindings
