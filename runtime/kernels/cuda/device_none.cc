// Built when nvcc is not found: tessera runs on the CPU only.
#include "runtime/common/error.h"
#include "runtime/kernels/cuda/device.h"

namespace tessera::cuda {

namespace {
[[noreturn]] void unavailable() {
  throw Error("this tessera build has no CUDA support (nvcc was not found at configure time)");
}
}  // namespace

bool compiled() {
  return false;
}
bool available() {
  return false;
}
std::string describe() {
  return "built without CUDA";
}
void* device_malloc(size_t) {
  unavailable();
}
void device_free(void*) {}
void device_memset_zero(void*, size_t) {
  unavailable();
}
void copy_to_device(void*, const void*, size_t) {
  unavailable();
}
void copy_to_host(void*, const void*, size_t) {
  unavailable();
}
void copy_device_to_device(void*, const void*, size_t) {
  unavailable();
}
void synchronize() {}

}  // namespace tessera::cuda
