#include "annforge/storage/id_map.h"

#include <algorithm>

#include "annforge/util/splitmix64.h"

namespace annforge {

std::size_t IdMap::bucket(idx_t id) const noexcept {
  return static_cast<std::size_t>(util::splitmix64_mix(static_cast<std::uint64_t>(id))) & (keys_.size() - 1);
}

idx_t IdMap::find(idx_t id) const noexcept {
  if (keys_.empty() || id < 0) return kMissing;
  const std::size_t mask = keys_.size() - 1;
  for (std::size_t b = bucket(id);; b = (b + 1) & mask) {
    const idx_t k = keys_[b];
    if (k == id) return values_[b];
    if (k == kEmpty) return kMissing;
  }
}

void IdMap::rehash(std::size_t buckets) {
  std::vector<idx_t> old_keys(buckets, kEmpty), old_values(buckets, 0);
  old_keys.swap(keys_);
  old_values.swap(values_);
  size_ = used_ = 0;
  for (std::size_t i = 0; i < old_keys.size(); ++i)
    if (old_keys[i] >= 0) set(old_keys[i], old_values[i]);
}

void IdMap::reserve(std::size_t n) {
  std::size_t buckets = 16;
  while (buckets < 2 * n) buckets *= 2;
  if (buckets > keys_.size()) rehash(buckets);
}

void IdMap::set(idx_t id, idx_t slot) {
  ANNFORGE_ASSERT(id >= 0);
  if ((used_ + 1) * 4 > keys_.size() * 3) {  // keep load (with tombstones) under 3/4
    std::size_t buckets = keys_.empty() ? 16 : keys_.size();
    while ((size_ + 1) * 2 > buckets) buckets *= 2;
    rehash(buckets);
  }
  const std::size_t mask = keys_.size() - 1;
  std::size_t first_tomb = keys_.size();
  for (std::size_t b = bucket(id);; b = (b + 1) & mask) {
    const idx_t k = keys_[b];
    if (k == id) {
      values_[b] = slot;
      return;
    }
    if (k == kTombstone && first_tomb == keys_.size()) first_tomb = b;
    if (k == kEmpty) {
      if (first_tomb != keys_.size()) {
        b = first_tomb;
      } else {
        ++used_;
      }
      keys_[b] = id;
      values_[b] = slot;
      ++size_;
      return;
    }
  }
}

idx_t IdMap::erase(idx_t id) noexcept {
  if (keys_.empty() || id < 0) return kMissing;
  const std::size_t mask = keys_.size() - 1;
  for (std::size_t b = bucket(id);; b = (b + 1) & mask) {
    const idx_t k = keys_[b];
    if (k == id) {
      keys_[b] = kTombstone;
      --size_;
      return values_[b];
    }
    if (k == kEmpty) return kMissing;
  }
}

void IdMap::clear() noexcept {
  std::fill(keys_.begin(), keys_.end(), kEmpty);
  size_ = used_ = 0;
}

void validate_new_ids(const idx_t* ids, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i)
    ANNFORGE_CHECK(ids[i] >= 0, ErrorKind::Value, "ids must be non-negative, got ", ids[i], " at position ", i);
  if (n < 2) return;
  IdMap seen;
  seen.reserve(n);
  for (std::size_t i = 0; i < n; ++i) {
    const idx_t prev = seen.find(ids[i]);
    ANNFORGE_CHECK(prev == IdMap::kMissing, ErrorKind::Value, "duplicate id ", ids[i], " at positions ", prev,
                   " and ", i, " in one call");
    seen.set(ids[i], static_cast<idx_t>(i));
  }
}

}  // namespace annforge
