// Routing on images (issue 13): ten Fashion-MNIST tasks over one frozen MLP
// base — five pixel permutations, three rotations, two class subsets — one
// LoRA r=8 expert each (build-library), then a mixed test stream with no
// task ids. Printed as JSON lines, all in this one run:
//   - route: base, task oracle, Arrow top-1/top-2 in both combine modes,
//     hidden-state centroids (top-1, all), uniform — per task accuracy,
//     per module routing accuracy; plus rotate:deg=45, which no expert saw;
//   - learned: a MoLE gate (top-2) over the ten frozen experts and Poly
//     (train-router), the best single merged adapter (TIES, LoRA-LEGO);
//   - capacity: MixLoRA 10 experts × r4 against one LoRA r40 (a MixLoRA of
//     one expert: the same code path) trained on the ten tasks mixed, 3 seeds.
// Goals (the issue's): centroid routing accuracy >= 95% on the permutations;
// Arrow within 2 points of the oracle wherever its routing accuracy >= 90%;
// MoLE-style 10×r4 above one r40 on the mixed data.
//
//   route_bench [--out DIR] [--quick] [--threads N]
#include <CLI/CLI.hpp>
#include <filesystem>
#include <memory>

#include "adapters/lora.h"
#include "bench/common.h"
#include "launch/base.h"
#include "launch/commands.h"
#include "launch/runs.h"
#include "runtime/common/error.h"
#include "runtime/train/trainer.h"
#include "store/library.h"
#include "tessera/library.pb.h"

using namespace tessera;
using namespace tessera::launch;
using bench::emit;
using bench::joined;
using bench::json;
using bench::Quiet;
using bench::seconds_since;
const std::vector<std::string>& kTasks = bench::ten_image_tasks();
namespace fs = std::filesystem;

namespace {

// Accuracy of an adapter file on each task.
std::vector<double> eval_adapter(const std::string& base, const std::string& file,
                                 const std::vector<std::string>& tasks,
                                 const std::vector<std::string>& overrides) {
  std::vector<double> out;
  for (const std::string& task : tasks) {
    const RunConfig cfg = adapter_run_config(base, {task}, "", overrides);
    train::Trainer t(cfg);
    load_base_weights(t, base);
    std::unique_ptr<adapters::AdapterSet> set;
    t.attach([&](std::vector<nn::Linear*> linears, nn::ParameterSet& ps) {
      set = adapters::load_adapter(file, linears, ps);
      return &set->params();
    });
    out.push_back(t.evaluate().accuracy);
  }
  return out;
}

// A router's per-task scores as train-router stored them.
std::vector<double> router_scores(const LibraryTarget& lib, const std::string& key) {
  auto l = open_library(lib, false, true);
  AdapterRecord rec;
  check_store(l->Get(key, &rec), key);
  std::vector<double> s;
  for (const Score& sc : rec.scores()) s.push_back(sc.value());
  return s;
}

double mean(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x / static_cast<double>(v.size());
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Routing a library of ten Fashion-MNIST experts"};
  std::string out = "/tmp/route_bench";
  bool quick = false;
  int threads = 0;
  app.add_option("--out", out, "Work folder (wiped)");
  app.add_flag("--quick", quick, "Fewer steps (a smoke run, not the figures)");
  app.add_option("--threads", threads, "Threads (0: the cores)");
  CLI11_PARSE(app, argc, argv);
  try {
    fs::remove_all(out);
    const std::string th = "threads=" + std::to_string(threads);
    const auto t0 = std::chrono::steady_clock::now();
    PretrainOptions p;
    p.model = "mlp";
    p.quiet = true;
    p.overrides = {quick ? "epochs=1" : "epochs=5", th, "out_dir=" + out + "/base"};
    if (quick) p.overrides.push_back("data.limit_train=8192");
    {
      Quiet q;
      run_pretrain(p);
    }
    const std::string base = out + "/base/checkpoint.safetensors";
    emit({{"phase", "pretrain"}, {"seconds", seconds_since(t0)}});

    const auto t1 = std::chrono::steady_clock::now();
    BuildLibraryOptions b;
    b.base = base;
    b.tasks = {joined(kTasks)};
    b.library.where = out + "/lib";
    b.out_dir = out + "/experts";
    b.overrides = {quick ? "epochs=0.2" : "epochs=1", th};
    {
      Quiet q;
      run_build_library(b);
    }
    emit({{"phase", "build-library"}, {"experts", kTasks.size()}, {"seconds", seconds_since(t1)}});

    // Routed zero-shot, no task ids, plus a rotation no expert saw.
    std::vector<std::string> eval_tasks = kTasks;
    eval_tasks.push_back("rotate:deg=45");
    RouteOptions ro;
    ro.base = base;
    ro.library = b.library;
    ro.eval = joined(eval_tasks);
    ro.routers = {"base",
                  "task",
                  "arrow:top_k=1",
                  "arrow:top_k=2",
                  "arrow:top_k=1,mode=merge-before",
                  "arrow:top_k=2,mode=merge-before",
                  "centroid:top_k=1",
                  "centroid",
                  "uniform"};
    ro.overrides = {th};
    const auto t2 = std::chrono::steady_clock::now();
    RouteResult r;
    {
      Quiet q;
      r = run_route(ro);
    }
    const double route_s = seconds_since(t2);
    const RouteResult::Row& oracle = r.rows[1];
    for (const auto& row : r.rows) {
      json j = {{"bench", "route_images"},
                {"router", row.router},
                {"mean", row.mean},
                {"routing_accuracy", row.routing_acc},
                {"correct_mass", row.correct_mass},
                {"entropy", row.entropy},
                {"module_routing_accuracy", row.module_acc}};
      for (size_t t = 0; t < r.tasks.size(); ++t) j["task"][r.tasks[t]] = row.score[t];
      // Gap to the oracle on the tasks with an expert.
      std::vector<double> gap;
      for (size_t t = 0; t < kTasks.size(); ++t) gap.push_back(oracle.score[t] - row.score[t]);
      j["gap_to_oracle_mean"] = mean(gap);
      emit(j);
    }
    // On the permutation tasks: routing accuracy per module (the goal: >= 95%
    // for centroids) and the weight share on the true expert.
    for (const auto& row : r.rows) {
      if (row.router.rfind("centroid", 0) != 0 && row.router.rfind("arrow", 0) != 0) continue;
      std::vector<double> perm, acc(r.modules.size(), 0.0);
      for (size_t t = 0; t < 5; ++t) {
        perm.push_back(row.usage[t][r.task_expert[t]]);
        for (size_t m = 0; m < r.modules.size(); ++m) acc[m] += row.task_module_acc[t][m] / 5;
      }
      emit({{"bench", "route_images"},
            {"router", row.router},
            {"permutations_weight_on_true_expert", mean(perm)},
            {"permutations_routing_accuracy_per_module", acc}});
    }
    emit({{"phase", "route"},
          {"seconds", route_s},
          {"routers", ro.routers.size()},
          {"tasks", eval_tasks.size()}});

    // Learned routers over the ten experts.
    const std::string steps = quick ? "steps=100" : "steps=1500";
    for (const std::string spec : {"mole:top_k=2", "poly:skills=10,splits=4,r=8"}) {
      const auto t3 = std::chrono::steady_clock::now();
      TrainRouterOptions tr;
      tr.base = base;
      tr.library = b.library;
      tr.router = spec;
      tr.tasks = {joined(kTasks)};
      tr.name = spec.substr(0, spec.find(':'));
      tr.quiet = true;
      // Poly trains a mixed adapter per example (PEFT's per-example
      // RelaxedBernoulli sample), which this build does with per-example
      // gathers: 5x fewer steps than the gate so the bench stays minutes.
      const bool poly = spec.rfind("poly", 0) == 0;
      tr.overrides = {"epochs=0", poly ? (quick ? "steps=20" : "steps=300") : steps, th,
                      "optim.lr=3e-3"};
      {
        Quiet q;
        run_train_router(tr);
      }
      const std::vector<double> s = router_scores(b.library, tr.name + "@latest");
      json j = {{"bench", "route_images"},
                {"router", spec},
                {"mean", mean(s)},
                {"steps", tr.overrides[1]},
                {"seconds", seconds_since(t3)}};
      for (size_t t = 0; t < kTasks.size(); ++t) j["task"][kTasks[t]] = s[t];
      emit(j);
    }
    std::vector<std::string> files;
    for (size_t k = 0; k < kTasks.size(); ++k)
      files.push_back(out + "/experts/" + std::to_string(k) + "/adapter.safetensors");
    // The rotation no expert saw: each expert alone on it (the best single
    // expert, beside the base and the zero-shot routers above).
    {
      json j = {{"bench", "route_unseen"}, {"task", "rotate:deg=45"}};
      double best = 0;
      for (size_t k = 0; k < files.size(); ++k) {
        std::vector<double> s;
        {
          Quiet q;
          s = eval_adapter(base, files[k], {"rotate:deg=45"}, {th});
        }
        j["expert"][kTasks[k]] = s[0];
        best = std::max(best, s[0]);
      }
      j["best_single_expert"] = best;
      emit(j);
    }
    // One merged adapter for every task.
    for (const std::string method : {"ties:density=0.2", "lego", "linear"}) {
      MergeOptions mo;
      mo.method = method;
      mo.inputs = files;
      mo.out = out + "/merged_" + method.substr(0, method.find(':')) + ".safetensors";
      if (method == "linear") mo.weights = std::vector<float>(files.size(), 0.1f);
      {
        Quiet q;
        run_merge(mo);
      }
      std::vector<double> s;
      {
        Quiet q;
        s = eval_adapter(base, mo.out, kTasks, {th});
      }
      json j = {{"bench", "route_images"}, {"merged", method}, {"mean", mean(s)}};
      for (size_t t = 0; t < kTasks.size(); ++t) j["task"][kTasks[t]] = s[t];
      emit(j);
    }
    // Capacity at equal parameters: 10 gated experts of r4 vs one r40.
    for (int seed : {1, 2, 3})
      for (const std::string spec :
           {"mixlora:experts=10,r=4,alpha=8,top_k=2", "mixlora:experts=1,r=40,alpha=80,top_k=1"}) {
        const auto t4 = std::chrono::steady_clock::now();
        TrainRouterOptions tr;
        tr.base = base;
        tr.library = b.library;
        tr.router = spec;
        tr.tasks = {joined(kTasks)};
        tr.name = "cap_" + std::to_string(seed);
        tr.quiet = true;
        tr.overrides = {"epochs=0", steps, th, "optim.lr=3e-3", "seed=" + std::to_string(seed)};
        {
          Quiet q;
          run_train_router(tr);
        }
        const std::vector<double> s = router_scores(b.library, tr.name + "@latest");
        emit({{"bench", "route_capacity"},
              {"router", spec},
              {"seed", seed},
              {"mean", mean(s)},
              {"seconds", seconds_since(t4)}});
      }
    emit({{"phase", "total"}, {"seconds", seconds_since(t0)}});
  } catch (const Error& e) {
    std::fprintf(stderr, "route_bench: %s\n", e.what());
    return 2;
  }
  return 0;
}
