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
//   lego           LoRA-LEGO (Zhao et al. 2024): every LoRA split into rank-1
//                  units (row i of A with column i of B, scaled by √(w·s)),
//                  signs made canonical, k-means into k clusters whose
//                  centroids form a rank-k LoRA; each centroid rescaled to
//                  the mean norm of its members (averaging shrinks norms)
//   greedy_soup    model soups (Wortsman et al. 2022): ingredients sorted by
//                  their own validation score, each kept only if the soup's
//                  score does not drop (uniform soup: task_arithmetic, w = 1/n)
//   svd_factor     best rank-r factorisation of a dense ΔW (truncated SVD),
//                  so any dense result becomes a LoRA again
//
// Shapes that cannot combine are refused with a message naming them.
#pragma once

#include <cstdint>
#include <functional>
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
struct LegoOptions {
  int64_t k = 8;         // units of the result (its rank)
  int iterations = 100;  // Lloyd iterations at most
  uint64_t seed = 0;     // k-means++ initialisation
  bool rescale = true;   // centroid norm = mean member norm
};
// Mixed ranks are fine (units are rank 1); A of every LoRA must share `in`
// and B `out`. Refuses k larger than the number of units.
LoraFactors lego(const std::vector<LoraFactors>& loras, const std::vector<float>& weights,
                 const LegoOptions& o);
// Returns the kept ingredient indices (in the order tried). `score` rates a
// soup given as ingredient indices (higher is better); `own` is each
// ingredient's score alone.
std::vector<size_t> greedy_soup(const std::vector<double>& own,
                                const std::function<double(const std::vector<size_t>&)>& score);

// Truncated SVD: B = U_r √Σ_r, A = √Σ_r V_rᵀ, scale 1.
LoraFactors svd_factor(const Tensor& delta, int64_t rank);

}  // namespace tessera::adapters
