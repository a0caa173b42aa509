// tessera eval: a base (checkpoint or Hugging Face folder), optionally with an adapter, on its test
// split.
#include "launch/commands.h"
#include "launch/runs.h"

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <memory>

#include <algorithm>
#include <sstream>
#include "adapters/adapter_file.h"
#include "adapters/lora.h"
#include "adapters/peft.h"
#include "launch/base.h"
#include "launch/config.h"
#include "launch/experts.h"
#include "routing/spec.h"
#include "runtime/io/fingerprint.h"
#include "runtime/train/trainer.h"
#include "store/library.h"
#include "tessera/library.pb.h"

namespace tessera::launch {

namespace fs = std::filesystem;

namespace {

// eval --router: the router's tasks (or data.task=...), each on its test
// split, with the router on the base.
int eval_router(const EvalOptions& o) {
  if (!o.adapter.empty()) throw Error("eval: give --adapter or --router, not both");
  if (o.library.empty()) throw Error("eval --router: --library names the library that holds it");
  const BaseModel base = open_base(o.checkpoint, "--checkpoint");
  const std::string fingerprint = io::base_fingerprint(o.checkpoint);
  auto lib = open_library(o.library, false, true);
  AdapterRecord rec;
  const store::Status got = lib->Get(o.router, &rec);
  routing::RouterKind zero_shot{};
  if (!got.ok() &&
      routing::router_kind_names().find(o.router.substr(0, o.router.find(':')), &zero_shot))
    throw Error(str("eval --router '", o.router, "': ", o.router.substr(0, o.router.find(':')),
                    " is a zero-shot router of tessera route (route --router ", o.router,
                    "); eval --router takes a router stored by train-router (NAME@VERSION)"));
  check_store(got, str("router '", o.router, "'"));
  const std::vector<std::string> tasks = split_tasks(rec.task());
  if (tasks.empty()) throw Error(str("router '", o.router, "' records no tasks"));
  RunConfig cfg = adapter_run_config(o.checkpoint, tasks, "", o.overrides);
  train::Trainer t(cfg);
  load_base_weights(t, base);
  std::unique_ptr<LibraryRouter> r =
      load_library_router(*lib, rec.id(), t, fingerprint, workload_tasks(cfg, tasks));
  const int n = t.num_tasks();
  std::printf("%s %s + router %s (%s):\n", t.kind().c_str(), o.checkpoint.c_str(), r->name.c_str(),
              r->config.spec().c_str());
  const std::vector<std::string> names = workload_tasks(cfg, tasks);
  for (const std::string& nm : names)
    if (r->config.kind() == "poly" && std::find(r->config.tasks().begin(), r->config.tasks().end(),
                                                nm) == r->config.tasks().end())
      std::printf(
          "  note: %s is not one of the router's tasks: Poly routes it to the skill "
          "average (MHR-mu)\n",
          nm.c_str());
  for (int i = 0; i < n; ++i)
    std::printf("  %-24s %s\n", i < static_cast<int>(names.size()) ? names[i].c_str() : "?",
                eval_text(t.evaluate(o.max_batches, n > 1 ? i : -1)).c_str());
  if (n > 1) std::printf("  %-24s %s\n", "mean", eval_text(t.evaluate(o.max_batches, -1)).c_str());
  return 0;
}

}  // namespace

int run_eval(const EvalOptions& o) {
  if (!o.router.empty()) return eval_router(o);
  if (!o.library.empty())
    throw Error("eval: --library is where --router's record is; give --router NAME@VERSION");
  const BaseModel base = open_base(o.checkpoint, "--checkpoint");
  RunConfig cfg = base.config;
  apply_base_overrides(&cfg, o.overrides, base);
  validate_config(cfg);
  train::Trainer t(cfg);
  load_base_weights(t, base);
  std::unique_ptr<adapters::AdapterSet> set;
  if (!o.adapter.empty()) {
    // An adapter trained on another base computes nonsense on this one. Its
    // base fingerprint: in a tessera adapter file's metadata, or in a PEFT
    // folder tessera wrote (absent from other PEFT folders: nothing to check).
    const std::string want = fs::is_directory(o.adapter)
                                 ? adapters::read_peft(o.adapter).base_fingerprint
                                 : adapters::read_adapter(o.adapter).base_fingerprint;
    if (!want.empty()) check_base(o.adapter, want, o.checkpoint, o.force);
  }
  if (!o.adapter.empty()) {
    // A tessera adapter file, or a PEFT folder.
    t.attach([&](std::vector<nn::Linear*> linears, nn::ParameterSet& base) {
      if (fs::is_directory(o.adapter))
        set = std::move(adapters::import_peft(o.adapter, linears, base, t.embeddings()).set);
      else
        set = adapters::load_adapter(o.adapter, linears, base, nullptr, t.embeddings());
      return &set->params();
    });
  }
  train::EvalResult e = t.evaluate(o.max_batches);
  std::printf("%s %s%s%s: %s\n", t.kind().c_str(), o.checkpoint.c_str(),
              o.adapter.empty() ? "" : " + ", o.adapter.c_str(), eval_text(e).c_str());
  return 0;
}

Command add_eval_command(CLI::App& app) {
  auto o = std::make_shared<EvalOptions>();
  EvalOptions& ev = *o;
  auto* c_eval = app.add_subcommand("eval", "Evaluate a checkpoint on its test split");
  c_eval
      ->add_option("--checkpoint", ev.checkpoint,
                   "tessera checkpoint (.safetensors) or Hugging Face folder")
      ->required();
  c_eval->add_option("--adapter", ev.adapter,
                     "Evaluate with this adapter attached (tessera adapter file or PEFT folder; "
                     "one recorded for another base is refused)");
  c_eval->add_option("--router", ev.router,
                     "Evaluate with this router from the library (name@version), on its tasks "
                     "(or data.task=...)");
  c_eval->add_option("--library", ev.library.where, "--router: the library (folder or grpc://)");
  c_eval->add_option("--token-file", ev.library.token_file, "grpc://: the service's bearer token");
  c_eval->add_option("--tls-ca", ev.library.tls_ca, "grpc://: PEM roots to trust (TLS)");
  c_eval->add_option("--tls-server-name", ev.library.tls_server_name,
                     "grpc://: the name in the server's certificate");
  c_eval->add_flag("--force", ev.force,
                   "Load the adapter even if it was trained on a base with another fingerprint");
  c_eval->add_option("--max-batches", ev.max_batches,
                     "Evaluate at most this many batches (0: all)");
  c_eval->add_option("overrides", ev.overrides, "key=value config overrides, e.g. data.dir=/path");
  return {c_eval, [o] { return run_eval(*o); }};
}

}  // namespace tessera::launch
