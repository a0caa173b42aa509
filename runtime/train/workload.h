// A workload: a model with its data — what one training run trains and
// evaluates, and what differs between the classifier (classifier_workload.h)
// and the language model (lm_workload.h). The Trainer runs any Workload:
// seeded sampling, the step, optimisation, checkpoints and metrics are its.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "runtime/common/rng.h"
#include "runtime/nn/layers.h"
#include "runtime/nn/parameters.h"
#include "runtime/tensor/tensor.h"
#include "tessera/config.pb.h"

namespace tessera::train {

struct EvalResult {
  double loss = 0.0;
  double accuracy = -1.0;        // classifier
  double bits_per_token = -1.0;  // LM (bits per byte for byte-level text)
  int64_t count = 0;             // examples (classifier) or tokens (LM) evaluated
  std::string summary() const;
};

class Workload {
 public:
  virtual ~Workload() = default;
  virtual const std::string& kind() const = 0;  // "mlp" or "decoder"
  virtual nn::ParameterSet& params() = 0;       // the model's
  virtual std::vector<nn::Linear*> linears() = 0;
  virtual std::vector<nn::Embedding*> embeddings() { return {}; }
  // Training examples (images; windows of T tokens), indexed [0, n).
  virtual int64_t train_examples() const = 0;
  // Units per example for throughput: task rows (classifier) or tokens.
  virtual double units_per_example() const = 0;
  virtual double flops_per_example() const = 0;
  // The training loss (a one-element tensor, recorded on the current tape)
  // of examples `idx` in pass `epoch` over the data.
  virtual Tensor loss(const std::vector<int64_t>& idx, int64_t epoch) = 0;
  // On the held-out split, `batch` examples at a time, at most max_batches
  // (<= 0: all); task < 0: every task (their mean).
  virtual EvalResult evaluate(int64_t batch, int64_t max_batches, int task) = 0;
  virtual int num_tasks() const { return 1; }
  // Rows a Linear sees per example, contiguous in its input: 1 for images,
  // the window length T for a decoder (tokens of one sequence).
  virtual int64_t rows_per_example() const { return 1; }
  // The per-row hook: called before each forward with the task of every row
  // group (one per example) — how a LoRA bank learns which expert serves
  // which row. A workload of one task calls it with task 0 for every row.
  using RowTaskFn = std::function<void(const std::vector<int32_t>& row_task)>;
  virtual void set_row_task_hook(RowTaskFn fn) = 0;
  // Writes the model for other tools (a Hugging Face folder; safetensors).
  virtual void export_model(const std::string& dir) const = 0;
  // Writes the architecture of the model as built into `cfg` (a decoder
  // loaded from decoder.init_from has the folder's sizes, not the config's).
  virtual void record_architecture(RunConfig*) const {}
};

// The workload cfg.model names ("mlp" or "decoder"), its data read and its
// model built (weights initialised from `rng`).
std::unique_ptr<Workload> make_workload(const RunConfig& cfg, Rng& rng);

}  // namespace tessera::train
