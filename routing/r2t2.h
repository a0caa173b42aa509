// Test-time re-routing (R2-T2: Li et al. 2025, "R2-T2: Re-Routing in
// Test-Time for Multimodal Mixture-of-Experts"): a test input's routing
// vector r ∈ Δ^E is moved toward the routing of its nearest neighbours in a
// reference set of examples the model handled correctly.
//   kernel regression:  r ← α r + (1 − α) Σ_i K_i r_i / Σ_i K_i
//   neighbourhood gradient descent (NGD): `steps` steps of
//                       r ← Π_Δ(r − lr · Σ_i K_i ∇_r ℓ_i(r) / Σ_i K_i)
// over the k nearest neighbours i (Euclidean distance between embeddings,
// ties to the lower index), K_i = exp(−d_i² / (2 h²)) (a Gaussian kernel;
// h: the bandwidth, 0 = the median neighbour distance of that input), ℓ_i
// the loss of neighbour i's own example routed by r, and Π_Δ the Euclidean
// projection onto the simplex (Duchi et al. 2008).
//
// Where we differ from the reference code, deliberately: it optimises the
// router's shared parameters in place, test example after test example, so
// each result depends on the ones before it. Here every test input works on
// its own copy of its routing vector: the result for an input is the same
// whatever the order or the company of the test set (tested).
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "runtime/tensor/tensor.h"

namespace tessera::routing {

struct ReferenceSet {
  Tensor embeddings;  // [R, d]
  Tensor routes;      // [R, E], each row on the simplex
};

struct R2T2Options {
  int64_t k = 5;           // neighbours
  float alpha = 0.5f;      // kernel regression: the weight kept on the input's own routing
  float bandwidth = 0.0f;  // h; 0: the median distance to the k neighbours, per input
  int steps = 10;          // NGD
  float lr = 0.1f;         // NGD
};

// The k nearest reference rows to embedding e [d] and their kernel weights.
struct Neighbours {
  std::vector<int64_t> index;
  std::vector<double> weight;  // K_i, not normalised
};
Neighbours nearest_neighbours(const ReferenceSet& ref, const float* e, const R2T2Options& o);

// Kernel regression for inputs with embeddings [N, d] and routing [N, E]:
// the re-routed [N, E]. Error naming the mismatch: shapes, k outside
// [1, R], alpha outside [0, 1], a negative bandwidth.
Tensor r2t2_kernel_regression(const Tensor& embeddings, const Tensor& routes,
                              const ReferenceSet& ref, const R2T2Options& o);

// NGD: `loss_grad(i, r, &grad)` returns neighbour i's loss with routing r
// and fills grad [E] with ∇_r. Returns the re-routed [N, E].
using NeighbourLossGrad =
    std::function<double(int64_t ref_index, const std::vector<float>& r, std::vector<float>* grad)>;
Tensor r2t2_ngd(const Tensor& embeddings, const Tensor& routes, const ReferenceSet& ref,
                const R2T2Options& o, const NeighbourLossGrad& loss_grad);

// The Euclidean projection of v onto the probability simplex.
std::vector<float> project_to_simplex(const std::vector<float>& v);

}  // namespace tessera::routing
