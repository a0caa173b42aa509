// Linear layers expressed as GEMMs, shared by the CPU (cblas) and CUDA
// (cuBLAS) backends: each passes its own row-major `gemm` with the signature
// of kernels::cpu::gemm. Only the bias handling differs per backend.
#pragma once

#include <cstdint>

namespace tessera::kernels {

// out[N,OC] = inp[N,C] · op(W) + beta·out, W [OC,C] (op = ᵀ) or [C,OC] (conv1d).
template <typename Gemm>
void linear_gemm_forward(Gemm gemm, float* out, const float* inp, const float* weight, float beta,
                         int64_t N, int64_t C, int64_t OC, bool conv1d) {
  if (conv1d)
    gemm(false, false, N, OC, C, 1.0f, inp, C, weight, OC, beta, out, OC);
  else
    gemm(false, true, N, OC, C, 1.0f, inp, C, weight, C, beta, out, OC);
}

// dinp += dout · op(W)ᵀ; dweight += doutᵀ · inp (or inpᵀ · dout); null skips.
template <typename Gemm>
void linear_gemm_backward(Gemm gemm, float* dinp, float* dweight, const float* dout,
                          const float* inp, const float* weight, int64_t N, int64_t C, int64_t OC,
                          bool conv1d) {
  if (dinp) {
    if (conv1d)
      gemm(false, true, N, C, OC, 1.0f, dout, OC, weight, OC, 1.0f, dinp, C);
    else
      gemm(false, false, N, C, OC, 1.0f, dout, OC, weight, C, 1.0f, dinp, C);
  }
  if (dweight) {
    if (conv1d)
      gemm(true, false, C, OC, N, 1.0f, inp, C, dout, OC, 1.0f, dweight, OC);
    else
      gemm(true, false, OC, C, N, 1.0f, dout, OC, inp, C, 1.0f, dweight, C);
  }
}

}  // namespace tessera::kernels
