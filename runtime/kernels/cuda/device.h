// The CUDA seam of the runtime: memory and device queries. Built from
// device.cu when nvcc is found, from device_none.cc otherwise; callers never
// need an #ifdef. Without a usable GPU, available() is false and every other
// call throws tessera::Error saying so.
#pragma once

#include <cstddef>
#include <string>

namespace tessera::cuda {

bool compiled();         // built with nvcc
bool available();        // compiled and a device is present
std::string describe();  // "NVIDIA H100 (sm_90)" or why not available

void* device_malloc(size_t bytes);
void device_free(void* p);
void device_memset_zero(void* p, size_t bytes);
void copy_to_device(void* dst, const void* src, size_t bytes);
void copy_to_host(void* dst, const void* src, size_t bytes);
void copy_device_to_device(void* dst, const void* src, size_t bytes);
void synchronize();

}  // namespace tessera::cuda
