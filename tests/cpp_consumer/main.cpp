// Builds a FlatIndex through the installed headers and library, searches it, saves and reloads it,
// and checks that bad input surfaces as annforge::Error. Exit code 0 and "ok" on success.
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "annforge/common.h"
#include "annforge/index/flat.h"
#include "annforge/io/format.h"

namespace {

int failures = 0;

void expect(bool ok, const std::string& what) {
  if (!ok) {
    std::fprintf(stderr, "FAILED: %s\n", what.c_str());
    ++failures;
  }
}

}  // namespace

int main(int argc, char** argv) {
  const std::string path = argc > 1 ? argv[1] : "consumer_index.af";
  constexpr std::size_t dim = 16, n = 1000, k = 3;

  std::mt19937 gen(42);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(n * dim);
  for (float& v : x) v = normal(gen);
  std::vector<annforge::idx_t> ids(n);
  for (std::size_t i = 0; i < n; ++i) ids[i] = static_cast<annforge::idx_t>(1000 + i);

  annforge::FlatIndex index(dim, annforge::Metric::L2);
  std::vector<annforge::idx_t> used(n);
  index.add(x.data(), n, ids.data(), /*num_threads=*/0, used.data());
  expect(index.size() == n, "size after add");

  // Query: row 123 plus a little noise; its own id must come back first.
  std::vector<float> q(x.begin() + 123 * dim, x.begin() + 124 * dim);
  for (float& v : q) v += 0.01f * normal(gen);
  std::vector<annforge::idx_t> out_ids(k);
  std::vector<float> out_dist(k);
  annforge::SearchOptions opt;
  index.search(q.data(), 1, k, opt, out_ids.data(), out_dist.data());
  expect(out_ids[0] == 1123, "nearest neighbour is row 123 (id 1123), got " + std::to_string(out_ids[0]));
  expect(out_dist[0] <= out_dist[1] && out_dist[1] <= out_dist[2], "distances sorted");

  index.save(path);
  auto loaded = annforge::FlatIndex::read(annforge::io::FileReader::open(path, /*mmap=*/false));
  std::vector<annforge::idx_t> again(k);
  annforge::SearchOptions opt2;
  loaded->search(q.data(), 1, k, opt2, again.data(), out_dist.data());
  expect(loaded->size() == n && again == out_ids, "same results after save + read");

  bool threw = false;
  try {
    annforge::SearchOptions opt3;
    index.search(q.data(), 1, 0, opt3, out_ids.data(), out_dist.data());  // k = 0 is invalid
  } catch (const annforge::Error&) {
    threw = true;
  }
  expect(threw, "k = 0 raises annforge::Error");

  std::remove(path.c_str());
  if (failures) return EXIT_FAILURE;
  std::printf("ok\n");
  return EXIT_SUCCESS;
}
