// Training speed of learned routers (issue 13), JSON lines, all in this run:
//   - Poly and MHR-z on tessera's MLP (784-512-512-10, Poly on both hidden
//     Linears: r 8, skills 8, splits 4, ten Fashion-MNIST tasks, 130 rows a
//     step: 13 examples under each of the ten tasks):
//     training samples/s next to PEFT's PolyModel on the same shapes
//     (bench/peers/peft_poly_mlp.py, at its best thread setting). Goal >= 2x.
//   - A top-2 of 16 learned gate (MixLoRA: 16 LoRA r=8 experts per Linear,
//     Mixtral convention, load-balancing loss) against a single LoRA r=8 on
//     the same Linears of the tiny GPT-2 decoder (4 layers, d 256, ctx 128,
//     batch 16, English prose): training tokens/s, the three trainers timed
//     in turn over 3 rounds (the ratio: the median of the rounds'). Goal >= 0.7x.
//
//   router_speed_bench [--threads 2] [--steps 30] [--peer-python venv/bin/python] [--no-peer]
#include <algorithm>
#include <chrono>
#include <memory>

#include <CLI/CLI.hpp>

#include "adapters/lora.h"
#include "bench/common.h"
#include "launch/config.h"
#include "routing/trained.h"
#include "runtime/train/trainer.h"

using namespace tessera;
using bench::seconds_since;

namespace {

// Steps/s of `t` after `warmup` steps, over `steps`.
double steps_per_s(train::Trainer& t, int warmup, int steps) {
  t.run(warmup);
  const auto t0 = std::chrono::steady_clock::now();
  t.run(steps);
  return steps / seconds_since(t0);
}

RunConfig config(const std::string& model, const std::vector<std::string>& extra, int threads,
                 int total_steps) {
  std::vector<std::string> ov = {"threads=" + std::to_string(threads),
                                 "out_dir=",
                                 "steps=" + std::to_string(total_steps),
                                 "epochs=0",
                                 "eval_every=0",
                                 "checkpoint_every=0",
                                 "optim.warmup_steps=0",
                                 "optim.lr=3e-3"};
  ov.insert(ov.end(), extra.begin(), extra.end());
  return launch::resolve_config("", ov, model);
}

// A trained router of `spec` on every Linear `targets` selects.
struct Routed {
  nn::ParameterSet params;
  std::unique_ptr<routing::TrainedRouter> router;
};
std::unique_ptr<Routed> attach_router(train::Trainer& t, const std::string& spec,
                                      const std::vector<std::string>& tasks, bool mhr_z,
                                      uint64_t seed) {
  auto r = std::make_unique<Routed>();
  RouterConfig c = routing::parse_router_config(spec);
  for (const std::string& m : adapters::select_modules(t.linears(), {"all-linear"}))
    c.add_modules(m);
  for (const std::string& task : tasks) c.add_tasks(task);
  t.attach([&](std::vector<nn::Linear*> linears, nn::ParameterSet& ps) {
    ps.set_trainable("*", false);
    r->router = std::make_unique<routing::TrainedRouter>(
        c, linears, std::map<std::string, std::vector<adapters::LoraFactors>>{}, r->params, seed);
    if (mhr_z) routing::PolyModel::freeze_skills(r->params);
    return &r->params;
  });
  r->router->add_to(t, r->params);
  Routed* raw = r.get();
  t.set_row_task_hook([raw](const std::vector<int32_t>& rows) { raw->router->set_tasks(rows); });
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Training speed of Poly/MHR against PEFT, and of a top-2 of 16 gate against LoRA"};
  std::string python = "python3";
  int threads = 2, steps = 30, warmup = 3;
  bool no_peer = false;
  app.add_option("--threads", threads)->capture_default_str();
  app.add_option("--steps", steps, "Timed steps")->capture_default_str();
  app.add_option("--warmup", warmup)->capture_default_str();
  app.add_option("--peer-python", python)->capture_default_str();
  app.add_flag("--no-peer", no_peer);
  std::string part = "all";
  app.add_option("--part", part, "poly, gate or all")
      ->check(CLI::IsMember({"poly", "gate", "all"}))
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  try {
    // Poly / MHR-z on the MLP.
    const std::vector<std::string>& tasks = bench::ten_image_tasks();
    const std::string joined = bench::joined(tasks);
    // A multi-task batch holds every sampled index once per task: 13 indices
    // × 10 tasks = 130 rows a step, and PEFT's batch is 130 rows too.
    const int batch = 13;
    const int rows = batch * static_cast<int>(tasks.size());
    std::map<std::string, double> ours;
    for (const bool mhr_z : {false, true}) {
      if (part == "gate") break;
      train::Trainer t(config(
          "mlp",
          {"data.task=" + joined, "batch_size=" + std::to_string(batch), "data.limit_train=16384"},
          threads, 2 * (warmup + steps)));
      auto r = attach_router(t, "poly:skills=8,splits=4,r=8", tasks, mhr_z, 1);
      const double sps = steps_per_s(t, warmup, steps) * rows;
      ours[mhr_z ? "mhr-z" : "poly"] = sps;
      bench::emit({{"bench", "router_speed"},
                   {"impl", "tessera"},
                   {"router", mhr_z ? "mhr-z" : "poly"},
                   {"model", "mlp 784-512-512-10"},
                   {"trainable", r->params.count(true)},
                   {"samples_per_s", sps},
                   {"threads", threads}});
    }
    if (part != "gate") {
      // A single LoRA r=8 on the same Linears and data: the floor.
      train::Trainer t(config(
          "mlp",
          {"data.task=" + joined, "batch_size=" + std::to_string(batch), "data.limit_train=16384"},
          threads, 2 * (warmup + steps)));
      std::unique_ptr<adapters::AdapterSet> set;
      t.attach([&](std::vector<nn::Linear*> linears, nn::ParameterSet& ps) {
        set = std::make_unique<adapters::AdapterSet>(linears, ps,
                                                     std::vector<std::string>{"all-linear"},
                                                     adapters::LoraConfig{8, 16.0f, false}, 1);
        return &set->params();
      });
      bench::emit({{"bench", "router_speed"},
                   {"impl", "tessera"},
                   {"router", "lora r=8"},
                   {"model", "mlp 784-512-512-10"},
                   {"samples_per_s", steps_per_s(t, warmup, steps) * rows},
                   {"threads", threads}});
    }
    if (part == "gate") {
    } else if (!no_peer && bench::peer_available(python, "torch, peft")) {
      const std::string peer = std::string(TESSERA_SOURCE_DIR) + "/bench/peers/peft_poly_mlp.py";
      const bench::ThreadSetting best =
          bench::best_peer_setting(python, peer, str("--steps 8 --warmup 2 --batch ", rows),
                                   threads, "router_speed", "peft");
      for (const bool mhr_z : {false, true}) {
        const std::string args = str("--steps ", steps, " --warmup ", warmup, " --batch ", rows,
                                     " --threads ", best.threads, mhr_z ? " --mhr-z" : "");
        for (auto& row : bench::run_peer(python, peer, args, best.env)) {
          const std::string router = row.value("router", "");
          row["bench"] = "router_speed";
          row["env"] = best.env;
          row["tessera_over_peft"] = ours[router] / row.value("samples_per_s", 1.0);
          bench::emit(row);
        }
      }
    } else {
      bench::emit({{"bench", "router_speed"}, {"impl", "peft"}, {"error", "no peer python"}});
    }

    if (part == "poly") return 0;
    // The gate on the decoder against one LoRA r=8: the three trainers
    // built side by side and timed in turn, `rounds` times, so drift of the
    // machine falls on all alike; the medians are reported.
    const std::vector<std::string> prose = {"data.files=/usr/share/common-licenses/*"};
    const int rounds = 3;
    const std::vector<std::string> specs = {
        "lora r=8", "mixlora:experts=16,r=8,alpha=16,top_k=2",
        "mixlora:experts=16,r=8,alpha=16,top_k=2,granularity=block"};
    std::vector<std::unique_ptr<train::Trainer>> trainers;
    std::unique_ptr<adapters::AdapterSet> set;
    std::vector<std::unique_ptr<Routed>> routers;
    std::vector<int64_t> trainable;
    for (const std::string& spec : specs) {
      trainers.push_back(std::make_unique<train::Trainer>(
          config("decoder", prose, threads, warmup + rounds * steps)));
      train::Trainer& t = *trainers.back();
      if (spec == "lora r=8") {
        t.attach([&](std::vector<nn::Linear*> linears, nn::ParameterSet& ps) {
          set = std::make_unique<adapters::AdapterSet>(linears, ps,
                                                       std::vector<std::string>{"all-linear"},
                                                       adapters::LoraConfig{8, 16.0f, false}, 1);
          return &set->params();
        });
        trainable.push_back(set->params().count(true));
      } else {
        routers.push_back(attach_router(t, spec, {}, false, 1));
        trainable.push_back(routers.back()->params.count(true));
      }
      t.run(warmup);
    }
    std::vector<std::vector<double>> tps(specs.size());
    for (int round = 0; round < rounds; ++round)
      for (size_t i = 0; i < specs.size(); ++i) {
        const auto t0 = std::chrono::steady_clock::now();
        trainers[i]->run(steps);
        tps[i].push_back(steps * 16.0 * 128.0 / seconds_since(t0));
      }
    auto median = [](std::vector<double> v) {
      std::sort(v.begin(), v.end());
      return v[v.size() / 2];
    };
    for (size_t i = 0; i < specs.size(); ++i) {
      std::vector<double> ratio;
      for (int round = 0; round < rounds; ++round) ratio.push_back(tps[i][round] / tps[0][round]);
      bench::emit({{"bench", "router_speed"},
                   {"impl", "tessera"},
                   {"router", specs[i]},
                   {"model", "decoder 4x256 ctx 128"},
                   {"trainable", trainable[i]},
                   {"tokens_per_s", median(tps[i])},
                   {"tokens_per_s_rounds", tps[i]},
                   // The median of the rounds' ratios: each round's pair ran back to back.
                   {"over_lora_r8", median(ratio)},
                   {"over_lora_r8_rounds", ratio},
                   {"threads", threads}});
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "router_speed_bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
