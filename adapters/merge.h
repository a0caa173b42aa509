// Combining adapters (adapters/merge). A LoRA's update to one module is
// ΔW = s·B·A (A [r, in], B [out, r]); methods work on these per module:
//
//   cat            exact: stacks ranks, ΔW = Σ wᵢ sᵢ Bᵢ Aᵢ (ranks add up)
//   task_arithmetic Σ λ wᵢ ΔWᵢ
//   ties           trim each wᵢΔWᵢ to its top `density` by magnitude, elect the
//                  sign of the summed trimmed values, average the entries that
//                  agree with it (disjoint mean) — Yadav et al. 2023
//   dare           drop each entry with probability p and rescale by 1/(1−p),
//                  then sum (linear) or TIES-combine (ties) — Yu et al. 2024
//   prune_magnitude keep a tensor's top `density` entries by magnitude
//   svd_factor     best rank-r factorisation of a dense ΔW (truncated SVD),
//                  so any dense result becomes a LoRA again
//
// Shapes that cannot combine are refused with a message naming them.
#pragma once

#include <cstdint>
#include <vector>

#include "runtime/common/rng.h"
#include "runtime/tensor/tensor.h"

namespace tessera::adapters {

struct LoraFactors {
  Tensor A;  // [r, in]
  Tensor B;  // [out, r]
  float scale = 1.0f;
  int64_t rank() const { return A.size(0); }
  // s·B·A as [out, in], or transposed to [in, out] (GPT-2's Conv1D weight layout).
  Tensor delta(bool in_out = false) const;
};

LoraFactors merge_cat(const std::vector<LoraFactors>& loras, const std::vector<float>& weights);
Tensor task_arithmetic(const std::vector<Tensor>& deltas, const std::vector<float>& weights,
                       float lambda = 1.0f);
Tensor ties(const std::vector<Tensor>& deltas, const std::vector<float>& weights, float density);
Tensor dare(const std::vector<Tensor>& deltas, const std::vector<float>& weights, float drop_p,
            Rng& rng, bool ties_combine = false, float density = 1.0f);
Tensor prune_magnitude(const Tensor& delta, float density);
// Truncated SVD: B = U_r √Σ_r, A = √Σ_r V_rᵀ, scale 1.
LoraFactors svd_factor(const Tensor& delta, int64_t rank);

}  // namespace tessera::adapters
