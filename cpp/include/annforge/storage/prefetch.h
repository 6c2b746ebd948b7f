// Cache prefetch hints shared by the index families: no SIMD flags needed (a compiler builtin, or the
// SSE hint every x86-64 compiler has), a no-op elsewhere.
#pragma once

#include <cstddef>

#if !defined(__GNUC__) && !defined(__clang__) && defined(_M_X64)
#include <xmmintrin.h>
#endif

namespace annforge {

// Asks for the cache line holding `p` (for reading, kept in all levels).
inline void prefetch(const void* p) {
#if defined(__GNUC__) || defined(__clang__)
  __builtin_prefetch(p, 0, 3);
#elif defined(_M_X64)
  _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T0);
#else
  (void)p;
#endif
}

// Asks for every cache line of [p, p + bytes).
inline void prefetch_range(const void* p, std::size_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (std::size_t offset = 0; offset < bytes; offset += 64) prefetch(c + offset);
}

// The same into the second-level cache and up (prefetcht1), not the first: for long runs of lines asked
// for well ahead of use, which then neither crowd the first-level cache nor hold its miss buffers.
inline void prefetch_l2(const void* p) {
#if defined(__GNUC__) || defined(__clang__)
  __builtin_prefetch(p, 0, 2);
#elif defined(_M_X64)
  _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T1);
#else
  (void)p;
#endif
}
inline void prefetch_range_l2(const void* p, std::size_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (std::size_t offset = 0; offset < bytes; offset += 64) prefetch_l2(c + offset);
}

}  // namespace annforge
