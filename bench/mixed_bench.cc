// Mixed-adapter inference (issue 3): a base Linear 1024×1024, 32 LoRA adapters
// of rank 16, 256 rows each routed to a random adapter. Rows/s of
//   base       the base GEMM alone
//   single     one LoRA for every row (the ceiling a mixed batch aims at)
//   gather     tessera's mixed batch: lora_gather over the stacked adapters
//   loop       a loop over adapters: gather that adapter's rows, two GEMMs,
//              scatter back (what PEFT's mixed batch does), in tessera's ops
//   merged     per adapter, merge its weights and run its rows (another
//              common way to serve many adapters)
// and the PyTorch/PEFT peer (bench/peers/torch_mixed.py) in this invocation.
// Goal: gather >= 0.7x single and >= 4x the loop. JSON lines.
//
//   build/bench/mixed_bench [--rows 256] [--adapters 32] [--rank 16] [--peer-python
//   venv/bin/python]
#include <chrono>
#include <cmath>
#include <functional>

#include <CLI/CLI.hpp>

#include "adapters/bank.h"
#include "adapters/lora.h"
#include "bench/common.h"
#include "runtime/autograd/ops.h"
#include "runtime/common/threads.h"
#include "runtime/nn/layers.h"

using namespace tessera;

namespace {

// Best-of-7 seconds of one call after a warm-up, windows of 0.05 s.
double time_call(const std::function<void()>& f) {
  return bench::best_seconds(f, 7, 0.05);
}

double max_rel(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num = std::max(num, static_cast<double>(std::fabs(a[i] - b[i])));
    den = std::max(den, static_cast<double>(std::fabs(b[i])));
  }
  return num / std::max(den, 1e-30);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Mixed-adapter inference benchmark"};
  std::string python = "python3";
  int threads = 2;
  int64_t rows = 256, E = 32, r = 16, d = 1024;
  bool no_peer = false;
  app.add_option("--threads", threads)->capture_default_str();
  app.add_option("--rows", rows)->capture_default_str();
  app.add_option("--adapters", E)->capture_default_str();
  app.add_option("--rank", r)->capture_default_str();
  app.add_option("--dim", d)->capture_default_str();
  app.add_option("--peer-python", python)->capture_default_str();
  app.add_flag("--no-peer", no_peer);
  CLI11_PARSE(app, argc, argv);
  try {
    set_num_threads(threads);
    Rng rng(1);
    nn::ParameterSet ps;
    nn::Linear base(ps, "proj", d, d, true, false, rng, nn::Init::TorchDefault);
    ps.set_trainable("*", false);
    Tensor x = Tensor::empty({rows, d});
    for (int64_t i = 0; i < x.numel(); ++i) x.data()[i] = rng.normal(0.0f, 1.0f);
    std::vector<int32_t> ids(rows);
    for (auto& e : ids) e = static_cast<int32_t>(rng.uniform(0.0f, static_cast<float>(E)));
    // E random adapters (B non-zero so every path computes something real).
    std::vector<adapters::LoraFactors> ad;
    for (int64_t e = 0; e < E; ++e) {
      Tensor A = Tensor::empty({r, d}), B = Tensor::empty({d, r});
      for (int64_t i = 0; i < A.numel(); ++i) A.data()[i] = rng.normal(0.0f, 0.03f);
      for (int64_t i = 0; i < B.numel(); ++i) B.data()[i] = rng.normal(0.0f, 0.03f);
      ad.push_back({A, B, 2.0f});
    }
    auto emit = [&](const std::string& impl, double secs, const std::vector<float>& y) {
      double sum = 0;
      for (float v : y) sum += v;
      bench::emit({{"bench", "mixed_adapters"},
                   {"impl", impl},
                   {"rows", rows},
                   {"adapters", E},
                   {"rank", r},
                   {"threads", threads},
                   {"rows_per_s", rows / secs},
                   {"ms", secs * 1e3},
                   {"checksum", sum}});
      return rows / secs;
    };
    std::vector<float> y;
    const double base_rate =
        emit("tessera_base", time_call([&] { y = base.forward(x).to_vector(); }), y);

    // One adapter for every row.
    double single = 0;
    {
      adapters::AdapterSet set({&base}, ps, {"proj"}, adapters::LoraConfig{r, 2.0f * r, false}, 1);
      Tensor(set.loras()[0]->A()).copy_from(ad[0].A);
      Tensor(set.loras()[0]->B()).copy_from(ad[0].B);
      single = emit("tessera_single", time_call([&] { y = base.forward(x).to_vector(); }), y);
    }
    // The mixed batch through the gather kernel.
    double gather = 0;
    std::vector<float> y_gather;
    {
      adapters::BankSet bank({&base}, ps, {"proj"}, E, adapters::LoraConfig{r, 2.0f * r, false}, 1);
      for (int64_t e = 0; e < E; ++e) bank.load_expert(e, {{"proj", ad[e]}});
      bank.route(ids);
      gather = emit("tessera_gather", time_call([&] { y = base.forward(x).to_vector(); }), y);
      y_gather = y;
    }
    // A loop over adapters with tessera's ops: per adapter, its rows.
    std::vector<std::vector<int64_t>> rows_of(E);
    for (int64_t i = 0; i < rows; ++i) rows_of[ids[i]].push_back(i);
    double loop = emit("tessera_loop", time_call([&] {
                         Tensor out = base.forward(x);
                         for (int64_t e = 0; e < E; ++e) {
                           const auto& rs = rows_of[e];
                           if (rs.empty()) continue;
                           const int64_t n = static_cast<int64_t>(rs.size());
                           Tensor xe = Tensor::empty({n, d});
                           for (int64_t i = 0; i < n; ++i)
                             std::copy_n(x.data() + rs[i] * d, d, xe.data() + i * d);
                           Tensor ye = ops::scale(
                               ops::matmul_nt(ops::matmul_nt(xe, ad[e].A), ad[e].B), ad[e].scale);
                           for (int64_t i = 0; i < n; ++i)
                             for (int64_t c = 0; c < d; ++c)
                               out.data()[rs[i] * d + c] += ye.data()[i * d + c];
                         }
                         y = out.to_vector();
                       }),
                       y);
    const std::vector<float> y_loop = y;
    // Per adapter: merged weights for its rows.
    double merged = emit("tessera_merged", time_call([&] {
                           Tensor out = Tensor::empty({rows, d});
                           for (int64_t e = 0; e < E; ++e) {
                             const auto& rs = rows_of[e];
                             if (rs.empty()) continue;
                             const int64_t n = static_cast<int64_t>(rs.size());
                             Tensor w = base.weight().clone();
                             Tensor dw = ad[e].delta();
                             for (int64_t k = 0; k < w.numel(); ++k) w.data()[k] += dw.data()[k];
                             Tensor xe = Tensor::empty({n, d});
                             for (int64_t i = 0; i < n; ++i)
                               std::copy_n(x.data() + rs[i] * d, d, xe.data() + i * d);
                             Tensor ye = ops::linear(xe, w, base.bias());
                             for (int64_t i = 0; i < n; ++i)
                               std::copy_n(ye.data() + i * d, d, out.data() + rs[i] * d);
                           }
                           y = out.to_vector();
                         }),
                         y);
    bench::emit({{"bench", "mixed_adapters"},
                 {"impl", "tessera"},
                 {"figure", "ratios"},
                 {"gather_over_single", gather / single},
                 {"gather_over_loop", gather / loop},
                 // The adapters' own time (each path's time beyond the base GEMM).
                 {"adapter_time_loop_over_gather",
                  (1 / loop - 1 / base_rate) / (1 / gather - 1 / base_rate)},
                 {"gather_over_merged", gather / merged},
                 // The three mixed paths compute the same outputs.
                 {"gather_vs_loop_max_rel_err", max_rel(y_gather, y_loop)},
                 {"gather_vs_merged_max_rel_err", max_rel(y_gather, y)}});
    if (no_peer) return 0;
    if (!bench::peer_available(python, "torch, peft")) {
      bench::emit({{"bench", "mixed_adapters"},
                   {"impl", "pytorch"},
                   {"error", "no torch+peft for " + python}});
      return 0;
    }
    const std::string peer = std::string(TESSERA_SOURCE_DIR) + "/bench/peers/torch_mixed.py";
    const std::string args = "--rows " + std::to_string(rows) + " --adapters " + std::to_string(E) +
                             " --rank " + std::to_string(r) + " --dim " + std::to_string(d);
    for (const auto& s : bench::peer_settings(threads)) {
      for (auto& row :
           bench::run_peer(python, peer, args + " --threads " + std::to_string(s.threads), s.env)) {
        row["bench"] = "mixed_adapters";
        row["env"] = s.env;
        bench::emit(row);
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "mixed_bench: %s\n", e.what());
    return 2;
  }
  return 0;
}
