// CUDA memory and device queries (see device.h).
#include <cuda_runtime.h>

#include "runtime/common/error.h"
#include "runtime/kernels/cuda/device.h"

namespace tessera::cuda {

namespace {
void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw Error(str("CUDA ", what, " failed: ", cudaGetErrorString(e)));
}
}  // namespace

bool compiled() {
  return true;
}

bool available() {
  static const bool ok = [] {
    int n = 0;
    return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
  }();
  return ok;
}

std::string describe() {
  if (!available()) return "no CUDA device";
  cudaDeviceProp p{};
  if (cudaGetDeviceProperties(&p, 0) != cudaSuccess)
    return "CUDA device 0 (properties unavailable)";
  return str(p.name, " (sm_", p.major, p.minor, ", ", p.totalGlobalMem >> 20, " MiB)");
}

void* device_malloc(size_t bytes) {
  if (!available()) throw Error("CUDA tensor requested but no CUDA device is available");
  void* p = nullptr;
  check(cudaMalloc(&p, bytes ? bytes : 1), "cudaMalloc");
  return p;
}
void device_free(void* p) {
  cudaFree(p);
}
void device_memset_zero(void* p, size_t bytes) {
  check(cudaMemset(p, 0, bytes), "cudaMemset");
}
void copy_to_device(void* dst, const void* src, size_t bytes) {
  check(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice), "cudaMemcpy H2D");
}
void copy_to_host(void* dst, const void* src, size_t bytes) {
  check(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy D2H");
}
void copy_device_to_device(void* dst, const void* src, size_t bytes) {
  check(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToDevice), "cudaMemcpy D2D");
}
void synchronize() {
  check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
}

}  // namespace tessera::cuda
