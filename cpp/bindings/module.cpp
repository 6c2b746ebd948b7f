// The `annforge._core` extension module: each part of the library registers its own bindings.
#include "bind_common.h"

PYBIND11_MODULE(_core, m) {
  namespace b = annforge::py_bindings;
  m.doc() = "annforge compiled core (private: use the `annforge` package)";
#ifdef ANNFORGE_VERSION
  m.attr("__version__") = ANNFORGE_VERSION;
#endif
#ifdef ANNFORGE_COMPILER
  m.attr("compiler") = ANNFORGE_COMPILER;
#endif
  // Test-only hooks live apart from the production surface; the parts below add theirs to it.
  auto testing = m.def_submodule("_testing", "hooks for annforge's own test suite (private, unstable)");
  b::register_errors(m);
  b::bind_kernels(m);
  b::bind_kernel_tests(testing);
  b::bind_invlists_tests(testing);
  b::bind_rabitq_tests(testing);
  b::bind_io(m);
  b::bind_flat(m);
  b::bind_minhash(m);
  b::bind_ivfpq(m);
  b::bind_ivf_rabitq(m, testing);
  b::bind_hnsw(m);
  b::bind_scann(m);
  b::bind_index_tests(testing);
}
