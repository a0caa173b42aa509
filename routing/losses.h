// Auxiliary losses of learned gates, as plain functions of the gate logits
// with their gradient (the gate's training adds them through the trainer's
// extra-loss channel). Rows of several layers are passed one after another.
#pragma once

#include <cstdint>

namespace tessera::routing {

// Mixtral's load-balancing loss, exactly as transformers'
// load_balancing_loss_func (the Switch Transformer's eqs. 4–6): for logits
// z [rows, E], keep mask [rows] (1 = a real token, 0 = padding; null: all
// real), p_t = softmax(z_t) and S_t its top k,
//   f_e = #{(t, j) : S_t[j] = e} / Σ_t mask_t   (over kept rows; Σ_e f_e = k)
//   P_e = Σ_t mask_t p_te / Σ_t mask_t
//   L   = E · Σ_e f_e P_e
// Uniform probabilities with a perfectly balanced assignment give exactly
// L = k, the floor of this convention (not 1: f counts every slot). The
// gradient flows through P only (the selection counts are constants), as in
// autograd: dL/dz_t = mask_t / Σ mask · (diag(p_t) − p_t p_tᵀ) (E f).
// `grad` [rows, E] (may be null) receives it. Ties in the top k go to the
// lower expert id. Returns 0 when no row is kept.
double load_balancing_loss(const float* logits, int64_t rows, int64_t E, int64_t k,
                           const float* mask, float* grad);

// The router z-loss (ST-MoE; transformers' router_z_loss_func): the mean
// over rows of logsumexp(z_t)², with gradient 2 · lse_t · p_t / rows.
double router_z_loss(const float* logits, int64_t rows, int64_t E, float* grad);

}  // namespace tessera::routing
