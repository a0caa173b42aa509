// Matrix products on the CPU, all through OpenBLAS cblas_sgemm (row-major).
#pragma once

#include <cstdint>

namespace tessera::kernels::cpu {

// C[M,N] = alpha * op(A) op(B) + beta * C; op(X) = X^T when tX.
void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
          int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc);

// out[N,OC] = inp[N,C] · Wᵀ + bias, W [OC,C]; with conv1d W is [C,OC] (GPT-2 Conv1D)
// and out = inp · W + bias. bias may be null.
void linear_forward(float* out, const float* inp, const float* weight, const float* bias, int64_t N,
                    int64_t C, int64_t OC, bool conv1d);

// dinp += dout · W, dweight += doutᵀ · inp (or inpᵀ · dout for conv1d),
// dbias += Σ_rows dout. Any of dinp, dweight, dbias may be null and is then skipped:
// a frozen weight costs no dW product.
void linear_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                     const float* weight, int64_t N, int64_t C, int64_t OC, bool conv1d);

// Measured single-precision GEMM rate (GFLOP/s) for an n×n×n product with the
// current thread setting; the best of `reps` runs after a warm-up.
double measure_sgemm_gflops(int n = 1024, int reps = 7);

}  // namespace tessera::kernels::cpu
