// The file sections in which IVF-PQ and ScaNN keep their inverted lists (one format for both):
//   LSIZ  u64 per list, its size
//   CODE  the lists' codes in their stored layout, list after list
//   IDS   idx_t per entry, list after list
//   REFV  the payload bytes per entry (the re-ranking copy), list after list
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>

#include "annforge/index/vector_index.h"  // io::FileWriter, io::FileReader
#include "annforge/invlists/inverted_lists.h"

namespace annforge {

void write_list_sections(io::FileWriter& w, const invlists::InvertedLists& lists);

// How corruption messages name things: index "IVFPQIndex", list "list" / "leaf", payload "re-ranking" /
// "reorder".
struct ListSectionNames {
  const char* index;
  const char* list;
  const char* payload;
};

// Fills `lists` (shaped and empty) from the file: section sizes are checked against the list sizes,
// then check_payload(bytes, entries) sees the whole payload section, then each id must pass id_ok and
// be unique. The lists map the file's sections when the reader is mapped. Norm terms are the caller's
// (InvertedLists::set_norm_terms). Corruption fails with an OSError naming the file.
void read_list_sections(const io::FileReader& reader, const ListSectionNames& names,
                        const std::function<bool(idx_t)>& id_ok,
                        const std::function<void(const std::uint8_t*, std::size_t)>& check_payload,
                        invlists::InvertedLists& lists);

}  // namespace annforge
