#include "runtime/kernels/cpu/poly.h"

#include <vector>

#include "runtime/kernels/cpu/matmul.h"

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

void poly_lora_forward(float* y, float* P, float* z, float* Q, const float* x, const float* A,
                       const float* B, const float* w, float scale, const PolyLoraDims& d) {
  const int64_t N = d.N, in = d.in, out = d.out, r = d.r, S = d.S, q = d.q;
  const int64_t ic = in / q, oc = out / q, g = N / d.M, SR = S * r;
  // P_c = x_c · A_cᵀ: A viewed [S·r, in], its columns of split c.
  for (int64_t c = 0; c < q; ++c)
    gemm(false, true, N, SR, ic, 1.0f, x + c * ic, in, A + c * ic, in, 0.0f, P + c * N * SR, SR);
#pragma omp parallel for schedule(static) if (N * q * SR > 65536)
  for (int64_t n = 0; n < N; ++n) {
    const float* wn = w + (n / g) * q * S;
    float* zn = z + n * r;
    std::fill(zn, zn + r, 0.0f);
    for (int64_t c = 0; c < q; ++c)
      for (int64_t s = 0; s < S; ++s) {
        const float ws = wn[c * S + s];
        const float* p = P + c * N * SR + n * SR + s * r;
        for (int64_t i = 0; i < r; ++i) zn[i] += ws * p[i];
      }
  }
  // Q = z · Bᵀ with B viewed [S·out, r].
  gemm(false, true, N, S * out, r, 1.0f, z, r, B, r, 0.0f, Q, S * out);
#pragma omp parallel for schedule(static) if (N * S * out > 65536)
  for (int64_t n = 0; n < N; ++n) {
    const float* wn = w + (n / g) * q * S;
    float* yn = y + n * out;
    for (int64_t s = 0; s < S; ++s) {
      const float* qs = Q + n * S * out + s * out;
      for (int64_t c = 0; c < q; ++c) {
        const float ws = scale * wn[c * S + s];
        for (int64_t o = c * oc; o < (c + 1) * oc; ++o) yn[o] += ws * qs[o];
      }
    }
  }
}

void poly_lora_backward(float* dx, float* dA, float* dB, float* dw, const float* dy, const float* x,
                        const float* A, const float* B, const float* w, const float* P,
                        const float* z, const float* Q, float scale, const PolyLoraDims& d) {
  const int64_t N = d.N, in = d.in, out = d.out, r = d.r, S = d.S, q = d.q, M = d.M;
  const int64_t ic = in / q, oc = out / q, g = N / M, SR = S * r, SO = S * out;
  // dQ[n, s, o] = scale · w[m, c(o), s] · dy[n, o]; dw[m, c, s] += scale ·
  // Σ_{n∈m, o∈c} dy[n, o] Q[n, s, o] (per-row partials, summed per group
  // below in row order: no race, a fixed order).
  std::vector<float> dQ(static_cast<size_t>(N * SO));
  std::vector<float> dwr(dw ? static_cast<size_t>(N * q * S) : 0, 0.0f);
#pragma omp parallel for schedule(static) if (N * SO > 65536)
  for (int64_t n = 0; n < N; ++n) {
    const float* wn = w + (n / g) * q * S;
    const float* dyn = dy + n * out;
    for (int64_t s = 0; s < S; ++s) {
      const float* qs = Q + n * SO + s * out;
      float* dqs = dQ.data() + n * SO + s * out;
      for (int64_t c = 0; c < q; ++c) {
        const float ws = scale * wn[c * S + s];
        double acc = 0;
        for (int64_t o = c * oc; o < (c + 1) * oc; ++o) {
          dqs[o] = ws * dyn[o];
          acc += static_cast<double>(dyn[o]) * qs[o];
        }
        if (dw) dwr[(n * q + c) * S + s] = static_cast<float>(scale * acc);
      }
    }
  }
  // dz = dQ · B (B [S·out, r]); dB += dQᵀ · z.
  std::vector<float> dz(static_cast<size_t>(N * r));
  gemm(false, false, N, r, SO, 1.0f, dQ.data(), SO, B, r, 0.0f, dz.data(), r);
  if (dB) gemm(true, false, SO, r, N, 1.0f, dQ.data(), SO, z, r, 1.0f, dB, r);
  // dP_c[n, s, i] = w[m, c, s] · dz[n, i]; dw[m, c, s] += Σ_i dz[n, i] P_c[n, s, i].
  std::vector<float> dP(static_cast<size_t>(q * N * SR));
#pragma omp parallel for schedule(static) if (N * q * SR > 65536)
  for (int64_t n = 0; n < N; ++n) {
    const float* wn = w + (n / g) * q * S;
    const float* dzn = dz.data() + n * r;
    for (int64_t c = 0; c < q; ++c)
      for (int64_t s = 0; s < S; ++s) {
        const float ws = wn[c * S + s];
        const float* p = P + c * N * SR + n * SR + s * r;
        float* dp = dP.data() + c * N * SR + n * SR + s * r;
        double acc = 0;
        for (int64_t i = 0; i < r; ++i) {
          dp[i] = ws * dzn[i];
          acc += static_cast<double>(dzn[i]) * p[i];
        }
        if (dw) dwr[(n * q + c) * S + s] += static_cast<float>(acc);
      }
  }
  if (dw)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t j = 0; j < q * S; ++j) dw[(n / g) * q * S + j] += dwr[n * q * S + j];
  // dx_c += dP_c · A_c; dA_c += dP_cᵀ · x_c (A viewed [S·r, in], columns of split c).
  for (int64_t c = 0; c < q; ++c) {
    const float* dpc = dP.data() + c * N * SR;
    if (dx) gemm(false, false, N, ic, SR, 1.0f, dpc, SR, A + c * ic, in, 1.0f, dx + c * ic, in);
    if (dA) gemm(true, false, SR, ic, N, 1.0f, dpc, SR, x + c * ic, in, 1.0f, dA + c * ic, in);
  }
}

}  // namespace tessera::kernels::cpu
