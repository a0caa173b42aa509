// tessera train-adapter: one adapter on a frozen base, or a bank of LoRA experts for several tasks.
#include "launch/commands.h"
#include "launch/runs.h"
#include "runtime/io/fingerprint.h"

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <memory>

#include "adapters/peft.h"
#include "launch/config.h"
#include "runtime/dist/process_group.h"
#include "runtime/train/trainer.h"
#include "store/library.h"

namespace tessera::launch {

namespace fs = std::filesystem;

int run_train_adapter(const TrainAdapterOptions& o) {
  adapters::AdapterArgs a = adapters::parse_adapter_spec(o.adapter);
  const RunConfig cfg = adapter_run_config(
      o.base, o.tasks, o.out_dir.empty() ? "runs/adapter" : o.out_dir, o.overrides);
  const std::string& task = o.tasks.front();
  std::unique_ptr<dist::ProcessGroup> world = dist::make_process_group();
  if (o.tasks.size() > 1)
    return train_bank(cfg, o.base, a, o.tasks, !o.quiet, o.library, o.name, *world);
  std::unique_ptr<store::LibraryApi> lib;
  if (!o.library.empty() && world->rank() == 0) lib = open_library(o.library, true);
  // (rank 0 writes the files and the library record: only it needs this)
  const std::string fingerprint = world->rank() == 0 ? io::base_fingerprint(o.base) : "";
  AdapterRun r = train_adapter(cfg, o.base, fingerprint, a, !o.quiet, world.get());
  if (world->rank() != 0) return 0;  // rank 0 reports and writes
  std::printf("\n%-10s  %s\n%-10s  %s\n", "base", eval_text(r.before).c_str(), "adapter",
              eval_text(r.after).c_str());
  if (lib)
    std::printf("library %s: %s\n", o.library.where.c_str(),
                put_trained(*lib, r.adapter_file, o.name.empty() ? task : o.name, task, o.base,
                            fingerprint, r.after, cfg, r.centroids)
                    .c_str());
  if (!r.comm.empty()) std::printf("%s\n", r.comm.c_str());
  std::printf("adapter: %s%s%s\n", r.adapter_file.c_str(),
              r.peft_dir.empty() ? "" : "   PEFT folder: ", r.peft_dir.c_str());
  return 0;
}

Command add_train_adapter_command(CLI::App& app) {
  auto o = std::make_shared<TrainAdapterOptions>();
  TrainAdapterOptions& ta = *o;
  auto* c_ta = app.add_subcommand("train-adapter", "Train an adapter on a frozen base model");
  c_ta->add_option("--base", ta.base,
                   "Base model: a tessera checkpoint (.safetensors) or a Hugging Face folder")
      ->required();
  c_ta->add_option(
          "--task", ta.tasks,
          "permute:seed=N | rotate:deg=D | classes:A,B,... (MLP base) or text:GLOB[|GLOB] or "
          "tokens:GLOB[|GLOB] "
          "(decoder base); repeat --task to train one LoRA expert per task together")
      // One value per --task, so key=value overrides after it stay overrides.
      ->allow_extra_args(false);
  c_ta->add_option("--adapter", ta.adapter,
                   "KIND[:key=value,...], KIND lora|dora|vera|ia3|bottleneck; keys r, alpha, "
                   "rslora, dropout, targets=a|b|re:..., placement=houlsby|pfeiffer, act, "
                   "d_init, feedforward, exact_grad")
      ->capture_default_str();
  c_ta->add_option("--out", ta.out_dir, "Run folder (default runs/adapter)");
  c_ta->add_option("--library", ta.library.where,
                   "Also put the trained adapter(s) into this adapter library (a folder, or "
                   "grpc://HOST:PORT for a tessera serve)");
  c_ta->add_option("--token-file", ta.library.token_file,
                   "grpc:// library: file holding the service's bearer token");
  c_ta->add_option("--tls-ca", ta.library.tls_ca,
                   "grpc:// library: PEM roots to trust (turns TLS on)");
  c_ta->add_option("--name", ta.name, "Name in the library (default: the task)");
  c_ta->add_flag("--quiet", ta.quiet, "No progress line");
  c_ta->add_option("overrides", ta.overrides,
                   "key=value config overrides, e.g. epochs=1 optim.lr=3e-3");
  return {c_ta, [o] { return run_train_adapter(*o); }};
}

}  // namespace tessera::launch
