// CUDA runtime plumbing for the optional GPU module: every runtime call checked and turned into an
// annforge::Error, RAII device memory, and the device selection guard. Host code only (no kernels), so
// it compiles with the host compiler as well as nvcc.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>

#include "annforge/common.h"

namespace annforge::gpu {

// A failure reported by the CUDA runtime or driver (no device, launch failure, ...). The module's
// translator raises RuntimeError for it; running out of device memory raises MemoryError instead.
class DeviceError : public Error {
 public:
  explicit DeviceError(const std::string& msg) : Error(ErrorKind::State, msg) {}
};
class DeviceOutOfMemory : public DeviceError {
 public:
  explicit DeviceOutOfMemory(const std::string& msg) : DeviceError(msg) {}
};

[[noreturn]] void throw_cuda_error(cudaError_t err, const char* what, const char* file, int line);

}  // namespace annforge::gpu

// Checks one runtime call; the message names the call and the place.
#define ANNFORGE_CUDA_CHECK(call)                                                      \
  do {                                                                                 \
    const cudaError_t annforge_cuda_err_ = (call);                                     \
    if (annforge_cuda_err_ != cudaSuccess)                                             \
      ::annforge::gpu::throw_cuda_error(annforge_cuda_err_, #call, __FILE__, __LINE__); \
  } while (0)

// After a kernel launch: launch-configuration errors show up here (execution errors at the next sync).
#define ANNFORGE_CUDA_CHECK_LAUNCH(what) ANNFORGE_CUDA_CHECK(cudaGetLastError())

namespace annforge::gpu {

// Number of usable devices; 0 when there is no driver or no device (`why` says which, when given).
int device_count(std::string* why = nullptr);
// "NVIDIA H200 (sm_90, 139.8 GiB)"; DeviceError for a bad ordinal.
std::string device_name(int device);
// ValueError unless 0 <= device < device_count(); DeviceError text when there is no GPU at all.
void check_device(int device);

// Makes `device` current for the scope and restores the previous one.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = -1;
};

// Device memory for `n` values of T (uninitialised). Move-only; freed on destruction.
template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(std::size_t n) { resize(n); }
  ~DeviceBuffer() { release(); }
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(std::exchange(o.ptr_, nullptr)), n_(std::exchange(o.n_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      release();
      ptr_ = std::exchange(o.ptr_, nullptr);
      n_ = std::exchange(o.n_, 0);
    }
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  // Discards the contents; allocates only when growing.
  void resize(std::size_t n) {
    if (n <= capacity_ && ptr_) {
      n_ = n;
      return;
    }
    release();
    if (n == 0) return;
    void* p = nullptr;
    const cudaError_t err = cudaMalloc(&p, n * sizeof(T));
    if (err != cudaSuccess) {
      (void)cudaGetLastError();  // clear the sticky-free error so later calls work
      throw_cuda_error(err, "cudaMalloc", __FILE__, __LINE__);
    }
    ptr_ = static_cast<T*>(p);
    n_ = n;
    capacity_ = n;
  }
  void upload(const T* host, std::size_t n, cudaStream_t stream = nullptr) {
    resize(n);
    if (n) ANNFORGE_CUDA_CHECK(cudaMemcpyAsync(ptr_, host, n * sizeof(T), cudaMemcpyHostToDevice, stream));
  }
  void download(T* host, std::size_t n, cudaStream_t stream = nullptr) const {
    ANNFORGE_ASSERT(n <= n_);
    if (n) ANNFORGE_CUDA_CHECK(cudaMemcpyAsync(host, ptr_, n * sizeof(T), cudaMemcpyDeviceToHost, stream));
  }
  T* data() noexcept { return ptr_; }
  const T* data() const noexcept { return ptr_; }
  std::size_t size() const noexcept { return n_; }
  std::size_t bytes() const noexcept { return capacity_ * sizeof(T); }

 private:
  void release() noexcept {
    if (ptr_) cudaFree(ptr_);  // errors here cannot be reported (destructor); the next call sees them
    ptr_ = nullptr;
    n_ = 0;
    capacity_ = 0;
  }
  T* ptr_ = nullptr;
  std::size_t n_ = 0;
  std::size_t capacity_ = 0;
};

// An owned, non-blocking stream on `device`.
class Stream {
 public:
  explicit Stream(int device) {
    DeviceGuard guard(device);
    ANNFORGE_CUDA_CHECK(cudaStreamCreateWithFlags(&s_, cudaStreamNonBlocking));
  }
  ~Stream() {
    if (s_) cudaStreamDestroy(s_);
  }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  cudaStream_t get() const noexcept { return s_; }
  void sync() const { ANNFORGE_CUDA_CHECK(cudaStreamSynchronize(s_)); }

 private:
  cudaStream_t s_ = nullptr;
};

}  // namespace annforge::gpu
