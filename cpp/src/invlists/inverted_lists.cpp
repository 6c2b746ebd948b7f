#include "annforge/invlists/inverted_lists.h"

#include <algorithm>
#include <cstring>
#include <limits>

#include "annforge/codec/pq4_fastscan.h"

namespace annforge::invlists {

namespace pq4 = codec::pq4;

InvertedLists::InvertedLists(std::size_t nlists, std::size_t m, std::size_t nbits, std::size_t payload_bytes,
                             bool keep_norm_terms)
    : m_(m), nbits_(nbits), payload_bytes_(payload_bytes), keep_norm_terms_(keep_norm_terms), lists_(nlists) {
  ANNFORGE_CHECK(nbits == 4 || nbits == 8, ErrorKind::Value, "inverted lists hold 4- or 8-bit codes, got ", nbits);
}

std::vector<std::size_t> InvertedLists::list_sizes() const {
  std::vector<std::size_t> out(lists_.size());
  for (std::size_t l = 0; l < lists_.size(); ++l) out[l] = lists_[l].ids.size();
  return out;
}

std::vector<idx_t> InvertedLists::ids() const {
  std::vector<idx_t> out;
  out.reserve(where_.size());
  for (const List& L : lists_) out.insert(out.end(), L.ids.data(), L.ids.data() + L.ids.size());
  return out;
}

std::size_t InvertedLists::code_bytes_for(std::size_t n) const noexcept {
  return nbits_ == 8 ? n * m_ : pq4::blocks_for(n) * pq4::block_bytes(m_);
}

ListView InvertedLists::list(std::size_t list) const noexcept {
  const List& L = lists_[list];
  ListView v;
  v.codes = L.codes.data();
  v.ids = L.ids.data();
  v.size = L.ids.size();
  if (keep_norm_terms_) {
    v.norm_terms = L.norm_terms.data();
    v.block_floor = L.block_floor.data();
  }
  return v;
}

void InvertedLists::code_at(std::size_t list, std::size_t offset, std::uint8_t* code) const {
  const std::uint8_t* codes = lists_[list].codes.data();
  if (nbits_ == 8) {
    std::memcpy(code, codes + offset * m_, m_);
  } else {
    for (std::size_t j = 0; j < m_; ++j) code[j] = pq4::get_code(codes, m_, offset, j);
  }
}

void InvertedLists::lower_floor(List& L, std::size_t slot, float term) {
  const std::size_t block = slot / pq4::kBlock;
  if (block >= L.block_floor.size()) L.block_floor.resize(block + 1, std::numeric_limits<float>::infinity());
  L.block_floor[block] = std::min(L.block_floor[block], term);
}

std::uint8_t* InvertedLists::append(std::size_t list, idx_t id, const std::uint8_t* code, float norm_term) {
  List& L = lists_[list];
  const std::size_t off = L.ids.size();
  if (nbits_ == 8) {
    L.codes.append(code, m_);
  } else {
    if (off % pq4::kBlock == 0) L.codes.resize(L.codes.size() + pq4::block_bytes(m_));
    std::uint8_t* blocks = L.codes.mutable_data();
    for (std::size_t j = 0; j < m_; ++j) pq4::set_code(blocks, m_, off, j, code[j]);
  }
  L.ids.push_back(id);
  if (keep_norm_terms_) {
    L.norm_terms.push_back(norm_term);
    lower_floor(L, off, norm_term);
  }
  where_.set(id, pack_location(list, off));
  if (!payload_bytes_) return nullptr;
  L.payload.resize(L.payload.size() + payload_bytes_);
  return L.payload.mutable_data() + off * payload_bytes_;
}

bool InvertedLists::remove(idx_t id) {
  const idx_t loc = where_.erase(id);
  if (loc == IdMap::kMissing) return false;
  erase_at(location_list(loc), location_offset(loc));
  return true;
}

void InvertedLists::erase_at(std::size_t list, std::size_t off) {
  List& L = lists_[list];
  const std::size_t last = L.ids.size() - 1, pb = payload_bytes_;
  if (off != last) {  // move the last entry into the hole
    const idx_t moved = L.ids[last];
    L.ids.at_mut(off) = moved;
    where_.set(moved, pack_location(list, off));
    if (keep_norm_terms_) {
      L.norm_terms.at_mut(off) = L.norm_terms[last];
      lower_floor(L, off, L.norm_terms[last]);
    }
    std::uint8_t* codes = L.codes.mutable_data();
    if (nbits_ == 8) {
      std::memcpy(codes + off * m_, codes + last * m_, m_);
    } else {
      for (std::size_t j = 0; j < m_; ++j) pq4::set_code(codes, m_, off, j, pq4::get_code(codes, m_, last, j));
    }
    if (pb) {
      std::uint8_t* p = L.payload.mutable_data();
      std::memcpy(p + off * pb, p + last * pb, pb);
    }
  }
  L.ids.shrink(last);
  if (keep_norm_terms_) {
    L.norm_terms.shrink(last);
    L.block_floor.resize(pq4::blocks_for(last));  // an emptied block starts afresh
  }
  if (nbits_ == 4) {
    std::uint8_t* blocks = L.codes.mutable_data();
    for (std::size_t j = 0; j < m_; ++j) pq4::set_code(blocks, m_, last, j, 0);  // keep padding zero
  }
  L.codes.shrink(code_bytes_for(last));
  if (pb) L.payload.shrink(last * pb);
}

bool InvertedLists::load_list(std::size_t list, const std::uint8_t* codes, const idx_t* ids, std::size_t n,
                              const std::uint8_t* payload, const std::shared_ptr<const void>& keepalive,
                              const std::function<bool(idx_t)>& id_ok) {
  List& L = lists_[list];
  const std::size_t cb = code_bytes_for(n), pb = payload_bytes_;
  for (std::size_t i = 0; i < n; ++i) {
    idx_t id;
    std::memcpy(&id, ids + i, sizeof id);
    if (!id_ok(id) || where_.contains(id)) return false;
    where_.set(id, pack_location(list, i));
  }
  if (keepalive) {
    L.codes = AlignedBuffer<std::uint8_t>::view(codes, cb, keepalive);
    L.ids = AlignedBuffer<idx_t>::view(ids, n, keepalive);
    if (pb) L.payload = AlignedBuffer<std::uint8_t>::view(payload, n * pb, keepalive);
  } else {
    L.codes.append(codes, cb);
    L.ids.reserve(n);
    for (std::size_t i = 0; i < n; ++i) {
      idx_t id;
      std::memcpy(&id, ids + i, sizeof id);
      L.ids.push_back(id);
    }
    if (pb) L.payload.append(payload, n * pb);
  }
  return true;
}

std::size_t InvertedLists::memory_bytes() const {
  std::size_t bytes = where_.memory_bytes();
  for (const List& L : lists_)
    bytes += L.codes.heap_bytes() + L.ids.heap_bytes() + L.payload.heap_bytes() + L.norm_terms.heap_bytes() +
             L.block_floor.capacity() * sizeof(float);
  return bytes;
}

}  // namespace annforge::invlists
