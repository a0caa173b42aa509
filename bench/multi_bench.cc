// Multi-adapter training (issue 3): 8 LoRA experts (r=8, all-linear) on the
// Fashion-MNIST MLP base, one per seeded pixel permutation, trained
//   together        one bank, every batch holding 128 rows of each task, one
//                   pass over the frozen base per step (tessera train-adapter
//                   --task ... --task ...)
//   one after another  each task alone with the ordinary LoRA path
// with the same recipe (AdamW 3e-3 cosine, batch 128 per task, the same
// epochs). Total samples/s of each way and every expert's test accuracy both
// ways (they must agree within noise). JSON lines.
//
//   build/bench/multi_bench [--tasks 8] [--epochs 1] [--base-epochs 5]
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>

#include <CLI/CLI.hpp>

#include "adapters/bank.h"
#include "adapters/lora.h"
#include "bench/common.h"
#include "bench/mlp_base.h"
#include "launch/config.h"
#include "runtime/train/trainer.h"

using namespace tessera;

int main(int argc, char** argv) {
  CLI::App app{"Multi-adapter training benchmark: a bank in one pass vs one after another"};
  int threads = 2, base_epochs = 5, epochs = 1, tasks = 8;
  app.add_option("--threads", threads)->capture_default_str();
  app.add_option("--base-epochs", base_epochs)->capture_default_str();
  app.add_option("--epochs", epochs)->capture_default_str();
  app.add_option("--tasks", tasks)->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  const std::string t = std::to_string(threads);
  try {
    const std::string base_ckpt = bench::pretrain_mlp_base(base_epochs, threads, "multi_adapter");
    auto cfg_for = [&](const std::string& task) {
      return launch::resolve_config("",
                                    {"epochs=" + std::to_string(epochs), "threads=" + t,
                                     "out_dir=", "data.task=" + task, "optim.lr=3e-3"},
                                    "mlp");
    };
    const std::vector<std::string> targets = {"all-linear"};
    const adapters::LoraConfig lora{8, 16.0f, false};
    std::vector<std::string> names;
    std::string joined;
    for (int k = 0; k < tasks; ++k) {
      names.push_back("permute:seed=" + std::to_string(k + 1));
      joined += (k ? ";" : "") + names.back();
    }

    // Together: one bank, one pass.
    std::vector<double> acc_together;
    double rate_together = 0;
    {
      train::Trainer tr(cfg_for(joined));
      tr.load_checkpoint(base_ckpt, true);
      std::unique_ptr<adapters::BankSet> bank;
      tr.attach([&](std::vector<nn::Linear*> linears, nn::ParameterSet& ps) {
        bank = std::make_unique<adapters::BankSet>(linears, ps, targets, tasks, lora, 1);
        return &bank->params();
      });
      adapters::BankSet* b = bank.get();
      tr.set_row_task_hook([b](const std::vector<int32_t>& rows) { b->route(rows); });
      auto t0 = std::chrono::steady_clock::now();
      tr.run();
      const double secs =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      rate_together = static_cast<double>(tr.step()) * 128.0 * tasks / secs;
      for (int k = 0; k < tasks; ++k) acc_together.push_back(tr.evaluate(-1, k).accuracy);
      bench::emit({{"bench", "multi_adapter"},
                   {"impl", "tessera_bank_together"},
                   {"tasks", tasks},
                   {"epochs", epochs},
                   {"seconds", secs},
                   {"samples_per_s", rate_together},
                   {"accuracy", acc_together}});
    }
    // One after another: the ordinary LoRA path per task.
    std::vector<double> acc_alone;
    double secs_alone = 0;
    int64_t samples_alone = 0;
    for (int k = 0; k < tasks; ++k) {
      train::Trainer tr(cfg_for(names[k]));
      tr.load_checkpoint(base_ckpt, true);
      std::unique_ptr<adapters::AdapterSet> set;
      tr.attach([&](std::vector<nn::Linear*> linears, nn::ParameterSet& ps) {
        set = std::make_unique<adapters::AdapterSet>(linears, ps, targets, lora, 1 + k);
        return &set->params();
      });
      auto t0 = std::chrono::steady_clock::now();
      tr.run();
      secs_alone += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      samples_alone += tr.step() * 128;
      acc_alone.push_back(tr.evaluate().accuracy);
    }
    const double rate_alone = static_cast<double>(samples_alone) / secs_alone;
    bench::emit({{"bench", "multi_adapter"},
                 {"impl", "tessera_lora_one_after_another"},
                 {"tasks", tasks},
                 {"epochs", epochs},
                 {"seconds", secs_alone},
                 {"samples_per_s", rate_alone},
                 {"accuracy", acc_alone}});
    double max_diff = 0, mean_t = 0, mean_a = 0;
    for (int k = 0; k < tasks; ++k) {
      max_diff = std::max(max_diff, std::fabs(acc_together[k] - acc_alone[k]));
      mean_t += acc_together[k] / tasks;
      mean_a += acc_alone[k] / tasks;
    }
    bench::emit({{"bench", "multi_adapter"},
                 {"figure", "together_vs_one_after_another"},
                 {"speedup", rate_together / rate_alone},
                 {"mean_accuracy_together", mean_t},
                 {"mean_accuracy_alone", mean_a},
                 {"max_abs_accuracy_diff", max_diff},
                 {"peak_rss_mb", bench::peak_rss_mb()}});
    std::filesystem::remove(base_ckpt);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "multi_bench: %s\n", e.what());
    return 2;
  }
  return 0;
}
