// SIMD level control and introspection.
#include "annforge/simd/kernels.h"
#include "bind_common.h"

namespace annforge::py_bindings {

void bind_kernels(py::module_& m) {
  m.def("simd_level", [] { return std::string(simd::level_name(simd::kernels().level)); },
        "The SIMD level the distance kernels run at: 'scalar', 'neon', 'avx2' or 'avx512'.");
  m.def("detected_simd_level", [] { return std::string(simd::level_name(simd::detected_level())); },
        "The best SIMD level this CPU and build support (ignores ANNFORGE_SIMD).");
  m.def("available_simd_levels", [] {
        py::list out;
        for (auto l : {simd::Level::Scalar, simd::Level::NEON, simd::Level::AVX2, simd::Level::AVX512})
          if (simd::level_available(l)) out.append(simd::level_name(l));
        return out;
      }, "Every SIMD level this CPU and build can run, lowest first.");
  m.def("set_simd_level", [](const std::string& name) { simd::set_active_level(simd::parse_level(name.c_str())); },
        py::arg("level"), "Switch the active kernels (tests and benchmarks); raises ValueError if unavailable.");
}

}  // namespace annforge::py_bindings
