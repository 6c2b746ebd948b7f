// External id -> internal slot, as a compact open-addressing hash table (16 bytes per entry at load
// factor <= 0.5 after growth, no per-node allocation), plus the validation every index applies to
// user-supplied ids.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "annforge/common.h"

namespace annforge {

class IdMap {
 public:
  static constexpr idx_t kMissing = -1;

  std::size_t size() const noexcept { return size_; }
  // Slot of `id`, or kMissing.
  idx_t find(idx_t id) const noexcept;
  bool contains(idx_t id) const noexcept { return find(id) != kMissing; }
  // Inserts or overwrites.
  void set(idx_t id, idx_t slot);
  // Returns the slot it had, or kMissing.
  idx_t erase(idx_t id) noexcept;
  void clear() noexcept;
  void reserve(std::size_t n);
  std::size_t memory_bytes() const noexcept { return keys_.capacity() * 2 * sizeof(idx_t); }

 private:
  static constexpr idx_t kEmpty = -1;
  static constexpr idx_t kTombstone = -2;
  std::size_t bucket(idx_t id) const noexcept;
  void rehash(std::size_t buckets);

  std::vector<idx_t> keys_;
  std::vector<idx_t> values_;
  std::size_t size_ = 0;
  std::size_t used_ = 0;  // live + tombstones
};

// Ids given to add(): none negative, no duplicates within the call. Throws ValueError naming the id.
void validate_new_ids(const idx_t* ids, std::size_t n);

}  // namespace annforge
