#include "runtime/kernels/cpu/norm.h"

#include <omp.h>

#include <cmath>
#include <vector>

namespace tessera::kernels::cpu {

namespace {
constexpr int64_t kPar = 1 << 14;

// Parameter gradients are sums over rows: each thread sums its rows into a
// private buffer, then the buffers are added in a fixed order (deterministic).
template <typename RowFn>
void rows_with_param_grads(int64_t N, int64_t C, int nbuf, float* const* dparams, RowFn row_fn) {
  bool par = N * C > kPar;
  int nt = par ? omp_get_max_threads() : 1;
  std::vector<float> scratch(static_cast<size_t>(nt) * nbuf * C, 0.0f);
#pragma omp parallel num_threads(nt) if (par)
  {
    int tid = omp_get_thread_num();
    float* mine = scratch.data() + static_cast<size_t>(tid) * nbuf * C;
#pragma omp for schedule(static)
    for (int64_t i = 0; i < N; ++i) row_fn(i, mine, mine + C);
  }
  for (int b = 0; b < nbuf; ++b) {
    if (!dparams[b]) continue;
    for (int t = 0; t < nt; ++t) {
      const float* s = scratch.data() + (static_cast<size_t>(t) * nbuf + b) * C;
#pragma omp simd
      for (int64_t j = 0; j < C; ++j) dparams[b][j] += s[j];
    }
  }
}
}  // namespace

void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                       const float* bias, int64_t N, int64_t C, float eps) {
#pragma omp parallel for if (N * C > kPar) schedule(static)
  for (int64_t i = 0; i < N; ++i) {
    const float* x = inp + i * C;
    float m = 0.0f;
#pragma omp simd reduction(+ : m)
    for (int64_t j = 0; j < C; ++j) m += x[j];
    m /= static_cast<float>(C);
    float v = 0.0f;
#pragma omp simd reduction(+ : v)
    for (int64_t j = 0; j < C; ++j) v += (x[j] - m) * (x[j] - m);
    v /= static_cast<float>(C);
    float s = 1.0f / std::sqrt(v + eps);
    float* o = out + i * C;
    if (bias) {
#pragma omp simd
      for (int64_t j = 0; j < C; ++j) o[j] = (x[j] - m) * s * weight[j] + bias[j];
    } else {
#pragma omp simd
      for (int64_t j = 0; j < C; ++j) o[j] = (x[j] - m) * s * weight[j];
    }
    mean[i] = m;
    rstd[i] = s;
  }
}

void layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                        const float* inp, const float* weight, const float* mean, const float* rstd,
                        int64_t N, int64_t C) {
  float* dparams[2] = {dweight, dbias};
  rows_with_param_grads(N, C, 2, dparams, [&](int64_t i, float* dw, float* db) {
    const float* dy = dout + i * C;
    const float* x = inp + i * C;
    float m = mean[i], s = rstd[i];
    float dnorm_mean = 0.0f, dnorm_norm_mean = 0.0f;
#pragma omp simd reduction(+ : dnorm_mean, dnorm_norm_mean)
    for (int64_t j = 0; j < C; ++j) {
      float xhat = (x[j] - m) * s;
      float dnorm = weight[j] * dy[j];
      dnorm_mean += dnorm;
      dnorm_norm_mean += dnorm * xhat;
    }
    dnorm_mean /= static_cast<float>(C);
    dnorm_norm_mean /= static_cast<float>(C);
#pragma omp simd
    for (int64_t j = 0; j < C; ++j) {
      float xhat = (x[j] - m) * s;
      db[j] += dy[j];
      dw[j] += xhat * dy[j];
    }
    if (dinp) {
      float* dx = dinp + i * C;
#pragma omp simd
      for (int64_t j = 0; j < C; ++j) {
        float xhat = (x[j] - m) * s;
        float dnorm = weight[j] * dy[j];
        dx[j] += (dnorm - dnorm_mean - xhat * dnorm_norm_mean) * s;
      }
    }
  });
}

void rmsnorm_forward(float* out, float* rstd, const float* inp, const float* weight, int64_t N,
                     int64_t C, float eps) {
#pragma omp parallel for if (N * C > kPar) schedule(static)
  for (int64_t i = 0; i < N; ++i) {
    const float* x = inp + i * C;
    float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
    for (int64_t j = 0; j < C; ++j) ss += x[j] * x[j];
    float s = 1.0f / std::sqrt(ss / static_cast<float>(C) + eps);
    float* o = out + i * C;
#pragma omp simd
    for (int64_t j = 0; j < C; ++j) o[j] = x[j] * s * weight[j];
    rstd[i] = s;
  }
}

void rmsnorm_backward(float* dinp, float* dweight, const float* dout, const float* inp,
                      const float* weight, const float* rstd, int64_t N, int64_t C) {
  float* dparams[1] = {dweight};
  rows_with_param_grads(N, C, 1, dparams, [&](int64_t i, float* dw, float*) {
    const float* dy = dout + i * C;
    const float* x = inp + i * C;
    float s = rstd[i];
    float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
    for (int64_t j = 0; j < C; ++j) dot += dy[j] * weight[j] * x[j];
#pragma omp simd
    for (int64_t j = 0; j < C; ++j) dw[j] += dy[j] * x[j] * s;
    if (dinp) {
      float k = dot * s * s * s / static_cast<float>(C);
      float* dx = dinp + i * C;
#pragma omp simd
      for (int64_t j = 0; j < C; ++j) dx[j] += dy[j] * weight[j] * s - x[j] * k;
    }
  });
}

}  // namespace tessera::kernels::cpu
