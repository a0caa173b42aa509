// CUDA kernels with the same names and arguments as their kernels::cpu twins
// (pointers are device pointers). Included only when TESSERA_HAVE_CUDA.
#pragma once

#include <cstdint>

#include "runtime/kernels/cpu/elementwise.h"

namespace tessera::kernels::cuda {

using cpu::Act;

void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
          int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc);
void linear_forward(float* out, const float* inp, const float* weight, const float* bias, int64_t N,
                    int64_t C, int64_t OC, bool conv1d);
void linear_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                     const float* weight, int64_t N, int64_t C, int64_t OC, bool conv1d);

void add_forward(float* out, const float* a, const float* b, int64_t n, int64_t nb);
void add_backward(float* da, float* db, const float* dout, int64_t n, int64_t nb);
void mul_forward(float* out, const float* a, const float* b, int64_t n);
void mul_backward(float* da, float* db, const float* dout, const float* a, const float* b,
                  int64_t n);
void scale_forward(float* out, const float* a, float s, int64_t n);
void scale_backward(float* da, const float* dout, float s, int64_t n);
void act_forward(Act act, float* out, const float* inp, int64_t n);
void act_backward(Act act, float* dinp, const float* dout, const float* inp, int64_t n);
void swiglu_forward(float* out, const float* gate, const float* up, int64_t n);
void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate,
                     const float* up, int64_t n);

}  // namespace tessera::kernels::cuda
