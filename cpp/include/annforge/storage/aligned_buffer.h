// A growable array of trivially copyable values with 64-byte aligned storage (cache line / AVX-512 row
// alignment), or a read-only view of memory someone else owns (an mmap'd file section). Writing to a
// view first copies it into owned memory, so an index opened with mmap=True stays usable for updates.
#pragma once

#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <type_traits>

namespace annforge {

namespace detail {
struct AlignedFree {
  void operator()(void* p) const noexcept;
};
void* aligned_alloc_bytes(std::size_t bytes);  // 64-byte aligned; throws std::bad_alloc
}  // namespace detail

template <typename T>
class AlignedBuffer {
  static_assert(std::is_trivially_copyable<T>::value, "AlignedBuffer holds plain data only");

 public:
  AlignedBuffer() = default;
  explicit AlignedBuffer(std::size_t n) { resize(n); }
  AlignedBuffer(const AlignedBuffer& other) { *this = other; }
  AlignedBuffer& operator=(const AlignedBuffer& other) {
    if (this != &other) {
      owned_.reset();
      data_ = nullptr;
      size_ = capacity_ = 0;
      keepalive_.reset();
      if (other.is_view()) {  // copies of a view share the mapping
        data_ = other.data_;
        size_ = other.size_;
        keepalive_ = other.keepalive_;
      } else {
        reserve(other.size_);
        if (other.size_) std::memcpy(owned_.get(), other.data_, other.size_ * sizeof(T));
        size_ = other.size_;
      }
    }
    return *this;
  }
  AlignedBuffer(AlignedBuffer&&) noexcept = default;
  AlignedBuffer& operator=(AlignedBuffer&&) noexcept = default;

  // A read-only view of `n` values at `data`; `keepalive` owns the memory (e.g. the file mapping).
  static AlignedBuffer view(const T* data, std::size_t n, std::shared_ptr<const void> keepalive) {
    AlignedBuffer b;
    b.data_ = const_cast<T*>(data);
    b.size_ = n;
    b.keepalive_ = std::move(keepalive);
    return b;
  }

  bool is_view() const noexcept { return keepalive_ != nullptr; }
  std::size_t size() const noexcept { return size_; }
  std::size_t capacity() const noexcept { return is_view() ? size_ : capacity_; }
  bool empty() const noexcept { return size_ == 0; }
  // Heap memory held (a view of a mapping holds none).
  std::size_t heap_bytes() const noexcept { return is_view() ? 0 : capacity_ * sizeof(T); }
  const T* data() const noexcept { return data_; }
  T* mutable_data() {
    detach();
    return data_;
  }
  const T& operator[](std::size_t i) const noexcept { return data_[i]; }
  T& at_mut(std::size_t i) { return mutable_data()[i]; }

  void reserve(std::size_t n) {
    if (!is_view() && n <= capacity_) return;
    T* fresh = static_cast<T*>(detail::aligned_alloc_bytes(n * sizeof(T) + 64));
    if (size_) std::memcpy(fresh, data_, size_ * sizeof(T));
    owned_.reset(fresh);
    data_ = fresh;
    capacity_ = n;
    keepalive_.reset();
  }
  // New elements are zero-initialised.
  void resize(std::size_t n) {
    if (n > capacity()) reserve(grow_to(n));
    detach();
    if (n > size_) std::memset(static_cast<void*>(data_ + size_), 0, (n - size_) * sizeof(T));
    size_ = n;
  }
  void push_back(const T& v) {
    if (size_ == capacity() || is_view()) reserve(grow_to(size_ + 1));
    data_[size_++] = v;
  }
  void append(const T* src, std::size_t n) {
    if (size_ + n > capacity() || is_view()) reserve(grow_to(size_ + n));
    if (n) std::memcpy(static_cast<void*>(data_ + size_), src, n * sizeof(T));
    size_ += n;
  }
  void clear() noexcept {
    if (is_view()) {
      data_ = nullptr;
      keepalive_.reset();
    }
    size_ = 0;
  }
  void shrink(std::size_t n) {  // drop the tail; never reallocates an owned buffer
    if (n < size_) {
      detach();
      size_ = n;
    }
  }

 private:
  void detach() {
    if (is_view()) reserve(size_);
  }
  std::size_t grow_to(std::size_t needed) const {
    std::size_t cap = capacity_ < 16 ? 16 : capacity_ + capacity_ / 2;
    return cap < needed ? needed : cap;
  }

  std::unique_ptr<T, detail::AlignedFree> owned_;
  T* data_ = nullptr;
  std::size_t size_ = 0;
  std::size_t capacity_ = 0;
  std::shared_ptr<const void> keepalive_;
};

}  // namespace annforge
