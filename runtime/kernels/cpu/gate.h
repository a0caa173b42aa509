// Learned gates over E experts (mixtures of LoRA experts, Mixtral
// convention): the top-k gate and the gates' auxiliary losses, on raw
// pointers. Logits z [N, E] are one gate's scores for N rows (tokens); the
// losses take the rows of several layers one after another. ops::top_k_gate
// and the loss ops (runtime/autograd/ops.h) put them on the tape.
#pragma once

#include <cstdint>

namespace tessera::kernels::cpu {

// How the k selected experts' weights are formed from p = softmax(z):
//   Renormalized     w_j = p_{i_j} / Σ_l p_{i_l} (Mixtral, MixLoRA, LLaVA-MoLE;
//                    at k = 1 the weight is always 1, so the gate gets no
//                    task gradient)
//   Softmax          w_j = p_{i_j} (the Switch Transformer's form: at k = 1
//                    the output is scaled by p_{e*}, which trains the gate)
//   StraightThrough  forward as Renormalized, backward as Softmax (the
//                    straight-through estimator: w = 1 at k = 1 with
//                    Switch's gradient)
enum class GateWeights { Renormalized, Softmax, StraightThrough };

// Forward of the top-k gate for logits z [N, E]: probs [N, E] = softmax(z)
// (kept for the backward), ids [N, k] the k experts with the largest
// z + bias (bias [E], may be null: the auxiliary-loss-free balancing bias,
// which steers selection only and never enters a weight; ties go to the
// lower id), ordered by that score, and weights [N, k] as `mode` says.
void top_k_gate_forward(float* weights, int32_t* ids, float* probs, const float* logits,
                        const float* bias, int64_t N, int64_t E, int64_t k, GateWeights mode);
// dlogits [N, E] += the gradient through p = softmax(z) of dweights [N, k]
// (the selection is a constant, as in autograd).
void top_k_gate_backward(float* dlogits, const float* dweights, const float* probs,
                         const int32_t* ids, int64_t N, int64_t E, int64_t k, GateWeights mode);

// Mixtral's load-balancing loss, exactly as transformers'
// load_balancing_loss_func (the Switch Transformer's eqs. 4–6): for logits
// z [rows, E], keep mask [rows] (1 = a real token, 0 = padding; null: all
// real), p_t = softmax(z_t) and S_t its top k,
//   f_e = #{(t, j) : S_t[j] = e} / Σ_t mask_t   (over kept rows; Σ_e f_e = k)
//   P_e = Σ_t mask_t p_te / Σ_t mask_t
//   L   = E · Σ_e f_e P_e
// Uniform probabilities give exactly L = k whatever the assignment (Σ f = k;
// not 1 as in Switch's paper: f counts every slot); k is not a lower bound
// (confident rows that disagree with the counts go below it). The
// gradient flows through P only (the selection counts are constants), as in
// autograd: dL/dz_t = mask_t / Σ mask · (diag(p_t) − p_t p_tᵀ) (E f).
// `grad` [rows, E] (may be null) is overwritten with it. Ties in the top k go to the
// lower expert id. Returns 0 when no row is kept.
double load_balancing_loss(const float* logits, int64_t rows, int64_t E, int64_t k,
                           const float* mask, float* grad);

// The router z-loss (ST-MoE; transformers' router_z_loss_func): the mean
// over rows of logsumexp(z_t)², with gradient 2 · lse_t · p_t / rows
// (`grad` may be null; overwritten).
double router_z_loss(const float* logits, int64_t rows, int64_t E, float* grad);

// MoLE's gating-balance loss (Wu, Huang and Wei, "Mixture of LoRA Experts",
// ICLR 2024, the gating balancing loss): q_e = the mean over rows (tokens of every gated block)
// of softmax(z_t / τ)_e, L = −log Π_e q_e = −Σ_e log q_e. Its minimum,
// E log E, is reached by uniform mean usage; an expert the gate abandons
// drives it to +∞. `grad` (may be null) is overwritten with dL/dz.
// Returns 0 for no rows. Error: τ <= 0.
double gating_balance_loss(const float* logits, int64_t rows, int64_t E, float temperature,
                           float* grad);

}  // namespace tessera::kernels::cpu
