#include "annforge/codec/pq4_fastscan.h"

#include <algorithm>
#include <cmath>

#include "annforge/common.h"

namespace annforge::codec::pq4 {

void quantize_lut(const float* lut, std::size_t m, QuantizedLut& out, const LutKernels* kernels) {
  // Runs once per (query, probed list): allocation-free, float only.
  const std::size_t pm = padded_m(m);
  if (out.table.size() != pm * 16) out.table.assign(pm * 16, 0);  // padded tables stay zero
  out.mins.resize(m);
  out.maxs.resize(m);
  float* mins = out.mins.data();
  float* maxs = out.maxs.data();
  if (kernels) {
    kernels->min_max(lut, m, mins, maxs);
  } else {
    for (std::size_t j = 0; j < m; ++j) {
      const float* t = lut + j * 16;
      float lo = t[0], hi = t[0];
      for (std::size_t c = 1; c < 16; ++c) {
        lo = t[c] < lo ? t[c] : lo;
        hi = t[c] > hi ? t[c] : hi;
      }
      mins[j] = lo;
      maxs[j] = hi;
    }
  }
  float bias = 0, sum_range = 0, max_range = 0;
  for (std::size_t j = 0; j < m; ++j) {
    const float range = maxs[j] - mins[j];
    bias += mins[j];
    sum_range += range;
    max_range = range > max_range ? range : max_range;
  }
  // One scale for every table: each entry fits a byte, and the sum of the m largest entries (each
  // rounded up by at most 1/2) stays below 65536, so 16-bit sums never wrap.
  float scale = max_range > 0 ? 255.0f / max_range : 1.0f;
  const float budget = 65535.0f - static_cast<float>(pm) - 1.0f;
  if (sum_range * scale > budget) scale = budget / sum_range;
  if (kernels) {
    kernels->encode(lut, m, mins, scale, out.table.data());
  } else {
    for (std::size_t j = 0; j < m; ++j) {
      const float* t = lut + j * 16;
      const float lo = mins[j];
      std::uint8_t* o = out.table.data() + j * 16;
      for (std::size_t c = 0; c < 16; ++c) {
        const float v = (t[c] - lo) * scale + 0.5f;  // >= 0.5: truncation rounds to nearest
        o[c] = static_cast<std::uint8_t>(v < 255.0f ? v : 255.0f);
      }
    }
  }
  out.scale = scale;
  out.bias = bias;
}

}  // namespace annforge::codec::pq4
