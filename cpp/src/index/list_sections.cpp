#include "annforge/index/list_sections.h"

#include <cmath>
#include <cstring>
#include <vector>

namespace annforge {

namespace {
constexpr std::uint32_t kTagListSizes = io::make_tag("LSIZ");
constexpr std::uint32_t kTagCodes = io::make_tag("CODE");
constexpr std::uint32_t kTagIds = io::make_tag("IDS ");
constexpr std::uint32_t kTagPayload = io::make_tag("REFV");
constexpr std::uint32_t kTagSq8 = io::make_tag("SQ8P");
}  // namespace

void write_list_sections(io::FileWriter& w, const invlists::InvertedLists& lists) {
  const std::size_t nlists = lists.nlists(), pb = lists.payload_bytes();
  io::ByteWriter sizes;
  for (std::size_t l = 0; l < nlists; ++l) sizes.put(static_cast<std::uint64_t>(lists.list_size(l)));
  w.add_owned(kTagListSizes, sizes.take());
  w.add(kTagCodes, nullptr, 0);
  for (std::size_t l = 0; l < nlists; ++l) w.add_chunk(lists.stored_codes(l), lists.stored_code_bytes(l));
  w.add(kTagIds, nullptr, 0);
  for (std::size_t l = 0; l < nlists; ++l) w.add_chunk(lists.stored_ids(l), lists.list_size(l) * sizeof(idx_t));
  w.add(kTagPayload, nullptr, 0);
  for (std::size_t l = 0; l < nlists; ++l) w.add_chunk(lists.stored_payload(l), lists.list_size(l) * pb);
}

void read_list_sections(const io::FileReader& reader, const ListSectionNames& names,
                        const std::function<bool(idx_t)>& id_ok,
                        const std::function<void(const std::uint8_t*, std::size_t)>& check_payload,
                        invlists::InvertedLists& lists) {
  const std::string& origin = reader.origin();
  auto corrupt = [&](const char* what, const char* why) {
    fail(ErrorKind::IO, origin, ": corrupted ", names.index, ": ", what, why);
  };
  const std::size_t nlists = lists.nlists();
  io::ByteReader sizes(reader.section(kTagListSizes), std::string(names.index) + " " + names.list + " sizes");
  std::vector<std::size_t> list_size(nlists);
  std::size_t total = 0, code_total = 0;
  for (std::size_t l = 0; l < nlists; ++l) {
    const auto sz = sizes.read<std::uint64_t>();
    if (sz >= (std::uint64_t(1) << 32)) corrupt(names.list, " size out of range");
    list_size[l] = sz;
    total += sz;
    code_total += lists.code_bytes_for(sz);
  }
  sizes.expect_end();
  const std::size_t pb = lists.payload_bytes();
  const io::Bytes codes = reader.section(kTagCodes), ids = reader.section(kTagIds),
                  payload = reader.section(kTagPayload);
  if (total > ids.size / sizeof(idx_t) || ids.size != total * sizeof(idx_t)) corrupt("", "id section size mismatch");
  if (codes.size != code_total) corrupt("", "code section size mismatch");
  if (payload.size != total * pb) corrupt(names.payload, " section size mismatch");
  check_payload(payload.data, total);

  lists.reserve_ids(total);
  std::shared_ptr<const void> keepalive;
  if (reader.mapped()) keepalive = reader.keepalive();
  std::size_t entry = 0, code_off = 0;
  for (std::size_t l = 0; l < nlists; ++l) {
    const std::size_t sz = list_size[l];
    if (!lists.load_list(l, codes.data + code_off, reinterpret_cast<const idx_t*>(ids.data) + entry, sz,
                         payload.data + entry * pb, keepalive, id_ok))
      corrupt("", "invalid or repeated id");
    entry += sz;
    code_off += lists.code_bytes_for(sz);
  }
}

std::vector<float> read_float_section(const io::FileReader& reader, const char* index, std::uint32_t tag,
                                      std::size_t count) {
  const io::Bytes b = reader.section(tag);
  if (b.size != count * sizeof(float))
    fail(ErrorKind::IO, reader.origin(), ": corrupted ", index, ": section ", io::tag_name(tag), " does not hold ",
         count, " floats");
  std::vector<float> out(count);
  if (count) std::memcpy(out.data(), b.data, b.size);
  for (float v : out)
    if (!std::isfinite(v)) fail(ErrorKind::IO, reader.origin(), ": corrupted ", index, ": non-finite parameter");
  return out;
}

void write_refine_params(io::FileWriter& w, const VectorCodec& codec) {
  if (codec.kind() != RefineKind::SQ8) return;
  io::ByteWriter sq;
  for (float v : codec.sq8_offset()) sq.put(v);
  for (float v : codec.sq8_scale()) sq.put(v);
  w.add_owned(kTagSq8, sq.take());
}

void read_refine_params(const io::FileReader& reader, const char* index, VectorCodec& codec) {
  if (codec.kind() != RefineKind::SQ8) return;
  const std::size_t d = codec.dim();
  const std::vector<float> both = read_float_section(reader, index, kTagSq8, 2 * d);
  if (!codec.load_sq8(both.data(), both.data() + d))
    fail(ErrorKind::IO, reader.origin(), ": corrupted ", index, ": ", VectorCodec::kBadSq8);
}

}  // namespace annforge
