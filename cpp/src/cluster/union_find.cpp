#include "annforge/cluster/union_find.h"

#include <algorithm>
#include <numeric>

#include "annforge/common.h"

namespace annforge::cluster {

std::vector<std::int64_t> connected_groups(std::size_t n, const std::int64_t* first, const std::int64_t* second,
                                           std::size_t pairs) {
  std::vector<std::int64_t> parent(n);
  std::iota(parent.begin(), parent.end(), 0);
  auto find = [&](std::int64_t x) {
    while (parent[x] != x) x = parent[x] = parent[parent[x]];
    return x;
  };
  for (std::size_t i = 0; i < pairs; ++i) {
    const std::int64_t x = first[i], y = second[i];
    ANNFORGE_CHECK(x >= 0 && y >= 0 && static_cast<std::size_t>(x) < n && static_cast<std::size_t>(y) < n,
                   ErrorKind::Value, "pair index out of range");
    // The smaller root wins, so each label is its group's smallest row.
    const std::int64_t rx = find(x), ry = find(y);
    if (rx != ry) parent[std::max(rx, ry)] = std::min(rx, ry);
  }
  std::vector<std::int64_t> label(n);
  for (std::size_t i = 0; i < n; ++i) label[i] = find(static_cast<std::int64_t>(i));
  return label;
}

}  // namespace annforge::cluster
