#include "runtime.h"

#include <sstream>

namespace annforge::gpu {

void throw_cuda_error(cudaError_t err, const char* what, const char* file, int line) {
  std::ostringstream os;
  os << "CUDA error " << cudaGetErrorName(err) << " (" << cudaGetErrorString(err) << ") in " << what << " at "
     << file << ":" << line;
  if (err == cudaErrorMemoryAllocation) throw DeviceOutOfMemory(os.str());
  throw DeviceError(os.str());
}

int device_count(std::string* why) {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    if (why) *why = std::string(cudaGetErrorName(err)) + ": " + cudaGetErrorString(err);
    return 0;
  }
  if (count == 0 && why) *why = "the CUDA driver reports no device";
  return count;
}

std::string device_name(int device) {
  check_device(device);
  cudaDeviceProp prop{};
  ANNFORGE_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  std::ostringstream os;
  os.precision(1);
  os << std::fixed << prop.name << " (sm_" << prop.major << prop.minor << ", "
     << static_cast<double>(prop.totalGlobalMem) / (1024.0 * 1024.0 * 1024.0) << " GiB)";
  return os.str();
}

void check_device(int device) {
  std::string why;
  const int count = device_count(&why);
  if (count == 0) throw DeviceError("no CUDA device is available (" + why + ")");
  ANNFORGE_CHECK(device >= 0 && device < count, ErrorKind::Value, "device must be in [0, ", count, "), got ", device);
}

DeviceGuard::DeviceGuard(int device) {
  ANNFORGE_CUDA_CHECK(cudaGetDevice(&previous_));
  if (previous_ != device) ANNFORGE_CUDA_CHECK(cudaSetDevice(device));
}

DeviceGuard::~DeviceGuard() {
  int current = -1;
  if (cudaGetDevice(&current) == cudaSuccess && current != previous_ && previous_ >= 0) cudaSetDevice(previous_);
}

}  // namespace annforge::gpu
