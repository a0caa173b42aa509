// Data-parallel training and library building across ranks, each next to
// its one-rank baseline in the same invocation:
//
//  - the decoder (GPT-2 style, 3.3M parameters, batch 16 x 128 tokens):
//    full training (13 MB of gradients a step) and LoRA r=8 on all linear
//    layers, at 1 rank (1 and 2 threads) and 2 ranks (Gloo through tessera
//    launch with the gradient buckets reduced during backward and after it;
//    MPI through mpirun): global tokens/s, scaling efficiency against
//    2 x the one-thread rank, and the share of step time spent waiting on
//    communication (from the ranks' metrics.jsonl: comm_wait_s / step_s);
//  - tessera build-library: experts per minute at 1 and 2 ranks (MLP base,
//    LoRA r=8 per permuted-pixel task; from its build.json).
//
// Every row is one JSON line. Runs the tessera binary of this build.
#include <CLI/CLI.hpp>
#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "bench/common.h"

namespace fs = std::filesystem;
using tessera::bench::emit;
using tessera::bench::json;

namespace {

std::string g_tessera;

int sh(const std::string& cmd, std::string* out = nullptr) {
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  if (!p) return -1;
  std::array<char, 4096> buf{};
  std::string o;
  while (size_t n = fread(buf.data(), 1, buf.size(), p)) o.append(buf.data(), n);
  const int st = pclose(p);
  if (out) *out = o;
  if (st != 0) std::fprintf(stderr, "dist_bench: '%s' failed:\n%s\n", cmd.c_str(), o.c_str());
  return st;
}

struct StepFigures {
  double step_s = 0, comm_wait_s = 0;  // mean per step, after warm-up
  int steps = 0;
};

// Mean step time and communication wait over the rows after `skip` steps.
StepFigures read_metrics(const std::string& file, int skip) {
  StepFigures f;
  std::ifstream in(file);
  std::string line;
  while (std::getline(in, line)) {
    json j = json::parse(line, nullptr, false);
    if (!j.is_object() || !j.contains("step") || !j.contains("loss")) continue;
    if (j["step"].get<int>() <= skip) continue;
    const double step = j.contains("step_s") ? j["step_s"].get<double>() : 0.0;
    f.step_s += step;
    f.comm_wait_s += j.contains("comm_wait_s") ? j["comm_wait_s"].get<double>() : 0.0;
    ++f.steps;
  }
  if (f.steps > 0) {
    f.step_s /= f.steps;
    f.comm_wait_s /= f.steps;
  }
  return f;
}

// The decoder, fully trained and with LoRA, at 1 rank and at 2 (see top).
int train_part(const std::string& dir, int steps, int skip) {
  const std::string T = g_tessera;
  // The decoder base: a short pretraining run on prose (its weights are all
  // the LoRA runs need; its quality does not matter here).
  if (sh(T + " pretrain --quiet --model decoder steps=20 out_dir=" + dir + "/base") != 0) return 1;
  const std::string base = dir + "/base/checkpoint.safetensors";
  struct Run {
    std::string name, launcher;
    int ranks, threads;
    bool overlap;
    double bucket_mb;
    bool full_only;  // the bucket sweep (LoRA's gradients fit one small bucket anyway)
  };
  const std::string launch = T + " launch --nproc 2 ";
  const std::string mpirun = "mpirun --allow-run-as-root --oversubscribe -np 2 " + T + " ";
  const std::vector<Run> runs = {
      {"1 rank, 1 thread", T + " ", 1, 1, true, 25, false},
      {"1 rank, 2 threads", T + " ", 1, 2, true, 25, false},
      {"2 ranks gloo, overlap", launch, 2, 1, true, 25, false},
      {"2 ranks gloo, after backward", launch, 2, 1, false, 25, false},
      {"2 ranks mpi, overlap", mpirun, 2, 1, true, 25, false},
      {"2 ranks gloo, overlap", launch, 2, 1, true, 4, true},
      {"2 ranks gloo, after backward", launch, 2, 1, false, 4, true},
      {"2 ranks gloo, overlap", launch, 2, 1, true, 1, true},
      {"2 ranks gloo, after backward", launch, 2, 1, false, 1, true},
  };
  for (const std::string workload : {"full", "lora"}) {
    double one_thread_tps = 0;
    for (size_t i = 0; i < runs.size(); ++i) {
      const Run& r = runs[i];
      if (r.full_only && workload != "full") continue;
      const std::string out = dir + "/" + workload + std::to_string(i);
      char bucket[32];
      std::snprintf(bucket, sizeof bucket, "%g", r.bucket_mb);
      const std::string common =
          " steps=" + std::to_string(steps) +
          " log_every=1 eval_batches=4 threads=" + std::to_string(r.threads) +
          " dist.overlap=" + (r.overlap ? "true" : "false") + " dist.bucket_mb=" + bucket;
      const std::string cmd =
          workload == "full"
              ? r.launcher +
                    "pretrain --quiet --model decoder eval_every=0 checkpoint_every=0 out_dir=" +
                    out + common
              : r.launcher + "train-adapter --quiet --base " + base +
                    " --task 'text:/usr/include/linux/*.h' --adapter lora:r=8 --out " + out +
                    common;
      if (sh(cmd) != 0) return 1;
      const StepFigures f = read_metrics(out + "/metrics.jsonl", skip);
      const double tokens_per_step = 16.0 * 128.0;  // global batch x context
      const double tps = f.step_s > 0 ? tokens_per_step / f.step_s : 0;
      if (i == 0) one_thread_tps = tps;
      json j = {{"bench", "data_parallel"},
                {"workload",
                 workload == "full" ? "decoder full training" : "decoder LoRA r=8 all-linear"},
                {"run", r.name},
                {"ranks", r.ranks},
                {"threads_per_rank", r.threads},
                {"bucket_mb", r.bucket_mb},
                {"steps_measured", f.steps},
                {"step_ms", f.step_s * 1e3},
                {"tokens_per_s", tps}};
      if (r.ranks > 1) {
        j["comm_wait_ms"] = f.comm_wait_s * 1e3;
        j["comm_wait_share"] = f.step_s > 0 ? f.comm_wait_s / f.step_s : 0;
        j["scaling_efficiency_vs_2x_one_thread"] =
            one_thread_tps > 0 ? tps / (2 * one_thread_tps) : 0;
      }
      emit(j);
    }
  }
  return 0;
}

// tessera build-library: experts per minute at 1 and 2 ranks.
int build_part(const std::string& dir, int tasks) {
  const std::string T = g_tessera;
  if (sh(T +
         " pretrain --quiet --model mlp data.limit_train=8192 data.limit_test=1000 epochs=0 "
         "steps=50 out_dir=" +
         dir + "/mlp") != 0)
    return 1;
  double one = 0;
  for (int ranks : {1, 2}) {
    const std::string out = dir + "/build" + std::to_string(ranks);
    const std::string cmd =
        (ranks == 1 ? T + " " : T + " launch --nproc 2 ") + "build-library --base " + dir +
        "/mlp/checkpoint.safetensors --tasks 'permute:seed={1.." + std::to_string(tasks) +
        "}' --adapter lora:r=8 --library " + out + "/lib --out " + out + " epochs=3";
    if (sh(cmd) != 0) return 1;
    std::ifstream in(out + "/build.json");
    json b = json::parse(in);
    const double epm = b["experts_per_minute"].get<double>();
    if (ranks == 1) one = epm;
    emit({{"bench", "build_library"},
          {"ranks", ranks},
          {"experts", b["trained"]},
          {"seconds", b["seconds"]},
          {"experts_per_minute", epm},
          {"speedup_vs_1_rank", one > 0 ? epm / one : 0}});
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"data-parallel training and library building at 1 and 2 ranks"};
  std::string dir = (fs::temp_directory_path() / "tessera_dist_bench").string();
  int steps = 40, skip = 5, tasks = 8;
  std::string only;
  g_tessera = TESSERA_BINARY;
  app.add_option("--dir", dir, "Scratch folder")->capture_default_str();
  app.add_option("--steps", steps, "Training steps per run")->capture_default_str();
  app.add_option("--skip", skip, "Warm-up steps left out of the means")->capture_default_str();
  app.add_option("--tasks", tasks, "build-library tasks")->capture_default_str();
  app.add_option("--tessera", g_tessera, "The tessera binary")->capture_default_str();
  app.add_option("--only", only, "train | build: one part only")
      ->check(CLI::IsMember({"train", "build"}));
  CLI11_PARSE(app, argc, argv);
  fs::remove_all(dir);
  fs::create_directories(dir);
  if (only != "build" && train_part(dir, steps, skip) != 0) return 1;
  if (only != "train" && build_part(dir, tasks) != 0) return 1;
  return 0;
}
