// SIMD level control and introspection.
#include "annforge/codec/pq4_fastscan.h"
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
  m.def("compiled_simd_levels", [] {
        py::list out;
        out.append("scalar");
        if (simd::neon_kernels()) out.append("neon");
        if (simd::avx2_kernels()) out.append("avx2");
        if (simd::avx512_kernels()) out.append("avx512");
        return out;
      }, "Every kernel-table level compiled into this binary, whether or not this CPU can run it.");
  m.def("compiled_pq4_scan_levels", [] {
        py::list out;
        out.append("scalar");
        if (simd::pq4_scan_avx2()) out.append("avx2");
        if (simd::pq4_scan_avx512()) out.append("avx512");
        if (simd::pq4_scan_avx512vbmi()) out.append("avx512-vbmi");
        return out;
      }, "The 4-bit PQ fast-scan levels compiled into this binary (IVF-PQ / ScaNN).");
#ifdef ANNFORGE_BUILD_TYPE
  m.attr("build_type") = ANNFORGE_BUILD_TYPE;
#endif
#ifdef ANNFORGE_NATIVE_BUILD
  m.attr("native_build") = static_cast<bool>(ANNFORGE_NATIVE_BUILD);  // -march=native: never in a wheel
#endif
  m.def("set_simd_level", [](const std::string& name) { simd::set_active_level(simd::parse_level(name.c_str())); },
        py::arg("level"), "Switch the active kernels (tests and benchmarks); raises ValueError if unavailable.");
}

}  // namespace annforge::py_bindings
