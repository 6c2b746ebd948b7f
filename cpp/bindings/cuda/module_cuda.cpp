// The optional `annforge._cuda` extension module (built with -DANNFORGE_CUDA=ON): marshals NumPy arrays
// to the GPU indexes of cpp/cuda/ and back. `annforge.gpu` imports it only when a GPU feature is used.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstring>
#include <functional>
#include <memory>
#include <string>

#include "../bind_common.h"
#include "gpu_index.h"

namespace annforge::py_bindings {
namespace {

using gpu::GpuFlat;
using gpu::GpuIVFPQ;
using U8Array = py::array_t<std::uint8_t, py::array::c_style | py::array::forcecast>;

// A mask of exactly n bytes, or null for None.
const std::uint8_t* mask_ptr(const py::object& mask, std::size_t n, U8Array& keep) {
  if (mask.is_none()) return nullptr;
  keep = U8Array::ensure(mask);
  if (!keep || static_cast<std::size_t>(keep.size()) != n)
    fail(ErrorKind::Value, "mask must hold one byte per stored vector (", n, ")");
  return keep.data();
}

py::tuple results(std::size_t nq, std::size_t k, const std::function<void(std::int64_t*, float*)>& run) {
  py::array_t<std::int64_t> labels({static_cast<py::ssize_t>(nq), static_cast<py::ssize_t>(k)});
  py::array_t<float> dist({static_cast<py::ssize_t>(nq), static_cast<py::ssize_t>(k)});
  std::int64_t* lp = labels.mutable_data();
  float* dp = dist.mutable_data();
  {
    py::gil_scoped_release release;
    run(lp, dp);
  }
  return py::make_tuple(labels, dist);
}

template <typename T>
std::vector<T> vec(const py::dict& d, const char* key) {
  auto a = py::array_t<T, py::array::c_style | py::array::forcecast>::ensure(d[key]);
  if (!a) fail(ErrorKind::Type, "layout['", key, "'] must be an array");
  return std::vector<T>(a.data(), a.data() + a.size());
}

}  // namespace
}  // namespace annforge::py_bindings

PYBIND11_MODULE(_cuda, m) {
  namespace b = annforge::py_bindings;
  namespace py = pybind11;
  using namespace annforge;
  m.doc() = "annforge CUDA kernels (private: use annforge.gpu)";
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const gpu::DeviceOutOfMemory& e) {
      PyErr_SetString(PyExc_MemoryError, e.what());
    } catch (const gpu::DeviceError& e) {
      PyErr_SetString(PyExc_RuntimeError, e.what());
    } catch (const Error& e) {
      PyErr_SetString(e.kind() == ErrorKind::Type ? PyExc_TypeError : e.kind() == ErrorKind::IO ? PyExc_OSError
                                                                                               : PyExc_ValueError,
                      e.what());
    }
  });
#ifdef ANNFORGE_CUDA_ARCHITECTURES
  m.attr("architectures") = ANNFORGE_CUDA_ARCHITECTURES;
#endif
  m.attr("runtime_version") = CUDART_VERSION;
  m.def("device_count", [] { return gpu::device_count(); });
  m.def("unavailable_reason", [] {
    std::string why;
    return gpu::device_count(&why) > 0 ? std::string() : why;
  });
  m.def("device_name", &gpu::device_name, py::arg("device"));

  py::class_<gpu::GpuFlat>(m, "FlatIndex")
      .def(py::init([](int device, const py::object& x, const std::string& metric, bool f16) {
             auto arr = b::FloatArray::ensure(x);
             if (!arr || arr.ndim() != 2) fail(ErrorKind::Value, "vectors must be a 2-D float32 array");
             const Metric met = parse_metric(metric);
             const auto n = static_cast<std::size_t>(arr.shape(0)), d = static_cast<std::size_t>(arr.shape(1));
             py::gil_scoped_release release;
             return std::make_unique<gpu::GpuFlat>(device, arr.data(), n, d, met, f16);
           }),
           py::arg("device"), py::arg("vectors"), py::arg("metric"), py::arg("f16") = false)
      .def_property_readonly("size", &gpu::GpuFlat::size)
      .def_property_readonly("dim", &gpu::GpuFlat::dim)
      .def_property_readonly("device", &gpu::GpuFlat::device)
      .def_property_readonly("f16", &gpu::GpuFlat::f16)
      .def("memory_bytes", &gpu::GpuFlat::memory_bytes)
      .def(
          "search",
          [](gpu::GpuFlat& self, const py::object& q, long long k, const py::object& mask) {
            if (k < 1) fail(ErrorKind::Value, "k must be >= 1, got ", k);
            b::MatrixView v = b::as_matrix(q, self.dim(), "queries");
            b::U8Array keep;
            const std::uint8_t* mp = b::mask_ptr(mask, self.size(), keep);
            const auto kk = static_cast<std::size_t>(k);
            return b::results(v.rows, kk, [&](std::int64_t* l, float* d) { self.search(v.data, v.rows, kk, mp, l, d); });
          },
          py::arg("q"), py::arg("k"), py::arg("mask") = py::none(),
          "Row numbers and distances, sorted by (distance, row); -1 / +inf padding.");

  py::class_<gpu::GpuIVFPQ>(m, "IVFPQIndex")
      .def(py::init([](int device, const py::dict& layout, std::size_t dim, std::size_t nlist, std::size_t m_sub,
                       std::size_t nbits, const std::string& metric, bool residual, const py::object& refine) {
             gpu::IvfpqHostLayout L;
             L.d = dim;
             L.nlist = nlist;
             L.m = m_sub;
             L.nbits = nbits;
             L.metric = parse_metric(metric);
             L.residual = residual;
             const std::string r = refine.is_none() ? std::string("none") : py::cast<std::string>(refine);
             L.refine = r == "f32" ? 1 : r == "f16" ? 2 : r == "sq8" ? 3 : 0;
             L.rotation = b::vec<float>(layout, "rotation");
             L.centroids = b::vec<float>(layout, "centroids");
             L.codebooks = b::vec<float>(layout, "codebooks");
             L.code_norms = b::vec<float>(layout, "code_norms");
             L.sq8_offset = b::vec<float>(layout, "sq8_offset");
             L.sq8_scale = b::vec<float>(layout, "sq8_scale");
             L.norm_terms = b::vec<float>(layout, "norm_terms");
             L.list_offsets = b::vec<std::int64_t>(layout, "list_offsets");
             L.codes = b::vec<std::uint8_t>(layout, "codes");
             L.refine_rows = b::vec<std::uint8_t>(layout, "refine");
             py::gil_scoped_release release;
             return std::make_unique<gpu::GpuIVFPQ>(device, L);
           }),
           py::arg("device"), py::arg("layout"), py::arg("dim"), py::arg("nlist"), py::arg("m"), py::arg("nbits"),
           py::arg("metric"), py::arg("residual"), py::arg("refine"))
      .def_property_readonly("size", &gpu::GpuIVFPQ::size)
      .def_property_readonly("device", &gpu::GpuIVFPQ::device)
      .def("memory_bytes", &gpu::GpuIVFPQ::memory_bytes)
      .def(
          "search",
          [](gpu::GpuIVFPQ& self, const py::object& q, long long k, long long nprobe, long long refine_factor,
             const py::object& mask, std::size_t dim) {
            if (k < 1) fail(ErrorKind::Value, "k must be >= 1, got ", k);
            if (nprobe < 1) fail(ErrorKind::Value, "nprobe must be >= 1, got ", nprobe);
            if (refine_factor < 1) fail(ErrorKind::Value, "refine_factor must be >= 1, got ", refine_factor);
            b::MatrixView v = b::as_matrix(q, dim, "queries");
            b::U8Array keep;
            const std::uint8_t* mp = b::mask_ptr(mask, self.size(), keep);
            const auto kk = static_cast<std::size_t>(k);
            return b::results(v.rows, kk, [&](std::int64_t* l, float* d) {
              self.search(v.data, v.rows, kk, static_cast<std::size_t>(nprobe), static_cast<std::size_t>(refine_factor),
                          mp, l, d);
            });
          },
          py::arg("q"), py::arg("k"), py::arg("nprobe"), py::arg("refine_factor"), py::arg("mask"), py::arg("dim"),
          "Entry numbers (lists concatenated in order) and distances; -1 / +inf padding.");

  m.def(
      "kmeans_accelerator",
      [](int device) {
        auto acc = std::make_unique<gpu::GpuKMeansAccelerator>(device);
        cluster::KMeansAccelerator* base = acc.release();
        return py::capsule(static_cast<void*>(base), b::kAcceleratorCapsule, [](void* p) {
          delete static_cast<cluster::KMeansAccelerator*>(p);
        });
      },
      py::arg("device"),
      "A capsule for the `accelerator` argument of the core's kmeans / train (one per call: it caches the "
      "last matrices it saw on the device).");
}
