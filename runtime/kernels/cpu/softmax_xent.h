// Softmax cross-entropy over the last dim V of [N, V] logits (fused: the
// probabilities are never stored). Targets < 0 are ignored (padding).
#pragma once

#include <cstdint>

namespace tessera::kernels::cpu {

// Writes per-row log-sum-exp into lse [N]; returns the summed loss over the
// counted rows and sets *count to how many rows have a target >= 0.
double cross_entropy_forward(float* lse, const float* logits, const int32_t* targets, int64_t N,
                             int64_t V, int64_t* count);
// dlogits += scale * (softmax(logits) - onehot(target)) for counted rows.
void cross_entropy_backward(float* dlogits, const float* logits, const float* lse,
                            const int32_t* targets, float scale, int64_t N, int64_t V);

}  // namespace tessera::kernels::cpu
