// MLP 784-512-512-10 (GELU) on Fashion-MNIST, AdamW lr 1e-3 (cosine decay to 0
// over the run by default), batch 128:
// tessera's training throughput and test accuracy after each listed epoch,
// next to the PyTorch peer (bench/peers/torch_mlp.py) at its best thread
// setting, in one invocation. One JSON line per figure.
//
//   build/bench/mlp_bench [--epochs 5,15] [--threads 2] [--peer-python venv/bin/python]
#include <chrono>
#include <sstream>

#include <CLI/CLI.hpp>

#include "bench/common.h"
#include "launch/config.h"
#include "runtime/common/threads.h"
#include "runtime/train/trainer.h"

using namespace tessera;

int main(int argc, char** argv) {
  CLI::App app{"MLP training benchmark against PyTorch"};
  std::string epochs = "5,15", python = "python3", data_dir = "/usr/share/datasets/fashion-mnist";
  int threads = 2;
  double select_seconds = 12;
  bool no_peer = false;
  std::string schedule = "cosine";
  app.add_option("--epochs", epochs, "Evaluate after these epochs (comma-separated)")
      ->capture_default_str();
  app.add_option("--threads", threads, "Threads for tessera and the peer")->capture_default_str();
  app.add_option("--peer-python", python, "Python with PyPI's torch for the peer")
      ->capture_default_str();
  app.add_option("--select-seconds", select_seconds,
                 "Peer time per thread setting when picking its best")
      ->capture_default_str();
  app.add_option("--data-dir", data_dir)->capture_default_str();
  app.add_flag("--no-peer", no_peer, "Skip the PyTorch peer");
  app.add_option("--schedule", schedule, "cosine (decay to 0 over all epochs) or constant")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  std::vector<int> points;
  {
    std::stringstream ss(epochs);
    std::string e;
    while (std::getline(ss, e, ',')) points.push_back(std::stoi(e));
  }
  const std::string peer_script = std::string(TESSERA_SOURCE_DIR) + "/bench/peers/torch_mlp.py";

  try {
    RunConfig cfg = launch::resolve_config(
        "",
        {"epochs=" + std::to_string(points.back()), "threads=" + std::to_string(threads),
         "out_dir=", "data.dir=" + data_dir, "optim.schedule=" + schedule, "optim.min_lr_ratio=0"},
        "mlp");
    train::Trainer t(cfg);
    const double peak = t.peak_gflops();
    bench::emit({{"bench", "mlp"},
                 {"impl", "tessera"},
                 {"figure", "sgemm_peak_gflops"},
                 {"value", peak},
                 {"threads", threads}});
    int64_t per_epoch = t.total_steps() / points.back();
    double train_secs = 0;
    int64_t samples = 0;
    for (int ep : points) {
      auto t0 = std::chrono::steady_clock::now();
      int64_t todo = per_epoch * ep - t.step();
      t.run(todo);
      train_secs += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      samples += todo * cfg.batch_size();
      auto e = t.evaluate();
      bench::emit({{"bench", "mlp"},
                   {"impl", "tessera"},
                   {"epoch", ep},
                   {"threads", threads},
                   {"samples_per_s", samples / train_secs},
                   {"test_accuracy", e.accuracy},
                   {"train_seconds", train_secs},
                   {"mfu", samples / train_secs * t.train_flops_per_unit() / (peak * 1e9)}});
    }
    const double ours = samples / train_secs;
    bench::emit({{"bench", "mlp"},
                 {"impl", "tessera"},
                 {"figure", "peak_rss_mb"},
                 {"value", bench::peak_rss_mb()}});

    if (no_peer) return 0;
    if (!bench::peer_available(python)) {
      bench::emit({{"bench", "mlp"},
                   {"impl", "pytorch"},
                   {"error", "no torch for " + python + " (pass --peer-python)"}});
      return 0;
    }
    // Pick PyTorch's best thread setting on a short timed run, then measure it fully.
    const bench::ThreadSetting best = bench::best_peer_setting(
        python, peer_script,
        "--epochs 1 --max-seconds " + std::to_string(select_seconds) + " --data-dir " + data_dir,
        threads, "mlp", "pytorch");
    auto rows =
        bench::run_peer(python, peer_script,
                        "--epochs " + epochs + " --threads " + std::to_string(best.threads) +
                            " --data-dir " + data_dir + " --schedule " + schedule,
                        best.env);
    for (auto& r : rows) {
      r["bench"] = "mlp";
      r["env"] = best.env;
      bench::emit(r);
    }
    if (!rows.empty())
      bench::emit({{"bench", "mlp"},
                   {"figure", "throughput_ratio_tessera_over_pytorch"},
                   {"value", ours / rows.back().value("samples_per_s", 1.0)}});
  } catch (const std::exception& e) {
    std::fprintf(stderr, "mlp_bench: %s\n", e.what());
    return 2;
  }
  return 0;
}
