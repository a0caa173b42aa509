// The zero-shot routers beside Arrow (routing/arrow.h) and the telemetry
// every routed run reports. Each returns a TopK for the gather kernel
// (routing/router.h).
#pragma once

#include <cstdint>
#include <vector>

#include "routing/router.h"

namespace tessera::routing {

// Task routing (the oracle): row group m uses expert task[m] alone, weight 1.
// A task id of −1 (no expert for it) leaves the row on the base. Error: an
// id outside [−1, E).
TopK task_route(const std::vector<int32_t>& task, int64_t E);

// Uniform averaging: every row mixes all E experts with weight 1/E.
TopK uniform_route(int64_t M, int64_t E);

// mttl's hidden-state centroid router ("avg_act"): per expert a centroid
// c_e [in] (the L2-normalised mean module input over its task's training
// examples); logits x·c_e / √in for x [N, in]; softmax over all E (top_k =
// 0) or over the top_k largest. Error: centroids not [E, in], top_k > E.
TopK centroid_route(const Tensor& x, const Tensor& centroids, int64_t top_k = 0);

// The running mean of each sequence's rows so far: x [N, in] as N/T
// sequences of T contiguous rows (tokens); row t of a sequence becomes
// mean_{s<=t} x_s — the prompt-so-far embedding ("Token-Level Adaptation of
// LoRA Adapters"), causal, so a token's routing sees no later token. Error:
// T < 1 or T not dividing N.
Tensor prefix_mean(const Tensor& x, int64_t T);

// A TopK (ids [M·k], weights [M, k]) as dense routing vectors [M, E]
// (zeros where a row routes to no expert).
Tensor dense_routes(const TopK& t, int64_t E);

// The k largest entries of each row of dense routing vectors [M, E] (ties:
// the lower expert id first), weights renormalised to sum to 1 over those k
// (a row whose k largest sum to 0: 1/k each). Error: k < 1 or k > E.
TopK top_k_renormalized(const Tensor& routes, int64_t k);

// What a routed run reports per module (and the JSONL / tables carry):
// over the rows whose true task is known (task[m] >= 0), the share whose
// top-weighted expert is the true one (routing accuracy, the primary
// diagnostic) and the mean weight on the true expert; over all rows, each
// expert's share of the routing weight (load) and the mean entropy of the
// row's weights (nats).
struct RoutingStats {
  double accuracy = 0, correct_mass = 0, entropy = 0;
  int64_t rows_with_task = 0;
  std::vector<double> load;  // [E], sums to 1 (zero rows: all 0)
};
RoutingStats routing_stats(const TopK& t, int64_t E, const std::vector<int32_t>& task = {});

}  // namespace tessera::routing
