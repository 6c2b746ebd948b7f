#include "annforge/io/format.h"

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>

#if defined(_WIN32)
#include <io.h>
#include <process.h>
#else
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#endif

#include "annforge/util/xxh64.h"

namespace annforge::io {

namespace {

constexpr unsigned char kMagic[8] = {'A', 'N', 'N', 'F', 'O', 'R', 'G', 'E'};
constexpr std::uint32_t kByteOrderMark = 0x01020304u;
constexpr std::size_t kHeaderSize = 64;
constexpr std::size_t kEntrySize = 32;  // tag u32, reserved u32, offset u64, length u64, checksum u64
constexpr std::uint32_t kMaxSections = 1024;

// The checksum is built on XXH64's lane step and final mix (util/xxh64.h); see Checksum::digest.
constexpr std::uint64_t P1 = util::kXxh64Prime1;
constexpr std::uint64_t P2 = util::kXxh64Prime2;
constexpr std::uint64_t P3 = util::kXxh64Prime3;
using util::rotl64;
// Payload words are read little-endian, as the format stores them.
inline std::uint64_t load64(const unsigned char* p) { return util::load64_le(p); }

std::size_t align_up(std::size_t x) { return (x + kAlignment - 1) / kAlignment * kAlignment; }

[[noreturn]] void io_fail(const std::string& origin, const std::string& what) {
  fail(ErrorKind::IO, origin, ": ", what);
}

}  // namespace

#if !defined(_WIN32)
namespace {
void remove_stale_temporaries_or_throw(const std::string& path) {
  // A save killed half-way leaves `<path>.tmp-<pid>`; once that process is gone nothing will ever
  // rename or remove it. A live pid (even a reused one) keeps its file: it may be a save in progress.
  std::string dir = ".", base = path;
  const auto slash = path.find_last_of('/');
  if (slash != std::string::npos) {
    dir = slash == 0 ? "/" : path.substr(0, slash);
    base = path.substr(slash + 1);
  }
  if (base.empty()) return;
  const std::unique_ptr<DIR, int (*)(DIR*)> d(::opendir(dir.c_str()), &::closedir);
  if (!d) return;
  const std::string prefix = base + ".tmp-";
  const pid_t self = getpid();
  while (const dirent* e = ::readdir(d.get())) {
    const char* name = e->d_name;
    if (std::strncmp(name, prefix.c_str(), prefix.size()) != 0) continue;
    const char* digits = name + prefix.size();
    const std::size_t len = std::strlen(digits);
    if (len == 0 || len > 9 || std::strspn(digits, "0123456789") != len) continue;
    const long pid = std::strtol(digits, nullptr, 10);
    if (pid <= 0 || pid == self) continue;
    if (::kill(static_cast<pid_t>(pid), 0) == 0 || errno != ESRCH) continue;  // alive, or not ours to judge
    (void)::unlink((dir + "/" + name).c_str());
  }
}
}  // namespace
#endif

void remove_stale_temporaries(const std::string& path) noexcept {
#if !defined(_WIN32)
  try {
    remove_stale_temporaries_or_throw(path);
  } catch (...) {  // out of memory for a file name: the files stay for a later call
  }
#else
  (void)path;
#endif
}

const char* kind_name(std::uint32_t kind) {
  switch (static_cast<Kind>(kind)) {
    case Kind::Flat: return "FlatIndex";
    case Kind::HNSW: return "HNSWIndex";
    case Kind::IVFPQ: return "IVFPQIndex";
    case Kind::ScaNN: return "ScaNNIndex";
    case Kind::MinHashLSH: return "MinHashLSH";
    case Kind::MinHashLSHForest: return "MinHashLSHForest";
    case Kind::IVFRaBitQ: return "IVFRaBitQIndex";
  }
  return "unknown";
}

std::string tag_name(std::uint32_t tag) {
  std::string s(4, ' ');
  for (int i = 0; i < 4; ++i) {
    const char c = static_cast<char>((tag >> (8 * i)) & 0xff);
    s[i] = (c >= 32 && c < 127) ? c : '?';
  }
  return s;
}

// ---------------------------------------------------------------------------------------------------
Checksum::Checksum() : lanes_{P1 + P2, P2, 0, 0 - P1} {}

void Checksum::update(const void* data, std::size_t n) {
  const auto* p = static_cast<const unsigned char*>(data);
  total_ += n;
  if (pending_size_) {
    const std::size_t take = (32 - pending_size_) < n ? (32 - pending_size_) : n;
    std::memcpy(pending_ + pending_size_, p, take);
    pending_size_ += take;
    p += take;
    n -= take;
    if (pending_size_ < 32) return;
    for (int i = 0; i < 4; ++i) lanes_[i] = util::xxh64_round(lanes_[i], load64(pending_ + 8 * i));
    pending_size_ = 0;
  }
  std::uint64_t a = lanes_[0], b = lanes_[1], c = lanes_[2], d = lanes_[3];
  for (; n >= 32; p += 32, n -= 32) {
    a = util::xxh64_round(a, load64(p));
    b = util::xxh64_round(b, load64(p + 8));
    c = util::xxh64_round(c, load64(p + 16));
    d = util::xxh64_round(d, load64(p + 24));
  }
  lanes_[0] = a, lanes_[1] = b, lanes_[2] = c, lanes_[3] = d;
  std::memcpy(pending_, p, n);
  pending_size_ = n;
}

std::uint64_t Checksum::digest() const {
  std::uint64_t h = rotl64(lanes_[0], 1) + rotl64(lanes_[1], 7) + rotl64(lanes_[2], 12) + rotl64(lanes_[3], 18);
  h ^= total_ * P3;
  for (std::size_t i = 0; i < pending_size_; ++i) h = rotl64(h ^ (pending_[i] * P1), 11) * P2;
  return util::xxh64_avalanche(h);
}

std::uint64_t checksum(const void* data, std::size_t n) {
  Checksum c;
  c.update(data, n);
  return c.digest();
}

// ---------------------------------------------------------------------------------------------------
void FileWriter::add(std::uint32_t tag, const void* data, std::size_t bytes) {
  for (const auto& s : sections_) ANNFORGE_ASSERT(s.tag != tag);
  sections_.push_back(Section{tag, {}, 0});
  add_chunk(data, bytes);
}

void FileWriter::add_chunk(const void* data, std::size_t bytes) {
  ANNFORGE_ASSERT(!sections_.empty());
  if (bytes == 0) return;
  sections_.back().chunks.push_back(Chunk{data, bytes});
  sections_.back().bytes += bytes;
}

void FileWriter::add_owned(std::uint32_t tag, std::vector<unsigned char> bytes) {
  owned_.push_back(std::make_unique<std::vector<unsigned char>>(std::move(bytes)));
  add(tag, owned_.back()->data(), owned_.back()->size());
}

template <typename Sink>
void FileWriter::emit(Sink& sink) const {
  const std::size_t n = sections_.size();
  std::vector<unsigned char> head(align_up(kHeaderSize + n * kEntrySize), 0);
  std::vector<std::uint64_t> offsets(n);
  std::size_t offset = head.size();
  for (std::size_t i = 0; i < n; ++i) {
    offsets[i] = offset;
    offset = align_up(offset + sections_[i].bytes);
  }
  const std::uint64_t file_size = offset;
  std::memcpy(head.data(), kMagic, 8);
  const std::uint32_t version = kFormatVersion, bom = kByteOrderMark, kind = static_cast<std::uint32_t>(kind_),
                      count = static_cast<std::uint32_t>(n);
  std::memcpy(head.data() + 8, &version, 4);
  std::memcpy(head.data() + 12, &bom, 4);
  std::memcpy(head.data() + 16, &kind, 4);
  std::memcpy(head.data() + 20, &count, 4);
  std::memcpy(head.data() + 24, &file_size, 8);
  for (std::size_t i = 0; i < n; ++i) {
    Checksum c;
    for (const auto& ch : sections_[i].chunks) c.update(ch.data, ch.bytes);
    unsigned char* e = head.data() + kHeaderSize + i * kEntrySize;
    const std::uint64_t len = sections_[i].bytes, sum = c.digest();
    std::memcpy(e, &sections_[i].tag, 4);
    std::memcpy(e + 8, &offsets[i], 8);
    std::memcpy(e + 16, &len, 8);
    std::memcpy(e + 24, &sum, 8);
  }
  // Header checksum covers bytes [0, 32) and the directory; it is stored at [32, 40).
  Checksum hc;
  hc.update(head.data(), 32);
  hc.update(head.data() + kHeaderSize, n * kEntrySize);
  const std::uint64_t hsum = hc.digest();
  std::memcpy(head.data() + 32, &hsum, 8);

  sink(head.data(), head.size());
  static const unsigned char zeros[kAlignment] = {};
  std::size_t pos = head.size();
  for (std::size_t i = 0; i < n; ++i) {
    for (const auto& ch : sections_[i].chunks) sink(ch.data, ch.bytes);
    pos += sections_[i].bytes;
    const std::size_t pad = align_up(pos) - pos;
    if (pad) sink(zeros, pad);
    pos += pad;
  }
}

std::vector<unsigned char> FileWriter::to_bytes() const {
  std::vector<unsigned char> out;
  auto sink = [&](const void* p, std::size_t n) {
    const auto* b = static_cast<const unsigned char*>(p);
    out.insert(out.end(), b, b + n);
  };
  emit(sink);
  return out;
}

void FileWriter::write_file(const std::string& path) const {
  remove_stale_temporaries(path);
#if defined(_WIN32)
  const std::string tmp = path + ".tmp-" + std::to_string(_getpid());
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
#else
  const std::string tmp = path + ".tmp-" + std::to_string(getpid());
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
#endif
  if (!f) io_fail(path, std::string("cannot create file: ") + std::strerror(errno));
  bool ok = true;
  int saved_errno = 0;
  auto sink = [&](const void* p, std::size_t n) {
    if (ok && std::fwrite(p, 1, n, f) != n) {
      ok = false;
      saved_errno = errno;
    }
  };
  try {
    emit(sink);
  } catch (...) {
    std::fclose(f);
    std::remove(tmp.c_str());
    throw;
  }
  if (ok && std::fflush(f) != 0) ok = false, saved_errno = errno;
#if !defined(_WIN32)
  if (ok && fsync(fileno(f)) != 0) ok = false, saved_errno = errno;
#endif
  if (std::fclose(f) != 0 && ok) ok = false, saved_errno = errno;
  if (!ok) {
    std::remove(tmp.c_str());
    io_fail(path, std::string("write failed: ") + std::strerror(saved_errno));
  }
#if defined(_WIN32)
  std::remove(path.c_str());  // rename does not replace on Windows
#endif
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    saved_errno = errno;
    std::remove(tmp.c_str());
    io_fail(path, std::string("cannot rename temporary file into place: ") + std::strerror(saved_errno));
  }
#if !defined(_WIN32)
  // Make the rename itself durable.
  std::string dir = ".";
  const auto slash = path.find_last_of('/');
  if (slash != std::string::npos) dir = slash == 0 ? "/" : path.substr(0, slash);
  const int dfd = ::open(dir.c_str(), O_RDONLY);
  if (dfd >= 0) {
    (void)fsync(dfd);
    ::close(dfd);
  }
#endif
}

// ---------------------------------------------------------------------------------------------------
std::shared_ptr<FileReader> FileReader::open(const std::string& path, bool mmap) {
  std::shared_ptr<FileReader> r(new FileReader());
  r->origin_ = path;
  remove_stale_temporaries(path);
#if !defined(_WIN32)
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) io_fail(path, std::string("cannot open: ") + std::strerror(errno));
  struct stat st;
  if (fstat(fd, &st) != 0) {
    const int e = errno;
    ::close(fd);
    io_fail(path, std::string("cannot stat: ") + std::strerror(e));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    io_fail(path, "not a regular file");
  }
  const std::size_t size = static_cast<std::size_t>(st.st_size);
  if (mmap && size > 0) {
    void* addr = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
    ::close(fd);
    if (addr == MAP_FAILED) io_fail(path, std::string("mmap failed: ") + std::strerror(errno));
    r->map_addr_ = addr;
    r->map_len_ = size;
    r->base_ = static_cast<const unsigned char*>(addr);
    r->size_ = size;
    r->mapped_ = true;
  } else {
    r->owned_.resize(size);
    std::size_t done = 0;
    while (done < size) {
      const ssize_t got = ::read(fd, r->owned_.data() + done, size - done);
      if (got < 0 && errno == EINTR) continue;
      if (got <= 0) {
        const int e = errno;
        ::close(fd);
        io_fail(path, got == 0 ? std::string("file shrank while reading") : std::string("read failed: ") + std::strerror(e));
      }
      done += static_cast<std::size_t>(got);
    }
    ::close(fd);
    r->base_ = r->owned_.data();
    r->size_ = size;
  }
#else
  (void)mmap;
  std::ifstream in(path, std::ios::binary);
  if (!in) io_fail(path, "cannot open");
  r->owned_.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  r->base_ = r->owned_.data();
  r->size_ = r->owned_.size();
#endif
  r->parse();
  return r;
}

std::shared_ptr<FileReader> FileReader::from_bytes(const void* data, std::size_t size) {
  std::shared_ptr<FileReader> r(new FileReader());
  r->origin_ = "<bytes>";
  const auto* p = static_cast<const unsigned char*>(data);
  r->owned_.assign(p, p + size);
  r->base_ = r->owned_.data();
  r->size_ = size;
  r->parse();
  return r;
}

FileReader::~FileReader() {
#if !defined(_WIN32)
  if (map_addr_) ::munmap(map_addr_, map_len_);
#endif
}

void FileReader::parse() {
  if (size_ < kHeaderSize) {
    if (size_ >= 8 && std::memcmp(base_, kMagic, 8) == 0)
      io_fail(origin_, "truncated annforge file (" + std::to_string(size_) + " bytes, header needs 64)");
    io_fail(origin_, "not an annforge index file (too short, " + std::to_string(size_) + " bytes)");
  }
  if (std::memcmp(base_, kMagic, 8) != 0) io_fail(origin_, "not an annforge index file (bad magic bytes)");
  std::uint32_t bom, count;
  std::uint64_t file_size, stored_sum;
  std::memcpy(&version_, base_ + 8, 4);
  std::memcpy(&bom, base_ + 12, 4);
  std::memcpy(&kind_, base_ + 16, 4);
  std::memcpy(&count, base_ + 20, 4);
  std::memcpy(&file_size, base_ + 24, 8);
  std::memcpy(&stored_sum, base_ + 32, 8);
  if (bom != kByteOrderMark) {
    if (bom == 0x04030201u) io_fail(origin_, "file was written on a big-endian machine; not supported here");
    io_fail(origin_, "corrupted header (bad byte-order mark)");
  }
  if (count > kMaxSections) io_fail(origin_, "corrupted header (section count " + std::to_string(count) + ")");
  const std::size_t dir_end = kHeaderSize + static_cast<std::size_t>(count) * kEntrySize;
  if (size_ < dir_end) io_fail(origin_, "truncated annforge file (directory cut off)");
  Checksum hc;
  hc.update(base_, 32);
  hc.update(base_ + kHeaderSize, dir_end - kHeaderSize);
  if (hc.digest() != stored_sum) io_fail(origin_, "corrupted header (checksum mismatch)");
  if (version_ == 0 || version_ > kFormatVersion)
    io_fail(origin_, "format version " + std::to_string(version_) + " is newer than this annforge supports (" +
                         std::to_string(kFormatVersion) + "); upgrade annforge");
  if (file_size != size_) {
    if (size_ < file_size)
      io_fail(origin_, "truncated annforge file (" + std::to_string(size_) + " of " + std::to_string(file_size) +
                           " bytes)");
    io_fail(origin_, "file has " + std::to_string(size_ - file_size) + " unexpected trailing bytes");
  }
  for (std::size_t i = 40; i < kHeaderSize; ++i)
    if (base_[i] != 0) io_fail(origin_, "corrupted header (reserved bytes are not zero)");
  // Directory entries must be in order, aligned, inside the file, non-overlapping; all gaps zero.
  std::size_t expected = align_up(dir_end);
  for (std::size_t i = dir_end; i < expected && i < size_; ++i)
    if (base_[i] != 0) io_fail(origin_, "corrupted file (non-zero padding after directory)");
  for (std::uint32_t i = 0; i < count; ++i) {
    const unsigned char* e = base_ + kHeaderSize + static_cast<std::size_t>(i) * kEntrySize;
    std::uint32_t tag, reserved;
    std::uint64_t off, len, sum;
    std::memcpy(&tag, e, 4);
    std::memcpy(&reserved, e + 4, 4);
    std::memcpy(&off, e + 8, 8);
    std::memcpy(&len, e + 16, 8);
    std::memcpy(&sum, e + 24, 8);
    if (reserved != 0 || off != expected || len > size_ || off > size_ - len)
      io_fail(origin_, "corrupted directory entry for section '" + tag_name(tag) + "'");
    for (const auto& prev : entries_)
      if (prev.tag == tag) io_fail(origin_, "corrupted directory (section '" + tag_name(tag) + "' twice)");
    const unsigned char* payload = base_ + off;
    if (checksum(payload, len) != sum)
      io_fail(origin_, "corrupted section '" + tag_name(tag) + "' (checksum mismatch)");
    const std::size_t end = off + len;
    expected = align_up(end);
    if (expected > size_) io_fail(origin_, "truncated annforge file (padding cut off)");
    for (std::size_t j = end; j < expected; ++j)
      if (base_[j] != 0) io_fail(origin_, "corrupted file (non-zero padding after section '" + tag_name(tag) + "')");
    entries_.push_back(Entry{tag, Bytes{payload, static_cast<std::size_t>(len)}});
  }
  if (expected != size_) io_fail(origin_, "corrupted file (size does not match its sections)");
}

bool FileReader::has(std::uint32_t tag) const {
  for (const auto& e : entries_)
    if (e.tag == tag) return true;
  return false;
}

Bytes FileReader::section(std::uint32_t tag) const {
  for (const auto& e : entries_)
    if (e.tag == tag) return e.bytes;
  io_fail(origin_, "corrupted file: required section '" + tag_name(tag) + "' is missing");
}

void FileReader::expect_kind(Kind expected) const {
  if (kind_ != static_cast<std::uint32_t>(expected))
    io_fail(origin_, std::string("holds a ") + kind_name(kind_) + " (kind " + std::to_string(kind_) + "), not a " +
                         kind_name(static_cast<std::uint32_t>(expected)));
}

namespace {
// The kind from the header and directory alone (magic, byte-order mark, version, header checksum), or 0
// when any of them is wrong or cannot be read. Loading a file verifies it fully afterwards, so reading
// the payloads here would only double the I/O of every af.load().
std::uint32_t header_kind(const std::string& path) noexcept {
  try {
    std::ifstream in(path, std::ios::binary);
    if (!in) return 0;
    unsigned char head[kHeaderSize];
    if (!in.read(reinterpret_cast<char*>(head), kHeaderSize)) return 0;
    std::uint32_t version, bom, kind, count;
    std::uint64_t stored_sum;
    std::memcpy(&version, head + 8, 4);
    std::memcpy(&bom, head + 12, 4);
    std::memcpy(&kind, head + 16, 4);
    std::memcpy(&count, head + 20, 4);
    std::memcpy(&stored_sum, head + 32, 8);
    if (std::memcmp(head, kMagic, 8) != 0 || bom != kByteOrderMark || count > kMaxSections || version == 0 ||
        version > kFormatVersion)
      return 0;
    std::vector<unsigned char> directory(static_cast<std::size_t>(count) * kEntrySize);
    if (!directory.empty() && !in.read(reinterpret_cast<char*>(directory.data()), static_cast<std::streamsize>(directory.size())))
      return 0;
    Checksum hc;
    hc.update(head, 32);
    hc.update(directory.data(), directory.size());
    if (hc.digest() != stored_sum) return 0;
    return std::strcmp(kind_name(kind), "unknown") == 0 ? 0 : kind;
  } catch (...) {
    return 0;
  }
}
}  // namespace

std::uint32_t file_kind(const std::string& path) {
  const std::uint32_t kind = header_kind(path);
  if (kind != 0) return kind;
  // Something is wrong: the full reader names the problem (truncation, checksum, foreign file, ...).
  return FileReader::open(path, true)->kind();
}

// ---------------------------------------------------------------------------------------------------
std::string ByteReader::string() {
  const auto n = read<std::uint32_t>();
  const char* p = array<char>(n);
  return std::string(p, n);
}

void ByteReader::expect_end() const {
  if (pos_ != b_.size) corrupt("section has " + std::to_string(b_.size - pos_) + " unexpected trailing bytes");
}

void ByteReader::corrupt(const std::string& why) const { fail(ErrorKind::IO, "corrupted ", what_, ": ", why); }

ByteWriter& ByteWriter::put_string(const std::string& s) {
  put(static_cast<std::uint32_t>(s.size()));
  bytes_.insert(bytes_.end(), s.begin(), s.end());
  return *this;
}

}  // namespace annforge::io
