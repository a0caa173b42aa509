// The CLI subcommands, callable from tests as functions.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace tessera::launch {

struct DemoOptions {
  std::string out_dir = "runs/demo";
  bool quick = false;
  int threads = 0;
  std::string data_dir = "/usr/share/datasets/fashion-mnist";
};
struct PretrainOptions {
  std::string config, model, resume;
  int64_t max_steps = 0;
  bool quiet = false;
  std::vector<std::string> overrides;
};
struct EvalOptions {
  std::string checkpoint;
  int64_t max_batches = 0;
  std::vector<std::string> overrides;
};

struct TrainAdapterOptions {
  std::string base;  // base checkpoint
  std::string task;  // permute:seed=N | rotate:deg=D | classes:A,B | text:GLOB[|GLOB]
  std::string adapter = "lora:r=8,alpha=16,targets=all-linear";
  std::string out_dir;  // default runs/adapter
  bool quiet = false;
  std::vector<std::string> overrides;
};

int run_demo(const DemoOptions& o);
int run_train_adapter(const TrainAdapterOptions& o);
int run_pretrain(const PretrainOptions& o);
int run_eval(const EvalOptions& o);

}  // namespace tessera::launch
