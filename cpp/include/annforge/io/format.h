// The annforge file format, shared by every index family.
//
//   header (64 bytes)   magic "ANNFORGE", format version, byte-order mark, index kind, section count,
//                       total file size, checksum of header + directory
//   directory           per section: 4-byte tag, offset, length, checksum of the payload
//   payloads            each starts on a 64-byte boundary (so mmap'd vectors are aligned); padding is zero
//
// Every byte is covered: the header and directory by one checksum, payloads by their own, padding must
// be zero, and the file size must match exactly, so truncation, bit flips and foreign files are refused
// with an OSError that names the problem. Readers bound-check every access (ByteReader) and never trust
// a length they have not checked against the section. Saving is atomic: temporary file, fsync, rename.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "annforge/common.h"

namespace annforge::io {

constexpr std::uint32_t kFormatVersion = 1;
constexpr std::size_t kAlignment = 64;

// Index kinds: the number stored in the header selects the class that loads the file.
enum class Kind : std::uint32_t {
  Flat = 1,
  HNSW = 2,
  IVFPQ = 3,
  ScaNN = 4,
  MinHashLSH = 5,
  MinHashLSHForest = 6,
  IVFRaBitQ = 8,  // (7 left to the quantized-graph work of the same issue)
};
const char* kind_name(std::uint32_t kind);

constexpr std::uint32_t make_tag(const char (&s)[5]) {
  return static_cast<std::uint32_t>(static_cast<unsigned char>(s[0])) |
         (static_cast<std::uint32_t>(static_cast<unsigned char>(s[1])) << 8) |
         (static_cast<std::uint32_t>(static_cast<unsigned char>(s[2])) << 16) |
         (static_cast<std::uint32_t>(static_cast<unsigned char>(s[3])) << 24);
}
std::string tag_name(std::uint32_t tag);

// Streaming 64-bit checksum (four independent multiply-rotate lanes over 32-byte stripes; same value
// however the input is split into update() calls).
class Checksum {
 public:
  Checksum();
  void update(const void* data, std::size_t n);
  std::uint64_t digest() const;

 private:
  std::uint64_t lanes_[4];
  unsigned char pending_[32];
  std::size_t pending_size_ = 0;
  std::uint64_t total_ = 0;
};
std::uint64_t checksum(const void* data, std::size_t n);

// Collects sections as references to caller-owned memory (no copy of large payloads), then writes them.
class FileWriter {
 public:
  explicit FileWriter(Kind kind) : kind_(kind) {}

  // The referenced memory must stay alive and unchanged until write_file()/to_bytes() returns.
  // A section may be made of several chunks, concatenated in order.
  void add(std::uint32_t tag, const void* data, std::size_t bytes);
  void add_chunk(const void* data, std::size_t bytes);  // appends to the last section
  // Convenience: small sections built in place (the writer keeps the bytes).
  template <typename T>
  void add_vector(std::uint32_t tag, const std::vector<T>& v) {
    static_assert(std::is_trivially_copyable<T>::value, "plain data only");
    add(tag, v.data(), v.size() * sizeof(T));
  }
  void add_owned(std::uint32_t tag, std::vector<unsigned char> bytes);

  // Atomic save: writes `path + ".tmp-<pid>"`, fsyncs, renames over `path`, fsyncs the directory.
  void write_file(const std::string& path) const;
  std::vector<unsigned char> to_bytes() const;

 private:
  struct Chunk {
    const void* data;
    std::size_t bytes;
  };
  struct Section {
    std::uint32_t tag;
    std::vector<Chunk> chunks;
    std::size_t bytes = 0;
  };
  template <typename Sink>
  void emit(Sink& sink) const;

  Kind kind_;
  std::vector<Section> sections_;
  std::vector<std::unique_ptr<std::vector<unsigned char>>> owned_;
};

// A bounds-checked view of bytes inside a loaded file.
struct Bytes {
  const unsigned char* data = nullptr;
  std::size_t size = 0;
};

// An open annforge file: either read fully into memory or memory-mapped read-only. Every checksum is
// verified on open. Sections stay valid while any shared_ptr to the reader lives.
class FileReader : public std::enable_shared_from_this<FileReader> {
 public:
  static std::shared_ptr<FileReader> open(const std::string& path, bool mmap);
  static std::shared_ptr<FileReader> from_bytes(const void* data, std::size_t size);
  ~FileReader();
  FileReader(const FileReader&) = delete;
  FileReader& operator=(const FileReader&) = delete;

  std::uint32_t kind() const noexcept { return kind_; }
  std::uint32_t version() const noexcept { return version_; }
  bool mapped() const noexcept { return mapped_; }
  const std::string& origin() const noexcept { return origin_; }
  bool has(std::uint32_t tag) const;
  Bytes section(std::uint32_t tag) const;  // throws OSError when missing
  // Fails unless the file holds an index of `expected` kind.
  void expect_kind(Kind expected) const;
  std::shared_ptr<const void> keepalive() const { return shared_from_this(); }

 private:
  FileReader() = default;
  void parse();

  struct Entry {
    std::uint32_t tag;
    Bytes bytes;
  };
  std::string origin_;
  std::vector<unsigned char> owned_;
  const unsigned char* base_ = nullptr;
  std::size_t size_ = 0;
  bool mapped_ = false;
  void* map_addr_ = nullptr;
  std::size_t map_len_ = 0;
  std::uint32_t kind_ = 0;
  std::uint32_t version_ = 0;
  std::vector<Entry> entries_;
};

// Sequential, bounds-checked reads from a section; every failure is an OSError naming the section.
class ByteReader {
 public:
  ByteReader(Bytes b, std::string what) : b_(b), what_(std::move(what)) {}
  template <typename T>
  T read() {
    static_assert(std::is_trivially_copyable<T>::value, "plain data only");
    need(sizeof(T));
    T v;
    std::memcpy(&v, b_.data + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  // Pointer to `n` values of T inside the section (unaligned access is the caller's concern: the
  // writer aligns large arrays by putting them in sections of their own).
  template <typename T>
  const T* array(std::size_t n) {
    if (n != 0 && sizeof(T) > (~std::size_t(0)) / n) corrupt("array length overflows");
    need(n * sizeof(T));
    const T* p = reinterpret_cast<const T*>(b_.data + pos_);
    pos_ += n * sizeof(T);
    return p;
  }
  std::string string();  // u32 length + bytes
  std::size_t remaining() const noexcept { return b_.size - pos_; }
  void expect_end() const;
  [[noreturn]] void corrupt(const std::string& why) const;

 private:
  void need(std::size_t n) const {
    if (n > b_.size - pos_) corrupt("section is shorter than its contents say");
  }
  Bytes b_;
  std::string what_;
  std::size_t pos_ = 0;
};

// Appends plain values to a byte vector (for small metadata sections).
class ByteWriter {
 public:
  template <typename T>
  ByteWriter& put(const T& v) {
    static_assert(std::is_trivially_copyable<T>::value, "plain data only");
    const auto* p = reinterpret_cast<const unsigned char*>(&v);
    bytes_.insert(bytes_.end(), p, p + sizeof(T));
    return *this;
  }
  ByteWriter& put_string(const std::string& s);
  std::vector<unsigned char> take() { return std::move(bytes_); }

 private:
  std::vector<unsigned char> bytes_;
};

// Deletes `<path>.tmp-<pid>` files whose process no longer exists (left by a save that was killed);
// saving and opening a path both call it. Never throws: a file it cannot remove stays.
void remove_stale_temporaries(const std::string& path) noexcept;

// The kind stored in a file's header, checked by the header checksum only (the payloads are verified
// when the file is loaded); a file whose header is wrong gets the full reader's OSError naming the problem.
std::uint32_t file_kind(const std::string& path);

}  // namespace annforge::io
