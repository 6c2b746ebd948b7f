#include "annforge/storage/filter.h"

#include <algorithm>

namespace annforge {

IdSetSelector::IdSetSelector(const idx_t* ids, std::size_t n) : ids_(ids, ids + n) {
  for (std::size_t i = 0; i < n; ++i)
    ANNFORGE_CHECK(ids[i] >= 0, ErrorKind::Value, "filter ids must be non-negative, got ", ids[i]);
  std::sort(ids_.begin(), ids_.end());
  ids_.erase(std::unique(ids_.begin(), ids_.end()), ids_.end());
  const idx_t max_id = ids_.empty() ? 0 : ids_.back();
  // A bitset costs max_id/8 bytes; use it when that is at most ~64 bytes per allowed id.
  if (static_cast<std::uint64_t>(max_id) <= 512u * (ids_.size() + 64)) {
    bit_count_ = static_cast<std::uint64_t>(max_id) + 1;
    bits_.assign((bit_count_ + 63) / 64, 0);
    for (idx_t id : ids_) bits_[static_cast<std::uint64_t>(id) >> 6] |= 1ULL << (id & 63);
  } else {
    set_.reserve(ids_.size());
    for (std::size_t i = 0; i < ids_.size(); ++i) set_.set(ids_[i], static_cast<idx_t>(i));
  }
}

}  // namespace annforge
