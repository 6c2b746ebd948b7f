// Search filters: which external ids a search may return.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "annforge/common.h"
#include "annforge/storage/id_map.h"

namespace annforge {

class IdSelector {
 public:
  virtual ~IdSelector() = default;
  virtual bool contains(idx_t id) const = 0;
  // The allowed ids when they are known up front (sorted, unique), else nullptr (a callable).
  virtual const std::vector<idx_t>* id_list() const { return nullptr; }
  // Whether contains() may be called from several threads at once.
  virtual bool thread_safe() const { return true; }
};

// An explicit set of allowed ids: a bitset when the ids are dense enough, else a hash set.
class IdSetSelector final : public IdSelector {
 public:
  IdSetSelector(const idx_t* ids, std::size_t n);
  bool contains(idx_t id) const override {
    if (id < 0) return false;
    if (!bits_.empty()) {
      const auto u = static_cast<std::uint64_t>(id);
      return u < bit_count_ && ((bits_[u >> 6] >> (u & 63)) & 1u);
    }
    return set_.contains(id);
  }
  const std::vector<idx_t>* id_list() const override { return &ids_; }

 private:
  std::vector<idx_t> ids_;
  std::vector<std::uint64_t> bits_;
  std::uint64_t bit_count_ = 0;
  IdMap set_;
};

}  // namespace annforge
