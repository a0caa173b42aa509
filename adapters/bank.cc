#include "adapters/bank.h"

#include <algorithm>
#include <cmath>

#include "runtime/autograd/ops.h"
#include "runtime/autograd/tape.h"
#include "runtime/common/error.h"

namespace tessera::adapters {

// ---- LoraBank ----

LoraBank::LoraBank(const nn::Linear& base, int64_t experts, const LoraConfig& cfg,
                   nn::ParameterSet& ps, Rng& rng, std::shared_ptr<const Routing> routing)
    : scales_(experts, cfg.scale()), routing_(std::move(routing)) {
  if (experts < 1) throw Error(str("LoRA bank of ", experts, " experts: expected >= 1"));
  if (cfg.r < 1) throw Error(str("LoRA rank r = ", cfg.r, " for ", base.name(), ": expected >= 1"));
  const int64_t in = base.in_features(), out = base.out_features();
  Tensor a = Tensor::empty({experts, cfg.r, in});
  const float bound = 1.0f / std::sqrt(static_cast<float>(in));  // as Lora: kaiming_uniform(√5)
  for (int64_t i = 0; i < a.numel(); ++i) a.data()[i] = rng.uniform(-bound, bound);
  A_ = ps.add(base.name() + ".lora_A.bank", a);
  B_ = ps.add(base.name() + ".lora_B.bank", Tensor::zeros({experts, out, cfg.r}));
}

Tensor LoraBank::apply(const Tensor& x, const Tensor& base_out, const nn::Linear& base,
                       bool in_place) {
  if (routing_->ids.empty()) return base_out;
  const int64_t in = base.in_features(), out = base.out_features();
  Tensor x2 = ops::reshape(x, {x.numel() / in, in});
  Tensor b2 = ops::reshape(base_out, {base_out.numel() / out, out});
  return ops::reshape(ops::lora_gather(x2, b2, A_, B_, routing_->ids, routing_->k,
                                       routing_->weights, scales_, routing_->mix, in_place),
                      base_out.shape());
}

void LoraBank::shift_base(nn::Linear& base, bool merge) {
  if (merge)
    throw Error(str("the LoRA bank on ", base.name(),
                    " serves a different expert per row and has no single merged weight; merge "
                    "one expert (BankSet::expert) instead"));
}

// ---- BankSet ----

BankSet::BankSet(std::vector<nn::Linear*> linears, nn::ParameterSet& base,
                 const std::vector<std::string>& targets, int64_t experts, const LoraSpec& spec,
                 uint64_t seed)
    : routing_(std::make_shared<Routing>()), experts_(experts) {
  std::vector<std::string> chosen = select_modules(linears, targets);
  for (nn::Linear* l : linears)
    if (std::find(chosen.begin(), chosen.end(), l->name()) != chosen.end() && l->adapter())
      throw Error(str("module ", l->name(), " already has an adapter attached"));
  base.set_trainable("*", false);
  Rng rng(seed);
  for (nn::Linear* l : linears) {
    if (std::find(chosen.begin(), chosen.end(), l->name()) == chosen.end()) continue;
    auto b =
        std::make_shared<LoraBank>(*l, experts, spec.for_module(l->name()), params_, rng, routing_);
    l->set_adapter(b);
    linears_.push_back(l);
    banks_.push_back(b);
    names_.push_back(l->name());
  }
}

BankSet::~BankSet() {
  if (attached_) detach();
}

void BankSet::route(std::vector<int32_t> ids) {
  for (size_t i = 0; i < ids.size(); ++i)
    if (ids[i] < -1 || ids[i] >= experts_)
      throw Error(str("expert id ", ids[i], " for example ", i, " is outside [-1, ", experts_,
                      ") (-1: the base alone)"));
  *routing_ = Routing{std::move(ids), 1, Tensor(), ops::LoraMix::Output};
}

void BankSet::route(std::vector<int32_t> ids, int64_t k, Tensor weights, ops::LoraMix mix) {
  if (k < 1 || ids.size() % static_cast<size_t>(k) != 0)
    throw Error(str(ids.size(), " expert ids are not k = ", k, " per row group"));
  for (size_t i = 0; i < ids.size(); ++i)
    if (ids[i] < -1 || ids[i] >= experts_)
      throw Error(str("expert id ", ids[i], " for row group ", i / k, " slot ", i % k,
                      " is outside [-1, ", experts_, ") (-1: an empty slot)"));
  const int64_t M = static_cast<int64_t>(ids.size()) / k;
  if (weights.defined() && (weights.ndim() != 2 || weights.size(0) != M || weights.size(1) != k))
    throw Error(str("routing weights ", shape_str(weights.shape()), " are not [", M, ", ", k,
                    "] (row groups, experts per group)"));
  *routing_ = Routing{std::move(ids), k, std::move(weights), mix};
}

std::vector<std::pair<std::string, LoraFactors>> BankSet::expert(int64_t e) const {
  if (e < 0 || e >= experts_) throw Error(str("expert ", e, " is outside [0, ", experts_, ")"));
  std::vector<std::pair<std::string, LoraFactors>> out;
  for (size_t i = 0; i < banks_.size(); ++i) {
    const LoraBank& b = *banks_[i];
    const int64_t r = b.rank(), in = b.A().size(2), o = b.B().size(1);
    Tensor a = Tensor::empty({r, in}), bb = Tensor::empty({o, r});
    std::copy_n(b.A().data() + e * r * in, r * in, a.data());
    std::copy_n(b.B().data() + e * o * r, o * r, bb.data());
    out.push_back({names_[i], LoraFactors{a, bb, b.scales()[e]}});
  }
  return out;
}

void BankSet::load_expert(int64_t e,
                          const std::vector<std::pair<std::string, LoraFactors>>& factors) {
  if (e < 0 || e >= experts_) throw Error(str("expert ", e, " is outside [0, ", experts_, ")"));
  if (factors.size() != banks_.size())
    throw Error(
        str("expert ", e, ": ", factors.size(), " modules given, the bank has ", banks_.size()));
  for (size_t i = 0; i < banks_.size(); ++i) {
    const auto& [name, f] = factors[i];
    LoraBank& b = *banks_[i];
    const int64_t R = b.rank(), in = b.A().size(2), o = b.B().size(1), r = f.rank();
    if (name != names_[i] || f.A.ndim() != 2 || f.A.size(1) != in || f.B.ndim() != 2 ||
        f.B.size(0) != o || f.B.size(1) != r || r > R)
      throw Error(str("expert ", e, ": module ", name, " with A ", shape_str(f.A.shape()), " B ",
                      shape_str(f.B.shape()), " does not fit bank ", names_[i], " (rank <= ", R,
                      ", in ", in, ", out ", o, ")"));
    float* a = Tensor(b.A()).data() + e * R * in;
    float* bb = Tensor(b.B()).data() + e * o * R;
    std::fill_n(a, R * in, 0.0f);
    std::fill_n(bb, o * R, 0.0f);
    std::copy_n(f.A.data(), r * in, a);
    for (int64_t row = 0; row < o; ++row) std::copy_n(f.B.data() + row * r, r, bb + row * R);
    b.scales()[e] = f.scale;
  }
}

void BankSet::detach() {
  for (size_t i = 0; i < linears_.size(); ++i)
    if (linears_[i]->adapter() == banks_[i]) linears_[i]->set_adapter(nullptr);
  attached_ = false;
}

}  // namespace tessera::adapters
