#include "runtime/kernels/cpu/poly.h"

#include <cmath>

namespace tessera::kernels::cpu {

namespace {

constexpr double kEps = 1e-12;  // PEFT poly/router.py EPS

// The split of element (i, j) of an [R, C] matrix.
inline int64_t split_of(int64_t i, int64_t j, int64_t q, int64_t R, int64_t C, bool split_cols) {
  return split_cols ? j / (C / q) : i / (R / q);
}

}  // namespace

void poly_weights_forward(float* weights, float* zhat, const float* logits, const float* u,
                          int64_t T, int64_t q, int64_t S, float tau) {
  for (int64_t g = 0; g < T * q; ++g) {
    double sum = 0;
    for (int64_t s = 0; s < S; ++s) {
      const int64_t i = g * S + s;
      double z = logits[i];
      if (u) z = (z + std::log(double(u[i])) - std::log1p(-double(u[i]))) / tau;
      const double h = 1.0 / (1.0 + std::exp(-z));
      zhat[i] = static_cast<float>(h);
      sum += h;
    }
    for (int64_t s = 0; s < S; ++s)
      weights[g * S + s] = static_cast<float>(zhat[g * S + s] / (sum + kEps));
  }
}

void poly_weights_backward(float* dlogits, const float* dweights, const float* zhat, int64_t T,
                           int64_t q, int64_t S, float tau) {
  for (int64_t g = 0; g < T * q; ++g) {
    const float* h = zhat + g * S;
    const float* dw = dweights + g * S;
    double D = kEps, dot = 0;
    for (int64_t s = 0; s < S; ++s) D += h[s];
    for (int64_t s = 0; s < S; ++s) dot += double(dw[s]) * h[s];
    // w_l = ẑ_l / D: dẑ_s = dw_s / D − Σ_l dw_l ẑ_l / D²; then ẑ = σ(y), y = (z + L)/τ.
    for (int64_t s = 0; s < S; ++s) {
      const double dh = dw[s] / D - dot / (D * D);
      dlogits[g * S + s] += static_cast<float>(dh * h[s] * (1.0 - h[s]) / tau);
    }
  }
}

void poly_mix_forward(float* out, const float* weights, const float* bank, int64_t T, int64_t q,
                      int64_t S, int64_t R, int64_t C, bool split_cols) {
#pragma omp parallel for if (T * R * C > 65536) schedule(static)
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < R; ++i)
      for (int64_t j = 0; j < C; ++j) {
        const float* w = weights + (t * q + split_of(i, j, q, R, C, split_cols)) * S;
        float acc = 0;
        for (int64_t s = 0; s < S; ++s) acc += w[s] * bank[(s * R + i) * C + j];
        out[(t * R + i) * C + j] = acc;
      }
}

void poly_mix_backward(float* dweights, float* dbank, const float* dout, const float* weights,
                       const float* bank, int64_t T, int64_t q, int64_t S, int64_t R, int64_t C,
                       bool split_cols) {
  // Serial over t for dbank (each bank element sums over t in a fixed order);
  // small next to the GEMMs the mixed adapters feed.
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < R; ++i)
      for (int64_t j = 0; j < C; ++j) {
        const int64_t c = split_of(i, j, q, R, C, split_cols);
        const float g = dout[(t * R + i) * C + j];
        for (int64_t s = 0; s < S; ++s) {
          if (dweights) dweights[(t * q + c) * S + s] += g * bank[(s * R + i) * C + j];
          if (dbank) dbank[(s * R + i) * C + j] += g * weights[(t * q + c) * S + s];
        }
      }
}

}  // namespace tessera::kernels::cpu
