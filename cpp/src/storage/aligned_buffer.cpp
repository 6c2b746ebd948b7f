#include "annforge/storage/aligned_buffer.h"

#if defined(_WIN32)
#include <malloc.h>
#endif

namespace annforge::detail {

void* aligned_alloc_bytes(std::size_t bytes) {
  if (bytes == 0) bytes = 64;
#if defined(_WIN32)
  void* p = _aligned_malloc(bytes, 64);
  if (!p) throw std::bad_alloc();
#else
  void* p = nullptr;
  if (posix_memalign(&p, 64, bytes) != 0) throw std::bad_alloc();
#endif
  return p;
}

void AlignedFree::operator()(void* p) const noexcept {
#if defined(_WIN32)
  _aligned_free(p);
#else
  std::free(p);
#endif
}

}  // namespace annforge::detail
