#include "runtime/kernels/cpu/poly.h"

#include <algorithm>
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

// Loop order for both: per task t and skill s, contiguous runs of j within
// one split (the weight is constant along a run), so the inner loop is a
// vectorisable axpy or dot over the bank's rows.
void poly_mix_forward(float* out, const float* weights, const float* bank, int64_t T, int64_t q,
                      int64_t S, int64_t R, int64_t C, bool split_cols) {
  const int64_t cw = split_cols ? C / q : C;  // run length along j
#pragma omp parallel for if (T * S * R * C > 65536) schedule(static)
  for (int64_t t = 0; t < T; ++t) {
    float* o = out + t * R * C;
    std::fill(o, o + R * C, 0.0f);
    for (int64_t s = 0; s < S; ++s) {
      const float* b = bank + s * R * C;
      for (int64_t i = 0; i < R; ++i)
        for (int64_t j0 = 0; j0 < C; j0 += cw) {
          const float w = weights[(t * q + split_of(i, j0, q, R, C, split_cols)) * S + s];
          float* __restrict dst = o + i * C + j0;
          const float* __restrict src = b + i * C + j0;
          for (int64_t j = 0; j < cw; ++j) dst[j] += w * src[j];
        }
    }
  }
}

void poly_mix_backward(float* dweights, float* dbank, const float* dout, const float* weights,
                       const float* bank, int64_t T, int64_t q, int64_t S, int64_t R, int64_t C,
                       bool split_cols) {
  const int64_t cw = split_cols ? C / q : C;
  // dweights[t, c, s] += Σ over split c of dout[t] ⊙ bank[s]: each (t, s)
  // writes its own entries.
  if (dweights) {
#pragma omp parallel for if (T * S * R * C > 65536) schedule(static)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t s = 0; s < S; ++s) {
        const float* g = dout + t * R * C;
        const float* b = bank + s * R * C;
        for (int64_t i = 0; i < R; ++i)
          for (int64_t j0 = 0; j0 < C; j0 += cw) {
            float acc = 0;
            const float* __restrict gi = g + i * C + j0;
            const float* __restrict bi = b + i * C + j0;
            for (int64_t j = 0; j < cw; ++j) acc += gi[j] * bi[j];
            dweights[(t * q + split_of(i, j0, q, R, C, split_cols)) * S + s] += acc;
          }
      }
  }
  // dbank[s] += Σ_t w[t, c, s] dout[t]: each s its own rows, t in order.
  if (dbank) {
#pragma omp parallel for if (T * S * R * C > 65536) schedule(static)
    for (int64_t s = 0; s < S; ++s)
      for (int64_t t = 0; t < T; ++t) {
        const float* g = dout + t * R * C;
        float* db = dbank + s * R * C;
        for (int64_t i = 0; i < R; ++i)
          for (int64_t j0 = 0; j0 < C; j0 += cw) {
            const float w = weights[(t * q + split_of(i, j0, q, R, C, split_cols)) * S + s];
            float* __restrict dst = db + i * C + j0;
            const float* __restrict src = g + i * C + j0;
            for (int64_t j = 0; j < cw; ++j) dst[j] += w * src[j];
          }
      }
  }
}

}  // namespace tessera::kernels::cpu
