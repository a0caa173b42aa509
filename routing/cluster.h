// Building a library by clustering its experts: mttl's model-based
// clustering (MBC, Ostapenko et al. 2024, "Towards Modular LLMs by Building
// and Reusing a Library of LoRAs"; mttl's SVDEmbeddingTransform and
// MBCWithCosSimTransform), exactly:
//   1. each expert flattened into one vector (its LoRA tensors, module by
//      module, lora_A then lora_B: mttl's parameters_to_vector);
//   2. per expert, entries with |v| at or below the θ-quantile of |v| set
//      to 0 (numpy's linear quantile; θ = 0.8);
//   3. a truncated SVD to c = min(components, N − 1) components, rows U·Σ
//      (sklearn's TruncatedSVD.fit_transform), each L2-normalised;
//   4. the cosine-similarity matrix of those rows, clustered by k-means
//      (k-means++ initialisation, n_init restarts, the lowest inertia kept).
// Where we differ: the SVD is exact (the eigen-decomposition of the N×N Gram
// matrix, LAPACK) where mttl runs sklearn's randomized one (5 power
// iterations, converged for a library's few hundred experts); k-means draws
// from our seeded RNG, so labels match sklearn's as partitions, not numbers,
// and only where the clustering is not ambiguous; a cluster that empties
// during Lloyd's iterations keeps its centre (sklearn moves it to a far
// point). Features are compared position by position: the caller passes
// every expert's modules in one order (build-library checks the names).
//
// mttl's recipe silently assumes every expert started from the same lora_A
// (its feature is the raw A and B). Experts trained from independently
// seeded A (tessera's banks, federated clients) are far apart in that space
// whatever they learned; the init-free feature compares what they compute:
// vec(B_e (A_e R)) per module, R [in, m] a shared seeded Gaussian — a random
// sketch of ΔW_e = B_e A_e, independent of how the factors were initialised.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "adapters/merge.h"

namespace tessera::routing {

using ModuleFactors = std::vector<std::pair<std::string, adapters::LoraFactors>>;

// mttl's feature: every module's lora_A then lora_B, flattened, in order.
std::vector<float> lora_feature(const ModuleFactors& modules);
// The init-free feature: per module, s · B (A R) [out, m] flattened, R
// [in, m] ~ N(0, 1/m) drawn from `seed` and the module's name (the same R
// for every expert). Error: m < 1.
std::vector<float> init_free_feature(const ModuleFactors& modules, int64_t m, uint64_t seed);

// Step 2 for one expert: v with every entry whose |v| is at or below
// numpy.quantile(|v|, θ) (linear interpolation) set to 0; `threshold` (may be
// null) receives that quantile.
std::vector<double> sparsify(const std::vector<float>& v, double theta,
                             double* threshold = nullptr);
// Steps 2–3: rows [N, c] for features [N][D] (every row of one length).
// Error: rows of different lengths, no rows, θ outside [0, 1).
std::vector<std::vector<double>> svd_embeddings(const std::vector<std::vector<float>>& features,
                                                double sparsity = 0.8, int64_t components = 64);
// Cosine similarity of every pair of rows [N, N].
std::vector<std::vector<double>> cosine_matrix(const std::vector<std::vector<double>>& rows);

struct KMeans {
  std::vector<int> labels;  // [N], 0..k-1
  double inertia = 0;       // Σ squared distance to the assigned centre
};
// k-means on rows x [N, d]: sklearn's k-means++ (2 + ⌊ln k⌋ local trials per
// centre), Lloyd's iterations to convergence (centre shift <= 1e-4 × the mean
// per-feature variance, at most 300), the best of n_init. Error: k outside
// [1, N].
KMeans kmeans(const std::vector<std::vector<double>>& x, int64_t k, int n_init, uint64_t seed);

struct MbcOptions {
  int64_t k = 10;
  double sparsity = 0.8;  // θ (a double, as numpy takes it)
  int64_t components = 64;
  int n_init = 10;
  uint64_t seed = 42;  // mttl's random_state
};
// Steps 2–4 for features [N][D]: cluster labels [N].
std::vector<int> mbc_clusters(const std::vector<std::vector<float>>& features, const MbcOptions& o);

// Labels renumbered by first appearance (0 for the first row's cluster, ...):
// two labellings of one partition become equal.
std::vector<int> canonical_labels(const std::vector<int>& labels);

}  // namespace tessera::routing
