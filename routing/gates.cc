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
  if (!std::isfinite(o.bias_update_rate))
    throw Error(str("gate bias_update_rate = ", o.bias_update_rate, ": expected a finite value"));
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
  bias_ = ps.add(name + ".bias", Tensor::zeros({E}));
  bias_.set_requires_grad(false);
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
                            o_.bias_update_rate > 0 ? bias_.to_vector() : std::vector<float>{});
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
      bias_.data()[e] += o_.bias_update_rate * static_cast<float>((err > 0) - (err < 0));
    }
  }
  std::fill(load_.begin(), load_.end(), 0);
}

const ops::Gate& LearnedGate::decision_for(const void* slot, const Tensor& x) {
  const int64_t N = x.numel() / x.size(x.ndim() - 1);
  const bool stale = latest_.k == 0 || std::find(used_.begin(), used_.end(), slot) != used_.end() ||
                     static_cast<int64_t>(latest_.ids.size()) != N * latest_.k;
  if (stale) {
    if (x.size(x.ndim() - 1) != in_)
      throw Error(str("gate ", name_, " decides from inputs of width ", in_, "; a module of width ",
                      x.size(x.ndim() - 1),
                      " was called first in this forward with no decision to reuse"));
    route(x);
    used_.clear();
  }
  used_.push_back(slot);
  return latest_;
}

GatedLora::GatedLora(ExpertStack experts, std::shared_ptr<LearnedGate> gate, Combine combine)
    : experts_(std::move(experts)), gate_(std::move(gate)), combine_(combine) {
  if (experts_.experts() != gate_->experts())
    throw Error(str("gated LoRA: ", experts_.experts(), " experts under gate ", gate_->name(),
                    " of ", gate_->experts()));
}

Tensor GatedLora::apply(const Tensor& x, const Tensor& base_out, bool in_place) {
  used_ = gate_->decision_for(this, x);
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
  for (const auto& [name, st] : experts) {
    bool have = false;
    for (nn::Linear* l : linears) have = have || l->name() == name;
    if (!have) throw Error(str("mixture: the model has no module named '", name, "'"));
  }
  // Everything checked before any parameter is registered or slot attached.
  auto key_of = [&](const std::string& module) {
    return o.granularity == Granularity::Module  ? module
           : o.granularity == Granularity::Block ? block_of(module)
                                                 : std::string("global");
  };
  std::map<std::string, int64_t> experts_of;
  for (nn::Linear* l : linears) {
    auto it = experts.find(l->name());
    if (it == experts.end()) continue;
    const ExpertStack& st = it->second;
    if (st.A.ndim() != 3 || st.B.ndim() != 3 || st.A.size(2) != l->in_features() ||
        st.B.size(1) != l->out_features())
      throw Error(str("mixture: the experts for ", l->name(), " map ",
                      st.A.ndim() == 3 ? st.A.size(2) : -1, " -> ",
                      st.B.ndim() == 3 ? st.B.size(1) : -1, "; the module maps ", l->in_features(),
                      " -> ", l->out_features()));
    const std::string key = key_of(l->name());
    auto [e, fresh] = experts_of.emplace(key, st.experts());
    if (!fresh && e->second != st.experts())
      throw Error(str("mixture: ", l->name(), " has ", st.experts(), " experts but shares gate ",
                      key, ".gate over ", e->second));
    if (o.top_k > st.experts())
      throw Error(
          str("mixture: top_k = ", o.top_k, " for ", st.experts(), " experts at ", l->name()));
  }
  std::map<std::string, std::shared_ptr<LearnedGate>> by_key;
  for (nn::Linear* l : linears) {
    auto it = experts.find(l->name());
    if (it == experts.end()) continue;
    ExpertStack& st = it->second;
    const std::string key = key_of(l->name());
    auto g = by_key.find(key);
    if (g == by_key.end()) {
      auto gate = std::make_shared<LearnedGate>(ps, key + ".gate", l->in_features(), st.experts(),
                                                o, seed + gates_.size());
      g = by_key.emplace(key, gate).first;
      gates_.push_back(gate);
    }
    auto slot = std::make_shared<GatedLora>(std::move(st), g->second, o.combine);
    l->set_adapter(slot);
    slots_.push_back({l->name(), slot});
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
