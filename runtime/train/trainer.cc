#include "runtime/train/trainer.h"

#include "runtime/autograd/tape.h"
#include "runtime/dist/process_group.h"
#include "runtime/train/grad_reducer.h"

#include <google/protobuf/text_format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>

#include "runtime/autograd/ops.h"
#include "runtime/autograd/tape.h"
#include "runtime/common/error.h"
#include "runtime/common/rng.h"
#include "runtime/common/threads.h"
#include "runtime/data/data.h"
#include "runtime/io/fingerprint.h"
#include "runtime/io/hf.h"
#include "runtime/io/safetensors.h"
#include "runtime/kernels/cpu/matmul.h"
#include "runtime/metrics/metrics.h"
#include "runtime/nn/models.h"
#include "runtime/optim/optim.h"

namespace tessera::train {

namespace fs = std::filesystem;

std::string EvalResult::summary() const {
  if (accuracy >= 0)
    return str("accuracy ", accuracy * 100.0, "% loss ", loss, " on ", count, " examples");
  return str("loss ", loss, " bits/token ", bits_per_token, " on ", count, " tokens");
}

namespace {

std::string status_text(float loss, double rate, const char* unit) {
  char buf[96];
  std::snprintf(buf, sizeof buf, "loss %.4f | %.0f %s/s", loss, rate, unit);
  return buf;
}

std::string config_text(const RunConfig& c) {
  std::string s;
  google::protobuf::TextFormat::PrintToString(c, &s);
  return s;
}

}  // namespace

struct Trainer::State {
  Rng rng;
  std::unique_ptr<data::Sampler> sampler;
  std::vector<int64_t> subset;  // empty: every training example
  std::vector<std::pair<std::string, Trainer::LossTermFn>> terms;
  std::vector<std::function<void()>> step_hooks;
  std::unique_ptr<optim::Optimizer> opt;
  optim::Schedule schedule;
  std::unique_ptr<metrics::JsonlWriter> log;
};

Trainer::Trainer(const RunConfig& cfg, int rank, int world)
    : cfg_(cfg), rank_(rank), world_(world), st_(std::make_unique<State>()) {
  // Each rank takes batch_size / world rows of every global batch.
  if (world < 1 || rank < 0 || rank >= world)
    throw Error(str("rank ", rank, " of a world of ", world));
  if (cfg.batch_size() % world != 0)
    throw Error(str("batch_size ", cfg.batch_size(), " does not split over ", world,
                    " ranks: make it a multiple of the world size"));
  set_num_threads(cfg.threads());
  st_->rng.reseed(cfg.seed());
  task_ = make_workload(cfg, st_->rng);

  plan_steps(task_->train_examples());
  task_->record_architecture(&cfg_);
  trained_ = &task_->params();
  build_optimizer();
}

// The sampler over `examples` training examples, the step count and the
// learning-rate schedule.
void Trainer::plan_steps(int64_t examples) {
  st_->sampler =
      std::make_unique<data::Sampler>(examples, cfg_.batch_size(), cfg_.seed(), rank_, world_);
  const int64_t per_epoch = st_->sampler->batches_per_epoch();
  total_steps_ =
      cfg_.steps() > 0
          ? cfg_.steps()
          : static_cast<int64_t>(std::ceil(cfg_.epochs() * static_cast<double>(per_epoch)));
  if (total_steps_ <= 0) throw Error("steps and epochs are both 0: nothing to train");
  const OptimConfig& o = cfg_.optim();
  st_->schedule = {o.lr(), o.warmup_steps(), total_steps_, o.min_lr_ratio(),
                   o.schedule() == "cosine"};
}

void Trainer::add_loss_term(const std::string& name, LossTermFn term) {
  if (name.empty() || !term) throw Error("add_loss_term: a name and a function are required");
  for (const auto& t : st_->terms)
    if (t.first == name) throw Error(str("add_loss_term: a term named '", name, "' exists"));
  st_->terms.push_back({name, std::move(term)});
}

void Trainer::clear_loss_terms() {
  st_->terms.clear();
}

double Trainer::forward_train(const std::vector<int64_t>& idx) {
  const int64_t n = task_->train_examples();
  for (int64_t i : idx)
    if (i < 0 || i >= n)
      throw Error(str("forward_train: example ", i, " outside the ", n, " training examples"));
  autograd::NoGrad off;
  return task_->loss(idx, 0).item();
}

std::vector<nn::Linear*> Trainer::linears() {
  return task_->linears();
}

int64_t Trainer::train_examples() const {
  return task_->train_examples();
}

void Trainer::clear_step_hooks() {
  st_->step_hooks.clear();
}

void Trainer::add_step_hook(std::function<void()> hook) {
  if (!hook) throw Error("add_step_hook: a function is required");
  st_->step_hooks.push_back(std::move(hook));
}

std::string Trainer::subset_id() const {
  if (st_->subset.empty()) return "";
  std::string bytes(reinterpret_cast<const char*>(st_->subset.data()),
                    st_->subset.size() * sizeof(int64_t));
  return str(st_->subset.size(), " examples, sha256 ", io::sha256_hex(bytes).substr(0, 16));
}

void Trainer::set_train_subset(std::vector<int64_t> examples) {
  if (step_ > 0)
    throw Error("set_train_subset: before the first training step (and before load_checkpoint)");
  const int64_t n = task_->train_examples();
  std::vector<char> seen(static_cast<size_t>(n), 0);
  for (size_t i = 0; i < examples.size(); ++i) {
    const int64_t e = examples[i];
    if (e < 0 || e >= n)
      throw Error(str("training subset: example ", e, " (entry ", i, ") is outside [0, ", n, ")"));
    if (seen[e]++) throw Error(str("training subset: example ", e, " appears twice"));
  }
  if (static_cast<int64_t>(examples.size()) < cfg_.batch_size())
    throw Error(str("training subset of ", examples.size(), " examples is smaller than one batch (",
                    cfg_.batch_size(), ")"));
  plan_steps(static_cast<int64_t>(examples.size()));
  st_->subset = std::move(examples);
}

Trainer::~Trainer() = default;

std::vector<nn::Embedding*> Trainer::embeddings() {
  return task_->embeddings();
}

void Trainer::build_optimizer() {
  const OptimConfig& o = cfg_.optim();
  if (o.kind() == "adamw") {
    optim::AdamWOptions a;
    a.lr = o.lr();
    a.beta1 = o.beta1();
    a.beta2 = o.beta2();
    a.eps = o.eps();
    a.weight_decay = o.weight_decay();
    a.decay_vectors = o.decay_vectors();
    st_->opt = std::make_unique<optim::AdamW>(*trained_, a);
  } else if (o.kind() == "sgd") {
    optim::SgdOptions s;
    s.lr = o.lr();
    s.momentum = o.momentum();
    s.weight_decay = o.weight_decay();
    s.decay_vectors = o.decay_vectors();
    st_->opt = std::make_unique<optim::Sgd>(*trained_, s);
  } else {
    throw Error(str("optim.kind '", o.kind(), "': expected adamw or sgd"));
  }
}

void Trainer::attach(const AttachFn& fn) {
  if (step_ > 0) throw Error("attach adapters before the first training step");
  nn::ParameterSet* ps = fn(task_->linears(), task_->params());
  if (!ps || ps->trainable().empty())
    throw Error("the attached adapters have no trainable parameters");
  trained_ = ps;
  reducer_.reset();  // the trainable parameters changed
  build_optimizer();
}

const std::string& Trainer::kind() const {
  return task_->kind();
}
nn::ParameterSet& Trainer::params() {
  return task_->params();
}
const char* Trainer::unit() const {
  return task_->kind() == "mlp" ? "samples" : "tok";
}

StepStats Trainer::train_step() {
  auto t0 = std::chrono::steady_clock::now();
  std::vector<int64_t> idx = st_->sampler->next();
  if (!st_->subset.empty())
    for (int64_t& i : idx) i = st_->subset[static_cast<size_t>(i)];
  const int64_t epoch = st_->sampler->epoch();
  nn::ParameterSet& ps = *trained_;
  ps.zero_grad();
  StepStats s;
  if (group_ && !reducer_) {
    const DistConfig& d = cfg_.dist();
    const double mb = d.has_bucket_mb() ? d.bucket_mb() : 25.0;
    reducer_ = std::make_unique<GradReducer>(group_, trained_->trainable(),
                                             static_cast<size_t>(std::max(4.0, mb * (1 << 20))),
                                             d.has_overlap() ? d.overlap() : true);
  }
  {
    autograd::Tape tape;
    if (reducer_) reducer_->begin(tape);
    Tensor loss = task_->loss(idx, epoch);
    for (auto& [name, term] : st_->terms) {
      Tensor t = term();
      if (!t.defined() || t.numel() != 1)
        throw Error(str("loss term '", name, "' returned ",
                        t.defined() ? shape_str(t.shape()) : "nothing", ", expected one value"));
      s.terms.push_back({name, t.item()});
      loss = ops::add(loss, t);
    }
    s.loss = loss.item();
    tape.backward(loss);
  }
  if (reducer_) {
    s.comm_wait_s = reducer_->finish();
    s.comm_s = reducer_->comm_seconds();
    const auto tl = std::chrono::steady_clock::now();
    group_->allreduce(&s.loss, 1, dist::DType::F32, dist::ReduceOp::kMean);
    for (auto& t : s.terms)
      group_->allreduce(&t.second, 1, dist::DType::F32, dist::ReduceOp::kMean);
    s.comm_wait_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - tl).count();
  }
  for (const auto& [name, v] : s.terms)
    if (!std::isfinite(v))
      throw Error(str("loss term '", name, "' is ", v, " at step ", step_, ": training diverged"));
  if (!std::isfinite(s.loss))
    throw Error(
        str("loss is ", s.loss, " at step ", step_, ": training diverged (lower optim.lr?)"));
  s.grad_norm = optim::clip_grad_norm(ps, cfg_.optim().grad_clip());
  s.lr = st_->schedule.at(step_);
  st_->opt->step(s.lr);
  for (auto& hook : st_->step_hooks) hook();
  ++step_;
  s.step = step_;
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  s.seconds = secs;
  step_s_ += secs;
  comm_wait_s_ += s.comm_wait_s;
  comm_s_ += s.comm_s;
  double units = task_->units_per_example() * static_cast<double>(idx.size());
  s.units_per_s = secs > 0 ? units / secs : 0.0;
  if (peak_gflops_ > 0)
    s.mfu =
        task_->flops_per_example() * static_cast<double>(idx.size()) / secs / (peak_gflops_ * 1e9);
  return s;
}

std::vector<float> Trainer::run(int64_t max_steps, bool progress) {
  const bool logging = !cfg_.out_dir().empty() && rank_ == 0;
  if (logging) {
    fs::create_directories(cfg_.out_dir());
    if (!st_->log)
      st_->log =
          std::make_unique<metrics::JsonlWriter>(cfg_.out_dir() + "/metrics.jsonl", step_ > 0);
    peak_gflops();
  }
  const int64_t end = max_steps > 0 ? std::min(total_steps_, step_ + max_steps) : total_steps_;
  std::unique_ptr<metrics::Progress> bar;
  if (progress) bar = std::make_unique<metrics::Progress>(str("train ", kind()), end);
  std::vector<float> losses;
  double units = 0.0, secs = 0.0;
  float smooth = 0.0f;
  while (step_ < end) {
    auto t0 = std::chrono::steady_clock::now();
    StepStats s = train_step();
    double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    double u = task_->units_per_example() * cfg_.batch_size() / world_;
    units += u;
    secs += dt;
    losses.push_back(s.loss);
    smooth = losses.size() == 1 ? s.loss : 0.95f * smooth + 0.05f * s.loss;
    if (bar) bar->update(step_, u, status_text(smooth, bar->rate(), unit()));
    if (st_->log && (step_ % cfg_.log_every() == 0 || step_ == end)) {
      nlohmann::json row = {{"step", s.step},
                            {"loss", s.loss},
                            {"lr", s.lr},
                            {"grad_norm", s.grad_norm},
                            {"epoch", st_->sampler->epoch()},
                            {std::string(unit()) + "_per_s", s.units_per_s},
                            {"mfu", s.mfu}};
      row["step_s"] = s.seconds;
      for (const auto& [name, v] : s.terms) row["term/" + name] = v;
      if (group_) {
        row["comm_wait_s"] = s.comm_wait_s;
        row["comm_s"] = s.comm_s;
      }
      st_->log->write(row);
    }
    if (logging && cfg_.eval_every() > 0 && step_ % cfg_.eval_every() == 0 && step_ != end) {
      EvalResult e = evaluate(cfg_.eval_batches());
      st_->log->write({{"step", step_},
                       {"eval_loss", e.loss},
                       {"eval_accuracy", e.accuracy},
                       {"eval_bits_per_token", e.bits_per_token}});
    }
    if (logging && cfg_.checkpoint_every() > 0 && step_ % cfg_.checkpoint_every() == 0)
      save_checkpoint(cfg_.out_dir() + "/checkpoint.safetensors");
  }
  units_per_s_ = secs > 0 ? units / secs : 0.0;
  if (bar) bar->finish(status_text(smooth, units_per_s_, unit()));
  return losses;
}

EvalResult Trainer::evaluate(int64_t max_batches, int task) {
  if (max_batches < 0) max_batches = cfg_.eval_batches();
  return task_->evaluate(cfg_.batch_size(), max_batches, task);
}

int Trainer::num_tasks() const {
  return task_->num_tasks();
}

int64_t Trainer::rows_per_example() const {
  return task_->rows_per_example();
}

void Trainer::set_process_group(dist::ProcessGroup* group) {
  if (group && (group->rank() != rank_ || group->size() != world_))
    throw Error(str("process group rank ", group->rank(), " of ", group->size(),
                    " does not match the trainer's rank ", rank_, " of ", world_));
  group_ = group && group->size() > 1 ? group : nullptr;
  reducer_.reset();
}

void Trainer::set_row_task_hook(Workload::RowTaskFn fn) {
  task_->set_row_task_hook(std::move(fn));
}

std::unique_ptr<Workload> make_workload(const RunConfig& cfg, Rng& rng) {
  if (cfg.model() == "mlp") return make_classifier_workload(cfg, rng);
  if (cfg.model() == "decoder") return make_lm_workload(cfg, rng);
  throw Error(str("model '", cfg.model(), "': expected 'mlp' or 'decoder'"));
}

void Trainer::save_checkpoint(const std::string& path) const {
  std::vector<io::WriteEntry> e;
  for (const auto& p : trained_->all()) e.push_back(io::WriteEntry::f32(p.name, p.tensor));
  for (const auto& p : st_->opt->state())
    e.push_back(io::WriteEntry::f32("optimizer." + p.name, p.tensor));
  // A checkpoint that holds the model needs nothing else: its config carries
  // the whole architecture (record_architecture) and not the folder the
  // weights first came from. One that holds adapters keeps naming its base.
  RunConfig saved = cfg_;
  if (trained_ == &task_->params() && saved.has_decoder())
    saved.mutable_decoder()->clear_init_from();
  std::map<std::string, std::string> meta = {
      {"format", "pt"},
      {"tessera.format", "checkpoint-v1"},
      {"tessera.kind", task_->kind()},
      {"tessera.holds", trained_ == &task_->params() ? "model" : "adapters"},
      {"tessera.config", config_text(saved)},
      {"tessera.step", std::to_string(step_)},
      {"tessera.optimizer_steps", std::to_string(st_->opt->steps())},
      {"tessera.sampler", st_->sampler->state()},
      {"tessera.rng", st_->rng.state()},
  };
  if (!st_->subset.empty()) meta["tessera.subset"] = subset_id();
  fs::path dir = fs::path(path).parent_path();
  if (!dir.empty()) fs::create_directories(dir);
  io::save_safetensors(path, e, meta);
}

namespace {
const std::string& meta_at(const io::SafetensorsFile& f, const std::string& key) {
  auto it = f.metadata().find(key);
  if (it == f.metadata().end())
    throw Error(str("'", f.source(), "' is not a tessera checkpoint (metadata lacks '", key, "')"));
  return it->second;
}
// Every parameter of `ps` from `f`, by name and shape; every one required.
void load_params(const io::SafetensorsFile& f, nn::ParameterSet& ps, const std::string& path) {
  std::vector<std::string> problems;
  for (auto& p : ps.all()) {
    const io::TensorInfo* t = f.find(p.name);
    if (!t)
      problems.push_back("missing " + p.name);
    else if (t->shape != p.tensor.shape())
      problems.push_back(str(p.name, " is ", shape_str(t->shape), ", model expects ",
                             shape_str(p.tensor.shape())));
    else
      p.tensor.copy_from(f.load_f32(*t));
  }
  if (!problems.empty()) {
    std::string s;
    for (size_t i = 0; i < problems.size() && i < 8; ++i) s += "\n  " + problems[i];
    throw Error(str("checkpoint '", path, "' does not fit this model:", s));
  }
}

int64_t parse_i64(const std::string& s, const std::string& what) {
  try {
    size_t pos = 0;
    int64_t v = std::stoll(s, &pos);
    if (pos != s.size()) throw std::invalid_argument(s);
    return v;
  } catch (const std::exception&) {
    throw Error(str("checkpoint metadata ", what, " = '", s, "' is not an integer"));
  }
}
}  // namespace

Model::Model(const RunConfig& cfg) {
  Rng rng(cfg.seed());
  if (cfg.model() == "mlp")
    mlp_ = std::make_unique<nn::MlpClassifier>(mlp_spec(cfg.mlp()), rng);
  else if (cfg.model() == "decoder")
    decoder_ = cfg.decoder().init_from().empty()
                   ? std::make_unique<nn::Decoder>(decoder_spec(cfg.decoder()), rng)
                   : io::load_hf_decoder(cfg.decoder().init_from());
  else
    throw Error(str("model '", cfg.model(), "': expected 'mlp' or 'decoder'"));
}

Model::~Model() = default;

std::vector<nn::Linear*> Model::linears() {
  return mlp_ ? mlp_->linears() : decoder_->linears();
}

std::vector<nn::Embedding*> Model::embeddings() {
  return mlp_ ? std::vector<nn::Embedding*>{} : decoder_->embeddings();
}

nn::ParameterSet& Model::params() {
  return mlp_ ? mlp_->params() : decoder_->params();
}

void Model::load_weights(const std::string& checkpoint) {
  load_params(*io::SafetensorsFile::open(checkpoint), params(), checkpoint);
}

void set_adapter_schedule(RunConfig* cfg) {
  if (cfg->model() == "mlp") {
    cfg->set_epochs(3);
    cfg->clear_steps();
    cfg->mutable_optim()->set_lr(3e-3f);
  } else {
    cfg->set_steps(200);
    cfg->mutable_optim()->set_lr(2e-3f);
  }
}

RunConfig read_checkpoint_config(const std::string& path) {
  auto f = io::SafetensorsFile::open(path);
  RunConfig c;
  if (!google::protobuf::TextFormat::ParseFromString(meta_at(*f, "tessera.config"), &c))
    throw Error(str("'", path, "': stored config does not parse"));
  return c;
}

void Trainer::load_checkpoint(const std::string& path, bool weights_only) {
  auto f = io::SafetensorsFile::open(path);
  if (meta_at(*f, "tessera.kind") != task_->kind())
    throw Error(str("'", path, "' holds a ", meta_at(*f, "tessera.kind"),
                    " model, this run trains a ", task_->kind()));
  if (!weights_only) {
    // A run on an example subset resumes only on the same subset (the sampler's
    // position counts through it); checkpoints from before subsets have none.
    const auto saved_subset = f->metadata().find("tessera.subset");
    const std::string have = saved_subset == f->metadata().end() ? "" : saved_subset->second;
    if (have != subset_id())
      throw Error(
          str("checkpoint '", path, "' was trained on ",
              have.empty() ? std::string("every training example") : "training subset " + have,
              ", this run on ",
              subset_id().empty() ? std::string("every training example")
                                  : "training subset " + subset_id(),
              ": call set_train_subset with the same examples before load_checkpoint"));
  }
  // Every parameter of what this trainer trains (model, or attached adapters), by name and shape.
  load_params(*f, *trained_, path);
  if (weights_only) return;
  for (auto& p : st_->opt->state()) {
    const io::TensorInfo* t = f->find("optimizer." + p.name);
    if (!t || t->shape != p.tensor.shape())
      throw Error(str("checkpoint '", path, "' lacks optimizer state '", p.name,
                      "' for this optimizer (", cfg_.optim().kind(), ")"));
    Tensor dst = p.tensor;
    dst.copy_from(f->load_f32(*t));
  }
  step_ = parse_i64(meta_at(*f, "tessera.step"), "tessera.step");
  st_->opt->set_steps(parse_i64(meta_at(*f, "tessera.optimizer_steps"), "tessera.optimizer_steps"));
  st_->sampler->set_state(meta_at(*f, "tessera.sampler"));
  st_->rng.set_state(meta_at(*f, "tessera.rng"));
}

double Trainer::train_flops_per_unit() const {
  return task_->flops_per_example() / task_->units_per_example();
}

double Trainer::peak_gflops() {
  // Measured once per process and thread count (~0.3 s): build-library
  // trains many adapters in one process and would pay it for every one.
  static std::mutex mu;
  static std::map<int, double> measured;
  if (peak_gflops_ == 0.0) {
    std::lock_guard<std::mutex> l(mu);
    double& g = measured[num_threads()];
    if (g == 0.0) g = kernels::cpu::measure_sgemm_gflops();
    peak_gflops_ = g;
  }
  return peak_gflops_;
}

void Trainer::export_model(const std::string& dir) const {
  task_->export_model(dir);
}

}  // namespace tessera::train
