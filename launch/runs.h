// What several commands share: the text of results, a pretraining run
// (train_and_save), an adapter run on a frozen base (adapter_config,
// train_adapter, train_bank) and the library record of a trained adapter.
// Each command lives in its own file (pretrain_cmd.cc, eval_cmd.cc,
// train_adapter_cmd.cc, build_library_cmd.cc, merge_cmd.cc, peft_cmd.cc,
// demo_cmd.cc, library_cmd.cc, launch_cmd.cc).
#pragma once

#include <string>
#include <vector>

#include "launch/commands.h"
#include "launch/config.h"
#include "runtime/train/trainer.h"
#include "tessera/library.pb.h"

namespace tessera::dist {
class ProcessGroup;
}
namespace tessera::store {
class LibraryApi;
}

namespace tessera::launch {

// "a;b;;c" → {"a", "b", "c"}: a task list as --eval, --task and data.task write it.
std::vector<std::string> split_tasks(const std::string& joined);
// The tasks of a workload built from `cfg`, in its task-id order: the
// classifier's data.task list, or `given` (a decoder trains on one task,
// which data.task does not hold).
std::vector<std::string> workload_tasks(const RunConfig& cfg,
                                        const std::vector<std::string>& given);

// "3.26M", "27.4K", "512".
std::string human_count(int64_t n);
// "accuracy 85.20% (loss 0.4, 10000 examples)" or "loss 1.23, 1.78 bits/token (N tokens)".
std::string eval_text(const train::EvalResult& e);
// "85.20%" for a classifier, "loss 1.2345" for a language model.
std::string short_eval(const train::EvalResult& e);
// Warns when explicit threads × local ranks exceed the machine's cores: the
// ranks' OpenMP and BLAS threads spin against each other (measured 5x slower).
void warn_if_oversubscribed(const RunConfig& cfg);
// "gradient averaging over 2 ranks: 4.1% of step time waited, 62% of it
// hidden behind backward"; "" on one rank.
std::string comm_text(const train::Trainer& t, int ranks);

struct RunSummary {
  std::string model, params, eval, throughput, checkpoint;
  std::string comm;  // several ranks: the share of step time waiting on gradients
  int64_t steps = 0;
  double seconds = 0;
};
// Trains `cfg` over the world the environment names (rank 0 writes the
// checkpoint and the exported model); rank 0 returns the summary, the others
// an empty one.
RunSummary train_and_save(const RunConfig& cfg, const std::string& resume, int64_t max_steps,
                          bool progress);

// (name, vector) routing signatures of an expert.
using Signatures = std::vector<std::pair<std::string, std::vector<float>>>;

// Hidden-state centroids of the base for mttl's avg_act router
// (routing/centroids.h; mttl's use_base_model_only=True): the task's first
// training examples, in order, through the base model (no adapter attached
// to `t` yet) until every Linear has seen `max_rows` rows (examples for the
// classifier, tokens for the decoder); ("centroid/<module>", vector) for
// each module in `modules` (all when empty).
Signatures base_centroids(train::Trainer& t, int64_t max_rows,
                          const std::vector<std::string>& modules = {});
// How many rows the centroids of a trained expert average (mttl records up
// to a few thousand hidden states per task).
constexpr int64_t kCentroidRows = 2048;

struct AdapterRun {
  train::EvalResult before, after;
  Signatures centroids;  // the base's centroids on the task, per adapted module
  size_t modules = 0;
  int64_t trainable = 0;
  double units_per_s = 0;
  std::string comm;  // several ranks: how much of a step waited on gradients
  std::string adapter_file, peft_dir;
};
// Loads the base weights, evaluates the base on the task, attaches the
// adapter to the targets (base frozen), trains, evaluates, and writes under
// cfg.out_dir the trainer checkpoint, tessera's adapter file
// (adapter.safetensors) and, for LoRA and DoRA, the PEFT folder (adapter/).
// `fingerprint` is the base's, computed once by the caller. With `world`
// (several ranks) data parallel, rank 0 writing the files; the other ranks
// return a run without files.
AdapterRun train_adapter(const RunConfig& cfg, const std::string& base_ckpt,
                         const std::string& fingerprint, const adapters::AdapterArgs& a,
                         bool progress, dist::ProcessGroup* world = nullptr);
// The library record of a trained adapter: task, base, test score,
// provenance, and `signatures` recorded while training (its centroids).
AdapterRecord trained_record(const std::string& name, const std::string& task,
                             const std::string& base_ckpt, const std::string& fingerprint,
                             const train::EvalResult& after, const RunConfig& cfg,
                             const Signatures& signatures = {});
// Puts a trained adapter file into `library`; returns "name@version id".
std::string put_trained(store::LibraryApi& library, const std::string& file,
                        const std::string& name, const std::string& task,
                        const std::string& base_ckpt, const std::string& fingerprint,
                        const train::EvalResult& after, const RunConfig& cfg,
                        const Signatures& signatures = {});
// Several tasks at once on the MLP base: one LoRA expert per task in a bank,
// every batch holding rows of each task routed to its expert, one pass over
// the frozen base. Writes one adapter file (and PEFT folder) per task.
int train_bank(const RunConfig& cfg, const std::string& base_ckpt, const adapters::AdapterArgs& a,
               const std::vector<std::string>& tasks, bool progress, const LibraryTarget& library,
               const std::string& name, dist::ProcessGroup& world);
// The training config of an adapter on `base_path` (a tessera checkpoint or
// a Hugging Face folder) for `tasks` (one, or several for a bank on the MLP
// base): the base's config with the task's data, a schedule for adapters,
// and the user's overrides; validated.
RunConfig adapter_run_config(const std::string& base_path, const std::vector<std::string>& tasks,
                             const std::string& out_dir, const std::vector<std::string>& overrides);

}  // namespace tessera::launch
