// tessera pretrain: a model trained from a config (checkpoint, exported model, summary).
#include "launch/commands.h"
#include "launch/runs.h"

#include <cstdio>
#include <filesystem>

#include "launch/config.h"
#include "runtime/train/trainer.h"

namespace tessera::launch {

namespace fs = std::filesystem;

int run_pretrain(const PretrainOptions& o) {
  PretrainConfig cfg = resolve_config(o.config, o.overrides, o.model);
  RunSummary s = train_and_save(cfg, o.resume, o.max_steps, !o.quiet);
  if (!s.checkpoint.empty())  // rank 0 (the others return an empty summary)
    std::printf("%s: %ld steps, %s, checkpoint %s\n", s.model.c_str(), static_cast<long>(s.steps),
                s.eval.c_str(), s.checkpoint.c_str());
  if (!s.comm.empty()) std::printf("%s\n", s.comm.c_str());
  return 0;
}

}  // namespace tessera::launch
