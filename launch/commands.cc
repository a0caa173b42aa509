#include "launch/commands.h"

#include <spdlog/spdlog.h>
#include <unistd.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <thread>

#include "adapters/adapter_file.h"
#include "adapters/bank.h"
#include "adapters/lora.h"
#include "adapters/peft.h"
#include "launch/base.h"
#include "launch/config.h"
#include "runtime/common/error.h"
#include "runtime/common/rng.h"
#include "runtime/common/threads.h"
#include "runtime/data/data.h"
#include "runtime/dist/process_group.h"
#include "runtime/dist/work_queue.h"
#include "runtime/io/hf.h"
#include "runtime/train/trainer.h"
#include "store/library.h"
#include "store/service.h"
#include "tessera/library.pb.h"

namespace tessera::launch {

namespace fs = std::filesystem;

namespace {

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

// "85.20%" for a classifier, "loss 1.2345" for a language model.
std::string short_eval(const train::EvalResult& e) {
  char buf[64];
  if (e.accuracy >= 0)
    std::snprintf(buf, sizeof buf, "%.2f%%", e.accuracy * 100.0);
  else
    std::snprintf(buf, sizeof buf, "loss %.4f", e.loss);
  return buf;
}

// Explicit threads × ranks on this machine beyond its cores: OpenMP and BLAS
// threads of the ranks spin against each other (measured 5x slower), so say so.
void warn_if_oversubscribed(const PretrainConfig& cfg) {
  const int machine = static_cast<int>(std::thread::hardware_concurrency());
  if (cfg.threads() > 0 && machine > 0 && local_ranks() > 1 &&
      cfg.threads() * local_ranks() > machine)
    spdlog::warn(
        "threads={} on each of {} ranks here is {} threads on {} cores: expect a large "
        "slowdown (leave threads unset for cores / ranks)",
        cfg.threads(), local_ranks(), cfg.threads() * local_ranks(), machine);
}

// "gradient averaging over 2 ranks: 4.1% of step time waited, 62% of it
// hidden behind backward"; "" on one rank.
std::string comm_text(const train::Trainer& t, int ranks) {
  if (ranks <= 1) return "";
  char buf[160];
  std::snprintf(buf, sizeof buf,
                "gradient averaging over %d ranks: %.1f%% of step time waited, %.0f%% of it "
                "hidden behind backward",
                ranks, t.comm_wait_share() * 100.0, t.comm_hidden_share() * 100.0);
  return buf;
}

struct RunSummary {
  std::string model, params, eval, throughput, checkpoint;
  std::string comm;  // several ranks: the share of step time waiting on gradients
  int64_t steps = 0;
  double seconds = 0;
};

RunSummary train_and_save(const PretrainConfig& cfg, const std::string& resume, int64_t max_steps,
                          bool progress) {
  auto t0 = std::chrono::steady_clock::now();
  // The world this process belongs to (mpirun, tessera launch, TESSERA_* by
  // hand; one process otherwise): data parallel over it, rank 0 writes.
  std::unique_ptr<dist::ProcessGroup> world = dist::make_process_group();
  const bool lead = world->rank() == 0;
  if (lead) warn_if_oversubscribed(cfg);
  if (cfg.batch_size() % world->size() != 0)
    throw Error(str("batch_size ", cfg.batch_size(), " does not split over ", world->size(),
                    " ranks: make it a multiple of the world size"));
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

struct AdapterRun {
  train::EvalResult before, after;
  size_t modules = 0;
  int64_t trainable = 0;
  double units_per_s = 0;
  std::string comm;  // several ranks: how much of a step waited on gradients
  std::string adapter_file, peft_dir;
};

// Loads the base weights, evaluates the base on the task, attaches the adapter
// to the targets (base frozen), trains, evaluates, and writes under cfg.out_dir
// the trainer checkpoint, tessera's adapter file (adapter.safetensors) and, for
// LoRA and DoRA, the PEFT folder (adapter/).
// `fingerprint` is the base's (base_fingerprint), computed once by the caller.
// With `world` (several ranks) data parallel, rank 0 writing the files;
// the other ranks return a run without files.
AdapterRun train_adapter(const PretrainConfig& cfg, const std::string& base_ckpt,
                         const std::string& fingerprint, const AdapterArgs& a, bool progress,
                         dist::ProcessGroup* world = nullptr) {
  const int rank = world ? world->rank() : 0, size = world ? world->size() : 1;
  if (rank == 0 && world) warn_if_oversubscribed(cfg);
  if (cfg.batch_size() % size != 0)
    throw Error(str("batch_size ", cfg.batch_size(), " does not split over ", size,
                    " ranks: make it a multiple of the world size"));
  train::Trainer t(cfg, rank, size);
  load_base_weights(t, base_ckpt);
  AdapterRun r;
  r.before = t.evaluate();
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
  r.trainable = set->params().count(/*trainable_only=*/true);
  t.set_process_group(world);
  if (rank == 0 && progress)
    spdlog::info("{}: {} r={} on {} modules, {} trainable of {} parameters{}", t.kind(),
                 adapters::kind_name(a.spec.kind), a.spec.lora.base.r, r.modules,
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

// The library record of a trained adapter: its task, base, test score and
// provenance.
AdapterRecord trained_record(const std::string& name, const std::string& task,
                             const std::string& base_ckpt, const std::string& fingerprint,
                             const train::EvalResult& after, const PretrainConfig& cfg) {
  AdapterRecord rec;
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

// Puts a trained adapter file into `library` (see trained_record); returns
// "name@version id".
std::string put_trained(store::LibraryApi& library, const std::string& file,
                        const std::string& name, const std::string& task,
                        const std::string& base_ckpt, const std::string& fingerprint,
                        const train::EvalResult& after, const PretrainConfig& cfg) {
  return put_adapter_file(library, file,
                          trained_record(name, task, base_ckpt, fingerprint, after, cfg));
}

// Several tasks at once on the MLP base: one LoRA expert per task in a bank,
// every batch holding rows of each task routed to its expert, one pass over
// the frozen base. Writes one adapter file (and PEFT folder) per task.
int train_bank(const PretrainConfig& cfg, const std::string& base_ckpt, const AdapterArgs& a,
               const std::vector<std::string>& tasks, bool progress, const LibraryTarget& library,
               const std::string& name, dist::ProcessGroup& world) {
  if (a.spec.kind != adapters::Kind::Lora)
    throw Error(str("several tasks at once train a bank of LoRA experts; ",
                    adapters::kind_name(a.spec.kind), " is trained one task at a time"));
  const int rank = world.rank(), size = world.size();
  if (rank == 0) warn_if_oversubscribed(cfg);
  if (cfg.batch_size() % size != 0)
    throw Error(str("batch_size ", cfg.batch_size(), " does not split over ", size,
                    " ranks: make it a multiple of the world size"));
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
        if (l->name() == m) conv1d.push_back(l->w_in_out());
    return &bank->params();
  });
  adapters::BankSet* b = bank.get();
  t.set_router([b](const std::vector<int32_t>& rows) { b->route(rows); });
  t.set_process_group(&world);
  if (rank == 0)
    spdlog::info("{}: {} LoRA experts r={} trained together on {} modules, {} trainable{}",
                 t.kind(), T, a.spec.lora.base.r, bank->modules().size(),
                 human_count(bank->params().count(true)),
                 size > 1 ? str(", ", size, " ranks") : std::string());
  t.run(0, progress && rank == 0);
  world.barrier();
  if (rank != 0) return 0;  // rank 0 evaluates, writes and reports
  const std::string fingerprint = base_fingerprint(base_ckpt);
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
      PretrainConfig one = cfg;
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

// The training config of an adapter on `base` (a tessera checkpoint or a
// Hugging Face folder) for `tasks` (one, or several for a bank on the MLP
// base): the base's config with the task's data, a schedule for adapters,
// and the user's overrides; validated.
PretrainConfig adapter_config(const std::string& base_path, const std::vector<std::string>& tasks,
                              const std::string& out_dir,
                              const std::vector<std::string>& overrides) {
  const BaseModel base = open_base(base_path, "--base");
  PretrainConfig cfg = base.config;
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
    cfg.set_epochs(3);
    cfg.clear_steps();
    cfg.mutable_optim()->set_lr(3e-3f);  // LoRA wants a larger step than full training
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
    cfg.set_steps(200);
    cfg.mutable_optim()->set_lr(2e-3f);
  }
  apply_base_overrides(&cfg, overrides, base);
  validate_config(cfg);
  return cfg;
}

}  // namespace

int run_pretrain(const PretrainOptions& o) {
  PretrainConfig cfg = resolve_config(o.config, o.overrides, o.model);
  RunSummary s = train_and_save(cfg, o.resume, o.max_steps, !o.quiet);
  if (!s.checkpoint.empty())  // rank 0 (the others return an empty summary)
    std::printf("%s: %ld steps, %s, checkpoint %s\n", s.model.c_str(), static_cast<long>(s.steps),
                s.eval.c_str(), s.checkpoint.c_str());
  if (!s.comm.empty()) std::printf("%s\n", s.comm.c_str());
  return 0;
}

int run_eval(const EvalOptions& o) {
  const BaseModel base = open_base(o.checkpoint, "--checkpoint");
  PretrainConfig cfg = base.config;
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

int run_train_adapter(const TrainAdapterOptions& o) {
  AdapterArgs a = parse_adapter_spec(o.adapter);
  const PretrainConfig cfg =
      adapter_config(o.base, o.tasks, o.out_dir.empty() ? "runs/adapter" : o.out_dir, o.overrides);
  const std::string& task = o.tasks.front();
  std::unique_ptr<dist::ProcessGroup> world = dist::make_process_group();
  if (o.tasks.size() > 1)
    return train_bank(cfg, o.base, a, o.tasks, !o.quiet, o.library, o.name, *world);
  std::unique_ptr<store::LibraryApi> lib;
  if (!o.library.empty() && world->rank() == 0) lib = open_library(o.library, true);
  // (rank 0 writes the files and the library record: only it needs this)
  const std::string fingerprint = world->rank() == 0 ? base_fingerprint(o.base) : "";
  AdapterRun r = train_adapter(cfg, o.base, fingerprint, a, !o.quiet, world.get());
  if (world->rank() != 0) return 0;  // rank 0 reports and writes
  std::printf("\n%-10s  %s\n%-10s  %s\n", "base", eval_text(r.before).c_str(), "adapter",
              eval_text(r.after).c_str());
  if (lib)
    std::printf("library %s: %s\n", o.library.where.c_str(),
                put_trained(*lib, r.adapter_file, o.name.empty() ? task : o.name, task, o.base,
                            fingerprint, r.after, cfg)
                    .c_str());
  if (!r.comm.empty()) std::printf("%s\n", r.comm.c_str());
  std::printf("adapter: %s%s%s\n", r.adapter_file.c_str(),
              r.peft_dir.empty() ? "" : "   PEFT folder: ", r.peft_dir.c_str());
  return 0;
}

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
bool same_adapter_shape(const AdapterRecord& have, const AdapterArgs& want) {
  if (have.kind() != adapters::kind_name(want.spec.kind)) return false;
  const nlohmann::json j = nlohmann::json::parse(have.config_json(), nullptr, false);
  if (!j.is_object() || !j.contains("r")) return true;  // kinds without a rank
  return j["r"].is_number_integer() && j["r"].get<int64_t>() == want.spec.lora.base.r;
}

// The fields one trained expert sends to rank 0, length-prefixed.
std::string pack(const std::vector<std::string>& fields) {
  std::string out;
  for (const std::string& f : fields) {
    const uint64_t n = f.size();
    out.append(reinterpret_cast<const char*>(&n), sizeof n);
    out += f;
  }
  return out;
}
std::vector<std::string> unpack(const std::string& in, size_t count, const std::string& what) {
  std::vector<std::string> fields;
  size_t at = 0;
  while (fields.size() < count) {
    uint64_t n = 0;
    if (in.size() - at < sizeof n) break;
    std::memcpy(&n, in.data() + at, sizeof n);
    at += sizeof n;
    if (n > in.size() - at) break;
    fields.emplace_back(in.data() + at, n);
    at += n;
  }
  if (fields.size() != count || at != in.size())
    throw Error(str(what, ": a malformed result (", in.size(), " bytes)"));
  return fields;
}

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(str("cannot read ", path));
  return std::string(std::istreambuf_iterator<char>(in), {});
}

}  // namespace

int run_build_library(const BuildLibraryOptions& o) {
  const AdapterArgs a = parse_adapter_spec(o.adapter);
  if (o.library.empty())
    throw Error("--library: name the library to build (a folder, or grpc://HOST:PORT)");
  const std::string out_dir = o.out_dir.empty() ? "runs/library" : o.out_dir;
  // Every rank expands and checks every task's config the same way, so a
  // mistake fails the whole world at once, before any training.
  const std::vector<std::string> tasks = expand_tasks(o.tasks);
  std::vector<PretrainConfig> cfgs;
  for (size_t k = 0; k < tasks.size(); ++k) {
    try {
      cfgs.push_back(
          adapter_config(o.base, {tasks[k]}, out_dir + "/" + std::to_string(k), o.overrides));
    } catch (const Error& e) {
      throw Error(str("--tasks: task '", tasks[k], "': ", e.what()));
    }
  }
  auto name_of = [&](size_t k) { return o.name_prefix + tasks[k]; };
  std::unique_ptr<dist::ProcessGroup> world = dist::make_process_group();
  const int rank = world->rank(), size = world->size();
  if (rank == 0) warn_if_oversubscribed(cfgs.front());
  const bool remote = o.library.remote();
  const std::string fingerprint = base_fingerprint(o.base);

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
    PretrainConfig cfg = cfgs[k];
    std::string tmp;
    if (rank != 0) {
      tmp = (fs::temp_directory_path() / str("tessera_build_", ::getpid(), "_", rank, "_", k))
                .string();
      cfg.set_out_dir(tmp);
    }
    AdapterRun r = train_adapter(cfg, o.base, fingerprint, a, /*progress=*/false, nullptr);
    AdapterRecord rec = trained_record(name_of(k), tasks[k], o.base, fingerprint, r.after, cfgs[k]);
    std::string stored, file_bytes;
    if (remote) {
      stored = put_adapter_file(*lib, r.adapter_file, rec);
    } else if (rank != 0) {
      file_bytes = slurp(r.adapter_file);
    }
    if (!tmp.empty()) fs::remove_all(tmp);
    return pack({rec.SerializeAsString(), file_bytes, stored, short_eval(r.before),
                 short_eval(r.after), str(r.units_per_s)});
  };
  // Rank 0, once per finished expert: write the file, commit it (folder
  // library), report.
  size_t finished = 0;
  auto done = [&](size_t i, int from, const std::string& bytes) {
    const size_t k = static_cast<size_t>(todo[i]);
    std::vector<std::string> f = unpack(bytes, 6, str("rank ", from, ", task '", tasks[k], "'"));
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

std::vector<float> parse_weights(const std::string& csv) {
  std::vector<float> w;
  std::stringstream ss(csv);
  std::string item;
  while (std::getline(ss, item, ',')) {
    try {
      size_t pos = 0;
      w.push_back(std::stof(item, &pos));
      if (pos != item.size()) throw std::invalid_argument(item);
    } catch (const std::logic_error&) {
      throw Error(str("--weights '", csv, "': '", item, "' is not a number"));
    }
  }
  return w;
}

int run_merge(const MergeOptions& o) {
  if (o.inputs.empty()) throw Error("merge: name the adapter folders to combine");
  if (o.out.empty()) throw Error("merge: -o/--out names the folder to write");
  std::vector<float> w = o.weights.empty() ? std::vector<float>(o.inputs.size(), 1.0f) : o.weights;
  if (w.size() != o.inputs.size())
    throw Error(str("merge: ", w.size(), " weights for ", o.inputs.size(), " adapters"));
  // method[:k=v,...]
  const size_t colon = o.method.find(':');
  const std::string method = o.method.substr(0, colon);
  std::map<std::string, float> arg;
  if (colon != std::string::npos) {
    std::stringstream ss(o.method.substr(colon + 1));
    std::string kv;
    while (std::getline(ss, kv, ',')) {
      const size_t eq = kv.find('=');
      try {
        if (eq == std::string::npos) throw std::invalid_argument(kv);
        size_t pos = 0;
        arg[kv.substr(0, eq)] = std::stof(kv.substr(eq + 1), &pos);
        if (pos != kv.size() - eq - 1) throw std::invalid_argument(kv);
      } catch (const std::logic_error&) {
        throw Error(str("merge method '", o.method, "': '", kv, "' is not key=number"));
      }
    }
  }
  const std::map<std::string, std::vector<std::string>> keys = {{"cat", {}},
                                                                {"linear", {"lambda"}},
                                                                {"svd", {"lambda"}},
                                                                {"ties", {"density"}},
                                                                {"dare_linear", {"p"}},
                                                                {"dare_ties", {"p", "density"}},
                                                                {"magnitude_prune", {"density"}},
                                                                {"lego", {"k"}},
                                                                {"soup", {}}};
  auto known = keys.find(method);
  if (known == keys.end())
    throw Error(
        str("merge method '", method,
            "': expected cat, linear, svd, ties, dare_linear, dare_ties, magnitude_prune, lego "
            "or soup"));
  for (const auto& [k, v] : arg)
    if (std::find(known->second.begin(), known->second.end(), k) == known->second.end())
      throw Error(str("merge method '", o.method, "': '", method, "' takes no '", k, "'"));
  auto get = [&](const char* k, float d) { return arg.count(k) ? arg.at(k) : d; };

  if (method == "soup") {  // the uniform soup: the weights' mean
    float total = 0;
    for (float x : w) total += x;
    for (float& x : w) x /= total;
  }
  // Each input: a PEFT folder or a tessera adapter file (lora).
  struct Input {
    bool fan_in_fan_out = false;
    std::string base_model, base_fingerprint;
  };
  std::vector<Input> folders;
  std::vector<std::vector<std::pair<std::string, adapters::LoraFactors>>> per;
  // With --base every input is read against the base model, by the same
  // rules as import-peft and eval (PiSSA/OLoRA converted, targets and shapes
  // checked, the fingerprint compared); without it, from the files alone.
  std::unique_ptr<train::Model> base_model;
  std::string base_fp;
  if (!o.base.empty()) {
    const BaseModel b = open_base(o.base, "--base");
    base_model = std::make_unique<train::Model>(b.config);
    if (!b.hf_folder) base_model->load_weights(b.path);
    base_fp = base_fingerprint(o.base);
  }
  for (const auto& in : o.inputs) {
    if (base_model) {
      const std::string want = fs::is_directory(in) ? adapters::read_peft(in).base_fingerprint
                                                    : adapters::read_adapter(in).base_fingerprint;
      if (!want.empty()) check_base(in, want, o.base, o.force, base_fp);
      std::unique_ptr<adapters::AdapterSet> set;
      if (fs::is_directory(in)) {
        adapters::PeftImport imp = adapters::import_peft(
            in, base_model->linears(), base_model->params(), base_model->embeddings());
        for (const auto& n : imp.notes) spdlog::info("{}: {}", in, n);
        set = std::move(imp.set);
      } else {
        set = adapters::load_adapter(in, base_model->linears(), base_model->params(), nullptr,
                                     base_model->embeddings());
      }
      if (set->kind() != adapters::Kind::Lora || !set->embedding_modules().empty() ||
          !set->copied_modules().empty())
        throw Error(str("merge: '", in, "' is not LoRA on Linear modules alone (",
                        set->kind() != adapters::Kind::Lora ? adapters::kind_name(set->kind())
                        : !set->embedding_modules().empty() ? "a LoRA on an embedding"
                                                            : "modules_to_save copies",
                        "); these methods combine LoRAs of Linear modules"));
      std::vector<std::pair<std::string, adapters::LoraFactors>> f;
      bool conv = false;
      for (size_t i = 0; i < set->modules().size(); ++i) {
        const adapters::Lora& l = *set->loras()[i];
        f.push_back(
            {set->modules()[i], adapters::LoraFactors{l.A().clone(), l.B().clone(), l.scale()}});
        conv = conv || set->linears()[i]->w_in_out();
      }
      set->detach();
      per.push_back(std::move(f));
      folders.push_back({conv, o.base, base_fp});
      continue;
    }
    if (fs::is_directory(in)) {
      adapters::PeftFolder f = adapters::read_peft(in);
      per.push_back(f.factors());
      folders.push_back({f.fan_in_fan_out, f.base_model, f.base_fingerprint});
      for (const auto& n : f.notes) spdlog::warn("{}: {}", in, n);
    } else {
      adapters::AdapterFile f = adapters::read_adapter(in);
      if (f.spec.kind != adapters::Kind::Lora)
        throw Error(str("merge: '", in, "' is a ", adapters::kind_name(f.spec.kind),
                        " adapter; these methods combine LoRAs"));
      per.push_back(f.factors());
      const bool conv = std::find(f.conv1d.begin(), f.conv1d.end(), true) != f.conv1d.end();
      folders.push_back({conv, f.base_model, f.base_fingerprint});
    }
  }
  // Adapters of different bases do not combine; the result keeps the base.
  std::string fingerprint;
  for (size_t i = 0; i < per.size(); ++i) {
    const std::string& fp = folders[i].base_fingerprint;
    if (fp.empty()) continue;
    if (!fingerprint.empty() && fp != fingerprint && !o.force)
      throw Error(str("merge: '", o.inputs[i], "' was trained on base ", fp.substr(0, 16),
                      "…, an earlier input on base ", fingerprint.substr(0, 16),
                      "… (adapters of different bases do not combine; --force merges anyway)"));
    if (fingerprint.empty()) fingerprint = fp;
  }
  for (size_t i = 1; i < per.size(); ++i) {
    if (folders[i].fan_in_fan_out != folders[0].fan_in_fan_out)
      throw Error(
          str("merge: '", o.inputs[i], "' and '", o.inputs[0], "' disagree on fan_in_fan_out"));
    if (per[i].size() != per[0].size())
      throw Error(str("merge: '", o.inputs[i], "' adapts ", per[i].size(), " modules, '",
                      o.inputs[0], "' ", per[0].size(), " (merge adapters of the same targets)"));
  }
  Rng rng(o.seed);
  std::vector<std::pair<std::string, adapters::LoraFactors>> merged;
  for (size_t m = 0; m < per[0].size(); ++m) {
    const std::string& name = per[0][m].first;
    std::vector<adapters::LoraFactors> fs;
    std::vector<Tensor> deltas;
    int64_t rmax = 0;
    for (size_t i = 0; i < per.size(); ++i) {
      auto it = std::find_if(per[i].begin(), per[i].end(),
                             [&](const auto& p) { return p.first == name; });
      if (it == per[i].end())
        throw Error(str("merge: '", o.inputs[i], "' has no adapter for module ", name));
      fs.push_back(it->second);
      deltas.push_back(it->second.delta());
      rmax = std::max(rmax, it->second.rank());
    }
    if (method == "cat") {
      merged.push_back({name, adapters::merge_cat(fs, w)});
      continue;
    }
    if (method == "lego") {
      adapters::LegoOptions lo;
      lo.k = arg.count("k") ? static_cast<int64_t>(arg.at("k")) : rmax;
      lo.seed = o.seed;
      merged.push_back({name, adapters::lego(fs, w, lo)});
      continue;
    }
    Tensor d;
    if (method == "linear" || method == "svd" || method == "soup")
      d = adapters::task_arithmetic(deltas, w, get("lambda", 1.0f));
    else if (method == "ties")
      d = adapters::ties(deltas, w, get("density", 0.2f));
    else if (method == "dare_linear")
      d = adapters::dare(deltas, w, get("p", 0.5f), rng);
    else if (method == "dare_ties")
      d = adapters::dare(deltas, w, get("p", 0.5f), rng, true, get("density", 1.0f));
    else {
      for (size_t i = 0; i < deltas.size(); ++i)
        deltas[i] = adapters::prune_magnitude(deltas[i], get("density", 0.2f));
      d = adapters::task_arithmetic(deltas, w);
    }
    const int64_t r = std::min(o.rank > 0 ? o.rank : rmax, std::min(d.size(0), d.size(1)));
    merged.push_back({name, adapters::svd_factor(d, r)});
  }
  const bool file_out =
      o.out.size() > 12 && o.out.compare(o.out.size() - 12, 12, ".safetensors") == 0;
  if (file_out)
    adapters::save_lora_factors(o.out, merged,
                                std::vector<bool>(merged.size(), folders[0].fan_in_fan_out),
                                folders[0].base_model, fingerprint);
  else
    adapters::write_peft(o.out, merged, folders[0].fan_in_fan_out, folders[0].base_model, {},
                         fingerprint);
  std::printf("merged %zu adapters with %s into %s (%zu modules)\n", o.inputs.size(),
              o.method.c_str(), o.out.c_str(), merged.size());
  return 0;
}

int run_demo(const DemoOptions& o) {
  std::printf("tessera demo: pretraining the base models into %s\n", o.out_dir.c_str());
  std::vector<RunSummary> rows;

  PretrainConfig mlp = default_config("mlp");
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

  PretrainConfig lm = default_config("decoder");
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
  const std::string base_print = base_fingerprint(rows.front().checkpoint);
  for (const std::string task : {"permute:seed=1", "rotate:deg=90", "classes:0,2,4,6"}) {
    PretrainConfig ac = train::read_checkpoint_config(rows.front().checkpoint);
    ac.mutable_data()->set_task(task);
    ac.set_out_dir(o.out_dir + "/adapters/" + task.substr(0, task.find(':')));
    ac.clear_steps();
    ac.set_epochs(o.quick ? 0.05f : 1.0f);
    ac.mutable_optim()->set_lr(3e-3f);
    AdapterRun r = train_adapter(ac, rows.front().checkpoint, base_print, AdapterArgs{}, true);
    put_trained(*library, r.adapter_file, task.substr(0, task.find(':')), task,
                rows.front().checkpoint, base_print, r.after, ac);
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

int run_export_peft(const ExportPeftOptions& o) {
  adapters::AdapterFile f = adapters::read_adapter(o.adapter);
  if (f.spec.dropout > 0)
    spdlog::info("note: dropout {} is a training setting; written as lora_dropout 0",
                 f.spec.dropout);
  adapters::adapter_file_to_peft(o.adapter, o.out);
  std::printf("%s (%s, %zu modules) → PEFT folder %s\n", o.adapter.c_str(),
              adapters::kind_name(f.spec.kind), f.modules.size(), o.out.c_str());
  return 0;
}

int run_import_peft(const ImportPeftOptions& o) {
  if (o.base.empty())
    throw Error(
        "--base: name the base the PEFT adapter belongs to (a tessera checkpoint or a "
        "Hugging Face folder)");
  const std::string fingerprint = base_fingerprint(o.base);
  const std::string want = adapters::read_peft(o.peft_dir).base_fingerprint;
  if (!want.empty()) check_base(o.peft_dir, want, o.base, o.force, fingerprint);
  // The base model alone: an import reads no data.
  const BaseModel base = open_base(o.base, "--base");
  train::Model model(base.config);
  if (!base.hf_folder) model.load_weights(base.path);
  adapters::PeftImport imp =
      adapters::import_peft(o.peft_dir, model.linears(), model.params(), model.embeddings());
  for (const auto& n : imp.notes) spdlog::info("note: {}", n);
  adapters::save_adapter(*imp.set, o.out, imp.base_model.empty() ? o.base : imp.base_model,
                         fingerprint);
  std::printf("PEFT %s (%s, %zu modules%s, checked against %s) → %s\n", o.peft_dir.c_str(),
              adapters::kind_name(imp.set->kind()), imp.set->modules().size(),
              str(imp.set->embedding_modules().empty()
                      ? std::string()
                      : str(" + ", imp.set->embedding_modules().size(), " embedding(s)"),
                  imp.set->copied_modules().empty()
                      ? std::string()
                      : str(" + ", imp.set->copied_modules().size(), " saved module copies"))
                  .c_str(),
              o.base.c_str(), o.out.c_str());
  return 0;
}

}  // namespace tessera::launch
