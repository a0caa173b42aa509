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

}  // namespace tessera::kernels::cpu
