// Private test hooks: run one kernel of one SIMD level on NumPy arrays (tests/test_kernels.py).
#include "annforge/simd/kernels.h"
#include "bind_common.h"

namespace annforge::py_bindings {

void bind_kernel_tests(py::module_& m) {}

}  // namespace annforge::py_bindings
