// Merging task adapters (issue 3): 5 LoRA experts (r=8, all-linear) on the
// Fashion-MNIST MLP base, one per seeded pixel permutation (trained together
// in one bank), then merged into one adapter with linear (the uniform soup),
// TIES, DARE-TIES, LoRA-LEGO and a greedy soup. Each merged adapter's test
// accuracy on all 5 tasks (and the mean) next to the individual experts.
// LEGO runs with k = 8, 16 and 32 clusters of the 5 × 8 rank-1 units.
// λ (a scale on the merged update, as TIES and DARE tune it) and the greedy
// soup's ingredients are chosen on a validation slice of the training split
// (data.eval_split=train), never on the test split. JSON lines.
//
//   build/bench/merge_bench [--tasks 5] [--epochs 2] [--base-epochs 5]
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <map>

#include <CLI/CLI.hpp>

#include "adapters/bank.h"
#include "adapters/merge.h"
#include "bench/common.h"
#include "bench/mlp_base.h"
#include "launch/config.h"
#include "runtime/train/trainer.h"

using namespace tessera;

namespace {

using Deltas = std::map<std::string, Tensor>;  // module → ΔW [out, in]

// A trainer over the tasks whose Linears we can shift by a merged update.
struct Evaluator {
  std::unique_ptr<train::Trainer> t;
  std::vector<nn::Linear*> linears;
  std::unique_ptr<adapters::BankSet> bank;
};

std::vector<double> accuracies(Evaluator& e, const Deltas& d, int tasks, int64_t batches) {
  for (nn::Linear* l : e.linears) {
    auto it = d.find(l->name());
    if (it == d.end()) continue;
    Tensor w = l->weight();
    for (int64_t k = 0; k < w.numel(); ++k) w.data()[k] += it->second.data()[k];
  }
  std::vector<double> acc;
  for (int k = 0; k < tasks; ++k) acc.push_back(e.t->evaluate(batches, k).accuracy);
  for (nn::Linear* l : e.linears) {
    auto it = d.find(l->name());
    if (it == d.end()) continue;
    Tensor w = l->weight();
    for (int64_t k = 0; k < w.numel(); ++k) w.data()[k] -= it->second.data()[k];
  }
  return acc;
}

double mean(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? 0 : s / static_cast<double>(v.size());
}

Deltas scaled(const Deltas& d, float lambda) {
  Deltas out;
  for (const auto& [m, t] : d) {
    Tensor c = t.clone();
    for (int64_t k = 0; k < c.numel(); ++k) c.data()[k] *= lambda;
    out[m] = c;
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Merging task LoRAs: linear, TIES, DARE-TIES, LEGO, soups"};
  int threads = 2, base_epochs = 5, epochs = 2, tasks = 5;
  app.add_option("--threads", threads)->capture_default_str();
  app.add_option("--base-epochs", base_epochs)->capture_default_str();
  app.add_option("--epochs", epochs)->capture_default_str();
  app.add_option("--tasks", tasks)->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  const std::string t = std::to_string(threads);
  try {
    const std::string base_ckpt = bench::pretrain_mlp_base(base_epochs, threads, "merge");
    std::string joined;
    for (int k = 0; k < tasks; ++k)
      joined += (k ? ";" : "") + std::string("permute:seed=") + std::to_string(k + 1);
    auto make = [&](const std::vector<std::string>& extra) {
      std::vector<std::string> ov = {"epochs=" + std::to_string(epochs), "threads=" + t,
                                     "out_dir=", "data.task=" + joined, "optim.lr=3e-3"};
      ov.insert(ov.end(), extra.begin(), extra.end());
      Evaluator e;
      e.t = std::make_unique<train::Trainer>(launch::resolve_config("", ov, "mlp"));
      e.t->load_checkpoint(base_ckpt, true);
      e.t->attach([&](std::vector<nn::Linear*> linears, nn::ParameterSet& ps) {
        e.linears = linears;
        e.bank =
            std::make_unique<adapters::BankSet>(linears, ps, std::vector<std::string>{"all-linear"},
                                                tasks, adapters::LoraConfig{8, 16.0f, false}, 1);
        return &e.bank->params();
      });
      adapters::BankSet* b = e.bank.get();
      e.t->set_row_task_hook([b](const std::vector<int32_t>& rows) { b->route(rows); });
      return e;
    };
    Evaluator test = make({});
    auto t0 = std::chrono::steady_clock::now();
    test.t->run();
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    // The experts, then the base alone: the bank leaves the slots.
    std::vector<std::vector<std::pair<std::string, adapters::LoraFactors>>> experts;
    for (int k = 0; k < tasks; ++k) experts.push_back(test.bank->expert(k));
    test.bank->detach();
    Evaluator val = make({"data.eval_split=train"});
    val.bank->detach();
    const int64_t val_batches = 4;  // 4 × 500 training examples per task
    std::vector<Deltas> d(tasks);
    for (int k = 0; k < tasks; ++k)
      for (const auto& [m, f] : experts[k]) d[k][m] = f.delta();
    bench::emit({{"bench", "merge"},
                 {"phase", "experts_trained_together"},
                 {"seconds", secs},
                 {"base_accuracy_per_task", accuracies(test, {}, tasks, 0)}});
    // Each expert on its own task (and the others).
    std::vector<double> own, own_val;
    for (int k = 0; k < tasks; ++k) {
      std::vector<double> a = accuracies(test, d[k], tasks, 0);
      own.push_back(a[k]);
      own_val.push_back(accuracies(val, d[k], tasks, val_batches)[k]);
    }
    bench::emit({{"bench", "merge"},
                 {"method", "individual"},
                 {"accuracy_per_task", own},
                 {"mean_accuracy", mean(own)}});

    auto modules = experts[0];
    auto combine = [&](const std::string& method) {
      Deltas out;
      Rng rng(7);
      for (size_t m = 0; m < modules.size(); ++m) {
        const std::string& name = modules[m].first;
        std::vector<Tensor> ds;
        std::vector<adapters::LoraFactors> fs;
        for (int k = 0; k < tasks; ++k) {
          ds.push_back(d[k].at(name));
          fs.push_back(experts[k][m].second);
        }
        const std::vector<float> w(tasks, 1.0f);
        if (method == "linear")
          out[name] = adapters::task_arithmetic(ds, std::vector<float>(tasks, 1.0f / tasks));
        else if (method == "ties")
          out[name] = adapters::ties(ds, w, 0.2f);
        else if (method == "dare_ties")
          out[name] = adapters::dare(ds, w, 0.5f, rng, true, 0.2f);
        else if (method.rfind("lego", 0) == 0) {  // lego<k>
          adapters::LegoOptions lo;
          lo.k = std::stoi(method.substr(4));
          out[name] = adapters::lego(fs, w, lo).delta();
        }
      }
      return out;
    };
    const std::vector<float> lambdas = {0.25f, 0.5f, 1.0f, 2.0f, 3.0f, 5.0f};
    for (const std::string method : {"linear", "ties", "dare_ties", "lego8", "lego16", "lego32"}) {
      Deltas merged = combine(method);
      float best_l = 1.0f;
      double best = -1;
      for (float l : lambdas) {
        double v = mean(accuracies(val, scaled(merged, l), tasks, val_batches));
        if (v > best) {
          best = v;
          best_l = l;
        }
      }
      std::vector<double> acc = accuracies(test, scaled(merged, best_l), tasks, 0);
      bench::emit({{"bench", "merge"},
                   {"method", method},
                   {"lambda", best_l},
                   {"validation_mean", best},
                   {"accuracy_per_task", acc},
                   {"mean_accuracy", mean(acc)}});
    }
    // Greedy soup: ingredients by their own validation accuracy, kept while
    // the soup's mean validation accuracy over the tasks does not drop.
    auto soup_of = [&](const std::vector<size_t>& idx) {
      Deltas s;
      for (const auto& [m, f] : modules) {
        std::vector<Tensor> ds;
        for (size_t i : idx) ds.push_back(d[i].at(m));
        s[m] = adapters::task_arithmetic(ds, std::vector<float>(ds.size(), 1.0f / ds.size()));
      }
      return s;
    };
    std::vector<size_t> chosen =
        adapters::greedy_soup(own_val, [&](const std::vector<size_t>& idx) {
          return mean(accuracies(val, soup_of(idx), tasks, val_batches));
        });
    std::vector<double> acc = accuracies(test, soup_of(chosen), tasks, 0);
    bench::emit({{"bench", "merge"},
                 {"method", "greedy_soup"},
                 {"ingredients", chosen},
                 {"accuracy_per_task", acc},
                 {"mean_accuracy", mean(acc)}});
    std::filesystem::remove(base_ckpt);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "merge_bench: %s\n", e.what());
    return 2;
  }
  return 0;
}
