// The weighted top-k LoRA gather: a bank of E LoRA experts of one module,
// A [E, r, in] and B [E, out, r] with a scale s_e each, applied to the rows of
// x [N, in], where row group g (rows [g·N/M, (g+1)·N/M): one group per token
// when M = N, per example of T tokens when N = M·T) mixes up to k experts
// ids[g, 0..k) (−1: an empty slot) with weights w[g, 0..k):
//
//   Output mixing (PEFT's mixture, "merge-after"):
//     y = base + Σ_j w_j s_{e_j} B_{e_j} (A_{e_j} x)
//   Parameter mixing (mttl's, "merge-before", per-expert scales):
//     z = Σ_j w_j A_{e_j} x            [r]
//     y = base + Σ_j w_j s_{e_j} B_{e_j} z
//   (with one expert per row both are y = base + s B A x.)
//
// The rows of each (slot, expert) pair are gathered into blocks and each block
// runs thin rank-r GEMMs against its own A_e and B_e — the SGMV kernel of
// Punica and S-LoRA — so a call costs the GEMMs of its routed rows, never a
// loop over all E experts. Slots run one after another (a barrier between), so
// within a slot every row has one writer: y, z and dx are written in place,
// each row's terms added in slot order, and parameter gradients are summed
// from per-thread buffers in a fixed order — bit-identical for a given thread
// count. Unlike PEFT's mixed batches (inference only) there is a backward, to
// x, A, B and the weights.
//
// How to call: lora_plan (the op makes one per call, O(rows)), lora_forward,
// then lora_backward with the same plan and the h / z the forward filled.
#pragma once

#include <cstdint>
#include <vector>

namespace tessera::kernels::cpu {

enum class LoraMix { Output, Parameter };

struct LoraDims {
  int64_t N, in, out, r, E;
};

// The routed rows grouped by (slot, expert). An entry is one (row, slot) whose
// group has an expert in that slot; entries are numbered in plan order.
struct LoraPlan {
  int64_t N = 0, M = 0, k = 0, E = 0;
  std::vector<int64_t> row;   // [entries] the row of each entry
  std::vector<int64_t> slot;  // [entries] its index into ids / w: g·k + j
  struct Block {
    int64_t expert, begin, end;  // entries [begin, end), all of one expert and one slot
    bool contiguous;             // their rows are one run
  };
  std::vector<std::vector<Block>> phases;  // phases[j]: the blocks of slot j
  int64_t entries() const { return static_cast<int64_t>(row.size()); }
};

// ids [M·k], each in [−1, E); M must divide N (checked by the caller).
LoraPlan lora_plan(const int32_t* ids, int64_t M, int64_t k, int64_t N, int64_t E);

// y [N, out] holds the base output and receives the adapters' terms.
// h [entries, r] receives A_e x of every entry (unweighted); for Parameter
// mixing z [N, r] receives z (zeroed here); w [M·k] may be null (all 1).
void lora_forward(float* y, float* h, float* z, const float* x, const float* A, const float* B,
                  const float* w, const float* scales, const LoraPlan& p, const LoraDims& d,
                  LoraMix mix);

// Accumulates into dx [N, in], dA [E, r, in], dB [E, out, r] and dw [M·k]
// (each may be null) from dy [N, out]; h and z as the forward left them.
void lora_backward(float* dx, float* dA, float* dB, float* dw, const float* dy, const float* x,
                   const float* A, const float* B, const float* w, const float* scales,
                   const float* h, const float* z, const LoraPlan& p, const LoraDims& d,
                   LoraMix mix);

}  // namespace tessera::kernels::cpu
