// The inverted-list store shared by IVF-PQ and ScaNN: per list the product-quantizer codes, the external
// ids, an opaque per-entry payload (the family's re-ranking copy) and, where the family's distance needs
// it, a per-entry norm term with a per-block lower bound of it; plus a global id -> (list, offset) map so
// that remove and upsert are O(1) (the list's last entry moves into the hole).
//
// Codes: nbits = 4 keeps the fast-scan block layout of codec/pq4_fastscan.h (32 entries a block, padding
// zero); nbits = 8 keeps m bytes per entry.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "annforge/common.h"
#include "annforge/storage/aligned_buffer.h"
#include "annforge/storage/id_map.h"

namespace annforge::invlists {

// An entry's location: (list << 32) | offset. Candidates carry it until their ids are needed.
inline idx_t pack_location(std::size_t list, std::size_t offset) {
  return static_cast<idx_t>((static_cast<std::uint64_t>(list) << 32) | offset);
}
inline std::size_t location_list(idx_t loc) { return static_cast<std::size_t>(static_cast<std::uint64_t>(loc) >> 32); }
inline std::size_t location_offset(idx_t loc) { return static_cast<std::size_t>(loc & 0xffffffffll); }

// What a scan reads of one list.
struct ListView {
  const std::uint8_t* codes = nullptr;  // nbits 4: blocks_for(size) fast-scan blocks; nbits 8: size * m bytes
  const idx_t* ids = nullptr;
  const float* norm_terms = nullptr;    // null unless the store keeps them
  const float* block_floor = nullptr;   // per block of 32 entries: a lower bound of its norm terms
  std::size_t size = 0;
};

class InvertedLists {
 public:
  InvertedLists() = default;
  // nlists empty lists of m codes of nbits (4 or 8) per entry, payload_bytes opaque bytes per entry, and
  // a norm term per entry when keep_norm_terms.
  InvertedLists(std::size_t nlists, std::size_t m, std::size_t nbits, std::size_t payload_bytes,
                bool keep_norm_terms);

  std::size_t nlists() const noexcept { return lists_.size(); }
  std::size_t m() const noexcept { return m_; }
  std::size_t nbits() const noexcept { return nbits_; }
  std::size_t payload_bytes() const noexcept { return payload_bytes_; }
  bool keeps_norm_terms() const noexcept { return keep_norm_terms_; }

  std::size_t size() const noexcept { return where_.size(); }  // entries over all lists
  std::size_t list_size(std::size_t list) const noexcept { return lists_[list].ids.size(); }
  std::vector<std::size_t> list_sizes() const;
  bool contains(idx_t id) const noexcept { return where_.contains(id); }
  // The entry's location (pack_location), or IdMap::kMissing.
  idx_t find(idx_t id) const noexcept { return where_.find(id); }
  std::vector<idx_t> ids() const;  // list by list, in list order

  // Appends an entry to `list` (an id already stored elsewhere must be removed first). `code` holds m
  // codes, one per byte; `norm_term` is kept when the store keeps norm terms. Returns the entry's
  // payload_bytes() bytes for the caller to fill (null when there are none); valid until the next update.
  std::uint8_t* append(std::size_t list, idx_t id, const std::uint8_t* code, float norm_term = 0.0f);
  // Removes `id` wherever it is; false when it is not stored.
  bool remove(idx_t id);

  ListView list(std::size_t list) const noexcept;
  idx_t id_at(idx_t location) const noexcept {
    return lists_[location_list(location)].ids[location_offset(location)];
  }
  const std::uint8_t* payload_at(idx_t location) const noexcept {
    return lists_[location_list(location)].payload.data() + location_offset(location) * payload_bytes_;
  }
  // The m codes of an entry, one per byte.
  void code_at(std::size_t list, std::size_t offset, std::uint8_t* code) const;
  void code_at(idx_t location, std::uint8_t* code) const {
    code_at(location_list(location), location_offset(location), code);
  }

  // Heap bytes of codes, ids, payloads, norm terms, block bounds and the id map.
  std::size_t memory_bytes() const;

  // Serialization: the bytes list `list` stores (codes in their stored layout) and what n entries'
  // codes take. load_list fills an empty list from a file's sections, as read-only views that
  // `keepalive` holds alive when it is set (mmap), else as copies; norm terms are left to
  // set_norm_terms. It returns false, the list left unfilled, when an id fails id_ok or is stored
  // already.
  std::size_t code_bytes_for(std::size_t n) const noexcept;
  const std::uint8_t* stored_codes(std::size_t list) const noexcept { return lists_[list].codes.data(); }
  std::size_t stored_code_bytes(std::size_t list) const noexcept { return lists_[list].codes.size(); }
  const idx_t* stored_ids(std::size_t list) const noexcept { return lists_[list].ids.data(); }
  const std::uint8_t* stored_payload(std::size_t list) const noexcept { return lists_[list].payload.data(); }
  void reserve_ids(std::size_t total) { where_.reserve(total); }
  bool load_list(std::size_t list, const std::uint8_t* codes, const idx_t* ids, std::size_t n,
                 const std::uint8_t* payload, const std::shared_ptr<const void>& keepalive,
                 const std::function<bool(idx_t)>& id_ok);
  // Recomputes every norm term as term_of(list, code) (after loading); false, with the store left
  // partly filled, at the first non-finite term.
  template <class TermOf>
  bool set_norm_terms(TermOf term_of) {
    std::vector<std::uint8_t> code(m_);
    for (std::size_t l = 0; l < lists_.size(); ++l) {
      List& L = lists_[l];
      L.norm_terms.shrink(0);
      L.block_floor.clear();
      L.norm_terms.reserve(L.ids.size());
      for (std::size_t i = 0; i < L.ids.size(); ++i) {
        code_at(l, i, code.data());
        const float term = term_of(l, code.data());
        if (!std::isfinite(term)) return false;
        L.norm_terms.push_back(term);
        lower_floor(L, i, term);
      }
    }
    return true;
  }

 private:
  struct List {
    AlignedBuffer<std::uint8_t> codes;
    AlignedBuffer<idx_t> ids;
    AlignedBuffer<std::uint8_t> payload;  // size * payload_bytes
    AlignedBuffer<float> norm_terms;      // when kept
    // Per block of 32 entries, a lower bound of its norm terms (removals may leave it lower than
    // needed: still a bound). Lets a fast scan reject 16-bit sums against the candidate threshold
    // before any float work.
    std::vector<float> block_floor;
  };
  static void lower_floor(List& L, std::size_t slot, float term);
  void erase_at(std::size_t list, std::size_t offset);

  std::size_t m_ = 0, nbits_ = 4, payload_bytes_ = 0;
  bool keep_norm_terms_ = false;
  std::vector<List> lists_;
  IdMap where_;  // id -> pack_location(list, offset)
};

}  // namespace annforge::invlists
