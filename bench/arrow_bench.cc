// Arrow routing side by side with PEFT's own Arrow layer: one adapted layer,
// d 512 → 512, LoRA experts of rank 8, 4,096 tokens, top_k 2, E ∈ {8, 32,
// 128}. Both route with the same prototypes (tessera's exact ones; the peer
// also reports how far its own 15-step power iteration lands from them) and
// compute the mixture: tessera through the weighted gather kernel (the GEMMs
// of each token's 2 experts), PEFT with einsums over every expert for every
// token. Prints tokens/s of each, their ratio, the largest difference of
// routing weights and outputs, peak-RSS growth during the forward, and the
// time to compute the prototypes. The peer runs at its best thread setting.
#include <unistd.h>
#include <CLI/CLI.hpp>
#include <chrono>
#include <filesystem>

#include "bench/common.h"
#include "routing/arrow.h"
#include "routing/router.h"
#include "runtime/common/rng.h"
#include "runtime/common/threads.h"
#include "runtime/io/safetensors.h"

using namespace tessera;
namespace fs = std::filesystem;

int main(int argc, char** argv) {
  CLI::App app{"Arrow routing vs PEFT's Arrow layer"};
  int threads = 2, tokens = 4096, dim = 512, rank = 8, top_k = 2;
  std::vector<int> experts_list = {8, 32, 128};
  std::string python = "python3";
  bool no_peer = false;
  app.add_option("--threads", threads)->capture_default_str();
  app.add_option("--tokens", tokens)->capture_default_str();
  app.add_option("--dim", dim)->capture_default_str();
  app.add_option("--rank", rank)->capture_default_str();
  app.add_option("--top-k", top_k)->capture_default_str();
  app.add_option("--experts", experts_list)->capture_default_str();
  app.add_option("--peer-python", python)->capture_default_str();
  app.add_flag("--no-peer", no_peer);
  CLI11_PARSE(app, argc, argv);
  set_num_threads(threads);
  const std::string peer = std::string(TESSERA_SOURCE_DIR) + "/bench/peers/peft_arrow.py";
  const bool with_peer = !no_peer && bench::peer_available(python, "torch, peft, safetensors");
  const fs::path dir = fs::temp_directory_path() / ("arrow_bench_" + std::to_string(getpid()));
  fs::create_directories(dir);
  bench::ThreadSetting best{"", threads};
  bool probed = false;
  try {
    for (int E : experts_list) {
      Rng rng(static_cast<uint64_t>(E));
      std::vector<adapters::LoraFactors> ex;
      for (int e = 0; e < E; ++e) {
        std::vector<float> a(static_cast<size_t>(rank * dim)), b(static_cast<size_t>(dim * rank));
        for (float& v : a) v = rng.normal(0.0f, 1.0f / std::sqrt(float(dim)));
        for (float& v : b) v = rng.normal(0.0f, 0.05f);
        ex.push_back({Tensor::from_vector(a, {rank, dim}), Tensor::from_vector(b, {dim, rank}),
                      16.0f / rank * (1.0f + 0.1f * (e % 3))});
      }
      std::vector<float> xv(static_cast<size_t>(tokens) * dim);
      for (float& v : xv) v = rng.normal();
      const Tensor x = Tensor::from_vector(xv, {tokens, dim});
      std::vector<float> pv;
      const double proto_s = bench::best_seconds(
          [&] {
            pv.clear();
            for (const auto& f : ex)
              for (float v : routing::arrow_prototype(f)) pv.push_back(v);
          },
          1, 0.2);
      const Tensor P = Tensor::from_vector(pv, {E, dim});
      routing::ExpertStack stack = routing::stack_experts(ex);
      const Tensor A = stack.A, B = stack.B;
      const std::vector<float> scales = stack.scales;
      routing::RoutedLora slot(
          std::move(stack), [&](const Tensor& xi) { return routing::arrow_route(xi, P, top_k); },
          routing::Combine::MergeAfter);
      nn::ParameterSet ps;
      Rng r0(1);
      nn::Linear zero(ps, "m", dim, dim, false, false, r0, nn::Init::Zeros);
      const Tensor base = Tensor::zeros({tokens, dim});
      const double rss0 = bench::peak_rss_mb();
      Tensor delta = slot.forward(x, base, zero);
      const double rss1 = bench::peak_rss_mb();
      const double secs = bench::best_seconds([&] { delta = slot.forward(x, base, zero); }, 5, 0.2);
      const double tps = tokens / secs;
      bench::emit({{"bench", "arrow_layer"},
                   {"impl", "tessera"},
                   {"experts", E},
                   {"tokens", tokens},
                   {"dim", dim},
                   {"rank", rank},
                   {"top_k", top_k},
                   {"threads", threads},
                   {"tokens_per_s", tps},
                   {"forward_peak_rss_growth_mb", rss1 - rss0},
                   {"prototypes_ms", proto_s * 1e3}});
      if (!with_peer) continue;
      // The inputs, our prototypes, weights (dense [tokens, E]) and output for the peer.
      const routing::TopK& t = slot.last();
      std::vector<float> coeff(static_cast<size_t>(tokens) * E, 0.0f);
      for (int64_t n = 0; n < tokens; ++n)
        for (int64_t j = 0; j < t.k; ++j)
          coeff[n * E + t.ids[n * t.k + j]] = t.weights[n * t.k + j];
      const Tensor C = Tensor::from_vector(coeff, {tokens, E});
      const Tensor S = Tensor::from_vector(scales, {E});
      const Tensor K = Tensor::from_vector({float(top_k)}, {1});
      const std::string file = (dir / ("E" + std::to_string(E) + ".safetensors")).string();
      io::save_safetensors(file,
                           {io::WriteEntry::f32("x", x), io::WriteEntry::f32("A", A),
                            io::WriteEntry::f32("B", B), io::WriteEntry::f32("scales", S),
                            io::WriteEntry::f32("prototypes", P), io::WriteEntry::f32("coeff", C),
                            io::WriteEntry::f32("delta", delta), io::WriteEntry::f32("top_k", K)},
                           {});
      if (!probed) {
        best = bench::best_peer_setting(python, peer, "--data " + file, threads, "arrow_layer",
                                        "peft");
        probed = true;
      }
      for (auto& r : bench::run_peer(
               python, peer, "--data " + file + " --threads " + std::to_string(best.threads),
               best.env)) {
        r["bench"] = "arrow_layer";
        r["env"] = best.env;
        bench::emit(r);
        if (r.contains("tokens_per_s"))
          bench::emit({{"bench", "arrow_layer"},
                       {"figure", "speed_ratio"},
                       {"experts", E},
                       {"tessera_over_peft", tps / r["tokens_per_s"].get<double>()}});
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "arrow_bench: %s\n", e.what());
    fs::remove_all(dir);
    return 2;
  }
  fs::remove_all(dir);
  return 0;
}
