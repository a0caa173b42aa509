// tessera route: the library's experts routed zero-shot on a mixed test
// stream whose inputs carry no task id (Arrow, hidden-state centroids,
// uniform), next to the task oracle and the base; per task, per module
// routing accuracy against the true task, and each task's expert usage.
#include <CLI/CLI.hpp>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>

#include "adapters/adapter_file.h"
#include "launch/base.h"
#include "launch/commands.h"
#include "launch/config.h"
#include "launch/experts.h"
#include "launch/runs.h"
#include "routing/arrow.h"
#include "routing/router.h"
#include "routing/routers.h"
#include "routing/spec.h"
#include "runtime/common/error.h"
#include "runtime/io/fingerprint.h"
#include "runtime/train/trainer.h"
#include "store/adapter_io.h"
#include "store/library.h"
#include "tessera/library.pb.h"

namespace tessera::launch {

namespace {

using routing::RouterKind;

// A module's experts for one run: the gather's bank, Arrow prototypes and
// centroids [E, in].
struct ModuleBank {
  std::string name;
  routing::ExpertStack stack;
  Tensor prototypes, centroids;
};

// Routing statistics summed over calls, weighted by rows.
struct Tally {
  double correct = 0, mass = 0, rows_with_task = 0, entropy = 0, rows = 0;
  std::vector<double> load;
  void add(const routing::TopK& t, int64_t E, int32_t truth) {
    const int64_t M = t.k > 0 ? static_cast<int64_t>(t.ids.size()) / t.k : 0;
    const routing::RoutingStats s =
        routing::routing_stats(t, E, std::vector<int32_t>(static_cast<size_t>(M), truth));
    if (load.empty()) load.assign(static_cast<size_t>(E), 0.0);
    correct += s.accuracy * s.rows_with_task;
    mass += s.correct_mass * s.rows_with_task;
    rows_with_task += s.rows_with_task;
    entropy += s.entropy * M;
    rows += M;
    for (int64_t e = 0; e < E; ++e) load[e] += s.load[e] * M;
  }
};

}  // namespace

RouteResult run_route(const RouteOptions& o) {
  if (o.base.empty()) throw Error("route: --base names the base checkpoint");
  if (o.library.empty()) throw Error("route: --library names the library of experts");
  RouteResult res;
  res.tasks = split_tasks(o.eval);
  if (res.tasks.empty())
    throw Error("route: --eval names the tasks to evaluate on (TASK[;TASK...])");
  std::vector<routing::RouterSpec> routers;
  for (const std::string& r : o.routers) routers.push_back(routing::parse_router_spec(r));
  const BaseModel base = open_base(o.base, "--base");
  const std::string fingerprint = io::base_fingerprint(o.base);
  auto lib = open_library(o.library, false, true);
  const std::vector<LibraryExpert> experts =
      read_library_experts(*lib, fingerprint, o.experts, o.library.where, o.base);
  const int64_t E = static_cast<int64_t>(experts.size());
  for (const LibraryExpert& e : experts) res.experts.push_back(e.name);
  if (o.routers.empty()) {
    // The default comparison, fitted to the library: Arrow with PEFT's
    // top_k 3 (or every expert, when there are fewer), and centroids when
    // every expert has them.
    routers = {routing::parse_router_spec("base"), routing::parse_router_spec("task"),
               routing::parse_router_spec(str("arrow:top_k=", std::min<int64_t>(3, E)))};
    bool centroids = true;
    for (const LibraryExpert& e : experts) {
      bool any = false;
      for (const auto& [name, v] : e.signatures) any = any || name.rfind("centroid/", 0) == 0;
      centroids = centroids && any;
    }
    if (centroids) routers.push_back(routing::parse_router_spec("centroid"));
  }
  for (const auto& r : routers)
    if ((r.kind == RouterKind::Arrow || r.kind == RouterKind::Centroid) && r.top_k > E)
      throw Error(str("router '", r.text, "': top_k = ", r.top_k, " but the library holds ", E,
                      " expert", E == 1 ? "" : "s", " for this base"));
  for (const std::string& t : res.tasks) {
    int idx = -1;
    for (int e = 0; e < E; ++e)
      if (experts[e].task == t) idx = e;
    res.task_expert.push_back(idx);
  }
  // The Trainer of each task (its test split); the banks are built once, on
  // the first, over the modules every expert adapts, in model order.
  std::vector<ModuleBank> banks;
  bool need_centroids = false;
  for (const auto& r : routers) need_centroids = need_centroids || r.kind == RouterKind::Centroid;
  res.rows.resize(routers.size());
  std::vector<std::vector<Tally>> tallies(routers.size());  // [router][module], over all tasks
  for (size_t ti = 0; ti < res.tasks.size(); ++ti) {
    const RunConfig cfg = adapter_run_config(o.base, {res.tasks[ti]}, "", o.overrides);
    train::Trainer t(cfg);
    load_base_weights(t, base);
    res.classifier = t.kind() == "mlp";
    std::vector<nn::Linear*> linears;
    for (nn::Linear* l : t.linears()) {
      bool everyone = true;
      for (const LibraryExpert& e : experts) everyone = everyone && e.factors.count(l->name());
      if (everyone) linears.push_back(l);
    }
    if (linears.empty())
      throw Error(
          "route: the experts share no adapted module of this base (their target modules "
          "differ, or they were trained on another architecture)");
    if (banks.empty()) {
      for (nn::Linear* l : linears) {
        ModuleBank b;
        b.name = l->name();
        std::vector<adapters::LoraFactors> fs;
        for (const LibraryExpert& e : experts) fs.push_back(e.factors.at(l->name()));
        b.stack = routing::stack_experts(fs);
        const int64_t in = l->in_features();
        b.prototypes = Tensor::empty({E, in});
        for (int64_t e = 0; e < E; ++e) {
          auto it = experts[e].signatures.find("arrow/" + b.name);
          const std::vector<float> p = it != experts[e].signatures.end()
                                           ? it->second
                                           : routing::arrow_prototype(fs[static_cast<size_t>(e)]);
          if (static_cast<int64_t>(p.size()) != in)
            throw Error(str("expert ", experts[e].name, ": its arrow/", b.name, " signature has ",
                            p.size(), " values; the module takes ", in));
          std::copy(p.begin(), p.end(), b.prototypes.data() + e * in);
        }
        if (need_centroids) {
          b.centroids = Tensor::empty({E, in});
          for (int64_t e = 0; e < E; ++e) {
            auto it = experts[e].signatures.find("centroid/" + b.name);
            if (it == experts[e].signatures.end())
              throw Error(str("router centroid: expert ", experts[e].name, " has no centroid/",
                              b.name,
                              " signature (experts trained by this tessera record them; compute "
                              "them for older ones with: tessera centroids --base ",
                              o.base, " --library ", o.library.where, ")"));
            if (static_cast<int64_t>(it->second.size()) != in)
              throw Error(str("expert ", experts[e].name, ": its centroid/", b.name,
                              " signature has ", it->second.size(), " values; the module takes ",
                              in));
            std::copy(it->second.begin(), it->second.end(), b.centroids.data() + e * in);
          }
        }
        banks.push_back(std::move(b));
      }
      for (const auto& b : banks) res.modules.push_back(b.name);
      for (auto& tl : tallies) tl.resize(banks.size());
    }
    const int32_t truth = res.task_expert[ti];
    for (size_t ri = 0; ri < routers.size(); ++ri) {
      const routing::RouterSpec& r = routers[ri];
      std::vector<Tally> task_tally(banks.size());
      for (size_t m = 0; m < banks.size(); ++m) {
        ModuleBank& b = banks[m];
        Tally* total = &tallies[ri][m];
        Tally* mine = &task_tally[m];
        auto route = [&r, &b, total, mine, truth, E](const Tensor& x) {
          const int64_t N = x.numel() / x.size(x.ndim() - 1);
          routing::TopK k;
          switch (r.kind) {
            case RouterKind::Arrow: {
              const float T =
                  r.sqrt_temperature ? std::sqrt(static_cast<float>(x.size(1))) : r.temperature;
              k = routing::arrow_route(x, b.prototypes, r.top_k, T);
              break;
            }
            case RouterKind::Centroid:
              k = routing::centroid_route(x, b.centroids, r.top_k);
              break;
            case RouterKind::Task:
              k = routing::task_route(std::vector<int32_t>(static_cast<size_t>(N), truth), E);
              break;
            case RouterKind::Uniform:
              k = routing::uniform_route(N, E);
              break;
            case RouterKind::Base:
              k = routing::task_route(std::vector<int32_t>(static_cast<size_t>(N), -1), E);
              break;
          }
          total->add(k, E, truth);
          mine->add(k, E, truth);
          return k;
        };
        linears[m]->set_adapter(std::make_shared<routing::RoutedLora>(b.stack, route, r.combine));
      }
      const train::EvalResult ev = t.evaluate(o.max_batches);
      for (nn::Linear* l : linears) l->set_adapter(nullptr);
      RouteResult::Row& row = res.rows[ri];
      row.router = r.label();
      row.score.push_back(res.classifier ? ev.accuracy : ev.bits_per_token);
      std::vector<double> usage(static_cast<size_t>(E), 0.0);
      for (const Tally& tl : task_tally)
        for (int64_t e = 0; e < E && !tl.load.empty(); ++e)
          usage[e] += tl.load[e] / std::max(1.0, tl.rows) / static_cast<double>(banks.size());
      row.usage.push_back(usage);
      std::vector<double> acc;
      for (const Tally& tl : task_tally)
        acc.push_back(tl.rows_with_task > 0 ? tl.correct / tl.rows_with_task : -1.0);
      row.task_module_acc.push_back(acc);
    }
  }
  for (size_t ri = 0; ri < routers.size(); ++ri) {
    RouteResult::Row& row = res.rows[ri];
    for (double s : row.score) row.mean += s / static_cast<double>(row.score.size());
    double acc = 0, mass = 0, with = 0, ent = 0, rows = 0;
    for (const Tally& tl : tallies[ri]) {
      row.module_acc.push_back(tl.rows_with_task > 0 ? tl.correct / tl.rows_with_task : -1);
      acc += tl.correct;
      mass += tl.mass;
      with += tl.rows_with_task;
      ent += tl.entropy;
      rows += tl.rows;
    }
    if (with > 0) {
      row.routing_acc = acc / with;
      row.correct_mass = mass / with;
    }
    row.entropy = rows > 0 ? ent / rows : 0;
  }
  return res;
}

namespace {

std::string score_text(const RouteResult& r, double v) {
  return r.classifier ? str(std::round(v * 10000) / 100, "%") : str(std::round(v * 1000) / 1000);
}

}  // namespace

void print_route(const RouteResult& r, bool details) {
  const char* metric = r.classifier ? "accuracy" : "bits per token (per byte on text: tasks)";
  std::printf(
      "\n%d experts over %zu modules; %s per task on its test split (no task ids given "
      "to the routers)\n\n",
      static_cast<int>(r.experts.size()), r.modules.size(), metric);
  std::printf("%-34s %9s", "router", "mean");
  for (const auto& t : r.tasks) std::printf(" %16.16s", t.c_str());
  std::printf(" %9s %8s %8s\n", "routing", "on true", "entropy");
  for (const auto& row : r.rows) {
    std::printf("%-34s %9s", row.router.c_str(), score_text(r, row.mean).c_str());
    for (double s : row.score) std::printf(" %16s", score_text(r, s).c_str());
    if (row.routing_acc >= 0)
      std::printf(" %8.1f%% %7.1f%% %8.3f\n", row.routing_acc * 100, row.correct_mass * 100,
                  row.entropy);
    else
      std::printf(" %9s %8s %8.3f\n", "-", "-", row.entropy);
  }
  if (!details) return;
  std::printf("\nrouting accuracy per module (share of rows whose top expert is their task's):\n");
  std::printf("%-34s", "module");
  for (size_t i = 0; i < r.rows.size(); ++i) std::printf(" %9s", str("#", i + 1).c_str());
  std::printf("\n");
  for (size_t m = 0; m < r.modules.size(); ++m) {
    std::printf("%-34.34s", r.modules[m].c_str());
    for (const auto& row : r.rows)
      std::printf(" %9s", row.module_acc[m] >= 0
                              ? str(std::round(row.module_acc[m] * 1000) / 10, "%").c_str()
                              : "-");
    std::printf("\n");
  }
  std::printf("(#k is the k-th router above)\n\nexperts: ");
  for (size_t e = 0; e < r.experts.size(); ++e)
    std::printf("%s[%zu] %s", e ? ", " : "", e, r.experts[e].c_str());
  std::printf("\n");
  for (const auto& row : r.rows) {
    if (row.routing_acc < 0 && row.router.rfind("base", 0) == 0) continue;
    std::printf("\nexpert usage, %s (share of routing weight per task):\n", row.router.c_str());
    for (size_t t = 0; t < r.tasks.size(); ++t) {
      std::printf("  %-24.24s", r.tasks[t].c_str());
      for (double u : row.usage[t]) std::printf(" %5.1f%%", u * 100);
      std::printf("\n");
    }
  }
}

namespace {

nlohmann::json route_json(const RouteResult& r) {
  nlohmann::json j;
  j["tasks"] = r.tasks;
  j["experts"] = r.experts;
  j["modules"] = r.modules;
  j["task_expert"] = r.task_expert;
  j["metric"] = r.classifier ? "accuracy" : "bits_per_token";
  for (const auto& row : r.rows)
    j["routers"].push_back({{"router", row.router},
                            {"score", row.score},
                            {"mean", row.mean},
                            {"module_routing_accuracy", row.module_acc},
                            {"routing_accuracy", row.routing_acc},
                            {"correct_mass", row.correct_mass},
                            {"entropy", row.entropy},
                            {"usage", row.usage},
                            {"task_module_routing_accuracy", row.task_module_acc}});
  return j;
}

}  // namespace

Command add_route_command(CLI::App& app) {
  auto o = std::make_shared<RouteOptions>();
  auto* c = app.add_subcommand(
      "route",
      "Route a library's experts on mixed tasks with no task ids (Arrow, centroids, "
      "uniform) beside the task oracle and the base");
  c->add_option("--base", o->base, "Base checkpoint or Hugging Face folder")->required();
  c->add_option("--library", o->library.where, "Library folder or grpc://HOST:PORT")->required();
  c->add_option("--token-file", o->library.token_file, "grpc://: the service's bearer token");
  c->add_option("--tls-ca", o->library.tls_ca, "grpc://: PEM roots to trust (TLS)");
  c->add_option("--router", o->routers,
                "arrow[:top_k=K,temperature=T|sqrt,mode=merge-after|merge-before], "
                "centroid[:top_k=K,mode=M], uniform[:mode=M], task, base; repeat to compare "
                "(default: base, task, arrow with top_k up to 3, and centroid when the experts "
                "have centroids)")
      ->allow_extra_args(false);
  c->add_option("--eval", o->eval, "Tasks to evaluate on: TASK[;TASK...]")->required();
  c->add_option("--experts", o->experts, "Route among these experts only (names)")
      ->allow_extra_args(false);
  c->add_option("--max-batches", o->max_batches, "Per task, at most this many test batches");
  c->add_option("--json", o->json_out, "Also write the results as JSON to this file");
  c->add_option("overrides", o->overrides, "key=value config overrides (data.dir=...)");
  return {c, [o] {
            const RouteResult r = run_route(*o);
            print_route(r, true);
            if (!o->json_out.empty()) {
              std::ofstream f(o->json_out);
              f << route_json(r).dump(1) << "\n";
              if (!f) throw Error(str("--json: cannot write ", o->json_out));
            }
            return 0;
          }};
}

}  // namespace tessera::launch
