// AVX512 kernels (to be filled in); returns nullptr until then so the dispatcher skips this level.
#include "annforge/simd/kernels.h"

namespace annforge::simd {
const Kernels* avx512_kernels() { return nullptr; }
}  // namespace annforge::simd
