// The RaBitQ bit-plane kernels at the baseline instruction set: the table for scalar and NEON builds.
#include <cstddef>
#include <cstdint>

#include "annforge/simd/rabitq_kernels.h"

namespace annforge::simd {
namespace {

inline unsigned popcount64(std::uint64_t x) {
#if defined(__GNUC__) || defined(__clang__)
  return static_cast<unsigned>(__builtin_popcountll(x));
#else
  x = x - ((x >> 1) & 0x5555555555555555ULL);
  x = (x & 0x3333333333333333ULL) + ((x >> 2) & 0x3333333333333333ULL);
  x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0FULL;
  return static_cast<unsigned>((x * 0x0101010101010101ULL) >> 56);
#endif
}

struct PlaneSums {
  std::uint64_t value = 0;
};

void double_and_add(PlaneSums& s, const std::uint64_t* plane, const std::uint64_t* qplanes, std::size_t nwords,
                    std::size_t qbits) {
  std::uint64_t sum = 0;
  for (std::size_t j = 0; j < qbits; ++j) {
    const std::uint64_t* q = qplanes + j * nwords;
    std::uint64_t count = 0;
    for (std::size_t w = 0; w < nwords; ++w) count += popcount64(plane[w] & q[w]);
    sum += count << j;
  }
  s.value = 2 * s.value + sum;
}

std::uint64_t total(const PlaneSums& s, std::size_t) { return s.value; }

}  // namespace

#include "rabitq_kernels.inc"

namespace {
const RaBitQKernels kTable = {Level::Scalar, &binary_dot_body, &multibit_dot_body, &binary_dot_rows_body};
}  // namespace

const RaBitQKernels* rabitq_kernels_scalar() { return &kTable; }
}  // namespace annforge::simd
