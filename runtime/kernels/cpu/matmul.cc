#include "runtime/kernels/cpu/matmul.h"

#include "runtime/kernels/linear_gemm.h"

#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <vector>

namespace tessera::kernels::cpu {

void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
          int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  if (K == 0) {
    if (beta == 1.0f) return;
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) C[i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[i * ldc + j];
    return;
  }
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
              static_cast<int>(M), static_cast<int>(N), static_cast<int>(K), alpha, A,
              static_cast<int>(lda), B, static_cast<int>(ldb), beta, C, static_cast<int>(ldc));
}

void linear_forward(float* out, const float* inp, const float* weight, const float* bias, int64_t N,
                    int64_t C, int64_t OC, bool conv1d) {
  float beta = 0.0f;
  if (bias) {
#pragma omp parallel for if (N * OC > 65536) schedule(static)
    for (int64_t i = 0; i < N; ++i) std::copy(bias, bias + OC, out + i * OC);
    beta = 1.0f;
  }
  linear_gemm_forward(gemm, out, inp, weight, beta, N, C, OC, conv1d);
}

void linear_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                     const float* weight, int64_t N, int64_t C, int64_t OC, bool conv1d) {
  linear_gemm_backward(gemm, dinp, dweight, dout, inp, weight, N, C, OC, conv1d);
  if (dbias) {
    // Column sums; each thread owns a block of columns so no reduction races.
#pragma omp parallel for if (N * OC > 65536) schedule(static)
    for (int64_t j0 = 0; j0 < OC; j0 += 64) {
      int64_t j1 = std::min(OC, j0 + 64);
      for (int64_t i = 0; i < N; ++i) {
        const float* row = dout + i * OC;
#pragma omp simd
        for (int64_t j = j0; j < j1; ++j) dbias[j] += row[j];
      }
    }
  }
}

double measure_sgemm_gflops(int n, int reps) {
  std::vector<float> a(static_cast<size_t>(n) * n, 0.5f), b(a.size(), 0.25f), c(a.size());
  // Warm up for a quarter second: thread pool start, BLAS buffers, clock ramp.
  auto w0 = std::chrono::steady_clock::now();
  do {
    gemm(false, false, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n);
  } while (std::chrono::duration<double>(std::chrono::steady_clock::now() - w0).count() < 0.25);
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    auto t0 = std::chrono::steady_clock::now();
    gemm(false, false, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n);
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::min(best, s);
  }
  return 2.0 * n * n * static_cast<double>(n) / best / 1e9;
}

}  // namespace tessera::kernels::cpu
