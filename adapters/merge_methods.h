// The merge-method registry: every way tessera combines LoRA adapters of one
// base, by name, with its arguments and their defaults — shared by `tessera
// merge` and, later, federated aggregation. A method is written as
// "name[:key=value,...]" (PEFT's add_weighted_adapter names where PEFT has
// the method: linear, svd, cat, ties, dare_linear, dare_ties,
// magnitude_prune):
//
//   cat              exact: ranks stacked, ΔW = Σ wᵢ sᵢ Bᵢ Aᵢ
//   linear / svd     Σ λ wᵢ ΔWᵢ, refactored to rank r   (lambda = 1)
//   ties             TIES (density = 0.2)
//   dare_linear      DARE then a sum (p = 0.5)
//   dare_ties        DARE then TIES (p = 0.5, density = 1)
//   magnitude_prune  each ΔWᵢ pruned to its top density, summed (density = 0.2)
//   lego             LoRA-LEGO, rank k (k = the largest input rank)
//   soup             the uniform soup: linear with the weights normalised to sum 1
//
// Each method is defined in adapters/merge.h; dense results are refactored
// to a LoRA by truncated SVD at the requested rank (default: the largest
// input rank, capped by the module's shape).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "adapters/merge.h"

namespace tessera::adapters {

struct MergeMethod {
  std::string name;
  std::vector<std::pair<std::string, float>> args;  // accepted keys and their defaults
};

// Every registered method, in the order of the table above.
const std::vector<MergeMethod>& merge_methods();

// A method with its arguments, parsed from "name[:key=value,...]".
struct MergeRecipe {
  std::string spec;  // as written
  std::string method;
  std::map<std::string, float> args;  // as given (defaults not filled in)
  float get(const std::string& key, float fallback) const;
};

// Throws Error naming the spec for an unknown method ("expected ..." listing
// them), a key the method does not take, or a value that is not a number.
MergeRecipe parse_merge_method(const std::string& spec);

// One module's LoRAs combined (weights: one per LoRA; rank: of dense results,
// 0 for the largest input rank). `rng` drives DARE's drops; `seed` LEGO's k-means.
LoraFactors merge_module(const MergeRecipe& recipe, const std::vector<LoraFactors>& loras,
                         const std::vector<float>& weights, int64_t rank, Rng& rng, uint64_t seed);

// Whole adapters (each a list of (module, factors)) combined module by module,
// in the order of the first input's modules, with one Rng(seed) across them.
// `names` name the inputs in messages; an input without one of the first
// input's modules, or with another module count, is refused naming both.
std::vector<std::pair<std::string, LoraFactors>> merge_adapters(
    const MergeRecipe& recipe,
    const std::vector<std::vector<std::pair<std::string, LoraFactors>>>& inputs,
    const std::vector<std::string>& names, std::vector<float> weights, int64_t rank, uint64_t seed);

}  // namespace tessera::adapters
