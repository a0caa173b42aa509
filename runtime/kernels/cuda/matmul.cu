// GEMM and Linear on CUDA through cuBLAS (row-major calls mapped onto
// cuBLAS's column-major convention by swapping operands).
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "runtime/common/error.h"
#include "runtime/kernels/cuda/kernels.h"
#include "runtime/kernels/linear_gemm.h"

namespace tessera::kernels::cuda {

namespace {
cublasHandle_t handle() {
  static cublasHandle_t h = [] {
    cublasHandle_t x;
    if (cublasCreate(&x) != CUBLAS_STATUS_SUCCESS) throw Error("cublasCreate failed");
    return x;
  }();
  return h;
}

__global__ void bias_rows(float* out, const float* bias, int64_t N, int64_t OC) {
  int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < N * OC) out[i] = bias[i % OC];
}

__global__ void column_sums(float* dbias, const float* dout, int64_t N, int64_t OC) {
  int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (j >= OC) return;
  float s = 0.0f;
  for (int64_t i = 0; i < N; ++i) s += dout[i * OC + j];
  dbias[j] += s;
}
}  // namespace

void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
          int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  // Row-major C = op(A) op(B)  <=>  column-major Cᵀ = op(B)ᵀ op(A)ᵀ.
  cublasStatus_t st =
      cublasSgemm(handle(), tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N,
                  static_cast<int>(N), static_cast<int>(M), static_cast<int>(K), &alpha, B,
                  static_cast<int>(ldb), A, static_cast<int>(lda), &beta, C, static_cast<int>(ldc));
  if (st != CUBLAS_STATUS_SUCCESS)
    throw Error(str("cublasSgemm failed with status ", static_cast<int>(st)));
}

void linear_forward(float* out, const float* inp, const float* weight, const float* bias, int64_t N,
                    int64_t C, int64_t OC, bool conv1d) {
  float beta = 0.0f;
  if (bias) {
    int64_t n = N * OC;
    bias_rows<<<static_cast<unsigned>((n + 255) / 256), 256>>>(out, bias, N, OC);
    beta = 1.0f;
  }
  linear_gemm_forward(gemm, out, inp, weight, beta, N, C, OC, conv1d);
}

void linear_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                     const float* weight, int64_t N, int64_t C, int64_t OC, bool conv1d) {
  linear_gemm_backward(gemm, dinp, dweight, dout, inp, weight, N, C, OC, conv1d);
  if (dbias) column_sums<<<static_cast<unsigned>((OC + 255) / 256), 256>>>(dbias, dout, N, OC);
}

}  // namespace tessera::kernels::cuda
