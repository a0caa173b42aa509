#include "runtime/kernels/cpu/softmax_xent.h"

#include <cmath>

#include "runtime/kernels/cpu/vmath.h"

namespace tessera::kernels::cpu {

namespace {
inline float row_lse(const float* x, int64_t V) {
  float mx = -INFINITY;
  for (int64_t j = 0; j < V; ++j) mx = x[j] > mx ? x[j] : mx;
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < V; ++j) sum += vexp(x[j] - mx);
  return mx + std::log(sum);
}
}  // namespace

double cross_entropy_forward(float* lse, const float* logits, const int32_t* targets, int64_t N,
                             int64_t V, int64_t* count) {
#pragma omp parallel for if (N * V > (1 << 15)) schedule(static)
  for (int64_t i = 0; i < N; ++i) lse[i] = row_lse(logits + i * V, V);
  // Summed serially in row order so the loss is bit-identical for any thread count.
  double total = 0.0;
  int64_t n = 0;
  for (int64_t i = 0; i < N; ++i) {
    if (targets[i] < 0) continue;
    total += static_cast<double>(lse[i] - logits[i * V + targets[i]]);
    n += 1;
  }
  *count = n;
  return total;
}

void cross_entropy_backward(float* dlogits, const float* logits, const float* lse,
                            const int32_t* targets, float scale, int64_t N, int64_t V) {
#pragma omp parallel for if (N * V > (1 << 15)) schedule(static)
  for (int64_t i = 0; i < N; ++i) {
    if (targets[i] < 0) continue;
    const float* x = logits + i * V;
    float* dx = dlogits + i * V;
    const float l = lse[i];
#pragma omp simd
    for (int64_t j = 0; j < V; ++j) dx[j] += scale * vexp(x[j] - l);
    dx[targets[i]] -= scale;
  }
}

}  // namespace tessera::kernels::cpu
