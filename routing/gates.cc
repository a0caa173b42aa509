#include "routing/gates.h"

#include <algorithm>
#include <cmath>

#include "runtime/autograd/tape.h"
#include "runtime/common/error.h"
#include "runtime/train/trainer.h"

namespace tessera::routing {

const NameTable<Granularity>& granularity_names() {
  static const NameTable<Granularity> t = {{Granularity::Module, "module"},
                                           {Granularity::Block, "block"},
                                           {Granularity::Global, "global"}};
  return t;
}

const NameTable<ops::GateWeights>& gate_weights_names() {
  static const NameTable<ops::GateWeights> t = {
      {ops::GateWeights::Renormalized, "renormalized"},
      {ops::GateWeights::Softmax, "switch"},
      {ops::GateWeights::StraightThrough, "straight-through"}};
  return t;
}

void check_gate_options(const GateOptions& o) {
  if (o.top_k < 1) throw Error(str("gate top_k = ", o.top_k, ": expected at least 1"));
  if (o.top_k == 1 && o.weights == ops::GateWeights::Renormalized)
    throw Error(
        "gate top_k = 1 with renormalized weights: the single weight is always 1, so the gate "
        "would get no gradient and never learn; use weights=switch (the output times p) or "
        "weights=straight-through");
  if (!(o.jitter >= 0 && o.jitter < 1))
    throw Error(str("gate jitter = ", o.jitter, ": expected a value in [0, 1)"));
  if (!(o.bias_update_rate >= 0))
    throw Error(str("gate bias_update_rate = ", o.bias_update_rate, ": expected 0 or more"));
  for (auto [name, v] : {std::pair<const char*, float>{"balance", o.balance},
                         {"z_loss", o.z_loss},
                         {"gating_balance", o.gating_balance}})
    if (!(v >= 0) || !std::isfinite(v))
      throw Error(str("gate ", name, " = ", v, ": expected a finite coefficient of 0 or more"));
}

LearnedGate::LearnedGate(nn::ParameterSet& ps, const std::string& name, int64_t in, int64_t E,
                         const GateOptions& o, uint64_t seed)
    : name_(name), in_(in), E_(E), o_(o), rng_(seed) {
  check_gate_options(o);
  if (o.top_k > E)
    throw Error(
        str("gate ", name, ": top_k = ", o.top_k, " for ", E, " experts (expected 1 to ", E, ")"));
  Tensor w = Tensor::empty({E, in});
  const float bound = 1.0f / std::sqrt(static_cast<float>(in));
  for (int64_t i = 0; i < w.numel(); ++i) w.data()[i] = rng_.uniform(-bound, bound);
  weight_ = ps.add(name + ".weight", w);
  bias_.assign(static_cast<size_t>(E), 0.0f);
  load_.assign(static_cast<size_t>(E), 0);
}

const ops::Gate& LearnedGate::route(const Tensor& x) {
  const bool training = autograd::Tape::current() != nullptr;
  Tensor in = x;
  if (training && o_.jitter > 0) {
    Tensor noise = Tensor::empty(x.shape());
    for (int64_t i = 0; i < noise.numel(); ++i)
      noise.data()[i] = rng_.uniform(1.0f - o_.jitter, 1.0f + o_.jitter);
    in = ops::mul(x, noise);
  }
  Tensor logits = ops::matmul_nt(in, weight_);
  latest_ = ops::top_k_gate(logits, o_.top_k, o_.weights,
                            o_.bias_update_rate > 0 ? bias_ : std::vector<float>{});
  if (training) {
    if (o_.balance > 0 || o_.z_loss > 0 || o_.gating_balance > 0) logits_.push_back(logits);
    for (int32_t id : latest_.ids) ++load_[static_cast<size_t>(id)];
  }
  return latest_;
}

std::vector<Tensor> LearnedGate::take_logits() {
  std::vector<Tensor> out;
  out.swap(logits_);
  return out;
}

void LearnedGate::update_bias() {
  int64_t total = 0;
  for (int64_t c : load_) total += c;
  if (total > 0 && o_.bias_update_rate > 0) {
    const double mean = static_cast<double>(total) / static_cast<double>(E_);
    for (int64_t e = 0; e < E_; ++e) {
      const double err = mean - static_cast<double>(load_[e]);
      bias_[e] += o_.bias_update_rate * static_cast<float>((err > 0) - (err < 0));
    }
  }
  std::fill(load_.begin(), load_.end(), 0);
}

GatedLora::GatedLora(ExpertStack experts, std::shared_ptr<LearnedGate> gate, bool decides,
                     Combine combine)
    : experts_(std::move(experts)), gate_(std::move(gate)), decides_(decides), combine_(combine) {
  if (experts_.experts() != gate_->experts())
    throw Error(str("gated LoRA: ", experts_.experts(), " experts under gate ", gate_->name(),
                    " of ", gate_->experts()));
}

Tensor GatedLora::apply(const Tensor& x, const Tensor& base_out, bool in_place) {
  if (decides_) {
    used_ = gate_->route(x);
  } else {
    used_ = gate_->latest();
    const int64_t N = x.numel() / x.size(x.ndim() - 1);
    if (used_.k == 0 || static_cast<int64_t>(used_.ids.size()) != N * used_.k)
      throw Error(str("gated LoRA: gate ", gate_->name(), " decided for ",
                      used_.k ? static_cast<int64_t>(used_.ids.size()) / used_.k : 0,
                      " rows, this module is called with ", N,
                      " (a shared gate must run on the block's first module)"));
  }
  return ops::lora_gather(
      x, base_out, experts_.A, experts_.B, used_.ids, used_.k, used_.weights, experts_.scales,
      combine_ == Combine::MergeAfter ? ops::LoraMix::Output : ops::LoraMix::Parameter, in_place);
}

TopK GatedLora::last() const {
  TopK t;
  t.k = used_.k;
  t.ids = used_.ids;
  if (used_.weights.defined()) t.weights = used_.weights.to_vector();
  return t;
}

ExpertStack fresh_experts(nn::ParameterSet& ps, const std::string& name, int64_t E, int64_t r,
                          float alpha, int64_t in, int64_t out, Rng& rng) {
  if (E < 1 || r < 1 || !(alpha > 0))
    throw Error(str("fresh experts for ", name, ": ", E, " experts of rank ", r, ", alpha ", alpha,
                    " (expected at least 1 expert of rank at least 1, alpha above 0)"));
  ExpertStack s;
  Tensor A = Tensor::empty({E, r, in});
  const float bound = 1.0f / std::sqrt(static_cast<float>(in));
  for (int64_t i = 0; i < A.numel(); ++i) A.data()[i] = rng.uniform(-bound, bound);
  s.A = ps.add(name + ".lora_A", A);
  s.B = ps.add(name + ".lora_B", Tensor::zeros({E, out, r}));
  s.scales.assign(static_cast<size_t>(E), alpha / static_cast<float>(r));
  return s;
}

namespace {

std::string block_of(const std::string& module) {
  const size_t dot = module.rfind('.');
  return dot == std::string::npos ? module : module.substr(0, dot);
}

}  // namespace

Mixture::Mixture(const std::vector<nn::Linear*>& linears,
                 std::map<std::string, ExpertStack> experts, const GateOptions& o,
                 nn::ParameterSet& ps, uint64_t seed)
    : o_(o) {
  check_gate_options(o);
  if (experts.empty()) throw Error("mixture: no modules to route");
  std::map<std::string, std::shared_ptr<LearnedGate>> by_key;
  size_t found = 0;
  for (nn::Linear* l : linears) {
    auto it = experts.find(l->name());
    if (it == experts.end()) continue;
    ++found;
    ExpertStack& s = it->second;
    if (s.A.ndim() != 3 || s.A.size(2) != l->in_features() || s.B.size(1) != l->out_features())
      throw Error(str("mixture: the experts for ", l->name(), " map ",
                      s.A.ndim() == 3 ? s.A.size(2) : -1, " -> ",
                      s.B.ndim() == 3 ? s.B.size(1) : -1, "; the module maps ", l->in_features(),
                      " -> ", l->out_features()));
    const std::string key = o.granularity == Granularity::Module  ? l->name()
                            : o.granularity == Granularity::Block ? block_of(l->name())
                                                                  : std::string("global");
    auto g = by_key.find(key);
    bool decides = false;
    if (g == by_key.end()) {
      auto gate = std::make_shared<LearnedGate>(ps, key + ".gate", l->in_features(), s.experts(), o,
                                                seed + gates_.size());
      g = by_key.emplace(key, gate).first;
      gates_.push_back(gate);
      decides = true;
    } else if (g->second->experts() != s.experts()) {
      throw Error(str("mixture: ", l->name(), " has ", s.experts(), " experts but shares gate ",
                      g->second->name(), " over ", g->second->experts()));
    }
    auto slot = std::make_shared<GatedLora>(std::move(s), g->second, decides, o.combine);
    l->set_adapter(slot);
    slots_.push_back({l->name(), slot});
  }
  if (found != experts.size())
    for (const auto& [name, s] : experts) {
      bool have = false;
      for (nn::Linear* l : linears) have = have || l->name() == name;
      if (!have) throw Error(str("mixture: the model has no module named '", name, "'"));
    }
}

const std::vector<Tensor>& Mixture::logits_of_step(int64_t step) {
  if (taken_for_ != step) {
    step_logits_.clear();
    for (auto& g : gates_)
      for (Tensor& t : g->take_logits()) step_logits_.push_back(t);
    taken_for_ = step;
  }
  return step_logits_;
}

void Mixture::add_to(train::Trainer& trainer) {
  train::Trainer* tr = &trainer;
  auto stacked = [this, tr]() {
    const auto& l = logits_of_step(tr->step());
    if (l.empty()) throw Error("mixture: no gate ran in this step's forward");
    return l.size() == 1 ? l[0] : ops::concat_rows(l);
  };
  if (o_.balance > 0)
    trainer.add_loss_term("balance", [this, stacked] {
      return ops::scale(ops::load_balancing_loss(stacked(), o_.top_k), o_.balance);
    });
  if (o_.z_loss > 0)
    trainer.add_loss_term(
        "z_loss", [this, stacked] { return ops::scale(ops::router_z_loss(stacked()), o_.z_loss); });
  if (o_.gating_balance > 0)
    trainer.add_loss_term("gating_balance", [this, stacked] {
      return ops::scale(ops::gating_balance_loss(stacked()), o_.gating_balance);
    });
  trainer.add_step_hook([this] {
    for (auto& g : gates_) {
      g->take_logits();
      g->update_bias();
    }
    step_logits_.clear();
    taken_for_ = -1;
  });
}

}  // namespace tessera::routing
