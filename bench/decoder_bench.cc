// Decoder (GPT-2 flavour): 4 layers, d_model 256, 4 heads, context 128, byte
// vocabulary, batch 16 (3.3M parameters) on /usr/share/common-licenses.
// Training tokens/s, forward-only tokens/s, MFU against the sgemm rate
// measured at start, and peak RSS — next to the PyTorch peer
// (bench/peers/torch_decoder.py) at its best thread setting. JSON lines.
//
//   build/bench/decoder_bench [--steps 40] [--threads 2] [--peer-python venv/bin/python]
#include <chrono>

#include <CLI/CLI.hpp>

#include "bench/common.h"
#include "launch/config.h"
#include "runtime/train/trainer.h"

using namespace tessera;

int main(int argc, char** argv) {
  CLI::App app{"Decoder training benchmark against PyTorch"};
  std::string python = "python3", flavor = "gpt2";
  int threads = 2, steps = 40, warmup = 5;
  bool no_peer = false;
  app.add_option("--steps", steps, "Timed training steps")->capture_default_str();
  app.add_option("--warmup", warmup, "Untimed steps first")->capture_default_str();
  app.add_option("--threads", threads)->capture_default_str();
  app.add_option("--flavor", flavor, "gpt2 or llama (the peer is GPT-2 only)")
      ->capture_default_str();
  app.add_option("--peer-python", python, "Python with PyPI's torch for the peer")
      ->capture_default_str();
  app.add_flag("--no-peer", no_peer);
  CLI11_PARSE(app, argc, argv);
  const std::string peer_script = std::string(TESSERA_SOURCE_DIR) + "/bench/peers/torch_decoder.py";
  try {
    RunConfig cfg = launch::resolve_config(
        "",
        {"decoder.flavor=" + flavor, "threads=" + std::to_string(threads),
         "out_dir=", "batch_size=16", "steps=" + std::to_string(warmup + steps),
         "optim.warmup_steps=0", "optim.lr=1e-3", "eval_batches=" + std::to_string(steps)},
        "decoder");
    train::Trainer t(cfg);
    const double peak = t.peak_gflops();
    const double tokens_per_step = 16.0 * cfg.decoder().n_ctx();
    bench::emit({{"bench", "decoder"},
                 {"impl", "tessera"},
                 {"figure", "sgemm_peak_gflops"},
                 {"value", peak},
                 {"threads", threads}});
    t.run(warmup);
    auto t0 = std::chrono::steady_clock::now();
    std::vector<float> losses = t.run(steps);
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const double train_tps = steps * tokens_per_step / secs;
    t.evaluate(2);  // warm the forward path
    t0 = std::chrono::steady_clock::now();
    auto e = t.evaluate(steps);
    double fsecs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const double fwd_tps = static_cast<double>(e.count) / fsecs;
    const double mfu = train_tps * t.train_flops_per_unit() / (peak * 1e9);
    bench::emit({{"bench", "decoder"},
                 {"impl", "tessera"},
                 {"flavor", flavor},
                 {"threads", threads},
                 {"params", t.params().count()},
                 {"train_tokens_per_s", train_tps},
                 {"forward_tokens_per_s", fwd_tps},
                 {"mfu", mfu},
                 {"train_flops_per_token", t.train_flops_per_unit()},
                 {"final_loss", losses.back()},
                 {"peak_rss_mb", bench::peak_rss_mb()}});
    if (no_peer || flavor != "gpt2") return 0;
    if (!bench::peer_available(python)) {
      bench::emit({{"bench", "decoder"}, {"impl", "pytorch"}, {"error", "no torch for " + python}});
      return 0;
    }
    nlohmann::json best;
    for (const auto& s : bench::peer_settings(threads)) {
      auto rows =
          bench::run_peer(python, peer_script,
                          "--steps " + std::to_string(steps) + " --warmup " +
                              std::to_string(warmup) + " --threads " + std::to_string(s.threads),
                          s.env);
      if (rows.empty()) continue;
      nlohmann::json r = rows.back();
      r["bench"] = "decoder";
      r["env"] = s.env;
      r["mfu"] = r.value("train_tokens_per_s", 0.0) * t.train_flops_per_unit() / (peak * 1e9);
      bench::emit(r);
      if (best.is_null() ||
          r.value("train_tokens_per_s", 0.0) > best.value("train_tokens_per_s", 0.0))
        best = r;
    }
    if (!best.is_null()) {
      bench::emit({{"bench", "decoder"},
                   {"figure", "train_ratio_tessera_over_pytorch_best"},
                   {"value", train_tps / best.value("train_tokens_per_s", 1.0)},
                   {"pytorch_env", best["env"]},
                   {"pytorch_threads", best["threads"]}});
      bench::emit({{"bench", "decoder"},
                   {"figure", "forward_ratio_tessera_over_pytorch_best"},
                   {"value", fwd_tps / best.value("forward_tokens_per_s", 1.0)}});
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "decoder_bench: %s\n", e.what());
    return 2;
  }
  return 0;
}
