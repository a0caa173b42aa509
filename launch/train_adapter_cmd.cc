// tessera train-adapter: one adapter on a frozen base, or a bank of LoRA experts for several tasks.
#include "launch/commands.h"
#include "launch/runs.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>

#include "adapters/peft.h"
#include "launch/config.h"
#include "runtime/dist/process_group.h"
#include "runtime/train/trainer.h"
#include "store/library.h"

namespace tessera::launch {

namespace fs = std::filesystem;

int run_train_adapter(const TrainAdapterOptions& o) {
  AdapterArgs a = parse_adapter_spec(o.adapter);
  const PretrainConfig cfg =
      adapter_config(o.base, o.tasks, o.out_dir.empty() ? "runs/adapter" : o.out_dir, o.overrides);
  const std::string& task = o.tasks.front();
  std::unique_ptr<dist::ProcessGroup> world = dist::make_process_group();
  if (o.tasks.size() > 1)
    return train_bank(cfg, o.base, a, o.tasks, !o.quiet, o.library, o.name, *world);
  std::unique_ptr<store::LibraryApi> lib;
  if (!o.library.empty() && world->rank() == 0) lib = open_library(o.library, true);
  // (rank 0 writes the files and the library record: only it needs this)
  const std::string fingerprint = world->rank() == 0 ? base_fingerprint(o.base) : "";
  AdapterRun r = train_adapter(cfg, o.base, fingerprint, a, !o.quiet, world.get());
  if (world->rank() != 0) return 0;  // rank 0 reports and writes
  std::printf("\n%-10s  %s\n%-10s  %s\n", "base", eval_text(r.before).c_str(), "adapter",
              eval_text(r.after).c_str());
  if (lib)
    std::printf("library %s: %s\n", o.library.where.c_str(),
                put_trained(*lib, r.adapter_file, o.name.empty() ? task : o.name, task, o.base,
                            fingerprint, r.after, cfg)
                    .c_str());
  if (!r.comm.empty()) std::printf("%s\n", r.comm.c_str());
  std::printf("adapter: %s%s%s\n", r.adapter_file.c_str(),
              r.peft_dir.empty() ? "" : "   PEFT folder: ", r.peft_dir.c_str());
  return 0;
}

}  // namespace tessera::launch
