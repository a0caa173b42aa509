// LoRA on the Fashion-MNIST MLP base, the first adapter benchmark of issue 3:
// pretrain the base (784-512-512-10 GELU), then train LoRA r=8 / alpha 16 on
// its hidden layers ("all-linear") for a seeded pixel permutation, 3 epochs,
// AdamW 3e-3 with cosine decay — test accuracy and samples/s — and full
// fine-tuning of the same model on the same task for speed. The PyTorch + PEFT
// peer (bench/peers/torch_peft_mlp.py) runs the same recipe in this
// invocation at its best thread setting. JSON lines.
//
//   build/bench/lora_bench [--base-epochs 5] [--epochs 3] [--peer-python venv/bin/python]
#include <unistd.h>
#include <chrono>

#include <filesystem>

#include <CLI/CLI.hpp>

#include "adapters/lora.h"
#include "bench/common.h"
#include "bench/mlp_base.h"
#include "launch/config.h"
#include "runtime/train/trainer.h"

using namespace tessera;

int main(int argc, char** argv) {
  CLI::App app{"LoRA training benchmark against PyTorch + PEFT"};
  std::string python = "python3";
  int threads = 2, base_epochs = 5, epochs = 3;
  bool no_peer = false;
  app.add_option("--threads", threads)->capture_default_str();
  app.add_option("--base-epochs", base_epochs)->capture_default_str();
  app.add_option("--epochs", epochs, "LoRA epochs on the permuted task")->capture_default_str();
  app.add_option("--peer-python", python)->capture_default_str();
  app.add_flag("--no-peer", no_peer);
  CLI11_PARSE(app, argc, argv);
  const std::string peer = std::string(TESSERA_SOURCE_DIR) + "/bench/peers/torch_peft_mlp.py";
  const std::string t = std::to_string(threads);
  try {
    const std::string base_ckpt = bench::pretrain_mlp_base(base_epochs, threads, "lora_mlp");
    auto task_cfg = [&](int ep, const std::string& lr) {
      return launch::resolve_config("",
                                    {"epochs=" + std::to_string(ep), "threads=" + t,
                                     "out_dir=", "data.task=permute:seed=1", "optim.lr=" + lr},
                                    "mlp");
    };
    {
      train::Trainer lt(task_cfg(epochs, "3e-3"));
      lt.load_checkpoint(base_ckpt, true);
      const double before = lt.evaluate().accuracy;
      std::unique_ptr<adapters::AdapterSet> set;
      lt.attach([&](std::vector<nn::Linear*> linears, nn::ParameterSet& ps) {
        set = std::make_unique<adapters::AdapterSet>(linears, ps,
                                                     std::vector<std::string>{"all-linear"},
                                                     adapters::LoraConfig{8, 16.0f, false}, 1);
        return &set->params();
      });
      auto t0 = std::chrono::steady_clock::now();
      lt.run();
      double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      bench::emit({{"bench", "lora_mlp"},
                   {"impl", "tessera"},
                   {"phase", "lora"},
                   {"threads", threads},
                   {"task_accuracy_before", before},
                   {"test_accuracy", lt.evaluate().accuracy},
                   {"samples_per_s", lt.step() * 128.0 / secs},
                   {"trainable", set->params().count()}});
    }
    {
      train::Trainer ft(task_cfg(1, "1e-3"));
      ft.load_checkpoint(base_ckpt, true);
      auto t0 = std::chrono::steady_clock::now();
      ft.run();
      double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      bench::emit({{"bench", "lora_mlp"},
                   {"impl", "tessera"},
                   {"phase", "full_finetune"},
                   {"samples_per_s", ft.step() * 128.0 / secs}});
    }
    std::filesystem::remove(base_ckpt);
    bench::emit({{"bench", "lora_mlp"},
                 {"impl", "tessera"},
                 {"figure", "peak_rss_mb"},
                 {"value", bench::peak_rss_mb()}});
    if (no_peer) return 0;
    if (!bench::peer_available(python, "torch, peft")) {
      bench::emit({{"bench", "lora_mlp"},
                   {"impl", "pytorch+peft"},
                   {"error", "no torch+peft for " + python}});
      return 0;
    }
    const bench::ThreadSetting best =
        bench::best_peer_setting(python, peer, "--base-epochs 1 --epochs 1 --max-seconds 8",
                                 threads, "lora_mlp", "pytorch+peft", 0);
    auto rows =
        bench::run_peer(python, peer,
                        "--base-epochs " + std::to_string(base_epochs) + " --epochs " +
                            std::to_string(epochs) + " --threads " + std::to_string(best.threads),
                        best.env);
    for (auto& r : rows) {
      r["bench"] = "lora_mlp";
      r["env"] = best.env;
      bench::emit(r);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "lora_bench: %s\n", e.what());
    return 2;
  }
  return 0;
}
