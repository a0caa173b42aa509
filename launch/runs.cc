#include "launch/runs.h"

#include "launch/commands.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <sstream>
#include <thread>

#include "adapters/adapter_file.h"
#include "adapters/bank.h"
#include "adapters/lora.h"
#include "adapters/peft.h"
#include "launch/base.h"
#include "launch/config.h"
#include "routing/centroids.h"
#include "runtime/common/error.h"
#include "runtime/common/threads.h"
#include "runtime/data/data.h"
#include "runtime/dist/process_group.h"
#include "runtime/io/fingerprint.h"
#include "runtime/train/trainer.h"
#include "store/library.h"
#include "tessera/library.pb.h"

namespace tessera::launch {

namespace fs = std::filesystem;

std::string human_count(int64_t n) {
  char buf[32];
  if (n >= 1000000)
    std::snprintf(buf, sizeof buf, "%.2fM", static_cast<double>(n) / 1e6);
  else if (n >= 1000)
    std::snprintf(buf, sizeof buf, "%.1fK", static_cast<double>(n) / 1e3);
  else
    std::snprintf(buf, sizeof buf, "%ld", static_cast<long>(n));
  return buf;
}

std::string eval_text(const train::EvalResult& e) {
  char buf[128];
  if (e.accuracy >= 0)
    std::snprintf(buf, sizeof buf, "accuracy %.2f%% (loss %.4f, %ld examples)", e.accuracy * 100.0,
                  e.loss, static_cast<long>(e.count));
  else
    std::snprintf(buf, sizeof buf, "loss %.4f, %.3f bits/token (%ld tokens)", e.loss,
                  e.bits_per_token, static_cast<long>(e.count));
  return buf;
}

std::string short_eval(const train::EvalResult& e) {
  char buf[64];
  if (e.accuracy >= 0)
    std::snprintf(buf, sizeof buf, "%.2f%%", e.accuracy * 100.0);
  else
    std::snprintf(buf, sizeof buf, "loss %.4f", e.loss);
  return buf;
}

void warn_if_oversubscribed(const RunConfig& cfg) {
  const int machine = static_cast<int>(std::thread::hardware_concurrency());
  if (cfg.threads() > 0 && machine > 0 && local_ranks() > 1 &&
      cfg.threads() * local_ranks() > machine)
    spdlog::warn(
        "threads={} on each of {} ranks here is {} threads on {} cores: expect a large "
        "slowdown (leave threads unset for cores / ranks)",
        cfg.threads(), local_ranks(), cfg.threads() * local_ranks(), machine);
}

std::string comm_text(const train::Trainer& t, int ranks) {
  if (ranks <= 1) return "";
  char buf[160];
  std::snprintf(buf, sizeof buf,
                "gradient averaging over %d ranks: %.1f%% of step time waited, %.0f%% of it "
                "hidden behind backward",
                ranks, t.comm_wait_share() * 100.0, t.comm_hidden_share() * 100.0);
  return buf;
}

RunSummary train_and_save(const RunConfig& cfg, const std::string& resume, int64_t max_steps,
                          bool progress) {
  auto t0 = std::chrono::steady_clock::now();
  // The world this process belongs to (mpirun, tessera launch, TESSERA_* by
  // hand; one process otherwise): data parallel over it, rank 0 writes.
  std::unique_ptr<dist::ProcessGroup> world = dist::make_process_group();
  const bool lead = world->rank() == 0;
  if (lead) warn_if_oversubscribed(cfg);
  train::Trainer t(cfg, world->rank(), world->size());
  t.set_process_group(world.get());
  if (!resume.empty()) {
    t.load_checkpoint(resume);
    if (lead) spdlog::info("resumed from {} at step {}", resume, t.step());
  }
  if (lead)
    spdlog::info("{}: {} parameters, {} steps of batch {}, {} threads{}, out {}", t.kind(),
                 human_count(t.params().count()), t.total_steps(), cfg.batch_size(), num_threads(),
                 world->size() > 1 ? str(" × ", world->size(), " ranks (", world->backend(), ")")
                                   : std::string(),
                 cfg.out_dir());
  t.run(max_steps, progress && lead);
  const std::string ckpt = cfg.out_dir() + "/checkpoint.safetensors";
  if (lead) {
    fs::create_directories(cfg.out_dir());
    t.save_checkpoint(ckpt);
    t.export_model(cfg.out_dir() + "/model");
  }
  world->barrier();  // every rank returns once the checkpoint is written
  if (!lead) return RunSummary{};
  train::EvalResult e = t.evaluate(cfg.eval_batches());
  spdlog::info("{} at step {}: {}", t.kind(), t.step(), eval_text(e));
  RunSummary s;
  s.model = cfg.model() == "decoder" ? "decoder (" + t.config().decoder().flavor() + ")" : "mlp";
  s.params = human_count(t.params().count());
  s.eval = eval_text(e);
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.0f %s/s", t.mean_units_per_s(), t.unit());
  s.throughput = buf;
  s.comm = comm_text(t, world->size());
  s.checkpoint = ckpt;
  s.steps = t.step();
  s.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return s;
}

std::vector<std::string> split_tasks(const std::string& joined) {
  std::vector<std::string> out;
  std::stringstream ss(joined);
  std::string t;
  while (std::getline(ss, t, ';'))
    if (!t.empty()) out.push_back(t);
  return out;
}

std::vector<std::string> workload_tasks(const RunConfig& cfg,
                                        const std::vector<std::string>& given) {
  return cfg.model() == "mlp" ? split_tasks(cfg.data().task()) : given;
}

Signatures base_centroids(train::Trainer& t, int64_t max_rows,
                          const std::vector<std::string>& modules) {
  std::vector<nn::Linear*> linears;
  for (nn::Linear* l : t.linears())
    if (modules.empty() || std::find(modules.begin(), modules.end(), l->name()) != modules.end())
      linears.push_back(l);
  routing::CentroidRecorder rec(linears, max_rows);
  const int64_t n = t.train_examples(), B = std::max<int64_t>(1, t.config().batch_size());
  for (int64_t i = 0; i < n && rec.rows() < max_rows; i += B) {
    std::vector<int64_t> idx;
    for (int64_t j = i; j < std::min(n, i + B); ++j) idx.push_back(j);
    t.forward_train(idx);
  }
  return rec.centroids();
}

AdapterRun train_adapter(const RunConfig& cfg, const std::string& base_ckpt,
                         const std::string& fingerprint, const adapters::AdapterArgs& a,
                         bool progress, dist::ProcessGroup* world) {
  const int rank = world ? world->rank() : 0, size = world ? world->size() : 1;
  if (rank == 0 && world) warn_if_oversubscribed(cfg);
  train::Trainer t(cfg, rank, size);
  load_base_weights(t, base_ckpt);
  AdapterRun r;
  r.before = t.evaluate();
  const Signatures centroids = base_centroids(t, kCentroidRows);
  std::unique_ptr<adapters::AdapterSet> set;
  t.attach([&](std::vector<nn::Linear*> linears, nn::ParameterSet& base) {
    // An embedding named as a target: loaded from PEFT folders, not trained here.
    for (const std::string& target : a.targets)
      for (nn::Embedding* e : t.embeddings()) {
        const std::string& n = e->name();
        if (n == target || (n.size() > target.size() &&
                            n.compare(n.size() - target.size(), target.size(), target) == 0 &&
                            n[n.size() - target.size() - 1] == '.'))
          throw Error(str("adapter target '", target, "' is the embedding ", n,
                          ": LoRA on an embedding loads from PEFT folders (eval --adapter, "
                          "import-peft) but train-adapter trains Linear modules only"));
      }
    set = std::make_unique<adapters::AdapterSet>(linears, base, a.targets, a.spec, cfg.seed());
    return &set->params();
  });
  r.modules = set->modules().size();
  for (const auto& c : centroids)
    if (std::find(set->modules().begin(), set->modules().end(),
                  c.first.substr(std::string("centroid/").size())) != set->modules().end())
      r.centroids.push_back(c);
  r.trainable = set->params().count(/*trainable_only=*/true);
  t.set_process_group(world);
  if (rank == 0 && progress)
    spdlog::info("{}: {} r={} on {} modules, {} trainable of {} parameters{}", t.kind(),
                 adapters::kind_name(a.spec.kind), a.spec.lora.defaults.r, r.modules,
                 human_count(r.trainable), human_count(t.params().count()),
                 size > 1 ? str(", ", size, " ranks") : std::string());
  t.run(0, progress && rank == 0);
  r.units_per_s = t.mean_units_per_s();
  r.comm = comm_text(t, size);
  r.after = t.evaluate();
  if (world) world->barrier();
  if (rank != 0) return r;
  fs::create_directories(cfg.out_dir());
  t.save_checkpoint(cfg.out_dir() + "/checkpoint.safetensors");
  r.adapter_file = cfg.out_dir() + "/adapter.safetensors";
  adapters::save_adapter(*set, r.adapter_file, base_ckpt, fingerprint);
  if (set->kind() == adapters::Kind::Lora || set->kind() == adapters::Kind::Dora) {
    r.peft_dir = cfg.out_dir() + "/adapter";
    adapters::export_peft(*set, r.peft_dir, base_ckpt, fingerprint);
  }
  return r;
}

AdapterRecord trained_record(const std::string& name, const std::string& task,
                             const std::string& base_ckpt, const std::string& fingerprint,
                             const train::EvalResult& after, const RunConfig& cfg,
                             const Signatures& signatures) {
  AdapterRecord rec;
  for (const auto& [name, vec] : signatures) {
    Signature* sg = rec.add_signatures();
    sg->set_name(name);
    for (float x : vec) sg->add_vector(x);
  }
  rec.set_name(name);
  rec.set_task(task);
  rec.mutable_base()->set_name(base_ckpt);
  rec.mutable_base()->set_fingerprint(fingerprint);
  Score* sc = rec.add_scores();
  sc->set_task(task);
  sc->set_split(cfg.data().eval_split().empty() ? "test" : cfg.data().eval_split());
  sc->set_metric(after.accuracy >= 0 ? "accuracy" : "loss");
  sc->set_value(after.accuracy >= 0 ? after.accuracy : after.loss);
  rec.mutable_provenance()->set_training_config(to_text(cfg));
  rec.mutable_provenance()->set_seed(cfg.seed());
  rec.mutable_provenance()->set_data(task);
  return rec;
}

std::string put_trained(store::LibraryApi& library, const std::string& file,
                        const std::string& name, const std::string& task,
                        const std::string& base_ckpt, const std::string& fingerprint,
                        const train::EvalResult& after, const RunConfig& cfg,
                        const Signatures& signatures) {
  return put_adapter_file(
      library, file, trained_record(name, task, base_ckpt, fingerprint, after, cfg, signatures));
}

int train_bank(const RunConfig& cfg, const std::string& base_ckpt, const adapters::AdapterArgs& a,
               const std::vector<std::string>& tasks, bool progress, const LibraryTarget& library,
               const std::string& name, dist::ProcessGroup& world) {
  if (a.spec.kind != adapters::Kind::Lora)
    throw Error(str("several tasks at once train a bank of LoRA experts; ",
                    adapters::kind_name(a.spec.kind), " is trained one task at a time"));
  const int rank = world.rank(), size = world.size();
  if (rank == 0) warn_if_oversubscribed(cfg);
  // Open (or reach) the library first: a wrong path or token fails before training.
  std::unique_ptr<store::LibraryApi> lib;
  if (!library.empty() && rank == 0) lib = open_library(library, true);
  // Data parallel like one task: every rank routes its share of each batch
  // to the experts, the bank's gradients are averaged; rank 0 writes.
  train::Trainer t(cfg, rank, size);
  load_base_weights(t, base_ckpt);
  const int T = t.num_tasks();
  std::vector<train::EvalResult> before;
  if (rank == 0)  // (only rank 0 reports)
    for (int k = 0; k < T; ++k) before.push_back(t.evaluate(-1, k));
  std::unique_ptr<adapters::BankSet> bank;
  std::vector<bool> conv1d;
  t.attach([&](std::vector<nn::Linear*> linears, nn::ParameterSet& base) {
    bank =
        std::make_unique<adapters::BankSet>(linears, base, a.targets, T, a.spec.lora, cfg.seed());
    for (nn::Linear* l : linears)
      for (const std::string& m : bank->modules())
        if (l->name() == m) conv1d.push_back(l->conv1d());
    return &bank->params();
  });
  adapters::BankSet* b = bank.get();
  t.set_row_task_hook([b](const std::vector<int32_t>& rows) { b->route(rows); });
  t.set_process_group(&world);
  if (rank == 0)
    spdlog::info("{}: {} LoRA experts r={} trained together on {} modules, {} trainable{}",
                 t.kind(), T, a.spec.lora.defaults.r, bank->modules().size(),
                 human_count(bank->params().count(true)),
                 size > 1 ? str(", ", size, " ranks") : std::string());
  t.run(0, progress && rank == 0);
  world.barrier();
  if (rank != 0) return 0;  // rank 0 evaluates, writes and reports
  const std::string fingerprint = io::base_fingerprint(base_ckpt);
  std::printf("\n%-24s %14s %14s  %s\n", "task", "base accuracy", "with expert", "adapter");
  fs::create_directories(cfg.out_dir());
  for (int k = 0; k < T; ++k) {
    train::EvalResult after = t.evaluate(-1, k);
    std::string dir = cfg.out_dir() + "/" + std::to_string(k);
    adapters::save_lora_factors(dir + "/adapter.safetensors", bank->expert(k), conv1d, base_ckpt,
                                fingerprint);
    const bool any_conv = std::find(conv1d.begin(), conv1d.end(), true) != conv1d.end();
    adapters::write_peft(dir + "/adapter", bank->expert(k), any_conv, base_ckpt, {}, fingerprint);
    std::printf("%-24s %13.2f%% %13.2f%%  %s/adapter.safetensors\n", tasks[k].c_str(),
                before[k].accuracy * 100, after.accuracy * 100, dir.c_str());
    if (lib) {
      // Each expert is evaluated on its own task: record that as its score.
      RunConfig one = cfg;
      one.mutable_data()->set_task(tasks[k]);
      std::printf("%24s library %s: %s\n", "", library.where.c_str(),
                  put_trained(*lib, dir + "/adapter.safetensors",
                              name.empty() ? tasks[k] : name + "-" + std::to_string(k), tasks[k],
                              base_ckpt, fingerprint, after, one)
                      .c_str());
    }
  }
  std::printf("%.0f samples/s over all tasks (%d experts in one pass over the frozen base)\n",
              t.mean_units_per_s(), T);
  t.save_checkpoint(cfg.out_dir() + "/checkpoint.safetensors");
  return 0;
}

RunConfig adapter_run_config(const std::string& base_path, const std::vector<std::string>& tasks,
                             const std::string& out_dir,
                             const std::vector<std::string>& overrides) {
  const BaseModel base = open_base(base_path, "--base");
  RunConfig cfg = base.config;
  cfg.set_out_dir(out_dir);
  // The thread count the base was trained with belongs to that run, not to
  // the model: here it is this machine's cores over its ranks unless set.
  cfg.set_threads(0);
  cfg.set_eval_every(0);
  cfg.set_checkpoint_every(0);
  if (tasks.empty()) throw Error("--task: name the task to train the adapter on");
  if (tasks.size() > 1 && cfg.model() != "mlp")
    throw Error("several --task at once train on the MLP base only (this base is a decoder)");
  const std::string& task = tasks.front();
  if (cfg.model() == "mlp") {
    std::string joined;
    for (const std::string& t : tasks) {
      if (t.rfind("text:", 0) == 0 || t.rfind("tokens:", 0) == 0)
        throw Error(str("task '", t, "' needs a decoder base; this base is an MLP"));
      if (t.find(';') != std::string::npos)
        throw Error(str("task '", t, "': give each task its own --task"));
      data::check_image_task(t);  // spelling, before any data is read
      joined += (joined.empty() ? "" : ";") + t;
    }
    cfg.mutable_data()->set_task(joined);
  } else {
    // text:GLOB (raw bytes as tokens) or tokens:GLOB (token-id .bin files,
    // e.g. written with a Hugging Face model's own tokenizer).
    const bool tokens = task.rfind("tokens:", 0) == 0;
    if (task.rfind("text:", 0) != 0 && !tokens)
      throw Error(str("task '", task,
                      "': a decoder base trains on text:GLOB[|GLOB...] (bytes) or "
                      "tokens:GLOB[|GLOB...] (token-id .bin files)"));
    cfg.mutable_data()->set_kind(tokens ? "tokens" : "text");
    cfg.mutable_data()->clear_files();
    std::stringstream ss(task.substr(tokens ? 7 : 5));
    std::string g;
    while (std::getline(ss, g, '|')) cfg.mutable_data()->add_files(g);
    data::expand_globs({cfg.data().files().begin(), cfg.data().files().end()});  // they match
  }
  train::set_adapter_schedule(&cfg);
  apply_base_overrides(&cfg, overrides, base);
  validate_config(cfg);
  return cfg;
}

}  // namespace tessera::launch
