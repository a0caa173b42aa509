// The training loop shared by every training command: builds the model and
// data a RunConfig describes, runs seeded steps (forward under a tape,
// backward, clipping, scheduled optimizer step), evaluates, logs metrics, and
// writes checkpoints that resume bit-identically (model, optimizer state,
// step, data position, RNG).
#pragma once

#include <algorithm>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "runtime/nn/layers.h"
#include "runtime/nn/models.h"
#include "runtime/nn/parameters.h"
#include "runtime/train/classifier_workload.h"
#include "runtime/train/lm_workload.h"
#include "runtime/train/workload.h"
#include "tessera/config.pb.h"

namespace tessera::train {

struct StepStats {
  int64_t step = 0;
  float loss = 0.0f, lr = 0.0f, grad_norm = 0.0f;
  double units_per_s = 0.0;  // samples/s (classifier) or tokens/s (LM)
  double mfu = 0.0;          // achieved FLOP/s over the measured sgemm peak
  double seconds = 0.0;      // the whole step
  double comm_wait_s = 0.0;  // data parallel: waited for gradient averaging after backward
  double comm_s = 0.0;       // data parallel: time the reductions took (hidden or not)
  // The extra loss terms (Trainer::add_loss_term), by name, in the order added;
  // `loss` includes them.
  std::vector<std::pair<std::string, float>> terms;
};

class GradReducer;

}  // namespace tessera::train
namespace tessera::dist {
class ProcessGroup;
}
namespace tessera::train {

class Trainer {
 public:
  explicit Trainer(const RunConfig& cfg, int rank = 0, int world = 1);
  ~Trainer();

  const RunConfig& config() const { return cfg_; }
  const std::string& kind() const;  // "mlp" or "decoder"
  nn::ParameterSet& params();
  int64_t step() const { return step_; }
  int64_t total_steps() const { return total_steps_; }
  const char* unit() const;  // "samples" or "tok"

  // Puts adapters on the model before training: `fn` fills Linear slots,
  // freezes what it wants and returns the parameters to train. The optimizer
  // is rebuilt over them, and checkpoints then hold only them (the base comes
  // from the checkpoint it was loaded from). runtime/ knows no adapter kind.
  using AttachFn =
      std::function<nn::ParameterSet*(std::vector<nn::Linear*> linears, nn::ParameterSet& base)>;
  void attach(const AttachFn& fn);
  nn::ParameterSet& trained() { return *trained_; }
  // The model's embeddings (empty for the classifier), for an AttachFn that
  // also adapts them.
  std::vector<nn::Embedding*> embeddings();
  // The model's Linear layers (their adapter slots), in model order.
  std::vector<nn::Linear*> linears();

  // An extra term of the training loss, from an attached adapter or router
  // (a load-balancing loss, say): `term()` runs under the step's tape after
  // the workload's loss and returns a one-element tensor, which is added to
  // the loss (its gradient flows like the loss's). Its value is reported per
  // step (StepStats::terms, metrics.jsonl "term/<name>"); a non-finite value
  // stops training naming the term. Terms are evaluated in the order added.
  using LossTermFn = std::function<Tensor()>;
  void add_loss_term(const std::string& name, LossTermFn term);
  void clear_loss_terms();
  // Called after every optimizer step, in the order added (a router's
  // bookkeeping between steps: the auxiliary-loss-free balancing bias).
  void add_step_hook(std::function<void()> hook);
  void clear_step_hooks();
  // Trains on these training examples only (each in [0, n) of the
  // workload's training set, no repeats) — a federated client's partition,
  // say. The sampler restarts over them (an epoch is a pass over the subset)
  // and, when the run is measured in epochs, total_steps() follows. Before
  // the first step only; an Error names a bad index or a subset smaller than
  // one global batch. Checkpoints record the subset (size and hash):
  // load_checkpoint refuses one written on another subset, so call this
  // first when resuming.
  void set_train_subset(std::vector<int64_t> examples);

  // The model's forward on training examples `idx` (each in [0,
  // train_examples())), no tape and no step; returns the loss. What a
  // recorder in the model's slots sees (routing/centroids.h).
  double forward_train(const std::vector<int64_t>& idx);
  int64_t train_examples() const;
  // One optimisation step; returns its statistics (loss, lr, gradient norm,
  // throughput, loss terms, communication time).
  StepStats train_step();
  // Trains until total_steps() (or at most max_steps more when > 0), with a
  // progress line when `progress`, metrics rows every log_every steps, and
  // checkpoints every checkpoint_every steps into out_dir. Returns the losses.
  std::vector<float> run(int64_t max_steps = 0, bool progress = false);
  // On the test split; with several tasks (data.task "a;b;..."), task >= 0
  // evaluates one of them and task < 0 their mean.
  EvalResult evaluate(int64_t max_batches = -1, int task = -1);
  int num_tasks() const;
  // Rows each Linear sees per example (1 for the MLP; the sequence length T
  // for a decoder, its tokens contiguous).
  int64_t rows_per_example() const;
  // The per-row hook (Workload::set_row_task_hook): called with the task of
  // every row group before each forward, training and evaluation — how a
  // LoRA bank learns which expert serves which row.
  void set_row_task_hook(Workload::RowTaskFn fn);
  // Data parallel: `group` (not owned) is the world this trainer is rank
  // rank() of. Trainable gradients are averaged over it in buckets of
  // dist.bucket_mb (GradReducer: during backward unless dist.overlap is
  // false), and the logged loss is the mean over ranks, so N ranks with
  // global batch B follow one rank with batch B up to float summation order.
  void set_process_group(dist::ProcessGroup* group);
  // Data parallel, over run(): the share of step time spent waiting after
  // backward (for the reductions, the loss average, and slower ranks), and
  // the share of the reductions' own time that did not show as waiting.
  double comm_wait_share() const { return step_s_ > 0 ? comm_wait_s_ / step_s_ : 0.0; }
  double comm_hidden_share() const {
    return comm_s_ > 0 ? std::max(0.0, 1.0 - comm_wait_s_ / comm_s_) : 0.0;
  }

  void save_checkpoint(const std::string& path) const;
  // Restores a checkpoint; with weights_only the optimizer, step and data
  // position start fresh.
  void load_checkpoint(const std::string& path, bool weights_only = false);
  // Writes the model for other tools: a Hugging Face folder for the decoder,
  // model.safetensors for the classifier.
  void export_model(const std::string& dir) const;
  double mean_units_per_s() const { return units_per_s_; }
  // Training FLOPs of one sample (classifier) or one token (LM).
  double train_flops_per_unit() const;
  // The sgemm rate MFU is measured against (GFLOP/s); measured on first use.
  double peak_gflops();

 private:
  RunConfig cfg_;
  int rank_, world_;
  dist::ProcessGroup* group_ = nullptr;
  std::unique_ptr<GradReducer> reducer_;  // built at the first step after attach()
  double step_s_ = 0, comm_wait_s_ = 0, comm_s_ = 0;
  std::unique_ptr<Workload> task_;
  nn::ParameterSet* trained_ = nullptr;
  void build_optimizer();
  void plan_steps(int64_t examples);
  std::string subset_id() const;  // "" for every example; else its size and hash
  int64_t step_ = 0, total_steps_ = 0;
  double units_per_s_ = 0.0;
  double peak_gflops_ = 0.0;
  struct State;
  std::unique_ptr<State> st_;
};

// The model a config describes — no data, no optimizer — for commands that
// only read or check a base (import-peft): random weights, or the
// decoder.init_from folder's; load_weights then reads a checkpoint's model
// tensors (by name and shape, every one required).
class Model {
 public:
  explicit Model(const RunConfig& cfg);
  ~Model();
  void load_weights(const std::string& checkpoint);
  std::vector<nn::Linear*> linears();
  std::vector<nn::Embedding*> embeddings();
  nn::ParameterSet& params();

 private:
  std::unique_ptr<nn::MlpClassifier> mlp_;
  std::unique_ptr<nn::Decoder> decoder_;
};

// The schedule an adapter trains on over a frozen base, written into `cfg`
// (its model chosen): the MLP 3 epochs at lr 3e-3, the decoder 200 steps at
// lr 2e-3 — a LoRA wants a larger step than full training. The one place
// these defaults live (train-adapter, build-library, the demo); a user's
// overrides are applied after.
void set_adapter_schedule(RunConfig* cfg);

// The config stored in a checkpoint (text format in its metadata).
RunConfig read_checkpoint_config(const std::string& path);

}  // namespace tessera::train
