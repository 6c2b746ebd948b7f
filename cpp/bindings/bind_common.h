// Shared helpers for the pybind11 layer: checked array views and the registration entry points of
// each part of the module. Only this folder includes pybind11.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "annforge/common.h"

namespace annforge::py_bindings {

namespace py = pybind11;

using FloatArray = py::array_t<float, py::array::c_style | py::array::forcecast>;
using IdArray = py::array_t<std::int64_t, py::array::c_style | py::array::forcecast>;

// A C-contiguous float32 matrix with `cols` columns; a 1-D input of length `cols` is one row.
struct MatrixView {
  FloatArray owner;  // keeps the buffer alive (and is the same object when no conversion was needed)
  const float* data = nullptr;
  std::size_t rows = 0;
  std::size_t cols = 0;
};

// Raises ValueError (via annforge::Error) for a wrong rank or dimension; `what` names the argument.
MatrixView as_matrix(const py::handle& obj, std::size_t cols, const char* what);
// int64 ids, 1-D, exactly `n` of them (n = SIZE_MAX: any length).
IdArray as_ids(const py::handle& obj, std::size_t n, const char* what);

void register_errors(py::module_& m);

// `annforge._core._testing`: hooks that exist only for the test suite (one kernel at a chosen level, raw
// fast-scan blocks, file patching). module.cpp creates it before any part registers into it.
inline py::module_ testing_module(py::module_& m) { return m.attr("_testing").cast<py::module_>(); }

}  // namespace annforge::py_bindings

namespace annforge::cluster {
class KMeansAccelerator;
}

namespace annforge::py_bindings {

// The name of the capsules that carry a cluster::KMeansAccelerator* (made by the optional annforge._cuda
// module; the capsule owns the object).
constexpr const char* kAcceleratorCapsule = "annforge.KMeansAccelerator";
// None -> nullptr; a capsule of that name -> its accelerator; anything else -> TypeError.
cluster::KMeansAccelerator* accelerator_from(const py::object& obj);
void bind_kernels(py::module_& m);
void bind_kernel_tests(py::module_& testing);  // hooks that run one kernel at a chosen level
void bind_invlists_tests(py::module_& testing);  // the probe scan on lists given as arrays
void bind_rabitq_tests(py::module_& testing);  // the RaBitQ codec and its kernels
void bind_io(py::module_& m);
void bind_index_tests(py::module_& testing);  // hooks that use a family through VectorIndex&
void bind_flat(py::module_& m);
void bind_minhash(py::module_& m);
void bind_ivfpq(py::module_& m);
void bind_ivf_rabitq(py::module_& m, py::module_& testing);
void bind_hnsw(py::module_& m);
void bind_scann(py::module_& m);

}  // namespace annforge::py_bindings
