// tessera demo: the main job on embedded defaults.
#include "launch/commands.h"
#include "launch/runs.h"

#include <CLI/CLI.hpp>
#include <memory>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>

#include "launch/config.h"
#include "runtime/common/error.h"
#include "runtime/io/fingerprint.h"
#include "runtime/train/trainer.h"
#include "store/library.h"
#include "store/service.h"
#include "tessera/library.pb.h"

namespace tessera::launch {

namespace fs = std::filesystem;

int run_demo(const DemoOptions& o) {
  std::printf("tessera demo: pretraining the base models into %s\n", o.out_dir.c_str());
  std::vector<RunSummary> rows;

  RunConfig mlp = default_config("mlp");
  mlp.set_out_dir(o.out_dir + "/mlp");
  mlp.set_threads(o.threads);
  mlp.mutable_data()->set_dir(o.data_dir);
  if (o.quick) {
    mlp.set_epochs(0);
    mlp.set_steps(30);
    mlp.mutable_data()->set_limit_train(4096);
    mlp.mutable_data()->set_limit_test(1000);
  } else {
    mlp.set_epochs(5);
  }
  validate_config(mlp);
  rows.push_back(train_and_save(mlp, "", 0, true));

  RunConfig lm = default_config("decoder");
  lm.set_out_dir(o.out_dir + "/decoder");
  lm.set_threads(o.threads);
  if (o.quick) {
    lm.set_steps(5);
    lm.mutable_optim()->set_warmup_steps(1);
    lm.set_eval_batches(2);
    auto* d = lm.mutable_decoder();
    d->set_n_layer(1);
    d->set_d_model(64);
    d->set_n_ctx(32);
  } else {
    lm.set_steps(180);  // about 3 minutes on 2 cores
    lm.mutable_optim()->set_warmup_steps(20);
    lm.mutable_optim()->set_lr(2e-3f);
  }
  validate_config(lm);
  rows.push_back(train_and_save(lm, "", 0, true));

  // Task adapters on the MLP base: LoRA on its hidden layers, base frozen.
  struct AdapterRow {
    std::string task, before, after;
  };
  std::vector<AdapterRow> adapter_rows;
  const std::string library_dir = o.out_dir + "/library";
  LibraryTarget library_target;
  library_target.where = library_dir;
  std::unique_ptr<store::LibraryApi> library = open_library(library_target, true);
  const std::string base_print = io::base_fingerprint(rows.front().checkpoint);
  for (const std::string task : {"permute:seed=1", "rotate:deg=90", "classes:0,2,4,6"}) {
    RunConfig ac = train::read_checkpoint_config(rows.front().checkpoint);
    ac.mutable_data()->set_task(task);
    ac.set_out_dir(o.out_dir + "/adapters/" + task.substr(0, task.find(':')));
    train::set_adapter_schedule(&ac);
    ac.set_epochs(o.quick ? 0.05f : 1.0f);  // the demo's: one epoch
    AdapterRun r =
        train_adapter(ac, rows.front().checkpoint, base_print, adapters::AdapterArgs{}, true);
    put_trained(*library, r.adapter_file, task.substr(0, task.find(':')), task,
                rows.front().checkpoint, base_print, r.after, ac, r.centroids);
    char b[32], a2[32];
    std::snprintf(b, sizeof b, "%.2f%%", r.before.accuracy * 100);
    std::snprintf(a2, sizeof a2, "%.2f%%", r.after.accuracy * 100);
    adapter_rows.push_back({task, b, a2});
  }

  std::printf("\n%-16s %9s %7s %8s %18s  %s\n", "model", "params", "steps", "time", "throughput",
              "test split");
  for (const auto& r : rows)
    std::printf("%-16s %9s %7ld %7.0fs %18s  %s\n", r.model.c_str(), r.params.c_str(),
                static_cast<long>(r.steps), r.seconds, r.throughput.c_str(), r.eval.c_str());
  std::printf("\n%-18s %14s %16s   (LoRA r=8 on the MLP's hidden layers, %s)\n", "task",
              "base accuracy", "with adapter", o.quick ? "a few steps" : "1 epoch");
  for (const auto& r : adapter_rows)
    std::printf("%-18s %14s %16s\n", r.task.c_str(), r.before.c_str(), r.after.c_str());
  {
    // The experts routed zero-shot on the tasks mixed, no task ids given,
    // beside the task oracle; rotate:deg=45 is a task no expert saw.
    RouteOptions ro;
    ro.base = rows.front().checkpoint;
    ro.library = library_target;
    ro.eval = "permute:seed=1;rotate:deg=90;classes:0,2,4,6;rotate:deg=45";
    ro.routers = {"base", "task", "arrow:top_k=1", "arrow:top_k=2", "centroid:top_k=1", "uniform"};
    ro.overrides = {str("threads=", o.threads)};
    library.reset();  // run_route opens it read-only
    const RouteResult routed = run_route(ro);
    library = open_library(library_target, false);
    std::printf(
        "\nrouting the library's experts on inputs with no task id "
        "(tessera route --base %s --library %s --eval '%s'):",
        ro.base.c_str(), library_dir.c_str(), ro.eval.c_str());
    print_route(routed, false);
    const std::string png = (fs::path(o.out_dir) / "routing.png").string();
    write_route_png(routed, png);
    std::printf("expert usage and per-module routing accuracy drawn in %s\n", png.c_str());
  }
  std::printf("\ncheckpoints:\n");
  for (const auto& r : rows) std::printf("  %s\n", r.checkpoint.c_str());
  std::printf("Hugging Face folders (config.json + model.safetensors): %s/decoder/model\n",
              o.out_dir.c_str());
  std::printf("adapters: %s/adapters/*/adapter.safetensors (PEFT folders beside them: adapter/)\n",
              o.out_dir.c_str());
  {
    // The adapters went into the library; look one up again by name through
    // the lookup API: a gRPC server in this process on a free loopback port,
    // with a bearer token, exactly what `tessera serve` runs.
    store::ServerOptions so;
    so.token = random_token();
    std::unique_ptr<store::Server> server;
    check_store(store::Server::Start(library.get(), so, &server), "demo lookup service");
    store::ClientOptions co;
    co.target = "127.0.0.1:" + std::to_string(server->port());
    co.token = so.token;
    std::unique_ptr<store::RemoteLibrary> remote;
    check_store(store::RemoteLibrary::Connect(co, &remote), "demo lookup service");
    AdapterRecord rec, local;
    std::vector<store::TensorData> ts, local_ts;
    const auto t0 = std::chrono::steady_clock::now();
    check_store(remote->Get("rotate@latest", &rec, &ts), "demo lookup through the API");
    const double ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    check_store(library->Get("rotate@latest", &local, &local_ts), "demo library");
    bool same = rec.id() == local.id() && ts.size() == local_ts.size();
    size_t bytes = 0;
    for (size_t i = 0; same && i < ts.size(); ++i) {
      same = ts[i].bytes == local_ts[i].bytes;
      bytes += ts[i].bytes.size();
    }
    if (!same) throw Error("demo: the adapter fetched through the API differs from the store's");
    server->Shutdown();
    std::printf(
        "library: %s — rotate@latest is %.16s… (%s, %s %.2f%%),\n"
        "  fetched through the gRPC lookup API (127.0.0.1:%d, bearer token) in %.1f ms: %zu "
        "tensors, %.1f KB, bit-identical to the store\n"
        "  list it with: tessera library --library %s ls\n"
        "  serve it with: tessera serve --library %s --listen 127.0.0.1:7433 --token-file FILE\n",
        library_dir.c_str(), rec.id().c_str(), rec.kind().c_str(), rec.scores(0).metric().c_str(),
        rec.scores(0).value() * 100, server->port(), ms, ts.size(), bytes / 1024.0,
        library_dir.c_str(), library_dir.c_str());
  }
  std::printf("evaluate again with: tessera eval --checkpoint %s\n",
              rows.back().checkpoint.c_str());
  return 0;
}

Command add_demo_command(CLI::App& app) {
  auto o = std::make_shared<DemoOptions>();
  DemoOptions& demo = *o;
  auto* c_demo = app.add_subcommand("demo",
                                    "Pretrain the demo base models (Fashion-MNIST MLP and a "
                                    "byte-level LM), evaluate and save them");
  c_demo->add_option("--out", demo.out_dir, "Run folder")->capture_default_str();
  c_demo->add_flag("--quick", demo.quick, "A few steps of each model (smoke test)");
  c_demo->add_option("--threads", demo.threads, "Threads (0: cores available)")
      ->capture_default_str();
  c_demo->add_option("--data-dir", demo.data_dir, "Fashion-MNIST folder")->capture_default_str();
  return {c_demo, [o] { return run_demo(*o); }};
}

}  // namespace tessera::launch
