#include "routing/poly.h"

#include <algorithm>
#include <cmath>

#include "runtime/autograd/ops.h"
#include "runtime/autograd/tape.h"
#include "runtime/common/error.h"

namespace tessera::routing {

const NameTable<PolyScale>& poly_scale_names() {
  static const NameTable<PolyScale> t = {{PolyScale::InverseRank, "1/r"},
                                         {PolyScale::AlphaOverRank, "alpha/r"}};
  return t;
}

void check_poly_options(const PolyOptions& o) {
  for (auto [name, v] : {std::pair<const char*, int64_t>{"tasks", o.tasks},
                         {"skills", o.skills},
                         {"splits", o.splits},
                         {"r", o.r}})
    if (v < 1) throw Error(str("poly ", name, " = ", v, ": expected at least 1"));
  if (!(o.temperature > 0))
    throw Error(str("poly temperature = ", o.temperature, ": expected a value above 0"));
  if (!(o.alpha > 0)) throw Error(str("poly alpha = ", o.alpha, ": expected a value above 0"));
}

PolyLora::PolyLora(nn::ParameterSet& ps, const std::string& name, int64_t in, int64_t out,
                   const PolyOptions& o, uint64_t seed)
    : name_(name), o_(o), rng_(seed) {
  check_poly_options(o);
  if (in % o.splits != 0 || out % o.splits != 0)
    throw Error(str("poly on ", name, ": ", o.splits, " splits do not divide in_features ", in,
                    " and out_features ", out));
  const int64_t S = o.skills, r = o.r;
  Tensor A = Tensor::empty({S, r, in});
  const float bound = 1.0f / std::sqrt(static_cast<float>(in / o.splits));
  for (int64_t i = 0; i < A.numel(); ++i) A.data()[i] = rng_.uniform(-bound, bound);
  Tensor Z = Tensor::empty({o.tasks, o.splits * S});
  for (int64_t i = 0; i < Z.numel(); ++i) Z.data()[i] = rng_.uniform(-1e-3f, 1e-3f);
  A_ = ps.add(name + ".poly_lora_A", A);
  B_ = ps.add(name + ".poly_lora_B", Tensor::zeros({S, out, r}));
  Z_ = ps.add(name + ".module_logits", Z);
  scale_ = (o.scale == PolyScale::InverseRank ? 1.0f : o.alpha) / static_cast<float>(r);
}

void PolyLora::set_tasks(std::vector<int32_t> tasks) {
  for (size_t i = 0; i < tasks.size(); ++i)
    if (tasks[i] < -1 || tasks[i] >= o_.tasks)
      throw Error(str("poly on ", name_, ": row group ", i, " has task ", tasks[i], "; ", o_.tasks,
                      " tasks were trained (ids 0 to ", o_.tasks - 1, ", or -1 for none)"));
  tasks_ = std::move(tasks);
}

Tensor PolyLora::eval_weights(const std::vector<int32_t>& tasks) const {
  autograd::NoGrad off;
  return ops::poly_weights(ops::embedding(tasks, Z_), o_.skills, Tensor(), o_.temperature);
}

Tensor PolyLora::apply(const Tensor& x, const Tensor& base_out, bool in_place) {
  const int64_t N = x.numel() / x.size(x.ndim() - 1);
  const int64_t M = static_cast<int64_t>(tasks_.size());
  if (M == 0 || N % M != 0)
    throw Error(str("poly on ", name_, ": ", M, " task ids for ", N,
                    " rows (give one task per example, as PEFT's task_ids)"));
  // The adapters to mix: in evaluation one per distinct task of the batch
  // (σ(Z) is the same for every example of a task); in training one per
  // example, each with its own RelaxedBernoulli sample, as PEFT draws them
  // (it indexes module_logits[task_ids] per example). Unknown tasks (−1)
  // share the skill average, last.
  const bool training = autograd::Tape::current() != nullptr;
  std::vector<int32_t> distinct, ids(static_cast<size_t>(M));
  bool unknown = false;
  for (int32_t t : tasks_) {
    if (t < 0) {
      unknown = true;
      continue;
    }
    if (training || std::find(distinct.begin(), distinct.end(), t) == distinct.end())
      distinct.push_back(t);
  }
  for (int64_t m = 0, known = 0; m < M; ++m) {
    const int32_t t = tasks_[m];
    if (t < 0)
      ids[m] = static_cast<int32_t>(distinct.size());
    else if (training)
      ids[m] = static_cast<int32_t>(known++);
    else
      ids[m] =
          static_cast<int32_t>(std::find(distinct.begin(), distinct.end(), t) - distinct.begin());
  }
  const int64_t q = o_.splits, S = o_.skills;
  std::vector<Tensor> parts;
  if (!distinct.empty()) {
    Tensor logits = ops::embedding(distinct, Z_);
    Tensor u;
    if (training) {
      // torch's RelaxedBernoulli.rsample: u ~ U(0, 1) clamped to [ε, 1 − ε].
      constexpr float eps = 1.1920929e-07f;
      u = Tensor::empty(logits.shape());
      for (int64_t i = 0; i < u.numel(); ++i)
        u.data()[i] = std::clamp(rng_.uniform(), eps, 1.0f - eps);
    }
    parts.push_back(ops::poly_weights(logits, S, u, o_.temperature));
  }
  if (unknown) {
    Tensor avg = Tensor::empty({1, q, S});
    std::fill(avg.data(), avg.data() + avg.numel(), 1.0f / static_cast<float>(S));
    parts.push_back(avg);
  }
  const Tensor w = parts.size() == 1 ? parts[0] : ops::concat_rows(parts);
  if (training) {
    // One adapter per example: mixed inside the GEMMs (ops::poly_lora), never
    // formed. The weights in row-group order: the examples' own, the skill
    // average for unknown tasks.
    Tensor rows = w;
    if (unknown) {
      const int64_t K = w.size(0);
      rows = ops::reshape(ops::embedding(ids, ops::reshape(w, {K, q * S})), {M, q, S});
    }
    return ops::poly_lora(x, base_out, A_, B_, rows, scale_);
  }
  const Tensor A = ops::poly_mix(w, A_, true), B = ops::poly_mix(w, B_, false);
  const std::vector<float> scales(static_cast<size_t>(w.size(0)), scale_);
  return ops::lora_gather(x, base_out, A, B, ids, 1, Tensor(), scales, ops::LoraMix::Output,
                          in_place);
}

adapters::LoraFactors poly_average(const PolyLora& p) {
  const Tensor& A = p.lora_A();
  const Tensor& B = p.lora_B();
  const int64_t S = A.size(0), r = A.size(1), in = A.size(2), out = B.size(1);
  adapters::LoraFactors f;
  f.A = Tensor::zeros({r, in});
  f.B = Tensor::zeros({out, r});
  for (int64_t s = 0; s < S; ++s) {
    for (int64_t i = 0; i < r * in; ++i) f.A.data()[i] += A.data()[s * r * in + i] / S;
    for (int64_t i = 0; i < out * r; ++i) f.B.data()[i] += B.data()[s * out * r + i] / S;
  }
  f.scale = p.scale();
  return f;
}

PolyModel::PolyModel(const std::vector<nn::Linear*>& linears,
                     const std::vector<std::string>& modules, const PolyOptions& o,
                     nn::ParameterSet& ps, uint64_t seed) {
  check_poly_options(o);
  if (modules.empty()) throw Error("poly: no modules to adapt");
  for (const std::string& m : modules) {
    nn::Linear* found = nullptr;
    for (nn::Linear* l : linears)
      if (l->name() == m) found = l;
    if (!found) throw Error(str("poly: the model has no module named '", m, "'"));
  }
  for (nn::Linear* l : linears) {
    if (std::find(modules.begin(), modules.end(), l->name()) == modules.end()) continue;
    auto slot = std::make_shared<PolyLora>(ps, l->name(), l->in_features(), l->out_features(), o,
                                           seed + slots_.size());
    l->set_adapter(slot);
    slots_.push_back({l->name(), slot});
  }
}

void PolyModel::set_tasks(const std::vector<int32_t>& tasks) {
  for (auto& [name, s] : slots_) s->set_tasks(tasks);
}

void PolyModel::freeze_skills(nn::ParameterSet& ps) {
  ps.set_trainable("*.poly_lora_A", false);
  ps.set_trainable("*.poly_lora_B", false);
}

void PolyModel::set_logits_lr_scale(nn::ParameterSet& ps, float scale) {
  if (!(scale > 0) || !std::isfinite(scale))
    throw Error(str("poly: logits learning-rate scale ", scale, " (expected above 0)"));
  ps.set_lr_scale("*.module_logits", scale);
}

}  // namespace tessera::routing
