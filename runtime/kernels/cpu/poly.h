// Polytropon (Ponti et al. 2023) and multi-head routing (MHR, Caccia et al.
// 2023) as PEFT's PolyModel computes them (peft/tuners/poly): per task, a
// weight for every (split, skill) pair from the task's logits, and the
// adapter of each task mixed from the skill inventory split by split.
#pragma once

#include <cstdint>

namespace tessera::kernels::cpu {

// weights [T, q, S] from logits [T, q·S]: ẑ = sigmoid((z + log u − log(1 − u)) / τ)
// with u [T, q·S] uniform in (0, 1) (training: a RelaxedBernoulli(τ, logits)
// sample, as torch's rsample) or ẑ = sigmoid(z) when u is null
// (evaluation); then per split w = ẑ / (Σ_s ẑ + 1e-12) (PEFT's EPS). zhat
// [T, q·S] is kept for the backward. u is taken as given (routing/poly.cc
// clamps it to [ε, 1 − ε] first, as torch's clamp_probs does).
void poly_weights_forward(float* weights, float* zhat, const float* logits, const float* u,
                          int64_t T, int64_t q, int64_t S, float tau);
// dlogits [T, q·S] += the gradient of dweights [T, q, S] (tau: the forward's
// with noise, 1 for evaluation's σ(z)).
void poly_weights_backward(float* dlogits, const float* dweights, const float* zhat, int64_t T,
                           int64_t q, int64_t S, float tau);

// The adapter of each of T tasks from the bank of S skills [S, R, C]:
//   out[t, i, j] = Σ_s weights[t, c, s] · bank[s, i, j]
// with c the split of (i, j): j / (C/q) when split_cols (lora_A [r, in],
// split along in), i / (R/q) otherwise (lora_B [out, r], split along out).
// q must divide the split dimension.
void poly_mix_forward(float* out, const float* weights, const float* bank, int64_t T, int64_t q,
                      int64_t S, int64_t R, int64_t C, bool split_cols);
// dweights [T, q, S] and dbank [S, R, C] += (either may be null).
void poly_mix_backward(float* dweights, float* dbank, const float* dout, const float* weights,
                       const float* bank, int64_t T, int64_t q, int64_t S, int64_t R, int64_t C,
                       bool split_cols);

// A Poly/MHR LoRA applied without forming any mixed adapter (training,
// where PEFT draws one adapter per example). For x [N, in] in M row groups
// of g = N/M rows, group m mixing with weights [M, q, S]:
//   P_c = x[:, split c] · A[:, :, split c]ᵀ      [N, S·r] per split c (GEMM)
//   z[n] = Σ_c Σ_s w[m(n), c, s] P_c[n, s]        [N, r]
//   Q = z · Bᵀ (B as [S·out, r])                  [N, S·out] (GEMM)
//   y[n, o] += scale · Σ_s w[m(n), c(o), s] Q[n, s, o]
// with A [S, r, in] split along in and B [S, out, r] along out into q
// splits — the same y as poly_mix then the LoRA. P [q, N, S·r], z [N, r]
// and Q [N, S·out] are kept for the backward.
struct PolyLoraDims {
  int64_t N, M, in, out, r, S, q;
};
void poly_lora_forward(float* y, float* P, float* z, float* Q, const float* x, const float* A,
                       const float* B, const float* weights, float scale, const PolyLoraDims& d);
// dx [N, in], dA [S, r, in], dB [S, out, r], dweights [M, q, S] += (any may
// be null) from dy [N, out].
void poly_lora_backward(float* dx, float* dA, float* dB, float* dweights, const float* dy,
                        const float* x, const float* A, const float* B, const float* weights,
                        const float* P, const float* z, const float* Q, float scale,
                        const PolyLoraDims& d);

}  // namespace tessera::kernels::cpu
