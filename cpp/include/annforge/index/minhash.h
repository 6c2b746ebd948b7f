// MinHash signatures for Jaccard similarity: token hashing, shingling, permutations, one-permutation
// hashing, and the datasketch-compatible schemes.
//
// Four permutation schemes:
//   CMinHash (default)   C-MinHash-(sigma, pi) of Li & Li, "C-MinHash: Rigorously Reducing K Permutations to
//                        Two" (AISTATS 2022, arXiv:2109.03337): sigma(token) = low 32 bits of a seeded
//                        XXH64, and the K hash values are pi at the K circulant shifts sigma + j of that
//                        position (pi a fixed 32-bit bijection). Unbiased; variance <= classic MinHash.
//                        32-bit values, a handful of SIMD operations per (token, permutation).
//   Mersenne61 (native)  h = hash64(token); sig_j = min over tokens of (a_j * h + b_j) mod (2^61 - 1),
//                        computed exactly (the 128-bit product is folded with 32-bit limbs so the
//                        loop over permutations vectorises; see minhash_perm.inc).
//   Affine32             datasketch >= 2.0 default: h32 = fmix32(hash32(token)); (a_j * h32 + b_j) mod 2^32.
//   Legacy               datasketch < 2.0: ((a_j * h32 + b_j) mod 2^64) mod (2^61 - 1), masked to 32 bits
//                        (the uint64 product wraps exactly as numpy's does).
// Method OPH (densified one-permutation hashing): one hash per token picks a bin and its value; empty
// bins borrow from a non-empty bin chosen by a seeded probe sequence (optimal densification), so
// the fraction of equal bins estimates Jaccard like the classic signature.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "annforge/common.h"
#include "annforge/simd/minhash_kernels.h"

namespace annforge::minhash {

constexpr std::uint64_t kMersenne61 = (std::uint64_t{1} << 61) - 1;

// Our own short-token hash (one or two 128-bit multiplies for tokens up to 32 bytes): C-MinHash's sigma.
std::uint64_t token_hash(const void* data, std::size_t n, std::uint64_t seed) noexcept;
// Our own 64-bit hash (the XXH64 algorithm, written here).
std::uint64_t hash64(const void* data, std::size_t n, std::uint64_t seed = 0) noexcept;
// SHA-1 (written here; no OpenSSL): 20-byte digest.
void sha1(const void* data, std::size_t n, unsigned char digest[20]) noexcept;
// datasketch's sha1_hash32: the first 4 digest bytes read little-endian.
std::uint32_t sha1_hash32(const void* data, std::size_t n) noexcept;

enum class HashFunc : std::uint8_t { XXH64 = 0, SHA1_32 = 1 };
enum class Scheme : std::uint8_t { Mersenne61 = 0, Affine32 = 1, Legacy = 2, CMinHash = 3 };
enum class Method : std::uint8_t { Permutation = 0, OPH = 1 };

HashFunc parse_hashfunc(const std::string& name);
Scheme parse_scheme(const std::string& name);
Method parse_method(const std::string& name);
const char* hashfunc_name(HashFunc h);
const char* scheme_name(Scheme s);
const char* method_name(Method m);

// How raw text becomes a set: none (items are tokens already), word n-grams or character n-grams.
struct Shingle {
  enum class Kind : std::uint8_t { None = 0, Word = 1, Char = 2 } kind = Kind::None;
  std::uint32_t n = 0;
};
// "word3", "char5" (n in 1..1024); ValueError otherwise.
Shingle parse_shingle(const std::string& spec);

// Documents flattened into one byte buffer: document d owns items [doc_items[d], doc_items[d+1]),
// item i is bytes [item_bytes[i], item_bytes[i+1]). Built while holding the GIL, read without it.
struct Corpus {
  std::vector<char> bytes;
  std::vector<std::uint64_t> item_bytes{0};
  std::vector<std::uint64_t> doc_items{0};
  std::size_t num_docs() const noexcept { return doc_items.size() - 1; }
  void add_item(const char* p, std::size_t n) {
    bytes.insert(bytes.end(), p, p + n);
    item_bytes.push_back(bytes.size());
  }
  void end_doc() { doc_items.push_back(item_bytes.size() - 1); }
};

// Permutation parameters + hashing configuration; immutable after construction, shared by threads.
class MinHasher {
 public:
  // `a`/`b` empty: drawn from `seed` (native scheme) — the datasketch schemes need them from the caller
  // (numpy RandomState draws them), and they must then have num_perm entries each.
  MinHasher(std::size_t num_perm, std::uint64_t seed, HashFunc hash, Scheme scheme, Method method,
            std::vector<std::uint64_t> a = {}, std::vector<std::uint64_t> b = {});

  std::size_t num_perm() const noexcept { return num_perm_; }
  std::uint64_t seed() const noexcept { return seed_; }
  HashFunc hashfunc() const noexcept { return hash_; }
  Scheme scheme() const noexcept { return scheme_; }
  Method method() const noexcept { return method_; }
  const std::vector<std::uint64_t>& a() const noexcept { return a_; }
  const std::vector<std::uint64_t>& b() const noexcept { return b_; }
  // Value of every slot of an empty set.
  std::uint64_t empty_value() const noexcept;

  std::uint64_t hash_item(const char* p, std::size_t n) const noexcept;
  // Fills `sig` (num_perm values) with the empty-set value.
  void clear(std::uint64_t* sig) const noexcept;
  // sig = min(sig, signature of the items whose hashes are `hv`). For OPH, `sig` keeps raw bin minima;
  // call densify() once all items are in.
  void update_hashes(const std::uint64_t* hv, std::size_t n, std::uint64_t* sig) const;
  void densify(std::uint64_t* sig) const;

  // sig = min(sig, raw minima of document `doc`) — no clearing, no densification (for incremental use).
  void update_document(const Corpus& corpus, std::size_t doc, const Shingle& shingle, std::uint64_t* sig) const;
  // Signatures of every document of `corpus` into out[num_docs * num_perm], parallel over documents.
  void signatures(const Corpus& corpus, const Shingle& shingle, std::uint64_t* out, int num_threads) const;
  // The same from token hashes already computed by hash_item(): document d owns
  // hv[doc_hashes[d], doc_hashes[d+1]). The cheap path for pre-tokenised input (hashed at the boundary).
  void signatures_from_hashes(const std::uint64_t* hv, const std::uint64_t* doc_hashes, std::size_t num_docs,
                              std::uint64_t* out, int num_threads) const;

 private:
  // Item hashes of one document (after shingling) appended to `hv`.
  void document_hashes(const Corpus& c, std::size_t doc, const Shingle& sh, std::vector<std::uint64_t>& hv,
                       std::string& scratch) const;

  std::size_t num_perm_;
  std::uint64_t seed_;
  HashFunc hash_;
  Scheme scheme_;
  Method method_;
  std::vector<std::uint64_t> a_, b_;
  std::vector<std::uint64_t> a_hi_, a_lo_;  // 32-bit limbs of a (native scheme)
  std::vector<std::uint32_t> shift_;        // C-MinHash: j * M1, the j-th circulant shift (times M1)
};

// Fraction of equal positions (the estimator for both methods).
double jaccard(const std::uint64_t* x, const std::uint64_t* y, std::size_t n) noexcept;

// The permutation kernels (one copy per SIMD level in simd/, picked by simd/dispatch.cpp from the
// active level): sig[j] = min(sig[j], (a_j * h + b_j) mod (2^61-1)) for every h in hv, h < 2^61 - 1;
// and C-MinHash's sig[j] = min(sig[j], pi(u + shift[j])) for every u.
using PermuteFn = simd::MinHashPermuteFn;
using CMinHashFn = simd::CMinHashFn;
inline PermuteFn permute_mersenne_kernel() { return simd::minhash_kernels().permute_mersenne; }
inline CMinHashFn cminhash_kernel() { return simd::minhash_kernels().cminhash; }
// C-MinHash's sigma(token) * M1 from a token's 64-bit hash (the kernel's input).
std::uint32_t cminhash_position(std::uint64_t token_hash) noexcept;

}  // namespace annforge::minhash
