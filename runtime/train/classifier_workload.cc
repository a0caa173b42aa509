#include "runtime/train/classifier_workload.h"

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "runtime/autograd/ops.h"
#include "runtime/common/error.h"
#include "runtime/data/data.h"
#include "runtime/io/hf.h"
#include "runtime/io/safetensors.h"

namespace tessera::train {

namespace fs = std::filesystem;

namespace {

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

class ClassifierWorkload : public Workload {
 public:
  ClassifierWorkload(const RunConfig& cfg, Rng& rng) {
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
  void set_row_task_hook(RowTaskFn fn) override { row_task_ = std::move(fn); }

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
    if (row_task_) row_task_(route);
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
      if (row_task_) row_task_(std::vector<int32_t>(n, task));
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
  RowTaskFn row_task_;
};

}  // namespace

nn::MlpSpec mlp_spec(const MlpConfig& m) {
  nn::MlpSpec spec;
  spec.in_features = m.in_features();
  spec.hidden.assign(m.hidden().begin(), m.hidden().end());
  spec.num_classes = m.num_classes();
  spec.activation = nn::act_names().parse(m.activation(), "mlp.activation");
  return spec;
}

std::unique_ptr<Workload> make_classifier_workload(const RunConfig& cfg, Rng& rng) {
  return std::make_unique<ClassifierWorkload>(cfg, rng);
}

}  // namespace tessera::train
