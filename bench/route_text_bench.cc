// Routing on text (issue 13): the byte-level GPT-2 decoder pretrained on
// English prose (/usr/share/common-licenses), one LoRA r=8 expert each for
// C headers (/usr/include/*.h), Python sources (/usr/lib/python3*/*.py) and
// shell scripts (the #!…sh files of /usr/bin), then every router on each
// domain's held-out split with no task ids, and on C++ standard headers
// (/usr/include/c++/N/*), which no expert saw. Bits per byte (lower is
// better), routing accuracy per module. Printed as JSON lines, all in this
// one run:
//   - route: base, task oracle, Arrow top-1/top-2 (both modes), centroids
//     (top-1, all), uniform, R2-T2; and Arrow and centroids scoring each
//     byte by its sequence's mean module input so far (context=prefix);
//   - MoLE: a top-2 gate per module over the three frozen experts, trained
//     on the three domains mixed with no task ids (train-router), evaluated
//     per domain;
//   - zero-shot C++: each single expert alone beside the routers.
//
//   route_text_bench [--out DIR] [--quick] [--threads N] [--reuse]
// (--reuse: keep OUT's base and experts from an earlier run of the same
// settings and redo the routing only.)
#include <CLI/CLI.hpp>
#include <chrono>
#include <filesystem>
#include <fstream>

#include "bench/common.h"
#include "launch/base.h"
#include "launch/commands.h"
#include "launch/experts.h"
#include "launch/runs.h"
#include "runtime/common/error.h"
#include "runtime/io/fingerprint.h"
#include "runtime/train/trainer.h"
#include "store/library.h"
#include "tessera/library.pb.h"

using namespace tessera;
using namespace tessera::launch;
using bench::emit;
using bench::joined;
using bench::json;
using bench::Quiet;
using bench::seconds_since;
namespace fs = std::filesystem;

namespace {

// Copies the regular files of `from` accepted by `keep` (given the file's
// first 64 bytes) into `to`, up to `max_bytes` in all; returns the count.
template <class Keep>
int copy_files(const fs::path& from, const fs::path& to, uint64_t max_bytes, Keep keep) {
  if (fs::exists(to)) {  // --reuse: the corpus the experts were trained on, as it was
    int n = 0;
    for (const auto& e : fs::directory_iterator(to)) n += e.is_regular_file();
    return n;
  }
  fs::create_directories(to);
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(from))
    if (e.is_regular_file() && !e.is_symlink()) files.push_back(e.path());
  std::sort(files.begin(), files.end());
  uint64_t total = 0;
  int n = 0;
  for (const fs::path& f : files) {
    std::ifstream in(f, std::ios::binary);
    std::string head(64, '\0');
    in.read(head.data(), 64);
    head.resize(static_cast<size_t>(in.gcount()));
    if (!keep(head)) continue;
    const uint64_t size = fs::file_size(f);
    if (size == 0 || total + size > max_bytes) continue;
    fs::copy_file(f, to / f.filename(), fs::copy_options::overwrite_existing);
    total += size;
    ++n;
  }
  return n;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Routing three text experts over a prose decoder, and C++ zero-shot"};
  std::string out = "/tmp/route_text_bench";
  bool quick = false;
  int threads = 0;
  app.add_option("--out", out, "Work folder (wiped)");
  app.add_flag("--quick", quick, "Fewer steps (a smoke run, not the figures)");
  app.add_option("--threads", threads, "Threads (0: the cores)");
  bool reuse = false;
  app.add_flag("--reuse", reuse, "Keep OUT's base and experts (an earlier run's) and route again");
  CLI11_PARSE(app, argc, argv);
  try {
    reuse = reuse && fs::exists(out + "/base/checkpoint.safetensors") && fs::exists(out + "/lib");
    if (!reuse) fs::remove_all(out);
    fs::create_directories(out);
    const std::string th = "threads=" + std::to_string(threads);
    // Shell scripts and the C++ standard headers as plain folders of files.
    const int shell = copy_files("/usr/bin", out + "/shell", 4u << 20, [](const std::string& h) {
      return h.rfind("#!", 0) == 0 && h.find("sh") != std::string::npos &&
             h.find('\n') != std::string::npos &&
             h.substr(0, h.find('\n')).find("sh") != std::string::npos &&
             h.find("python") == std::string::npos && h.find("perl") == std::string::npos;
    });
    fs::path cxx;
    for (const auto& e : fs::directory_iterator("/usr/include/c++"))
      if (e.is_directory() && !e.is_symlink()) cxx = e.path();
    const int cxx_files =
        cxx.empty() ? 0 : copy_files(cxx, out + "/cxx", 4u << 20, [](auto&) { return true; });
    if (shell < 5 || cxx_files < 5)
      throw Error(str("too few shell scripts (", shell, ") or C++ headers (", cxx_files, ")"));
    const std::vector<std::pair<std::string, std::string>> domains = {
        {"c-headers", "text:/usr/include/*.h"},
        {"python", "text:/usr/lib/python3*/*.py"},
        {"shell", "text:" + out + "/shell/*"}};
    const std::string cxx_task = "text:" + out + "/cxx/*";
    emit({{"phase", "corpora"}, {"shell_scripts", shell}, {"cxx_headers", cxx_files}});

    auto t0 = std::chrono::steady_clock::now();
    PretrainOptions p;
    p.model = "decoder";
    p.quiet = true;
    p.overrides = {quick ? "steps=30" : "steps=600",
                   "optim.lr=2e-3",
                   "optim.warmup_steps=20",
                   "eval_batches=10",
                   th,
                   "out_dir=" + out + "/base"};
    if (!reuse) {
      Quiet q;
      run_pretrain(p);
    }
    const std::string base = out + "/base/checkpoint.safetensors";
    emit({{"phase", "pretrain on prose"}, {"seconds", seconds_since(t0)}});

    t0 = std::chrono::steady_clock::now();
    BuildLibraryOptions b;
    b.base = base;
    std::string joined, mixed;
    for (const auto& [name, task] : domains) {
      joined += (joined.empty() ? "" : ";") + task;
      mixed += (mixed.empty() ? "text:" : "|") + task.substr(5);
    }
    b.tasks = {joined};
    b.library.where = out + "/lib";
    b.out_dir = out + "/experts";
    b.overrides = {quick ? "steps=20" : "steps=300", "optim.lr=2e-3", "eval_batches=10", th};
    if (!reuse) {
      Quiet q;
      run_build_library(b);
    }
    emit({{"phase", "three experts"}, {"seconds", seconds_since(t0)}});

    RouteOptions ro;
    ro.base = base;
    ro.library = b.library;
    ro.eval = joined + ";" + cxx_task;
    ro.max_batches = quick ? 2 : 20;
    ro.routers = {"base",
                  "task",
                  "arrow:top_k=1",
                  "arrow:top_k=2",
                  "arrow:top_k=2,mode=merge-before",
                  "centroid:top_k=1",
                  "centroid",
                  "uniform",
                  "r2t2:alpha=0,neighbours=10,reference=64",
                  "arrow:top_k=2,context=prefix",
                  "centroid:top_k=1,context=prefix",
                  "centroid:context=prefix"};
    ro.overrides = {th, "eval_batches=" + std::to_string(ro.max_batches)};
    t0 = std::chrono::steady_clock::now();
    RouteResult r;
    {
      Quiet q;
      r = run_route(ro);
    }
    const double route_s = seconds_since(t0);
    std::vector<std::string> names;
    for (const auto& d : domains) names.push_back(d.first);
    names.push_back("cxx (unseen)");
    for (const auto& row : r.rows) {
      json j = {
          {"bench", "route_text"},
          {"router", row.router},
          {"routing_accuracy", row.routing_acc},
          {"module_routing_accuracy_first_last", {row.module_acc.front(), row.module_acc.back()}},
          {"mean_bits_per_byte_seen", (row.score[0] + row.score[1] + row.score[2]) / 3}};
      for (size_t t = 0; t < names.size(); ++t) j["bits_per_byte"][names[t]] = row.score[t];
      emit(j);
    }
    emit({{"phase", "route"}, {"seconds", route_s}, {"modules", r.modules.size()}});

    // Each expert alone on the unseen C++ headers (uniform over one expert).
    for (const std::string& e : r.experts) {
      RouteOptions one = ro;
      one.eval = cxx_task;
      one.experts = {e};
      one.routers = {"uniform"};
      RouteResult s;
      {
        Quiet q;
        s = run_route(one);
      }
      emit({{"bench", "route_text"},
            {"router", "single expert " + e},
            {"bits_per_byte", {{"cxx (unseen)", s.rows[0].score[0]}}}});
    }

    // MoLE: a gate over the three frozen experts, trained on the mixed corpus.
    t0 = std::chrono::steady_clock::now();
    if (reuse) {  // a fresh library beside the same experts: no earlier router in the way
      auto lib = open_library(b.library, false);
      AdapterRecord old;
      if (lib->Get("mole@latest", &old).ok()) check_store(lib->Delete("mole@latest"), "mole");
    }
    TrainRouterOptions tr;
    tr.base = base;
    tr.library = b.library;
    tr.router = "mole:top_k=2";
    tr.tasks = {mixed};
    tr.name = "mole";
    tr.quiet = true;
    tr.overrides = {quick ? "steps=10" : "steps=200", "optim.lr=3e-3", th, "eval_batches=10"};
    {
      Quiet q;
      run_train_router(tr);
    }
    auto lib = open_library(b.library, false, true);
    AdapterRecord rec;
    check_store(lib->Get("mole@latest", &rec), "mole@latest");
    json j = {{"bench", "route_text"},
              {"router", "mole top_k=2 (trained on the mixed corpus)"},
              {"train_seconds", seconds_since(t0)}};
    double seen = 0;
    std::vector<std::string> eval_tasks;
    for (const auto& d : domains) eval_tasks.push_back(d.second);
    eval_tasks.push_back(cxx_task);
    for (size_t i = 0; i < eval_tasks.size(); ++i) {
      const RunConfig cfg = adapter_run_config(base, {eval_tasks[i]}, "", ro.overrides);
      train::Trainer t(cfg);
      load_base_weights(t, base);
      auto router = load_library_router(*lib, rec.id(), t, io::base_fingerprint(base),
                                        workload_tasks(cfg, {eval_tasks[i]}));
      const double bpb = t.evaluate(ro.max_batches).bits_per_token;
      j["bits_per_byte"][names[i]] = bpb;
      if (i < 3) seen += bpb / 3;
    }
    j["mean_bits_per_byte_seen"] = seen;
    emit(j);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "route_text_bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
