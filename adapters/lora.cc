#include "adapters/lora.h"

#include "adapters/merge.h"

#include <algorithm>
#include <cmath>
#include <regex>

#include "runtime/autograd/ops.h"
#include "runtime/common/error.h"

namespace tessera::adapters {

float LoraConfig::scale() const {
  return rslora ? alpha / std::sqrt(static_cast<float>(r)) : alpha / static_cast<float>(r);
}

bool peft_pattern_matches(const std::string& key, const std::string& module) {
  try {
    return std::regex_match(module, std::regex("(.*\\.)?(" + key + ")"));
  } catch (const std::regex_error& e) {
    throw Error(str("pattern '", key, "' is not a valid regular expression: ", e.what()));
  }
}

LoraConfig LoraSpec::for_module(const std::string& name) const {
  LoraConfig c = base;
  for (const auto& [k, r] : rank_pattern)
    if (peft_pattern_matches(k, name)) {
      c.r = r;
      break;
    }
  for (const auto& [k, a] : alpha_pattern)
    if (peft_pattern_matches(k, name)) {
      c.alpha = a;
      break;
    }
  return c;
}

Lora::Lora(const nn::Linear& base, const LoraConfig& cfg, nn::ParameterSet& ps, Rng& rng)
    : cfg_(cfg), scale_(cfg.scale()) {
  if (cfg.r < 1) throw Error(str("LoRA rank r = ", cfg.r, " for ", base.name(), ": expected >= 1"));
  const int64_t in = base.in_features(), out = base.out_features();
  // torch.nn.init.kaiming_uniform_(A, a=√5), as PEFT does: bound = 1/√in.
  Tensor a = Tensor::empty({cfg.r, in});
  const float bound = 1.0f / std::sqrt(static_cast<float>(in));
  for (int64_t i = 0; i < a.numel(); ++i) a.data()[i] = rng.uniform(-bound, bound);
  a_ = ps.add(base.name() + ".lora_A.weight", a);
  b_ = ps.add(base.name() + ".lora_B.weight", Tensor::zeros({out, cfg.r}));
}

Tensor Lora::forward(const Tensor& x, const Tensor& base_out, const nn::Linear&) {
  if (merged_) return base_out;
  Tensor h = ops::matmul_nt(x, a_);  // [..., r]
  return ops::add(base_out, ops::scale(ops::matmul_nt(h, b_), scale_));
}

Tensor Lora::delta_weight(const nn::Linear& base) const {
  return LoraFactors{a_, b_, scale_}.delta(base.w_in_out());
}

std::vector<std::string> match_targets(const std::vector<nn::Linear*>& linears,
                                       const std::string& target) {
  std::vector<std::string> out;
  if (target == "all-linear") {
    // PEFT's all-linear: every Linear but the output layer.
    for (nn::Linear* l : linears)
      if (l->name() != "lm_head" && l->name() != "classifier") out.push_back(l->name());
    return out;
  }
  if (target.rfind("re:", 0) == 0) {
    std::regex re;
    try {
      re = std::regex(target.substr(3));
    } catch (const std::regex_error& e) {
      throw Error(str("target '", target, "' is not a valid regular expression: ", e.what()));
    }
    for (nn::Linear* l : linears)
      if (std::regex_match(l->name(), re)) out.push_back(l->name());
    return out;
  }
  // A glob over the full name, or (as in PEFT) a plain suffix such as "q_proj".
  for (nn::Linear* l : linears) {
    const std::string& n = l->name();
    bool suffix = target.find_first_of("*?") == std::string::npos && n.size() >= target.size() &&
                  n.compare(n.size() - target.size(), target.size(), target) == 0 &&
                  (n.size() == target.size() || n[n.size() - target.size() - 1] == '.');
    if (suffix || nn::glob_match(target, n)) out.push_back(n);
  }
  return out;
}

namespace {
// Levenshtein distance on the last name component, for "did you mean".
size_t distance(const std::string& a, const std::string& b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j)
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1])});
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

std::string near_names(const std::vector<nn::Linear*>& linears, const std::string& target) {
  std::string t = target.substr(
      target.find_last_of('.') == std::string::npos ? 0 : target.find_last_of('.') + 1);
  std::vector<std::pair<size_t, std::string>> ranked;
  for (nn::Linear* l : linears) {
    const std::string& n = l->name();
    std::string leaf =
        n.substr(n.find_last_of('.') == std::string::npos ? 0 : n.find_last_of('.') + 1);
    ranked.push_back({std::min(distance(t, leaf), distance(target, n)), n});
  }
  std::sort(ranked.begin(), ranked.end());
  std::string s;
  for (size_t i = 0; i < ranked.size() && i < 4; ++i) s += (i ? ", " : "") + ranked[i].second;
  return s;
}
}  // namespace

AdapterSet::AdapterSet(std::vector<nn::Linear*> linears, nn::ParameterSet& base,
                       const std::vector<std::string>& targets, const LoraSpec& spec, uint64_t seed)
    : spec_(spec), targets_(targets) {
  if (targets.empty())
    throw Error("LoRA: no target modules given (e.g. all-linear, q_proj, re:.*mlp.*)");
  std::vector<std::string> chosen;
  for (const std::string& t : targets) {
    std::vector<std::string> m = match_targets(linears, t);
    if (m.empty())
      throw Error(str("LoRA target '", t,
                      "' matches no Linear of this model; nearest: ", near_names(linears, t)));
    chosen.insert(chosen.end(), m.begin(), m.end());
  }
  base.set_trainable("*", false);
  Rng rng(seed);
  for (nn::Linear* l : linears) {
    if (std::find(chosen.begin(), chosen.end(), l->name()) == chosen.end()) continue;
    if (l->adapter()) throw Error(str("module ", l->name(), " already has an adapter attached"));
    auto lora = std::make_shared<Lora>(*l, spec.for_module(l->name()), params_, rng);
    l->set_adapter(lora);
    linears_.push_back(l);
    loras_.push_back(lora);
    names_.push_back(l->name());
  }
}

AdapterSet::~AdapterSet() {
  if (attached_) detach();
}

void AdapterSet::shift_base(bool merge) {
  const float sign = merge ? 1.0f : -1.0f;
  for (size_t i = 0; i < loras_.size(); ++i) {
    if (loras_[i]->merged() == merge) continue;
    Tensor w = linears_[i]->weight();
    Tensor d = loras_[i]->delta_weight(*linears_[i]);
    for (int64_t k = 0; k < w.numel(); ++k) w.data()[k] += sign * d.data()[k];
    loras_[i]->set_merged(merge);
  }
}

void AdapterSet::merge() {
  shift_base(true);
}
void AdapterSet::unmerge() {
  shift_base(false);
}

void AdapterSet::detach() {
  unmerge();
  for (size_t i = 0; i < linears_.size(); ++i)
    if (linears_[i]->adapter() == loras_[i]) linears_[i]->set_adapter(nullptr);
  attached_ = false;
}

}  // namespace tessera::adapters
