// The file sections in which IVF-PQ and ScaNN keep their inverted lists (one format for both):
//   LSIZ  u64 per list, its size
//   CODE  the lists' codes in their stored layout, list after list
//   IDS   idx_t per entry, list after list
//   REFV  the payload bytes per entry (the re-ranking copy), list after list
// and the parameters of the re-ranking copy's code:
//   SQ8P  sq8 only: dim offsets, then dim scales (float32)
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>

#include "annforge/index/vector_index.h"  // io::FileWriter, io::FileReader
#include "annforge/invlists/inverted_lists.h"
#include "annforge/storage/vector_codec.h"

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

// A section of `count` finite floats (the trained parameters of a list family); OSError
// "<origin>: corrupted <index>: ..." when its size differs or a value is not finite.
std::vector<float> read_float_section(const io::FileReader& reader, const char* index, std::uint32_t tag,
                                      std::size_t count);

// The re-ranking code's parameters (SQ8P for sq8; nothing for the other codes), and reading them back
// into `codec` (constructed with the file's code and dimension), refused when out of range.
void write_refine_params(io::FileWriter& w, const VectorCodec& codec);
void read_refine_params(const io::FileReader& reader, const char* index, VectorCodec& codec);

}  // namespace annforge
