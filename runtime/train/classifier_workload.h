// The classifier workload: an MLP over Fashion-MNIST under one image task,
// or several at once ("permute:seed=1;rotate:deg=90"): then every sampled
// index yields one row per task, the loss is the sum of the per-task mean
// losses (each task's gradient is exactly its own), and the row-task hook
// learns which task each row belongs to.
#pragma once

#include "runtime/nn/models.h"
#include "runtime/train/workload.h"

namespace tessera::train {

// The MLP a config describes; an unknown activation is an Error naming it.
nn::MlpSpec mlp_spec(const MlpConfig& m);

std::unique_ptr<Workload> make_classifier_workload(const RunConfig& cfg, Rng& rng);

}  // namespace tessera::train
