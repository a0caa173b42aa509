// LayerNorm and RMSNorm over the last dim C of an [N, C] input.
// Forward caches what backward needs (mean, rstd); backward accumulates.
#pragma once

#include <cstdint>

namespace tessera::kernels::cpu {

// out = (inp - mean) * rstd * weight + bias; mean, rstd are [N]. bias may be null.
void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                       const float* bias, int64_t N, int64_t C, float eps);
void layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                        const float* inp, const float* weight, const float* mean, const float* rstd,
                        int64_t N, int64_t C);

// out = inp * rstd * weight, rstd = 1/sqrt(mean(inp²) + eps).
void rmsnorm_forward(float* out, float* rstd, const float* inp, const float* weight, int64_t N,
                     int64_t C, float eps);
void rmsnorm_backward(float* dinp, float* dweight, const float* dout, const float* inp,
                      const float* weight, const float* rstd, int64_t N, int64_t C);

}  // namespace tessera::kernels::cpu
