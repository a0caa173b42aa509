// tessera train-router: learned gates over library experts (mole), fresh
// gated experts (mixlora) or Poly/MHR (poly), trained on a frozen base over
// several tasks and stored as a library record of kind "router".
#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>

#include <cstdio>
#include <cstring>
#include <memory>
#include <sstream>

#include "adapters/lora.h"
#include "launch/base.h"
#include "launch/commands.h"
#include "launch/config.h"
#include "launch/experts.h"
#include "launch/runs.h"
#include "runtime/common/error.h"
#include "runtime/io/fingerprint.h"
#include "runtime/train/trainer.h"
#include "store/library.h"
#include "tessera/library.pb.h"

namespace tessera::launch {

namespace {

std::vector<std::string> task_list(const std::vector<std::string>& given) {
  std::vector<std::string> out;
  for (const std::string& g : given)
    for (const std::string& t : split_tasks(g)) out.push_back(t);
  return out;
}

}  // namespace

std::vector<int32_t> router_task_ids(const RouterConfig& c, const std::vector<std::string>& tasks) {
  std::vector<int32_t> out;
  for (const std::string& t : tasks) {
    int32_t id = -1;
    for (int i = 0; i < c.tasks_size(); ++i)
      if (c.tasks(i) == t) id = i;
    out.push_back(id);
  }
  return out;
}

std::unique_ptr<LibraryRouter> load_library_router(store::LibraryApi& lib, const std::string& key,
                                                   train::Trainer& t,
                                                   const std::string& fingerprint,
                                                   const std::vector<std::string>& tasks) {
  AdapterRecord rec;
  std::vector<store::TensorData> tensors;
  check_store(lib.Get(key, &rec, &tensors), str("router '", key, "'"));
  auto out = std::make_unique<LibraryRouter>();
  out->name = rec.name() + "@" + std::to_string(rec.version());
  if (rec.kind() != "router")
    throw Error(str("'", key, "' is ", out->name, ", a ", rec.kind(),
                    " adapter, not a router (--adapter applies adapters)"));
  check_store(store::CheckBase(rec, fingerprint), str("router ", out->name));
  out->config = routing::parse_router_config_json(rec.config_json(), "router " + out->name);
  std::map<std::string, std::vector<adapters::LoraFactors>> factors;
  for (const ExpertRef& ref : out->config.experts()) {
    AdapterRecord have;
    const store::Status st = lib.Get(ref.id(), &have);
    if (!st.ok())
      throw Error(str("router ", out->name, " mixes expert ", ref.name(), " (id ",
                      ref.id().substr(0, 16),
                      "…), which the library no longer holds (deleted, or replaced by another "
                      "version): train the router again over the experts there now"));
    const LibraryExpert e = read_library_expert(lib, ref.id());
    for (const std::string& m : out->config.modules()) {
      auto it = e.factors.find(m);
      if (it == e.factors.end())
        throw Error(str("router ", out->name, ": expert ", e.name, " does not adapt ", m));
      factors[m].push_back(it->second);
    }
  }
  t.attach([&](std::vector<nn::Linear*> linears, nn::ParameterSet& base) {
    base.set_trainable("*", false);
    out->router =
        std::make_unique<routing::TrainedRouter>(out->config, linears, factors, out->params, 0);
    return &out->params;
  });
  size_t loaded = 0;
  for (auto& p : out->params.all()) {
    const store::TensorData* d = nullptr;
    for (const auto& td : tensors)
      if (td.name == p.name) d = &td;
    if (!d || d->dtype != "F32" || d->shape != p.tensor.shape() ||
        d->bytes.size() != static_cast<size_t>(p.tensor.numel()) * 4)
      throw Error(str("router ", out->name, ": tensor ", p.name, " is missing or not F32 ",
                      shape_str(p.tensor.shape())));
    std::memcpy(p.tensor.data(), d->bytes.data(), d->bytes.size());
    ++loaded;
  }
  if (loaded != tensors.size())
    throw Error(str("router ", out->name, ": ", tensors.size(), " tensors stored, ", loaded,
                    " belong to the router as configured"));
  const RouterConfig cfg = out->config;
  LibraryRouter* r = out.get();
  const std::vector<int32_t> ids = router_task_ids(cfg, tasks);
  t.set_row_task_hook([r, ids](const std::vector<int32_t>& rows) {
    std::vector<int32_t> mapped;
    for (int32_t x : rows)
      mapped.push_back(x >= 0 && x < static_cast<int32_t>(ids.size()) ? ids[x] : -1);
    r->router->set_tasks(mapped);
  });
  return out;
}

int run_train_router(const TrainRouterOptions& o) {
  RouterConfig c = routing::parse_router_config(o.router);
  if (c.kind() == "mole" && o.targets != "all-linear")
    throw Error(
        "--targets: a mole router mixes the library experts' own modules; --targets is "
        "for mixlora and poly");
  const std::vector<std::string> tasks = task_list(o.tasks);
  if (tasks.empty()) throw Error("train-router: --task names the tasks to train on");
  if (o.library.empty()) throw Error("train-router: --library names where the router is stored");
  const RunConfig cfg =
      adapter_run_config(o.base, tasks, o.out_dir.empty() ? "runs/router" : o.out_dir, o.overrides);
  const BaseModel base = open_base(o.base, "--base");
  const std::string fingerprint = io::base_fingerprint(o.base);
  // The library must exist: a router lives beside the experts it was
  // trained over (a mistyped path must not create an empty library).
  auto lib = open_library(o.library, false);
  // Poly's task ids are the workload's, whose order data.task= may set.
  for (const std::string& t : workload_tasks(cfg, tasks)) c.add_tasks(t);
  train::Trainer t(cfg);
  load_base_weights(t, base);
  std::vector<double> before;
  for (size_t i = 0; i < tasks.size(); ++i) {
    const train::EvalResult e = t.evaluate(-1, tasks.size() > 1 ? static_cast<int>(i) : -1);
    before.push_back(t.kind() == "mlp" ? e.accuracy : e.bits_per_token);
  }
  std::map<std::string, std::vector<adapters::LoraFactors>> factors;
  if (c.kind() == "mole") {
    const std::vector<LibraryExpert> experts =
        read_library_experts(*lib, fingerprint, o.experts, o.library.where, o.base);
    if (static_cast<int64_t>(experts.size()) < c.top_k())
      throw Error(str("router '", o.router, "': top_k = ", c.top_k(), " but there are ",
                      experts.size(), " experts"));
    for (nn::Linear* l : shared_modules(t.linears(), experts)) c.add_modules(l->name());
    for (const LibraryExpert& e : experts) {
      ExpertRef* ref = c.add_experts();
      ref->set_name(e.name);
      ref->set_id(e.id);
      ref->set_task(e.task);
      for (const std::string& m : c.modules()) factors[m].push_back(e.factors.at(m));
    }
  } else {
    if (!o.experts.empty())
      throw Error(
          str("--experts: a ", c.kind(), " router trains its own; mole mixes library experts"));
    for (const std::string& m : adapters::select_modules(t.linears(), {o.targets}))
      c.add_modules(m);
  }
  nn::ParameterSet trained;
  std::unique_ptr<routing::TrainedRouter> router;
  t.attach([&](std::vector<nn::Linear*> linears, nn::ParameterSet& ps) {
    ps.set_trainable("*", false);
    router = std::make_unique<routing::TrainedRouter>(c, linears, factors, trained, cfg.seed());
    return &trained;
  });
  router->add_to(t, trained);
  t.set_row_task_hook([&](const std::vector<int32_t>& rows) { router->set_tasks(rows); });
  if (!o.quiet)
    spdlog::info("{}: router {} on {} modules, {} trainable parameters, {} tasks", t.kind(),
                 o.router, c.modules_size(), human_count(trained.count(true)), tasks.size());
  t.run(0, !o.quiet);
  // The record: config, trained tensors, a score per task.
  AdapterRecord rec;
  rec.set_name(o.name.empty() ? c.kind() : o.name);
  rec.set_kind("router");
  rec.set_config_json(routing::router_config_json(c));
  rec.mutable_base()->set_name(o.base);
  rec.mutable_base()->set_fingerprint(fingerprint);
  std::string joined;
  for (const std::string& tk : tasks) joined += (joined.empty() ? "" : ";") + tk;
  rec.set_task(joined);
  for (const std::string& m : c.modules()) rec.add_target_modules(m);
  const bool pct = t.kind() == "mlp";
  std::printf("\n%-24s %12s %14s   (%s)\n", "task", "base", str("router ", c.kind()).c_str(),
              pct ? "accuracy" : "bits per token");
  for (size_t i = 0; i < tasks.size(); ++i) {
    const train::EvalResult e = t.evaluate(-1, tasks.size() > 1 ? static_cast<int>(i) : -1);
    Score* sc = rec.add_scores();
    sc->set_task(tasks[i]);
    sc->set_split("test");
    sc->set_metric(t.kind() == "mlp" ? "accuracy" : "bits_per_token");
    sc->set_value(t.kind() == "mlp" ? e.accuracy : e.bits_per_token);
    if (pct)
      std::printf("%-24s %11.2f%% %13.2f%%\n", tasks[i].c_str(), 100 * before[i],
                  100 * sc->value());
    else
      std::printf("%-24s %12.4f %14.4f\n", tasks[i].c_str(), before[i], sc->value());
  }
  std::vector<store::TensorData> ts;
  for (const auto& p : trained.all()) {
    store::TensorData d;
    d.name = p.name;
    d.shape = p.tensor.shape();
    d.bytes.assign(reinterpret_cast<const char*>(p.tensor.data()), p.tensor.numel() * 4);
    ts.push_back(std::move(d));
  }
  AdapterRecord stored;
  check_store(lib->Put(rec, ts, &stored), "storing the router");
  std::printf("library %s: %s@%ld %s (%zu tensors%s)\n", o.library.where.c_str(),
              stored.name().c_str(), static_cast<long>(stored.version()), stored.id().c_str(),
              ts.size(),
              c.experts_size() ? str(", over ", c.experts_size(), " pinned experts").c_str() : "");
  return 0;
}

Command add_train_router_command(CLI::App& app) {
  auto o = std::make_shared<TrainRouterOptions>();
  auto* c = app.add_subcommand(
      "train-router",
      "Train a router on a frozen base over several tasks and store it in the library: mole "
      "(gates over library experts), mixlora (gated fresh experts) or poly (Poly/MHR)");
  c->add_option("--base", o->base, "Base checkpoint or Hugging Face folder")->required();
  c->add_option("--library", o->library.where, "Library folder or grpc://HOST:PORT")->required();
  c->add_option("--token-file", o->library.token_file, "grpc://: the service's bearer token");
  c->add_option("--tls-ca", o->library.tls_ca, "grpc://: PEM roots to trust (TLS)");
  c->add_option("--router", o->router,
                "mole[:top_k=2,balance=0.01,z_loss=,gating_balance=,weights=renormalized|switch|"
                "straight-through,granularity=module|block|global,mode=,jitter=,bias_rate=] | "
                "mixlora[:experts=4,r=4,alpha=8,...gate keys] | "
                "poly[:skills=8,splits=1,r=8,scale=1/r|alpha/r,alpha=16,logits_lr=1]")
      ->capture_default_str();
  c->add_option("--task", o->tasks, "Tasks to train on: TASK[;TASK...] (repeatable)")
      ->required()
      ->allow_extra_args(false);  // one value each: key=value overrides after it stay overrides
  c->add_option("--experts", o->experts, "mole: mix these experts (default: all for the base)")
      ->allow_extra_args(false);
  c->add_option("--targets", o->targets, "mixlora, poly: modules to adapt")->capture_default_str();
  c->add_option("--name", o->name, "Its name in the library (default: the router kind)");
  c->add_option("--out", o->out_dir, "Run folder (default runs/router)");
  c->add_flag("--quiet", o->quiet, "No progress");
  c->add_option("overrides", o->overrides, "key=value config overrides (steps=, optim.lr=, ...)");
  return {c, [o] { return run_train_router(*o); }};
}

}  // namespace tessera::launch
