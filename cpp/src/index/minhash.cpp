// MinHash signatures: parameter drawing, shingling, the three permutation schemes and densified OPH.
#include "annforge/index/minhash.h"

#include <algorithm>
#include <limits>

#include "annforge/parallel/executor.h"
#include "annforge/util/splitmix64.h"

namespace annforge::minhash {

std::uint32_t cminhash_position(std::uint64_t token_hash) noexcept {
  return static_cast<std::uint32_t>(token_hash) * simd::kCMinHashM1;
}

namespace {

constexpr std::uint64_t kEmpty64 = std::numeric_limits<std::uint64_t>::max();
constexpr std::uint64_t kEmpty32 = 0xffffffffu;

inline std::uint64_t mod_mersenne61(std::uint64_t h) {
  h = (h & kMersenne61) + (h >> 61);
  return h >= kMersenne61 ? h - kMersenne61 : h;
}

inline std::uint32_t fmix32(std::uint32_t h) {
  h ^= h >> 16;
  h *= 0x85EBCA6Bu;
  h ^= h >> 13;
  h *= 0xC2B2AE35u;
  h ^= h >> 16;
  return h;
}

inline bool is_space(unsigned char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

// Per-thread scratch for one document.
struct Scratch {
  std::vector<std::uint64_t> hv;
  std::string joined;
};

}  // namespace

HashFunc parse_hashfunc(const std::string& name) {
  if (name == "xxh64") return HashFunc::XXH64;
  if (name == "sha1_32") return HashFunc::SHA1_32;
  fail(ErrorKind::Value, "unknown hashfunc '", name, "' (expected 'xxh64' or 'sha1_32')");
}
Scheme parse_scheme(const std::string& name) {
  if (name == "mersenne61") return Scheme::Mersenne61;
  if (name == "affine32") return Scheme::Affine32;
  if (name == "legacy") return Scheme::Legacy;
  if (name == "cminhash") return Scheme::CMinHash;
  fail(ErrorKind::Value, "unknown scheme '", name, "' (expected 'cminhash', 'mersenne61', 'affine32' or 'legacy')");
}
Method parse_method(const std::string& name) {
  if (name == "perm") return Method::Permutation;
  if (name == "oph") return Method::OPH;
  fail(ErrorKind::Value, "unknown method '", name, "' (expected 'perm' or 'oph')");
}
const char* hashfunc_name(HashFunc h) { return h == HashFunc::XXH64 ? "xxh64" : "sha1_32"; }
const char* scheme_name(Scheme s) {
  switch (s) {
    case Scheme::Mersenne61: return "mersenne61";
    case Scheme::Affine32: return "affine32";
    case Scheme::Legacy: return "legacy";
    case Scheme::CMinHash: return "cminhash";
  }
  return "?";
}
const char* method_name(Method m) { return m == Method::Permutation ? "perm" : "oph"; }

Shingle parse_shingle(const std::string& spec) {
  Shingle s;
  std::string digits;
  if (spec.rfind("word", 0) == 0) {
    s.kind = Shingle::Kind::Word;
    digits = spec.substr(4);
  } else if (spec.rfind("char", 0) == 0) {
    s.kind = Shingle::Kind::Char;
    digits = spec.substr(4);
  } else {
    fail(ErrorKind::Value, "bad shingle spec '", spec, "': expected 'word<N>' or 'char<N>', e.g. 'word3'");
  }
  ANNFORGE_CHECK(!digits.empty() && digits.size() <= 4 &&
                     std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; }),
                 ErrorKind::Value, "bad shingle spec '", spec, "': expected 'word<N>' or 'char<N>', e.g. 'word3'");
  const int n = std::stoi(digits);
  ANNFORGE_CHECK(n >= 1 && n <= 1024, ErrorKind::Value, "shingle size must be in 1..1024, got ", n);
  s.n = static_cast<std::uint32_t>(n);
  return s;
}

MinHasher::MinHasher(std::size_t num_perm, std::uint64_t seed, HashFunc hash, Scheme scheme, Method method,
                     std::vector<std::uint64_t> a, std::vector<std::uint64_t> b)
    : num_perm_(num_perm), seed_(seed), hash_(hash), scheme_(scheme), method_(method), a_(std::move(a)),
      b_(std::move(b)) {
  ANNFORGE_CHECK(num_perm >= 1, ErrorKind::Value, "num_perm must be >= 1, got ", num_perm);
  ANNFORGE_CHECK(num_perm <= (std::size_t{1} << 20), ErrorKind::Value, "num_perm must be <= 2^20, got ", num_perm);
  if (method == Method::OPH) {
    ANNFORGE_CHECK(scheme == Scheme::Mersenne61 && hash == HashFunc::XXH64, ErrorKind::Value,
                   "method='oph' needs hashfunc='xxh64' and the native scheme");
    return;
  }
  if (scheme == Scheme::CMinHash) {
    ANNFORGE_CHECK(hash == HashFunc::XXH64, ErrorKind::Value, "scheme='cminhash' needs hashfunc='xxh64'");
    ANNFORGE_CHECK(a_.empty() && b_.empty(), ErrorKind::Value, "scheme='cminhash' takes no permutation parameters");
    shift_.resize(num_perm);
    for (std::size_t j = 0; j < num_perm; ++j) shift_[j] = static_cast<std::uint32_t>(j) * simd::kCMinHashM1;
    return;
  }
  if (scheme == Scheme::Mersenne61) {
    if (a_.empty() && b_.empty()) {
      std::uint64_t state = seed ^ 0x6A09E667F3BCC908ULL;
      a_.resize(num_perm);
      b_.resize(num_perm);
      for (std::size_t j = 0; j < num_perm; ++j) {
        a_[j] = 1 + util::splitmix64_next(state) % (kMersenne61 - 1);
        b_[j] = util::splitmix64_next(state) % kMersenne61;
      }
    }
    for (std::size_t j = 0; j < a_.size(); ++j)
      ANNFORGE_CHECK(a_[j] >= 1 && a_[j] < kMersenne61 && b_[j] < kMersenne61, ErrorKind::Value,
                     "permutation parameters must satisfy 1 <= a < 2^61-1 and 0 <= b < 2^61-1");
  }
  ANNFORGE_CHECK(a_.size() == num_perm && b_.size() == num_perm, ErrorKind::Value,
                 "scheme '", scheme_name(scheme), "' needs ", num_perm, " permutation parameters a and b, got ",
                 a_.size(), " and ", b_.size());
  if (scheme == Scheme::Affine32)
    for (std::size_t j = 0; j < num_perm; ++j)
      ANNFORGE_CHECK(a_[j] <= kEmpty32 && b_[j] <= kEmpty32, ErrorKind::Value,
                     "affine32 permutation parameters must fit in 32 bits");
  if (scheme == Scheme::Mersenne61) {
    a_hi_.resize(num_perm);
    a_lo_.resize(num_perm);
    for (std::size_t j = 0; j < num_perm; ++j) {
      a_hi_[j] = a_[j] >> 32;
      a_lo_[j] = a_[j] & 0xffffffffu;
    }
  }
}

std::uint64_t MinHasher::empty_value() const noexcept { return scheme_ == Scheme::Mersenne61 ? kEmpty64 : kEmpty32; }

void MinHasher::clear(std::uint64_t* sig) const noexcept { std::fill(sig, sig + num_perm_, empty_value()); }

std::uint64_t MinHasher::hash_item(const char* p, std::size_t n) const noexcept {
  if (hash_ == HashFunc::SHA1_32) return sha1_hash32(p, n);
  // OPH and C-MinHash draw their randomness from the token hash itself, so it is seeded.
  if (scheme_ == Scheme::CMinHash) return token_hash(p, n, seed_);
  const std::uint64_t h = hash64(p, n, method_ == Method::OPH ? seed_ : 0);
  return scheme_ == Scheme::Mersenne61 ? h : (h & kEmpty32);
}

void MinHasher::update_hashes(const std::uint64_t* hv, std::size_t n, std::uint64_t* sig) const {
  const std::size_t k = num_perm_;
  if (method_ == Method::OPH) {
    for (std::size_t t = 0; t < n; ++t) {
      const std::uint64_t h = hv[t];
      const std::size_t bin = static_cast<std::size_t>(((h >> 32) * k) >> 32);
      const std::uint64_t v = h == kEmpty64 ? kEmpty64 - 1 : h;  // never collide with the empty marker
      if (v < sig[bin]) sig[bin] = v;
    }
    return;
  }
  switch (scheme_) {
    case Scheme::CMinHash: {
      const CMinHashFn fn = cminhash_kernel();
      thread_local std::vector<std::uint32_t> acc;
      acc.resize(k);
      for (std::size_t j = 0; j < k; ++j) acc[j] = static_cast<std::uint32_t>(sig[j]);
      std::uint32_t u[256];
      for (std::size_t start = 0; start < n; start += 256) {
        const std::size_t m = std::min<std::size_t>(256, n - start);
        for (std::size_t t = 0; t < m; ++t) u[t] = cminhash_position(hv[start + t]);
        fn(u, m, shift_.data(), k, acc.data());
      }
      for (std::size_t j = 0; j < k; ++j) sig[j] = acc[j];
      break;
    }
    case Scheme::Mersenne61: {
      const PermuteFn fn = permute_mersenne_kernel();
      std::uint64_t reduced[256];
      for (std::size_t start = 0; start < n; start += 256) {
        const std::size_t m = std::min<std::size_t>(256, n - start);
        for (std::size_t t = 0; t < m; ++t) reduced[t] = mod_mersenne61(hv[start + t]);
        fn(reduced, m, a_hi_.data(), a_lo_.data(), b_.data(), k, sig);
      }
      break;
    }
    case Scheme::Affine32:
      for (std::size_t t = 0; t < n; ++t) {
        const std::uint32_t h = fmix32(static_cast<std::uint32_t>(hv[t]));
        for (std::size_t j = 0; j < k; ++j) {
          const std::uint64_t v = static_cast<std::uint32_t>(static_cast<std::uint32_t>(a_[j]) * h +
                                                             static_cast<std::uint32_t>(b_[j]));
          sig[j] = v < sig[j] ? v : sig[j];
        }
      }
      break;
    case Scheme::Legacy:
      for (std::size_t t = 0; t < n; ++t) {
        const std::uint64_t h = hv[t];
        for (std::size_t j = 0; j < k; ++j) {
          // numpy uint64 arithmetic: the product and sum wrap modulo 2^64 before the modulo.
          const std::uint64_t v = ((a_[j] * h + b_[j]) % kMersenne61) & kEmpty32;
          sig[j] = v < sig[j] ? v : sig[j];
        }
      }
      break;
  }
}

void MinHasher::densify(std::uint64_t* sig) const {
  if (method_ != Method::OPH) return;
  const std::size_t k = num_perm_;
  std::vector<unsigned char> filled(k);
  std::size_t n_filled = 0;
  for (std::size_t i = 0; i < k; ++i) n_filled += (filled[i] = sig[i] != kEmpty64);
  if (n_filled == 0 || n_filled == k) return;
  // Optimal densification (Shrivastava 2017): an empty bin copies the first originally non-empty bin of
  // its own seeded probe sequence, so two sets make the same choice wherever their bins agree.
  for (std::size_t i = 0; i < k; ++i) {
    if (filled[i]) continue;
    std::uint64_t state = seed_ * 0x9E3779B97F4A7C15ULL + i;
    std::size_t src = k;
    for (std::size_t attempt = 0; attempt < 64 * k; ++attempt) {
      const std::size_t j = static_cast<std::size_t>(((util::splitmix64_next(state) >> 32) * k) >> 32);
      if (filled[j]) {
        src = j;
        break;
      }
    }
    if (src == k)  // astronomically unlikely; stay deterministic anyway
      for (std::size_t j = 1; j <= k && src == k; ++j)
        if (filled[(i + j) % k]) src = (i + j) % k;
    sig[i] = sig[src];
  }
}

void MinHasher::document_hashes(const Corpus& c, std::size_t doc, const Shingle& sh, std::vector<std::uint64_t>& hv,
                                std::string& joined) const {
  thread_local std::vector<std::size_t> pos;
  for (std::uint64_t it = c.doc_items[doc]; it < c.doc_items[doc + 1]; ++it) {
    const char* p = c.bytes.data() + c.item_bytes[it];
    const std::size_t n = static_cast<std::size_t>(c.item_bytes[it + 1] - c.item_bytes[it]);
    if (sh.kind == Shingle::Kind::None) {
      hv.push_back(hash_item(p, n));
    } else if (sh.kind == Shingle::Kind::Word) {
      pos.clear();  // word starts and ends, interleaved
      std::size_t i = 0;
      while (i < n) {
        while (i < n && is_space(static_cast<unsigned char>(p[i]))) ++i;
        if (i >= n) break;
        const std::size_t start = i;
        while (i < n && !is_space(static_cast<unsigned char>(p[i]))) ++i;
        pos.push_back(start);
        pos.push_back(i);
      }
      const std::size_t words = pos.size() / 2;
      if (words == 0) continue;
      const std::size_t w = std::min<std::size_t>(sh.n, words);
      // Where the words of a shingle are already separated by single spaces, the joined shingle is a
      // slice of the text: hash it in place. `run` counts the single-space gaps ending at word s + w - 1.
      std::size_t run = 0;
      for (std::size_t q = 1; q < w; ++q) run = pos[2 * q] == pos[2 * q - 1] + 1 && p[pos[2 * q - 1]] == ' ' ? run + 1 : 0;
      for (std::size_t s = 0; s + w <= words; ++s) {
        if (s > 0) {
          const std::size_t q = s + w - 1;  // the gap before the shingle's last word is new
          if (w > 1) run = pos[2 * q] == pos[2 * q - 1] + 1 && p[pos[2 * q - 1]] == ' ' ? run + 1 : 0;
        }
        if (w == 1 || run >= w - 1) {
          hv.push_back(hash_item(p + pos[2 * s], pos[2 * (s + w - 1) + 1] - pos[2 * s]));
          continue;
        }
        joined.clear();
        for (std::size_t q = s; q < s + w; ++q) {
          if (q > s) joined.push_back(' ');
          joined.append(p + pos[2 * q], pos[2 * q + 1] - pos[2 * q]);
        }
        hv.push_back(hash_item(joined.data(), joined.size()));
      }
    } else {
      pos.clear();  // code point starts (UTF-8), then the end
      for (std::size_t i = 0; i < n; ++i)
        if ((static_cast<unsigned char>(p[i]) & 0xC0) != 0x80) pos.push_back(i);
      const std::size_t chars = pos.size();
      pos.push_back(n);
      if (chars == 0) continue;
      const std::size_t w = std::min<std::size_t>(sh.n, chars);
      for (std::size_t s = 0; s + w <= chars; ++s) hv.push_back(hash_item(p + pos[s], pos[s + w] - pos[s]));
    }
  }
}

void MinHasher::update_document(const Corpus& corpus, std::size_t doc, const Shingle& shingle,
                                std::uint64_t* sig) const {
  std::vector<std::uint64_t> hv;
  std::string joined;
  document_hashes(corpus, doc, shingle, hv, joined);
  update_hashes(hv.data(), hv.size(), sig);
}

void MinHasher::signatures(const Corpus& corpus, const Shingle& shingle, std::uint64_t* out, int num_threads) const {
  const std::size_t n_docs = corpus.num_docs();
  const std::size_t chunk = 16;
  const std::size_t tasks = (n_docs + chunk - 1) / chunk;
  const std::size_t workers = parallel::resolve_threads(num_threads);
  std::vector<Scratch> scratch(workers);
  parallel::parallel_for(tasks, num_threads, [&](std::size_t task, std::size_t worker) {
    Scratch& s = scratch[worker];
    const std::size_t end = std::min(n_docs, (task + 1) * chunk);
    for (std::size_t d = task * chunk; d < end; ++d) {
      s.hv.clear();
      document_hashes(corpus, d, shingle, s.hv, s.joined);
      std::uint64_t* sig = out + d * num_perm_;
      clear(sig);
      update_hashes(s.hv.data(), s.hv.size(), sig);
      densify(sig);
    }
  });
}

void MinHasher::signatures_from_hashes(const std::uint64_t* hv, const std::uint64_t* doc_hashes, std::size_t num_docs,
                                       std::uint64_t* out, int num_threads) const {
  const std::size_t chunk = 64;
  const std::size_t tasks = (num_docs + chunk - 1) / chunk;
  parallel::parallel_for(tasks, num_threads, [&](std::size_t task, std::size_t) {
    const std::size_t end = std::min(num_docs, (task + 1) * chunk);
    for (std::size_t d = task * chunk; d < end; ++d) {
      std::uint64_t* sig = out + d * num_perm_;
      clear(sig);
      update_hashes(hv + doc_hashes[d], static_cast<std::size_t>(doc_hashes[d + 1] - doc_hashes[d]), sig);
      densify(sig);
    }
  });
}

double jaccard(const std::uint64_t* x, const std::uint64_t* y, std::size_t n) noexcept {
  std::size_t eq = 0;
  for (std::size_t i = 0; i < n; ++i) eq += x[i] == y[i];
  return n ? static_cast<double>(eq) / static_cast<double>(n) : 0.0;
}

}  // namespace annforge::minhash
