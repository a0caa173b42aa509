#include "runtime/train/trainer.h"

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

// A model with its data: what differs between the classifier and the LM.
class Task {
 public:
  virtual ~Task() = default;
  virtual const std::string& kind() const = 0;
  virtual nn::ParameterSet& params() = 0;
  virtual std::vector<nn::Linear*> linears() = 0;
  virtual std::vector<nn::Embedding*> embeddings() { return {}; }
  virtual int64_t train_examples() const = 0;
  virtual double units_per_example() const = 0;
  virtual double flops_per_example() const = 0;
  virtual Tensor loss(const std::vector<int64_t>& idx, int64_t epoch) = 0;
  // task < 0: every task (the mean); the LM has one task.
  virtual EvalResult evaluate(int64_t batch, int64_t max_batches, int task) = 0;
  virtual int num_tasks() const { return 1; }
  using RouteFn = Trainer::RouteFn;
  virtual void set_router(RouteFn fn) {
    if (fn) throw Error("this model trains one task; a router has nothing to route");
  }
  virtual void export_model(const std::string& dir) const = 0;
  // Writes the architecture of the model as built into `cfg` (a decoder
  // loaded from decoder.init_from has the folder's sizes, not the config's).
  virtual void record_architecture(PretrainConfig*) const {}
};

namespace {

nn::Act parse_act(const std::string& a) {
  if (a == "gelu") return nn::Act::Gelu;
  if (a == "gelu_tanh") return nn::Act::GeluTanh;
  if (a == "relu") return nn::Act::Relu;
  if (a == "silu") return nn::Act::Silu;
  throw Error(str("mlp.activation '", a, "': expected gelu, gelu_tanh, relu or silu"));
}

nn::MlpSpec mlp_spec(const MlpConfig& m) {
  nn::MlpSpec spec;
  spec.in_features = m.in_features();
  spec.hidden.assign(m.hidden().begin(), m.hidden().end());
  spec.num_classes = m.num_classes();
  spec.activation = parse_act(m.activation());
  return spec;
}

// Fashion-MNIST under one image task, or several at once ("permute:seed=1;
// rotate:deg=90"): then every sampled index yields one row per task, the loss
// is the sum of the per-task mean losses (each task's gradient is exactly its
// own), and the router learns which task each row belongs to.
std::vector<std::string> split_tasks(const std::string& spec) {
  std::vector<std::string> out;
  size_t b = 0;
  while (true) {
    size_t e = spec.find(';', b);
    out.push_back(spec.substr(b, e == std::string::npos ? std::string::npos : e - b));
    if (e == std::string::npos) break;
    b = e + 1;
  }
  for (const std::string& t : out)
    if (t.empty() && out.size() > 1) throw Error(str("data.task '", spec, "' has an empty task"));
  return out;
}

class ClassifierTask : public Task {
 public:
  ClassifierTask(const PretrainConfig& cfg, Rng& rng) {
    if (cfg.data().kind() != "fashion_mnist")
      throw Error(
          str("model 'mlp' trains on data.kind 'fashion_mnist', got '", cfg.data().kind(), "'"));
    data::ImageSet train =
        data::load_fashion_mnist(cfg.data().dir(), "train", cfg.data().limit_train());
    data::ImageSet test =
        data::load_fashion_mnist(cfg.data().dir(), "test", cfg.data().limit_test());
    names_ = split_tasks(cfg.data().task());
    eval_train_ = cfg.data().eval_split() == "train";
    const int64_t in_features = train.features();
    if (names_.size() == 1) {
      // One task: transform the images once.
      data::apply_image_task(&train, names_[0]);
      data::apply_image_task(&test, names_[0]);
      names_[0].clear();
    }
    // Several: every task is a view over the one copy of the images.
    for (const std::string& t : names_) {
      train_tasks_.push_back(data::parse_image_task(train, t));
      test_tasks_.push_back(data::parse_image_task(test, t));
      if (train_tasks_.back().size(train) == 0 || test_tasks_.back().size(test) == 0)
        throw Error(str("data.task '", t, "' leaves no examples"));
    }
    train_ = std::move(train);
    test_ = std::move(test);
    nn::MlpSpec spec = mlp_spec(cfg.mlp());
    if (spec.in_features != in_features)
      throw Error(str("mlp.in_features = ", spec.in_features, " but the images have ", in_features,
                      " pixels"));
    if (spec.num_classes < 10)
      throw Error(str("mlp.num_classes = ", spec.num_classes, " but Fashion-MNIST has 10 classes"));
    model_ = std::make_unique<nn::MlpClassifier>(spec, rng);
  }
  const std::string& kind() const override { return kind_; }
  nn::ParameterSet& params() override { return model_->params(); }
  std::vector<nn::Linear*> linears() override { return model_->linears(); }
  int64_t train_examples() const override { return train_tasks_[0].size(train_); }
  double units_per_example() const override { return static_cast<double>(train_tasks_.size()); }
  double flops_per_example() const override {
    return model_->train_flops_per_example() * static_cast<double>(train_tasks_.size());
  }
  int num_tasks() const override { return static_cast<int>(train_tasks_.size()); }
  void set_router(RouteFn fn) override { router_ = std::move(fn); }

  Tensor loss(const std::vector<int64_t>& idx, int64_t) override {
    const int64_t B = static_cast<int64_t>(idx.size()), F = train_.features();
    const int64_t T = static_cast<int64_t>(train_tasks_.size());
    Tensor x = Tensor::empty({T * B, F});
    std::vector<std::vector<int32_t>> y(T, std::vector<int32_t>(T * B, -1));
    std::vector<int32_t> route(T * B);
    for (int64_t t = 0; t < T; ++t) {
      const data::ImageTask& d = train_tasks_[t];
      const int64_t n = d.size(train_);
      for (int64_t i = 0; i < B; ++i) {
        const int64_t k = idx[i] % n;  // a smaller task cycles through its examples
        d.row(train_, k, x.data() + (t * B + i) * F);
        y[t][t * B + i] = d.label(train_, k);
        route[t * B + i] = static_cast<int32_t>(t);
      }
    }
    if (router_) router_(route);
    Tensor logits = model_->forward(x);
    if (T == 1) {
      y[0].resize(B);
      return ops::cross_entropy(logits, y[0]);
    }
    Tensor loss = ops::cross_entropy(logits, y[0]);
    for (int64_t t = 1; t < T; ++t) loss = ops::add(loss, ops::cross_entropy(logits, y[t]));
    return loss;
  }

  // One task (its rows routed to it), or with task < 0 the mean over tasks.
  EvalResult evaluate(int64_t batch, int64_t max_batches, int task) override {
    if (task >= 0) return evaluate_one(batch, max_batches, task);
    EvalResult mean;
    mean.loss = mean.accuracy = 0.0;
    for (int t = 0; t < num_tasks(); ++t) {
      EvalResult r = evaluate_one(batch, max_batches, t);
      mean.loss += r.loss / num_tasks();
      mean.accuracy += r.accuracy / num_tasks();
      mean.count += r.count;
    }
    return mean;
  }

  EvalResult evaluate_one(int64_t batch, int64_t max_batches, int task) {
    if (task >= num_tasks())
      throw Error(str("task ", task, " is outside the ", num_tasks(), " tasks of this run"));
    const data::ImageSet& set = eval_train_ ? train_ : test_;
    const data::ImageTask& view = eval_train_ ? train_tasks_[task] : test_tasks_[task];
    EvalResult r;
    const int64_t N = view.size(set), F = set.features();
    batch = std::max<int64_t>(batch, 500);
    double loss_sum = 0.0;
    int64_t correct = 0, seen = 0;
    for (int64_t s = 0, b = 0; s < N && (max_batches <= 0 || b < max_batches); s += batch, ++b) {
      const int64_t n = std::min(batch, N - s);
      Tensor x = Tensor::empty({n, F});
      std::vector<int32_t> y(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) {
        view.row(set, s + i, x.data() + i * F);
        y[i] = view.label(set, s + i);
      }
      if (router_) router_(std::vector<int32_t>(n, task));
      Tensor logits = model_->forward(x);
      loss_sum +=
          static_cast<double>(ops::cross_entropy(logits, y).item()) * static_cast<double>(n);
      const int64_t C = logits.size(1);
      const float* l = logits.data();
      for (int64_t i = 0; i < n; ++i) {
        int64_t arg = std::max_element(l + i * C, l + (i + 1) * C) - (l + i * C);
        correct += arg == y[i];
      }
      seen += n;
    }
    r.count = seen;
    r.loss = seen ? loss_sum / static_cast<double>(seen) : 0.0;
    r.accuracy = seen ? static_cast<double>(correct) / static_cast<double>(seen) : 0.0;
    return r;
  }

  void export_model(const std::string& dir) const override {
    fs::create_directories(dir);
    std::vector<io::WriteEntry> e;
    for (const auto& p : model_->params().all()) e.push_back(io::WriteEntry::f32(p.name, p.tensor));
    io::save_safetensors(dir + "/model.safetensors", e, {{"format", "pt"}});
  }

 private:
  std::string kind_ = "mlp";
  std::vector<std::string> names_;
  data::ImageSet train_, test_;
  std::vector<data::ImageTask> train_tasks_, test_tasks_;
  bool eval_train_ = false;
  std::unique_ptr<nn::MlpClassifier> model_;
  RouteFn router_;
};

constexpr int64_t kDefaultMaxWindow = 1024;

class LmTask : public Task {
 public:
  LmTask(const PretrainConfig& cfg, Rng& rng) {
    const DecoderConfig& d = cfg.decoder();
    if (cfg.data().files().empty())
      throw Error("data.files is empty: name the text files or globs");
    data::TokenCorpus all;
    if (cfg.data().kind() == "text")
      all = data::load_text({cfg.data().files().begin(), cfg.data().files().end()});
    else if (cfg.data().kind() == "tokens")
      all = data::load_token_bins({cfg.data().files().begin(), cfg.data().files().end()},
                                  cfg.data().token_bytes());
    else
      throw Error(str("model 'decoder' trains on data.kind 'text' or 'tokens', got '",
                      cfg.data().kind(), "'"));
    data::split_holdout(all, cfg.data().holdout(), &train_, &test_);
    if (!d.init_from().empty())
      model_ = io::load_hf_decoder(d.init_from());
    else
      model_ = std::make_unique<nn::Decoder>(decoder_spec(d), rng);
    if (all.vocab > model_->spec().vocab_size)
      throw Error(str("the corpus (data.files ", cfg.data().files(0),
                      cfg.data().files_size() > 1 ? ", ..." : "", ") uses token ids up to ",
                      all.vocab - 1, " but decoder.vocab_size is ", model_->spec().vocab_size,
                      " (text is read as bytes 0..255; a model with a smaller vocabulary needs "
                      "data.kind=tokens files of its own ids)"));
    // Windows of the whole context up to 1024 tokens: a real checkpoint's
    // context (max_position_embeddings, 2048 to 131072) would make one
    // window's attention scores alone gigabytes. data.seq_len chooses.
    T_ = std::min<int64_t>(model_->spec().n_ctx, kDefaultMaxWindow);
    if (cfg.data().seq_len() > 0) {
      if (cfg.data().seq_len() > T_)
        throw Error(str("data.seq_len = ", cfg.data().seq_len(),
                        " is longer than the model's context (decoder.n_ctx = ", T_, ")"));
      T_ = cfg.data().seq_len();
    }
    windows_ = std::make_unique<data::LmWindows>(&train_, T_);
  }
  const std::string& kind() const override { return kind_; }
  nn::ParameterSet& params() override { return model_->params(); }
  std::vector<nn::Linear*> linears() override { return model_->linears(); }
  std::vector<nn::Embedding*> embeddings() override { return model_->embeddings(); }
  int64_t train_examples() const override { return windows_->count(); }
  double units_per_example() const override { return static_cast<double>(T_); }
  double flops_per_example() const override { return model_->train_flops_per_token(T_) * T_; }

  Tensor loss(const std::vector<int64_t>& idx, int64_t epoch) override {
    std::vector<int32_t> ids, tgt;
    windows_->fill(idx, epoch, &ids, &tgt);
    return ops::cross_entropy(model_->forward(ids, static_cast<int64_t>(idx.size()), T_), tgt);
  }

  EvalResult evaluate(int64_t batch, int64_t max_batches, int) override {
    EvalResult r;
    const int64_t n = static_cast<int64_t>(test_.tokens.size());
    const int64_t T = std::min<int64_t>(T_, n - 1);
    if (T < 1) throw Error("held-out split is too short to evaluate (raise data.holdout)");
    const int64_t windows = (n - 1) / T;
    double loss_sum = 0.0;
    int64_t tokens = 0;
    for (int64_t w = 0, b = 0; w < windows && (max_batches <= 0 || b < max_batches);
         w += batch, ++b) {
      const int64_t B = std::min(batch, windows - w);
      std::vector<int32_t> ids(B * T), tgt(B * T);
      for (int64_t i = 0; i < B; ++i) {
        const int32_t* src = test_.tokens.data() + (w + i) * T;
        std::copy(src, src + T, ids.begin() + i * T);
        std::copy(src + 1, src + T + 1, tgt.begin() + i * T);
      }
      float l = ops::cross_entropy(model_->forward(ids, B, T), tgt).item();
      loss_sum += static_cast<double>(l) * static_cast<double>(B * T);
      tokens += B * T;
    }
    r.count = tokens;
    r.loss = tokens ? loss_sum / static_cast<double>(tokens) : 0.0;
    r.bits_per_token = r.loss / std::log(2.0);
    return r;
  }

  void export_model(const std::string& dir) const override { io::save_hf_decoder(dir, *model_); }
  void record_architecture(PretrainConfig* cfg) const override {
    set_decoder_config(model_->spec(), cfg->mutable_decoder());
  }

 private:
  std::string kind_ = "decoder";
  data::TokenCorpus train_, test_;
  std::unique_ptr<nn::Decoder> model_;
  std::unique_ptr<data::LmWindows> windows_;
  int64_t T_ = 0;
};

std::string status_text(float loss, double rate, const char* unit) {
  char buf[96];
  std::snprintf(buf, sizeof buf, "loss %.4f | %.0f %s/s", loss, rate, unit);
  return buf;
}

std::string config_text(const PretrainConfig& c) {
  std::string s;
  google::protobuf::TextFormat::PrintToString(c, &s);
  return s;
}

}  // namespace

struct Trainer::State {
  Rng rng;
  std::unique_ptr<data::Sampler> sampler;
  std::unique_ptr<optim::Optimizer> opt;
  optim::Schedule schedule;
  std::unique_ptr<metrics::JsonlWriter> log;
};

Trainer::Trainer(const PretrainConfig& cfg, int rank, int world)
    : cfg_(cfg), rank_(rank), world_(world), st_(std::make_unique<State>()) {
  // Each rank takes batch_size / world rows of every global batch.
  if (world < 1 || rank < 0 || rank >= world)
    throw Error(str("rank ", rank, " of a world of ", world));
  if (cfg.batch_size() % world != 0)
    throw Error(str("batch_size ", cfg.batch_size(), " does not split over ", world,
                    " ranks: make it a multiple of the world size"));
  set_num_threads(cfg.threads());
  st_->rng.reseed(cfg.seed());
  if (cfg.model() == "mlp")
    task_ = std::make_unique<ClassifierTask>(cfg, st_->rng);
  else if (cfg.model() == "decoder")
    task_ = std::make_unique<LmTask>(cfg, st_->rng);
  else
    throw Error(str("model '", cfg.model(), "': expected 'mlp' or 'decoder'"));

  st_->sampler = std::make_unique<data::Sampler>(task_->train_examples(), cfg.batch_size(),
                                                 cfg.seed(), rank, world);
  const int64_t per_epoch = st_->sampler->batches_per_epoch();
  total_steps_ =
      cfg.steps() > 0
          ? cfg.steps()
          : static_cast<int64_t>(std::ceil(cfg.epochs() * static_cast<double>(per_epoch)));
  if (total_steps_ <= 0) throw Error("steps and epochs are both 0: nothing to train");

  task_->record_architecture(&cfg_);
  trained_ = &task_->params();
  build_optimizer();
  const OptimConfig& o = cfg.optim();
  st_->schedule = {o.lr(), o.warmup_steps(), total_steps_, o.min_lr_ratio(),
                   o.schedule() == "cosine"};
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
    s.loss = loss.item();
    tape.backward(loss);
  }
  if (reducer_) {
    s.comm_wait_s = reducer_->finish();
    s.comm_s = reducer_->comm_seconds();
    const auto tl = std::chrono::steady_clock::now();
    group_->allreduce(&s.loss, 1, dist::DType::kF32, dist::ReduceOp::kMean);
    s.comm_wait_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - tl).count();
  }
  if (!std::isfinite(s.loss))
    throw Error(
        str("loss is ", s.loss, " at step ", step_, ": training diverged (lower optim.lr?)"));
  s.grad_norm = optim::clip_grad_norm(ps, cfg_.optim().grad_clip());
  s.lr = st_->schedule.at(step_);
  st_->opt->step(s.lr);
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

void Trainer::set_process_group(dist::ProcessGroup* group) {
  if (group && (group->rank() != rank_ || group->size() != world_))
    throw Error(str("process group rank ", group->rank(), " of ", group->size(),
                    " does not match the trainer's rank ", rank_, " of ", world_));
  group_ = group && group->size() > 1 ? group : nullptr;
  reducer_.reset();
}

void Trainer::set_router(RouteFn fn) {
  task_->set_router(std::move(fn));
}

void Trainer::save_checkpoint(const std::string& path) const {
  std::vector<io::WriteEntry> e;
  for (const auto& p : trained_->all()) e.push_back(io::WriteEntry::f32(p.name, p.tensor));
  for (const auto& p : st_->opt->state())
    e.push_back(io::WriteEntry::f32("optimizer." + p.name, p.tensor));
  // A checkpoint that holds the model needs nothing else: its config carries
  // the whole architecture (record_architecture) and not the folder the
  // weights first came from. One that holds adapters keeps naming its base.
  PretrainConfig saved = cfg_;
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

nn::DecoderSpec decoder_spec(const DecoderConfig& d) {
  nn::DecoderSpec s;
  s.flavor = nn::flavor_of(d.flavor().empty() ? "gpt2" : d.flavor());
  s.vocab_size = d.vocab_size();
  s.n_ctx = d.n_ctx();
  s.d_model = d.d_model();
  s.n_layer = d.n_layer();
  s.n_head = d.n_head();
  s.n_kv_head = d.n_kv_head();
  s.d_ff = d.d_ff();
  s.norm_eps = d.norm_eps();
  s.rope_theta = d.rope_theta();
  s.tie_embeddings = d.tie_embeddings();
  s.d_head = d.head_dim();
  s.attention_bias = d.attention_bias();
  s.mlp_bias = d.mlp_bias();
  s.sliding_window = d.sliding_window();
  s.max_window_layers = d.max_window_layers();
  s.rope_scaling.type = d.rope_type().empty() ? "default" : d.rope_type();
  if (d.has_rope_factor()) s.rope_scaling.factor = d.rope_factor();
  if (d.has_rope_low_freq_factor()) s.rope_scaling.low_freq_factor = d.rope_low_freq_factor();
  if (d.has_rope_high_freq_factor()) s.rope_scaling.high_freq_factor = d.rope_high_freq_factor();
  s.rope_scaling.original_max_position_embeddings = d.rope_original_max_position_embeddings();
  s.scale_attn_weights = !d.has_scale_attn_weights() || d.scale_attn_weights();
  s.scale_attn_by_inverse_layer_idx = d.scale_attn_by_inverse_layer_idx();
  if (d.has_partial_rotary_factor()) s.partial_rotary_factor = d.partial_rotary_factor();
  return s;
}

void set_decoder_config(const nn::DecoderSpec& s, DecoderConfig* d) {
  d->set_flavor(nn::flavor_name(s.flavor));
  d->set_vocab_size(static_cast<int32_t>(s.vocab_size));
  d->set_n_ctx(static_cast<int32_t>(s.n_ctx));
  d->set_d_model(static_cast<int32_t>(s.d_model));
  d->set_n_layer(static_cast<int32_t>(s.n_layer));
  d->set_n_head(static_cast<int32_t>(s.n_head));
  d->set_n_kv_head(static_cast<int32_t>(s.kv_heads()));
  d->set_d_ff(static_cast<int32_t>(s.ff()));
  d->set_norm_eps(s.norm_eps);
  d->set_rope_theta(s.rope_theta);
  d->set_tie_embeddings(s.tie_embeddings);
  d->set_head_dim(static_cast<int32_t>(s.head_dim()));
  d->set_attention_bias(s.attention_bias);
  d->set_mlp_bias(s.mlp_bias);
  d->set_sliding_window(static_cast<int32_t>(s.sliding_window));
  d->set_max_window_layers(static_cast<int32_t>(s.max_window_layers));
  d->set_rope_type(s.rope_scaling.type);
  d->set_rope_factor(s.rope_scaling.factor);
  d->set_rope_low_freq_factor(s.rope_scaling.low_freq_factor);
  d->set_rope_high_freq_factor(s.rope_scaling.high_freq_factor);
  d->set_rope_original_max_position_embeddings(
      static_cast<int32_t>(s.rope_scaling.original_max_position_embeddings));
  d->set_scale_attn_weights(s.scale_attn_weights);
  d->set_scale_attn_by_inverse_layer_idx(s.scale_attn_by_inverse_layer_idx);
  d->set_partial_rotary_factor(s.partial_rotary_factor);
}

Model::Model(const PretrainConfig& cfg) {
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

PretrainConfig read_checkpoint_config(const std::string& path) {
  auto f = io::SafetensorsFile::open(path);
  PretrainConfig c;
  if (!google::protobuf::TextFormat::ParseFromString(meta_at(*f, "tessera.config"), &c))
    throw Error(str("'", path, "': stored config does not parse"));
  return c;
}

void Trainer::load_checkpoint(const std::string& path, bool weights_only) {
  auto f = io::SafetensorsFile::open(path);
  if (meta_at(*f, "tessera.kind") != task_->kind())
    throw Error(str("'", path, "' holds a ", meta_at(*f, "tessera.kind"),
                    " model, this run trains a ", task_->kind()));
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
