// tessera build-library: one expert per task over the ranks, committed to a library.
#include "adapters/adapter_file.h"
#include "launch/commands.h"
#include "launch/runs.h"

#include <unistd.h>
#include <CLI/CLI.hpp>
#include <memory>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "launch/config.h"
#include "routing/cluster.h"
#include "routing/spec.h"
#include "runtime/common/error.h"
#include "runtime/common/file.h"
#include "runtime/dist/codec.h"
#include "runtime/dist/process_group.h"
#include "runtime/dist/work_queue.h"
#include "runtime/io/fingerprint.h"
#include "runtime/train/trainer.h"
#include "store/adapter_io.h"
#include "store/library.h"
#include "tessera/library.pb.h"

namespace tessera::launch {

namespace fs = std::filesystem;

namespace {

// "a;b", "@FILE" (a task a line, # comments) and integer ranges "{1..6}"
// (every range in a task expands: permute:seed={1..3} is three tasks).
void expand_braces(const std::string& t, std::vector<std::string>* out) {
  const size_t open = t.find('{');
  if (open == std::string::npos) {
    out->push_back(t);
    return;
  }
  const size_t close = t.find('}', open);
  const size_t dots = t.find("..", open);
  long a = 0, b = 0;
  char tail = 0;
  if (close == std::string::npos || dots == std::string::npos || dots > close ||
      std::sscanf(t.substr(open + 1, dots - open - 1).c_str(), "%ld%c", &a, &tail) != 1 ||
      std::sscanf(t.substr(dots + 2, close - dots - 2).c_str(), "%ld%c", &b, &tail) != 1 || b < a ||
      b - a >= 100000)
    throw Error(
        str("--tasks '", t, "': expected a range {FIRST..LAST} of integers, FIRST <= LAST"));
  for (long v = a; v <= b; ++v)
    expand_braces(t.substr(0, open) + std::to_string(v) + t.substr(close + 1), out);
}

std::vector<std::string> expand_tasks(const std::vector<std::string>& specs) {
  std::vector<std::string> tasks;
  auto add = [&](std::string t, const std::string& from) {
    while (!t.empty() && std::isspace(static_cast<unsigned char>(t.back()))) t.pop_back();
    size_t b = 0;
    while (b < t.size() && std::isspace(static_cast<unsigned char>(t[b]))) ++b;
    t = t.substr(b);
    if (t.empty()) return;
    std::vector<std::string> one;
    expand_braces(t, &one);
    for (std::string& x : one) {
      if (std::find(tasks.begin(), tasks.end(), x) != tasks.end())
        throw Error(str("--tasks: task '", x, "' is given twice", from));
      tasks.push_back(std::move(x));
    }
  };
  for (const std::string& spec : specs) {
    if (!spec.empty() && spec[0] == '@') {
      std::ifstream in(spec.substr(1));
      if (!in) throw Error(str("--tasks '", spec, "': cannot read the file ", spec.substr(1)));
      std::string line;
      int n = 0;
      while (std::getline(in, line)) {
        ++n;
        if (line.find_first_not_of(" \t") != std::string::npos &&
            line[line.find_first_not_of(" \t")] == '#')
          continue;
        add(line, str(" (", spec.substr(1), " line ", n, ")"));
      }
    } else {
      std::stringstream ss(spec);
      std::string t;
      while (std::getline(ss, t, ';')) add(t, "");
    }
  }
  if (tasks.empty()) throw Error("--tasks: no task given (TASK[;TASK...], @FILE, {A..B} ranges)");
  return tasks;
}

// Whether a stored expert is of the kind and rank asked for (a build with
// --adapter lora:r=16 does not skip the r=8 experts of an earlier one).
bool same_adapter_shape(const AdapterRecord& have, const adapters::AdapterArgs& want) {
  try {
    const adapters::AdapterFile a =
        adapters::read_adapter_metadata(have.config_json(), have.name());
    return a.spec.kind == want.spec.kind && a.spec.lora.defaults.r == want.spec.lora.defaults.r;
  } catch (const Error&) {
    return false;  // a record this tessera cannot read is trained again
  }
}

// One expert to build: the tasks it trains on (one, or an MBC cluster's,
// trained on their union), its name, and the task its record names.
struct BuildItem {
  std::vector<std::string> tasks;
  std::string name, label;
};

// The tasks of one expert as adapter_run_config takes them: several image
// tasks as they are (the MLP trains on their union); several text:/tokens:
// tasks as one task over all their globs.
std::vector<std::string> union_tasks(const std::vector<std::string>& tasks) {
  for (const char* kind : {"text:", "tokens:"}) {
    const size_t n = std::strlen(kind);
    bool all = tasks.size() > 1;
    for (const std::string& t : tasks) all = all && t.compare(0, n, kind) == 0;
    if (!all) continue;
    std::string globs;
    for (const std::string& t : tasks) globs += (globs.empty() ? "" : "|") + t.substr(n);
    return {kind + globs};
  }
  return tasks;
}

// Trains and stores one expert per item over the world's ranks. `extra`
// (rank 0) goes into OUT/build.json beside the experts.
int build_items(const BuildLibraryOptions& o, const std::vector<BuildItem>& items,
                const std::string& out_dir, dist::ProcessGroup& world_ref,
                const nlohmann::json& extra = nlohmann::json::object()) {
  const adapters::AdapterArgs a = adapters::parse_adapter_spec(o.adapter);
  // Every rank checks every item's config the same way, so a mistake fails
  // the whole world at once, before any training.
  std::vector<std::string> tasks;
  for (const BuildItem& it : items) tasks.push_back(it.label);
  std::vector<RunConfig> cfgs;
  for (size_t k = 0; k < items.size(); ++k) {
    try {
      cfgs.push_back(adapter_run_config(o.base, union_tasks(items[k].tasks),
                                        out_dir + "/" + std::to_string(k), o.overrides));
    } catch (const Error& e) {
      throw Error(str("--tasks: task '", tasks[k], "': ", e.what()));
    }
  }
  auto name_of = [&](size_t k) { return items[k].name; };
  dist::ProcessGroup* world = &world_ref;
  const int rank = world->rank(), size = world->size();
  if (rank == 0) warn_if_oversubscribed(cfgs.front());
  const bool remote = o.library.remote();
  const std::string fingerprint = io::base_fingerprint(o.base);

  // Rank 0 opens the library (a folder is one process's); with the lookup
  // service every rank talks to it and puts its own experts.
  std::unique_ptr<store::LibraryApi> lib;
  if (rank == 0 || remote) lib = open_library(o.library, true);

  // Skip tasks whose expert the library already holds for this base (a
  // build that stopped halfway resumes), unless --retrain.
  std::vector<int32_t> todo;
  std::vector<std::string> kept(tasks.size());
  if (rank == 0) {
    for (size_t k = 0; k < tasks.size(); ++k) {
      if (!o.retrain) {
        AdapterRecord have;
        store::Status st = lib->Get(name_of(k) + "@latest", &have, nullptr);
        if (st.ok() && have.base().fingerprint() == fingerprint && have.task() == tasks[k] &&
            same_adapter_shape(have, a)) {
          kept[k] = have.name() + "@" + std::to_string(have.version()) + " " + have.id();
          continue;
        }
        if (!st.ok() && !st.IsNotFound()) check_store(st, "looking up " + name_of(k));
      }
      todo.push_back(static_cast<int32_t>(k));
    }
  }
  int64_t n_todo = static_cast<int64_t>(todo.size());
  world->broadcast(&n_todo, sizeof n_todo, 0);
  todo.resize(static_cast<size_t>(n_todo));
  world->broadcast(todo.data(), todo.size() * sizeof(int32_t), 0);

  if (rank == 0) {
    std::printf("build-library: %zu tasks, %zu already in %s, %lld to train on %d rank%s (%s)\n",
                tasks.size(), tasks.size() - todo.size(), o.library.where.c_str(),
                static_cast<long long>(n_todo), size, size == 1 ? "" : "s",
                world->backend().c_str());
    for (size_t k = 0; k < tasks.size(); ++k)
      if (!kept[k].empty())
        std::printf("  %-28s already there: %s\n", tasks[k].c_str(), kept[k].c_str());
    std::fflush(stdout);
  }

  // One item: train the task's expert. On rank 0 it lands in OUT/K; other
  // ranks train in a folder of their own and send the adapter file's bytes
  // (or, with the lookup service, put the expert themselves).
  const auto t_start = std::chrono::steady_clock::now();
  std::vector<std::string> lines(tasks.size());
  auto work = [&](size_t i) -> std::string {
    const size_t k = static_cast<size_t>(todo[i]);
    RunConfig cfg = cfgs[k];
    std::string tmp;
    if (rank != 0) {
      tmp = (fs::temp_directory_path() / str("tessera_build_", ::getpid(), "_", rank, "_", k))
                .string();
      cfg.set_out_dir(tmp);
    }
    AdapterRun r = train_adapter(cfg, o.base, fingerprint, a, /*progress=*/false, nullptr);
    AdapterRecord rec =
        trained_record(name_of(k), tasks[k], o.base, fingerprint, r.after, cfgs[k], r.centroids);
    std::string stored, file_bytes;
    if (remote) {
      stored = put_adapter_file(*lib, r.adapter_file, rec);
    } else if (rank != 0) {
      file_bytes = read_file(r.adapter_file, "adapter file");
    }
    if (!tmp.empty()) fs::remove_all(tmp);
    return dist::pack_fields({rec.SerializeAsString(), file_bytes, stored, short_eval(r.before),
                              short_eval(r.after), str(r.units_per_s)});
  };
  // Rank 0, once per finished expert: write the file, commit it (folder
  // library), report.
  size_t finished = 0;
  auto done = [&](size_t i, int from, const std::string& bytes) {
    const size_t k = static_cast<size_t>(todo[i]);
    std::vector<std::string> f =
        dist::unpack_fields(bytes, 6, str("rank ", from, ", task '", tasks[k], "'"));
    AdapterRecord rec;
    if (!rec.ParseFromString(f[0]) || rec.name() != name_of(k))
      throw Error(str("rank ", from, ", task '", tasks[k], "': a malformed record"));
    const std::string file = cfgs[k].out_dir() + "/adapter.safetensors";
    if (!f[1].empty()) {
      fs::create_directories(cfgs[k].out_dir());
      std::ofstream out(file, std::ios::binary | std::ios::trunc);
      out.write(f[1].data(), static_cast<std::streamsize>(f[1].size()));
      if (!out.flush()) throw Error(str("cannot write ", file));
    }
    std::string stored = f[2];
    if (!remote) stored = put_adapter_file(*lib, file, rec);
    ++finished;
    std::printf("[%zu/%lld] %-24s rank %d  base %s -> expert %s  %s\n", finished,
                static_cast<long long>(n_todo), tasks[k].c_str(), from, f[3].c_str(), f[4].c_str(),
                stored.c_str());
    std::fflush(stdout);
    lines[k] = stored;
  };
  dist::WorkOptions wo;
  wo.item_timeout = std::chrono::milliseconds(static_cast<int64_t>(o.task_timeout_minutes * 60e3));
  dist::WorkSummary sum = dist::distribute(*world, todo.size(), work, done, wo);
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  if (rank != 0) return sum.all_ok() ? 0 : 1;

  // The summary: stdout, and OUT/build.json for scripts and benches.
  size_t ok = 0;
  nlohmann::json j;
  j["tasks"] = tasks.size();
  j["trained"] = n_todo;
  j["ranks"] = size;
  j["backend"] = world->backend();
  j["seconds"] = secs;
  j["experts_per_minute"] = secs > 0 ? 60.0 * static_cast<double>(n_todo) / secs : 0.0;
  j["experts"] = nlohmann::json::array();
  for (const dist::WorkReport& r : sum.items) {
    const size_t k = static_cast<size_t>(todo[r.item]);
    ok += r.ok;
    j["experts"].push_back({{"task", tasks[k]},
                            {"rank", r.rank},
                            {"ok", r.ok},
                            {"seconds", r.seconds},
                            {"stored", lines[k]},
                            {"error", r.error}});
    if (!r.ok) std::printf("FAILED %-28s %s\n", tasks[k].c_str(), r.error.c_str());
  }
  for (const dist::LostRank& l : sum.ranks_lost) {
    const std::string task =
        l.item >= 0 ? tasks[static_cast<size_t>(todo[static_cast<size_t>(l.item)])] : "";
    std::printf("lost rank %d%s: %s\n", l.rank,
                task.empty() ? "" : str(" (its task ", task, " went back to the queue)").c_str(),
                l.why.c_str());
    j["ranks_lost"].push_back({{"rank", l.rank}, {"task", task}, {"why", l.why}});
  }
  for (auto& [key, value] : extra.items()) j[key] = value;
  fs::create_directories(out_dir);
  std::ofstream(out_dir + "/build.json") << j.dump(2) << "\n";
  std::printf("%zu of %lld experts trained and stored in %.1f s: %.2f experts/min on %d rank%s\n",
              ok, static_cast<long long>(n_todo), secs,
              secs > 0 ? 60.0 * static_cast<double>(ok) / secs : 0.0, size, size == 1 ? "" : "s");
  if (ok != sum.items.size())
    throw Error(str(sum.items.size() - ok, " of ", n_todo,
                    " tasks failed (named above); run again to train just those"));
  return 0;
}

struct ClusterSpec {
  routing::MbcOptions mbc;
  int64_t steps = 100;     // the short per-task pass
  bool init_free = false;  // the feature: mttl's (lora) or init-free
  int64_t sketch = 16;     // the init-free feature's width m
};

ClusterSpec parse_cluster(const std::string& spec) {
  ClusterSpec c;
  const size_t colon = spec.find(':');
  if (spec.substr(0, colon) != "mbc")
    throw Error(str("--cluster '", spec,
                    "': expected mbc:k=K[,steps=S,feature=lora|init-free,"
                    "sparsity=0.8,components=64,seed=42]"));
  bool have_k = false;
  const std::string what = str("--cluster '", spec, "'");
  for (const auto& option : routing::spec_options(spec, what)) {
    const std::string &key = option.first, &v = option.second;
    auto num = [&](double lo, double hi, bool whole = true) {
      return routing::spec_number(what, key, v, lo, hi, whole);
    };
    if (key == "k") {
      c.mbc.k = static_cast<int64_t>(num(1, 1e6));
      have_k = true;
    } else if (key == "steps") {
      c.steps = static_cast<int64_t>(num(1, 1e9));
    } else if (key == "feature" && (v == "lora" || v == "init-free")) {
      c.init_free = v == "init-free";
    } else if (key == "sparsity") {
      c.mbc.sparsity = num(0, 0.999999, false);
    } else if (key == "components") {
      c.mbc.components = static_cast<int64_t>(num(1, 1e6));
    } else if (key == "seed") {
      c.mbc.seed = static_cast<uint64_t>(num(0, 1e18));
    } else {
      throw Error(str(what, ": '", key, "=", v,
                      "' (keys: k, steps, feature=lora|init-free, sparsity, components, seed)"));
    }
  }
  if (!have_k) throw Error(str("--cluster '", spec, "': k=K, the number of experts, is required"));
  return c;
}

// MBC: a short pass per task (probe experts, kept in OUT/probe, not in the
// library), the probes clustered, one expert per cluster trained on the
// union of its tasks and stored as PREFIX + cluster-I.
int build_clustered(const BuildLibraryOptions& o, const std::vector<std::string>& tasks,
                    const std::string& out_dir, dist::ProcessGroup& world) {
  const ClusterSpec cs = parse_cluster(o.cluster);
  if (cs.mbc.k > static_cast<int64_t>(tasks.size()))
    throw Error(str("--cluster: k = ", cs.mbc.k, " clusters for ", tasks.size(), " tasks"));
  BuildLibraryOptions probe = o;
  probe.library.where = out_dir + "/probe/library";
  probe.library.token_file.clear();
  probe.library.tls_ca.clear();
  probe.name_prefix = "probe:";
  probe.overrides.push_back("epochs=0");
  probe.overrides.push_back(str("steps=", cs.steps));
  std::vector<BuildItem> probes;
  for (const std::string& t : tasks) probes.push_back({{t}, "probe:" + t, t});
  if (world.rank() == 0)
    std::printf("build-library --cluster %s: a %lld-step probe per task, then %lld experts\n",
                o.cluster.c_str(), static_cast<long long>(cs.steps),
                static_cast<long long>(cs.mbc.k));
  build_items(probe, probes, out_dir + "/probe", world);
  std::vector<int32_t> labels(tasks.size(), 0);
  nlohmann::json extra;
  if (world.rank() == 0) {
    auto lib = open_library(probe.library, false, true);
    std::vector<std::vector<float>> features;
    std::vector<std::string> modules;
    for (const std::string& t : tasks) {
      adapters::AdapterFile file;
      check_store(store::GetAdapter(*lib, "probe:" + t + "@latest", &file), "probe " + t);
      const auto f = file.linear_factors();
      std::vector<std::string> names;
      for (const auto& [m, lf] : f) names.push_back(m);
      if (modules.empty()) modules = names;
      if (names != modules)
        throw Error(str("--cluster: the probe of '", t,
                        "' adapts other modules than the first task's: MBC compares experts "
                        "module by module (use one --adapter for every task)"));
      features.push_back(cs.init_free ? routing::init_free_feature(f, cs.sketch, cs.mbc.seed)
                                      : routing::lora_feature(f));
    }
    const std::vector<int> l = routing::canonical_labels(routing::mbc_clusters(features, cs.mbc));
    std::copy(l.begin(), l.end(), labels.begin());
  }
  world.broadcast(labels.data(), labels.size() * sizeof(int32_t), 0);
  std::vector<BuildItem> items;
  for (size_t i = 0; i < tasks.size(); ++i) {
    const size_t c = static_cast<size_t>(labels[i]);
    if (items.size() <= c) items.resize(c + 1);
    items[c].tasks.push_back(tasks[i]);
  }
  for (size_t c = 0; c < items.size(); ++c) {
    items[c].name = str(o.name_prefix, "cluster-", c);
    for (const std::string& t : items[c].tasks)
      items[c].label += (items[c].label.empty() ? "" : ";") + t;
  }
  if (world.rank() == 0) {
    std::printf("MBC (%s feature) clusters:\n", cs.init_free ? "init-free" : "mttl's lora");
    for (const BuildItem& it : items)
      std::printf("  %-12s %s\n", it.name.c_str(), it.label.c_str());
    std::fflush(stdout);
    extra["clusters"] = nlohmann::json::array();
    for (const BuildItem& it : items)
      extra["clusters"].push_back({{"name", it.name}, {"tasks", it.tasks}});
    extra["feature"] = cs.init_free ? "init-free" : "lora";
  }
  return build_items(o, items, out_dir, world, extra);
}

}  // namespace

int run_build_library(const BuildLibraryOptions& o) {
  if (o.library.empty())
    throw Error("--library: name the library to build (a folder, or grpc://HOST:PORT)");
  const std::string out_dir = o.out_dir.empty() ? "runs/library" : o.out_dir;
  const std::vector<std::string> tasks = expand_tasks(o.tasks);
  if (!o.cluster.empty()) parse_cluster(o.cluster);  // a mistake before the world meets
  std::unique_ptr<dist::ProcessGroup> world = dist::make_process_group();
  if (!o.cluster.empty()) return build_clustered(o, tasks, out_dir, *world);
  std::vector<BuildItem> items;
  for (const std::string& t : tasks) items.push_back({{t}, o.name_prefix + t, t});
  return build_items(o, items, out_dir, *world);
}

Command add_build_library_command(CLI::App& app) {
  auto o = std::make_shared<BuildLibraryOptions>();
  BuildLibraryOptions& bl = *o;
  auto* c_bl = app.add_subcommand(
      "build-library",
      "Train one expert per task and commit each to the library once; under mpirun or "
      "tessera launch the tasks are spread over the ranks by a work queue on rank 0");
  c_bl->add_option("--base", bl.base,
                   "Base model: a tessera checkpoint (.safetensors) or a Hugging Face folder")
      ->required();
  c_bl->add_option("--tasks", bl.tasks,
                   "TASK[;TASK...] or @FILE (a task a line); {A..B} ranges expand, e.g. "
                   "'permute:seed={1..6}'; repeatable")
      ->required()
      ->allow_extra_args(false);
  c_bl->add_option("--adapter", bl.adapter, "KIND[:key=value,...] as for train-adapter")
      ->capture_default_str();
  c_bl->add_option("--library", bl.library.where,
                   "The library: a folder (rank 0 commits) or grpc://HOST:PORT (every rank "
                   "puts its experts through the lookup service)")
      ->required();
  c_bl->add_option("--token-file", bl.library.token_file,
                   "grpc:// library: file holding the service's bearer token");
  c_bl->add_option("--tls-ca", bl.library.tls_ca,
                   "grpc:// library: PEM roots to trust (turns TLS on)");
  c_bl->add_option("--out", bl.out_dir,
                   "Run folder: OUT/K per task, OUT/build.json (default "
                   "runs/library)");
  c_bl->add_option("--name-prefix", bl.name_prefix, "Expert names: PREFIX + task");
  c_bl->add_flag("--retrain", bl.retrain,
                 "Train tasks whose expert the library already holds for this base");
  c_bl->add_option("--task-timeout", bl.task_timeout_minutes,
                   "Minutes: a rank silent this long on one task is dropped, its task requeued")
      ->capture_default_str();
  c_bl->add_option("--cluster", bl.cluster,
                   "mbc:k=K[,steps=100,feature=lora|init-free,sparsity=0.8,components=64,seed=42]: "
                   "a short probe per task, the probes clustered (mttl's MBC), then one expert per "
                   "cluster trained on its tasks' union, named PREFIX + cluster-I");
  c_bl->add_option("overrides", bl.overrides, "key=value config overrides for every task");
  return {c_bl, [o] { return run_build_library(*o); }};
}

}  // namespace tessera::launch
