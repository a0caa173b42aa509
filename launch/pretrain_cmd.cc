// tessera pretrain: a model trained from a config (checkpoint, exported model, summary).
#include "launch/commands.h"
#include "launch/runs.h"

#include <CLI/CLI.hpp>
#include <cstdio>
#include <filesystem>
#include <memory>

#include "launch/config.h"
#include "runtime/train/trainer.h"

namespace tessera::launch {

namespace fs = std::filesystem;

int run_pretrain(const PretrainOptions& o) {
  RunConfig cfg = resolve_config(o.config, o.overrides, o.model);
  RunSummary s = train_and_save(cfg, o.resume, o.max_steps, !o.quiet);
  if (!s.checkpoint.empty())  // rank 0 (the others return an empty summary)
    std::printf("%s: %ld steps, %s, checkpoint %s\n", s.model.c_str(), static_cast<long>(s.steps),
                s.eval.c_str(), s.checkpoint.c_str());
  if (!s.comm.empty()) std::printf("%s\n", s.comm.c_str());
  return 0;
}

Command add_pretrain_command(CLI::App& app) {
  auto o = std::make_shared<PretrainOptions>();
  PretrainOptions& pre = *o;
  auto* c_pre =
      app.add_subcommand("pretrain", "Train a base model from a config (protobuf text format)");
  c_pre->add_option("--config", pre.config, "Config file (.pbtxt); see configs/");
  c_pre->add_option("--model", pre.model, "mlp or decoder, when no config file names it");
  c_pre->add_option("--resume", pre.resume, "Checkpoint to resume from");
  c_pre->add_option("--max-steps", pre.max_steps,
                    "Stop after this many steps of this invocation (0: run to the end)");
  c_pre->add_flag("--quiet", pre.quiet, "No progress line");
  c_pre->add_option("overrides", pre.overrides, "key=value config overrides, e.g. optim.lr=3e-4");
  return {c_pre, [o] { return run_pretrain(*o); }};
}

}  // namespace tessera::launch
