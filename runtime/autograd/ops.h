// Differentiable ops. Each validates its inputs (shape errors are
// tessera::Error naming the op and the shapes), computes the forward through
// one dispatch point, and — when a tape records and an input requires a
// gradient — records a backward that accumulates only into inputs that
// require gradients (a frozen weight gets no dW product).
#pragma once

#include <cstdint>
#include <vector>

#include "runtime/common/rng.h"
#include "runtime/kernels/cpu/elementwise.h"
#include "runtime/kernels/cpu/gate.h"
#include "runtime/kernels/cpu/lora.h"
#include "runtime/tensor/tensor.h"

namespace tessera::ops {

using kernels::cpu::Act;
using kernels::cpu::GateWeights;
using kernels::cpu::LoraMix;

// y = x · Wᵀ + b over the last dim of x; W [out, in] (or [in, out] with conv1d,
// the GPT-2 Conv1D layout); b may be undefined.
Tensor linear(const Tensor& x, const Tensor& w, const Tensor& b, bool conv1d = false);
Tensor matmul_nt(const Tensor& x, const Tensor& w);  // linear without bias
// a + b with b broadcast over the leading dims of a (b's shape is a suffix of a's).
Tensor add(const Tensor& a, const Tensor& b);
// a * b elementwise; b may also be a suffix of a's shape, broadcast over the leading dims.
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);  // same shapes
// Per-row L2 norm of a 2-D x [N, C] → [N].
Tensor row_norm(const Tensor& x);
// [R, C] → [C, R] (a copy).
Tensor transpose(const Tensor& x);
// Rows [begin, end) of x along its first dim (a copy; gradients flow back).
Tensor slice_rows(const Tensor& x, int64_t begin, int64_t end);
// Tensors of equal trailing shape stacked along the first dim.
Tensor concat_rows(const std::vector<Tensor>& xs);
// Inverted dropout: zeroes each element with probability p and scales the
// rest by 1/(1-p). The identity when p == 0 or no tape is recording (evaluation).
Tensor dropout(const Tensor& x, float p, Rng& rng);
Tensor scale(const Tensor& a, float s);
// Sum of all elements → [1].
Tensor sum(const Tensor& a);
Tensor activation(const Tensor& x, Act act);
Tensor swiglu(const Tensor& gate, const Tensor& up);  // silu(gate) * up, fused
Tensor layernorm(const Tensor& x, const Tensor& w, const Tensor& b, float eps);
Tensor rmsnorm(const Tensor& x, const Tensor& w, float eps);
// Shares storage with x; gradients flow back through it.
Tensor reshape(const Tensor& x, const Shape& shape);
// Rows ids[i] of table [V, C] → [ids.size(), C]; every id must be in [0, V).
Tensor embedding(const std::vector<int32_t>& ids, const Tensor& table);
// Attention options: scale of the scores (0: 1/sqrt(D)); a sliding window
// (0: none; W: query t sees keys t-W+1..t).
struct AttnOptions {
  float scale = 0.0f;
  int64_t window = 0;
};
// Causal attention; q [B*T, Hq*D], k/v [B*T, Hkv*D] → [B*T, Hq*D].
Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, int64_t B, int64_t T,
                 int64_t Hq, int64_t Hkv, const AttnOptions& o = {});
// Same, reading q, k, v as column blocks of one fused projection
// qkv [B*T, (Hq + 2*Hkv)*D] (GPT-2's c_attn output).
Tensor attention_packed(const Tensor& qkv, int64_t B, int64_t T, int64_t Hq, int64_t Hkv,
                        const AttnOptions& o = {});
// Columns [begin, end) of x [N, C] → [N, end - begin] (a fused projection's parts).
Tensor slice_cols(const Tensor& x, int64_t begin, int64_t end);
// Rotary embedding of x [B*T, H*D] with tables cos/sin [T, R/2], rotating
// each head's first R dims (rot = 0: all D) and passing the rest through.
Tensor rope(const Tensor& x, const Tensor& cos, const Tensor& sin, int64_t B, int64_t T, int64_t H,
            int64_t rot = 0);
// The weighted top-k LoRA gather (runtime/kernels/cpu/lora.h states both
// mixing modes): base_out [N, out] plus the experts of a bank A [E, r, in],
// B [E, out, r] (scales [E]) applied to x [N, in]. ids [M·k] names k experts
// per row group (M must divide N: one group per token when M = N, per example
// of N/M tokens otherwise; −1 leaves a slot empty) and weights [M, k] mixes
// them (undefined: every weight 1). Gradients reach x, base_out, A, B and
// weights. Throws Error naming the mismatch for bad shapes or ids. With
// in_place the result is written into base_out's buffer (for a base output
// nothing else reads: its values are overwritten).
Tensor lora_gather(const Tensor& x, const Tensor& base_out, const Tensor& A, const Tensor& B,
                   const std::vector<int32_t>& ids, int64_t k, const Tensor& weights,
                   const std::vector<float>& scales, LoraMix mix = LoraMix::Output,
                   bool in_place = false);
// The top-k gate of a mixture of experts (Mixtral's convention; modes in
// runtime/kernels/cpu/gate.h): for gate logits [N, E], ids [N·k] are each
// row's k experts with the largest logit + bias (bias [E] or empty: the
// auxiliary-loss-free balancing bias, selection only; ties to the lower id)
// and weights [N, k] come from p = softmax(logits) as `mode` says. The
// gradient of the weights reaches the logits through the softmax; the
// selection is a constant. Feed ids and weights to lora_gather. Error: not
// [N, E], k outside [1, E], a bias of the wrong length.
struct Gate {
  Tensor weights;
  std::vector<int32_t> ids;
  int64_t k = 0;
};
Gate top_k_gate(const Tensor& logits, int64_t k, GateWeights mode = GateWeights::Renormalized,
                const std::vector<float>& bias = {});
// The gates' auxiliary losses over logits [rows, E] (one layer's rows after
// another), → [1]; definitions and sources in runtime/kernels/cpu/gate.h.
// Mixtral's load-balancing loss (transformers' load_balancing_loss_func;
// mask [rows]: 1 a real token, 0 padding; empty: all real; uniform routing gives exactly k).
Tensor load_balancing_loss(const Tensor& logits, int64_t k, const std::vector<float>& mask = {});
// The router z-loss (ST-MoE): mean over rows of logsumexp²
Tensor router_z_loss(const Tensor& logits);
// MoLE's gating-balance loss, −Σ_e log mean_t softmax(z_t/τ)_e.
Tensor gating_balance_loss(const Tensor& logits, float temperature = 1.0f);
// Poly / MHR (runtime/kernels/cpu/poly.h, PEFT's PolyRouter): per-task
// weights [T, q, S] over S skills in each of q splits from logits [T, q·S]:
// sigmoid((logits + logistic noise from u) / tau) (u [T, q·S] uniform in
// (0, 1): training's RelaxedBernoulli sample) or sigmoid(logits) (u
// undefined: evaluation), normalised per split. Error: shapes, u outside
// (0, 1), tau <= 0.
Tensor poly_weights(const Tensor& logits, int64_t skills, const Tensor& u, float tau = 1.0f);
// Each task's adapter matrix from a skill bank [S, R, C]: [T, R, C], split
// along the columns (lora_A [r, in]) or the rows (lora_B [out, r]) into q
// parts, each part mixed with its own weights [T, q, S]. Error: shapes, q
// not dividing the split dimension.
Tensor poly_mix(const Tensor& weights, const Tensor& bank, bool split_cols);
// base_out [N, out] plus the Poly/MHR LoRA of each of M row groups (g = N/M
// contiguous rows each) with mixing weights [M, q, S] over the skills A [S,
// r, in] (split along in) and B [S, out, r] (split along out), times scale —
// what poly_mix of both banks followed by lora_gather gives, without forming
// the M mixed adapters (kernels/cpu/poly.h: two GEMMs per split instead of
// M per-example ones). Gradients for x, A, B and weights; base_out's is dy.
// Error: shapes that do not fit, q not dividing in and out, M not dividing N.
Tensor poly_lora(const Tensor& x, const Tensor& base_out, const Tensor& A, const Tensor& B,
                 const Tensor& weights, float scale);
// Mean softmax cross-entropy of logits [N, V] against targets (-1 = ignore) → [1].
Tensor cross_entropy(const Tensor& logits, const std::vector<int32_t>& targets);

}  // namespace tessera::ops
