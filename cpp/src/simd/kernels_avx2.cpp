// AVX2 kernels (to be filled in); returns nullptr until then so the dispatcher skips this level.
#include "annforge/simd/kernels.h"

namespace annforge::simd {
const Kernels* avx2_kernels() { return nullptr; }
}  // namespace annforge::simd
