// Decoder LoRA on a second domain (issue 3): pretrain the GPT-2-flavour byte
// decoder (4 layers, d 256, ctx 128, batch 16) on English prose
// (/usr/share/common-licenses), then train LoRA r=8 / alpha 16 on q,k,v
// (c_attn), o (attn.c_proj) and the MLP (c_fc, mlp.c_proj) on C headers
// (/usr/include/*.h). Validation loss on both domains before and after,
// LoRA training tokens/s, and full fine-tuning tokens/s for reference — next
// to PyTorch + PEFT (bench/peers/torch_peft_decoder.py) training the same
// LoRA on the same base weights (read from the exported Hugging Face folder)
// at its best thread setting, in this invocation. JSON lines.
//
//   build/bench/decoder_lora_bench [--base-steps 150] [--steps 40] [--peer-python venv/bin/python]
#include <unistd.h>

#include <chrono>
#include <filesystem>

#include <CLI/CLI.hpp>

#include "adapters/adapter_file.h"
#include "adapters/lora.h"
#include "bench/common.h"
#include "launch/config.h"
#include "runtime/train/trainer.h"

using namespace tessera;
namespace fs = std::filesystem;

int main(int argc, char** argv) {
  CLI::App app{"Decoder LoRA on C headers over a prose base, against PyTorch + PEFT"};
  std::string python = "python3";
  int threads = 2, base_steps = 150, steps = 40, warmup = 5, eval_batches = 20;
  bool no_peer = false;
  app.add_option("--threads", threads)->capture_default_str();
  app.add_option("--base-steps", base_steps)->capture_default_str();
  app.add_option("--steps", steps, "Timed LoRA steps")->capture_default_str();
  app.add_option("--warmup", warmup)->capture_default_str();
  app.add_option("--eval-batches", eval_batches)->capture_default_str();
  app.add_option("--peer-python", python)->capture_default_str();
  app.add_flag("--no-peer", no_peer);
  CLI11_PARSE(app, argc, argv);
  const std::string t = std::to_string(threads);
  const std::string headers = "/usr/include/*.h";
  try {
    const fs::path dir =
        fs::temp_directory_path() / ("decoder_lora_bench_" + std::to_string(getpid()));
    fs::create_directories(dir);
    const std::string ckpt = (dir / "base.safetensors").string(), hf = (dir / "hf").string();
    {
      train::Trainer base(
          launch::resolve_config("",
                                 {"threads=" + t, "out_dir=", "steps=" + std::to_string(base_steps),
                                  "optim.warmup_steps=20", "optim.lr=2e-3",
                                  "eval_batches=" + std::to_string(eval_batches)},
                                 "decoder"));
      base.run();
      base.save_checkpoint(ckpt);
      base.export_model(hf);
      bench::emit({{"bench", "decoder_lora"},
                   {"phase", "base"},
                   {"steps", base_steps},
                   {"prose_val_loss", base.evaluate().loss}});
    }
    auto cfg_on = [&](const std::string& files, int total_steps) {
      RunConfig c = train::read_checkpoint_config(ckpt);
      std::vector<std::string> ov = {"threads=" + t,
                                     "out_dir=",
                                     "data.files=" + files,
                                     "steps=" + std::to_string(total_steps),
                                     "optim.lr=2e-3",
                                     "optim.warmup_steps=0",
                                     "eval_every=0",
                                     "checkpoint_every=0",
                                     "eval_batches=" + std::to_string(eval_batches)};
      launch::apply_overrides(&c, ov);
      c.mutable_decoder()->clear_init_from();
      launch::validate_config(c);
      return c;
    };
    const std::vector<std::string> targets = {
        "all-linear"};  // c_attn, attn.c_proj, c_fc, mlp.c_proj
    const adapters::LoraConfig lora{8, 16.0f, false};
    // Prose evaluation of base and base + adapter.
    train::Trainer prose(cfg_on("/usr/share/common-licenses/*", 1));
    prose.load_checkpoint(ckpt, true);
    const double prose_before = prose.evaluate().loss;
    // LoRA on the headers.
    train::Trainer tc(cfg_on(headers, warmup + steps));
    tc.load_checkpoint(ckpt, true);
    const double c_before = tc.evaluate().loss;
    std::unique_ptr<adapters::AdapterSet> set;
    double linear_params = 0;  // Σ in·out over the model's Linear layers
    tc.attach([&](std::vector<nn::Linear*> linears, nn::ParameterSet& ps) {
      for (const nn::Linear* l : linears)
        linear_params += static_cast<double>(l->in_features()) * l->out_features();
      set = std::make_unique<adapters::AdapterSet>(linears, ps, targets, lora, 1);
      return &set->params();
    });
    tc.run(warmup);
    auto t0 = std::chrono::steady_clock::now();
    tc.run(steps);
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const double lora_tps = steps * 16.0 * 128.0 / secs;
    const double c_after = tc.evaluate().loss;
    const std::string adapter = (dir / "adapter.safetensors").string();
    adapters::save_adapter(*set, adapter, ckpt);
    std::unique_ptr<adapters::AdapterSet> on_prose;
    prose.attach([&](std::vector<nn::Linear*> linears, nn::ParameterSet& ps) {
      on_prose = adapters::load_adapter(adapter, linears, ps);
      return &on_prose->params();
    });
    const double prose_after = prose.evaluate().loss;
    bench::emit({{"bench", "decoder_lora"},
                 {"impl", "tessera"},
                 {"phase", "lora"},
                 {"modules", set->modules().size()},
                 {"trainable", set->params().count(true)},
                 {"tokens_per_s", lora_tps},
                 {"headers_val_loss_before", c_before},
                 {"headers_val_loss_after", c_after},
                 {"prose_val_loss_before", prose_before},
                 {"prose_val_loss_after", prose_after},
                 {"steps", warmup + steps}});
    double full_tps = 0;
    {
      train::Trainer ft(cfg_on(headers, warmup + steps));
      ft.load_checkpoint(ckpt, true);
      ft.run(warmup);
      auto f0 = std::chrono::steady_clock::now();
      ft.run(steps);
      full_tps = steps * 16.0 * 128.0 /
                 std::chrono::duration<double>(std::chrono::steady_clock::now() - f0).count();
      bench::emit({{"bench", "decoder_lora"},
                   {"impl", "tessera"},
                   {"phase", "full_finetune"},
                   {"tokens_per_s", full_tps}});
    }
    // How close each step runs to the GEMM roofline: FLOPs per token (llm.c's
    // count, causal attention at half) over this machine's sgemm rate
    // measured now. The LoRA step skips the frozen base's dW: forward and dX
    // (4 per Linear parameter) plus the rank-r factors' forward and backward
    // (6·r·(in+out) per adapted module); full training 6 per parameter.
    {
      const auto& d = tc.config().decoder();
      const double attn = 6.0 * d.n_layer() * d.d_model() * d.n_ctx();
      double factors = 0;
      for (const auto& p : set->params().all())  // A holds r·in, B out·r
        if (p.name.find("lora_A") != std::string::npos ||
            p.name.find("lora_B") != std::string::npos)
          factors += 6.0 * static_cast<double>(p.tensor.numel());
      const double f_lora = 4.0 * linear_params + factors + attn;
      const double f_full = 6.0 * linear_params + attn;
      const double peak = tc.peak_gflops();
      bench::emit({{"bench", "decoder_lora"},
                   {"figure", "gemm_roofline"},
                   {"sgemm_peak_gflops", peak},
                   {"lora_flops_per_token", f_lora},
                   {"full_flops_per_token", f_full},
                   {"lora_gflops", f_lora * lora_tps / 1e9},
                   {"full_gflops", f_full * full_tps / 1e9},
                   {"lora_tokens_per_s_at_peak", peak * 1e9 / f_lora},
                   {"full_tokens_per_s_at_peak", peak * 1e9 / f_full}});
    }
    if (!no_peer && bench::peer_available(python, "torch, peft, safetensors")) {
      const std::string peer =
          std::string(TESSERA_SOURCE_DIR) + "/bench/peers/torch_peft_decoder.py";
      const std::string common =
          "--base " + hf + " --files '" + headers + "' --warmup " + std::to_string(warmup);
      const bench::ThreadSetting best = bench::best_peer_setting(
          python, peer, common + " --steps 8 --no-eval", threads, "decoder_lora", "pytorch+peft");
      for (auto& r : bench::run_peer(python, peer,
                                     common + " --steps " + std::to_string(steps) + " --threads " +
                                         std::to_string(best.threads),
                                     best.env)) {
        r["bench"] = "decoder_lora";
        r["env"] = best.env;
        bench::emit(r);
        if (r.contains("tokens_per_s"))
          bench::emit({{"bench", "decoder_lora"},
                       {"figure", "lora_speed_ratio"},
                       {"tessera_over_peft", lora_tps / r["tokens_per_s"].get<double>()},
                       {"tessera_lora_over_tessera_full", lora_tps / full_tps}});
      }
    } else if (!no_peer) {
      bench::emit(
          {{"bench", "decoder_lora"}, {"impl", "pytorch+peft"}, {"error", "no peer python"}});
    }
    fs::remove_all(dir);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "decoder_lora_bench: %s\n", e.what());
    return 2;
  }
  return 0;
}
