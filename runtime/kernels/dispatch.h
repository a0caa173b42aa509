// The one place where an op picks its backend: kernels::cpu::fn or
// kernels::cuda::fn by the device of its tensors. Ops whose CUDA kernel has not
// been written yet use TESSERA_DISPATCH_CPU_ONLY and refuse CUDA tensors clearly.
#pragma once

#include "runtime/common/error.h"
#include "runtime/kernels/cpu/attention.h"
#include "runtime/kernels/cpu/elementwise.h"
#include "runtime/kernels/cpu/gate.h"
#include "runtime/kernels/cpu/lora.h"
#include "runtime/kernels/cpu/matmul.h"
#include "runtime/kernels/cpu/norm.h"
#include "runtime/kernels/cpu/poly.h"
#include "runtime/kernels/cpu/softmax_xent.h"
#include "runtime/tensor/tensor.h"

#if TESSERA_HAVE_CUDA
#include "runtime/kernels/cuda/kernels.h"
#define TESSERA_CUDA_CALL(fn, ...) ::tessera::kernels::cuda::fn(__VA_ARGS__)
#else
#define TESSERA_CUDA_CALL(fn, ...) \
  throw ::tessera::Error("op " #fn ": this build has no CUDA kernels (nvcc was not found)")
#endif

#define TESSERA_DISPATCH(device, fn, ...)       \
  do {                                          \
    if ((device) == ::tessera::Device::CPU) {   \
      ::tessera::kernels::cpu::fn(__VA_ARGS__); \
    } else {                                    \
      TESSERA_CUDA_CALL(fn, __VA_ARGS__);       \
    }                                           \
  } while (0)

#define TESSERA_DISPATCH_CPU_ONLY(device, fn, ...)                                             \
  do {                                                                                         \
    if ((device) != ::tessera::Device::CPU)                                                    \
      throw ::tessera::Error("op " #fn " has no CUDA kernel yet: keep this model on the CPU"); \
    ::tessera::kernels::cpu::fn(__VA_ARGS__);                                                  \
  } while (0)
