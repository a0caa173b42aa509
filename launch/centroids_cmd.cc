// tessera centroids: hidden-state centroids (mttl's avg_act router,
// routing/centroids.h) for the experts already in a library that lack them —
// experts trained by this tessera record them as they train.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <map>
#include <memory>

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

int run_centroids(const CentroidsOptions& o) {
  if (o.max_rows < 1) throw Error(str("--max-rows ", o.max_rows, ": expected at least 1"));
  const BaseModel base = open_base(o.base, "--base");
  const std::string fingerprint = io::base_fingerprint(o.base);
  auto lib = open_library(o.library, false);
  // The experts to do, grouped by task: one pass over a task's data serves all.
  std::map<std::string, std::vector<AdapterRecord>> by_task;
  int skipped_no_task = 0, have = 0, total = 0;
  // Every version: `route --experts name@N` may name an older one.
  for (const AdapterRecord& r : list_lora_records(*lib, fingerprint)) {
    ++total;
    // Done when every adapted module has its centroid.
    bool has = true;
    for (const std::string& m : r.target_modules()) {
      bool found = false;
      for (const Signature& s : r.signatures()) found = found || s.name() == "centroid/" + m;
      has = has && found;
    }
    if (r.task().empty()) {
      ++skipped_no_task;
    } else if (has && !o.recompute) {
      ++have;
    } else {
      by_task[r.task()].push_back(r);
    }
  }
  if (total == 0)
    throw Error(str("library ", o.library.where, " holds no LoRA experts for the base ", o.base));
  for (const auto& [task, records] : by_task) {
    const RunConfig cfg = adapter_run_config(o.base, {task}, "", o.overrides);
    train::Trainer t(cfg);
    load_base_weights(t, base);
    // One pass over the task's data serves all its experts: every module's
    // centroid, then each expert's own modules.
    const Signatures all = base_centroids(t, o.max_rows);
    for (const AdapterRecord& r : records) {
      std::vector<Signature> sigs;
      for (const auto& [name, vec] : all) {
        const std::string module = name.substr(std::string("centroid/").size());
        if (std::find(r.target_modules().begin(), r.target_modules().end(), module) ==
            r.target_modules().end())
          continue;
        Signature s;
        s.set_name(name);
        for (float v : vec) s.add_vector(v);
        sigs.push_back(std::move(s));
      }
      check_store(lib->AddSignatures(r.id(), sigs, nullptr),
                  str("storing the centroids of ", r.name()));
      std::printf("%s@%ld (task %s): %zu centroids\n", r.name().c_str(),
                  static_cast<long>(r.version()), task.c_str(), sigs.size());
    }
  }
  size_t computed = 0;
  for (const auto& [task, records] : by_task) computed += records.size();
  std::printf(
      "%d experts for this base: centroids computed for %zu (over %zu tasks%s), %d "
      "already had them, %d record no task (skipped)\n",
      total, computed, by_task.size(), o.recompute ? ", --recompute" : "", have, skipped_no_task);
  return 0;
}

Command add_centroids_command(CLI::App& app) {
  auto o = std::make_shared<CentroidsOptions>();
  auto* c = app.add_subcommand(
      "centroids",
      "Store hidden-state centroids (for --router centroid) with the library's experts that lack "
      "them, from their tasks' training data through the base");
  c->add_option("--base", o->base, "Base checkpoint or Hugging Face folder")->required();
  c->add_option("--library", o->library.where, "Library folder or grpc://HOST:PORT")->required();
  c->add_option("--token-file", o->library.token_file, "grpc://: the service's bearer token");
  c->add_option("--tls-ca", o->library.tls_ca, "grpc://: PEM roots to trust (TLS)");
  c->add_option("--max-rows", o->max_rows,
                "Rows (examples, or tokens for a decoder) averaged per expert")
      ->capture_default_str();
  c->add_flag("--recompute", o->recompute, "Also experts that already have centroids");
  c->add_option("overrides", o->overrides, "key=value config overrides (data.dir=...)");
  return {c, [o] { return run_centroids(*o); }};
}

}  // namespace tessera::launch
