// Connected components of rows joined by pairs (union-find with path halving): the grouping step of
// near-duplicate removal, where each candidate pair says "these two rows belong together".
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace annforge::cluster {

// label[i] = the smallest row of the group that row i ends up in, for rows 0..n-1 joined by the pairs
// (first[p], second[p]), p < pairs. ValueError if a pair names a row outside [0, n).
std::vector<std::int64_t> connected_groups(std::size_t n, const std::int64_t* first, const std::int64_t* second,
                                           std::size_t pairs);

}  // namespace annforge::cluster
