#include "adapters/lora.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <optional>
#include <regex>

#include "adapters/base_weight.h"
#include "adapters/kinds.h"
#include "adapters/merge.h"
#include "runtime/autograd/tape.h"

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

std::string regex_escape(const std::string& s) {
  std::string o;
  for (char ch : s) {
    if (std::string("\\^$.|?*+()[]{}").find(ch) != std::string::npos) o.push_back('\\');
    o.push_back(ch);
  }
  return o;
}

LoraConfig LoraSpec::for_module(const std::string& name) const {
  LoraConfig c = defaults;
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

const NameTable<Kind>& kind_names() {
  static const NameTable<Kind> t = {{Kind::Lora, "lora"},
                                    {Kind::Dora, "dora"},
                                    {Kind::Vera, "vera"},
                                    {Kind::Ia3, "ia3"},
                                    {Kind::Bottleneck, "bottleneck"}};
  return t;
}

const char* kind_name(Kind k) {
  return kind_names().name(k);
}

Kind parse_kind(const std::string& s) {
  return kind_names().parse(s, "adapter kind");
}

std::vector<std::string> placement_targets(const std::string& placement) {
  enum class Placement { Houlsby, Pfeiffer };
  static const NameTable<Placement> names = {{Placement::Houlsby, "houlsby"},
                                             {Placement::Pfeiffer, "pfeiffer"}};
  // The MLP classifier's hidden layers ("layers.N") are its feed-forward blocks.
  if (names.parse(placement, "bottleneck placement") == Placement::Houlsby)
    return {"re:(.*(attn\\.c_proj|o_proj|mlp\\.c_proj|down_proj)|layers\\.[0-9]+)"};
  return {"re:(.*(mlp\\.c_proj|down_proj)|layers\\.[0-9]+)"};
}

namespace {
// A seed for a module's own random stream (dropout) that leaves the set's
// initialisation stream untouched.
uint64_t module_seed(const std::string& name) {
  return std::hash<std::string>{}(name) ^ 0x9e3779b97f4a7c15ULL;
}

}  // namespace

Lora::Lora(const nn::Linear& base, const LoraConfig& cfg, nn::ParameterSet& ps, Rng& rng, bool dora,
           float dropout, bool dora_exact_grad)
    : cfg_(cfg),
      scale_(cfg.scale()),
      dora_(dora),
      dropout_(dropout),
      exact_(dora_exact_grad),
      rng_(module_seed(base.name())) {
  if (cfg.r < 1) throw Error(str("LoRA rank r = ", cfg.r, " for ", base.name(), ": expected >= 1"));
  if (!(dropout >= 0.0f && dropout < 1.0f))
    throw Error(str("adapter dropout ", dropout, " for ", base.name(), ": expected [0, 1)"));
  const int64_t in = base.in_features(), out = base.out_features();
  // torch.nn.init.kaiming_uniform_(A, a=√5), as PEFT does: bound = 1/√in.
  Tensor a = Tensor::empty({cfg.r, in});
  const float bound = 1.0f / std::sqrt(static_cast<float>(in));
  for (int64_t i = 0; i < a.numel(); ++i) a.data()[i] = rng.uniform(-bound, bound);
  a_ = ps.add(base.name() + ".lora_A.weight", a);
  b_ = ps.add(base.name() + ".lora_B.weight", Tensor::zeros({out, cfg.r}));
  if (dora_) {
    autograd::NoGrad ng;
    m_ = ps.add(base.name() + ".lora_magnitude_vector", weight_norm(base, true).clone());
  }
}

Tensor Lora::weight_norm(const nn::Linear& base, bool detach) const {
  std::optional<autograd::NoGrad> ng;
  if (detach) ng.emplace();
  Tensor w = base.conv1d() ? ops::transpose(base.weight()) : base.weight();  // [out, in]
  Tensor d = ops::scale(ops::linear(b_, a_, Tensor(), /*conv1d=*/true), scale_);
  return ops::row_norm(ops::add(w, d));
}

Tensor Lora::apply(const Tensor& x, const Tensor& base_out, const nn::Linear& base, bool in_place) {
  if (merged_) return base_out;
  Tensor xd = ops::dropout(x, dropout_, rng_);
  if (!dora_) {
    // base_out + s·(x·Aᵀ)·Bᵀ in one kernel: the up-projection accumulates into
    // the base output (a copy of it unless the Linear handed it over), and the thin rank-r GEMMs
    // run on one thread per row block (the single-adapter case of the mixed-batch kernel).
    const int64_t in = base.in_features(), out = base.out_features(), r = cfg_.r;
    Tensor y = ops::lora_gather(ops::reshape(xd, {xd.numel() / in, in}),
                                ops::reshape(base_out, {base_out.numel() / out, out}),
                                ops::reshape(a_, {1, r, in}), ops::reshape(b_, {1, out, r}), {0}, 1,
                                Tensor(), {scale_}, ops::LoraMix::Output, in_place);
    return ops::reshape(y, base_out.shape());
  }
  Tensor delta = ops::scale(ops::matmul_nt(ops::matmul_nt(xd, a_), b_), scale_);
  // m ⊙ (W·x + ΔW·x) / ‖W + ΔW‖ + b, with W·x = base_out − b.
  const Tensor& bias = base.bias();
  Tensor wx = bias.defined() ? ops::add(base_out, ops::scale(bias, -1.0f)) : base_out;
  Tensor y = ops::mul(ops::add(wx, delta), ops::div(m_, weight_norm(base, !exact_)));
  return bias.defined() ? ops::add(y, bias) : y;
}

Tensor Lora::delta_weight(const nn::Linear& base) const {
  return LoraFactors{a_, b_, scale_}.delta(base.conv1d());
}

void Lora::shift_base(nn::Linear& base, bool merge) {
  if (merged_ == merge) return;
  if (!dora_) {
    add_to_base_weight(base, delta_weight(base), merge ? 1.0f : -1.0f);
  } else if (merge) {
    // W ← m/‖W + ΔW‖ ⊙ (W + ΔW), per output feature. The norm is of the
    // base's own W: folded into a weight that already holds another merged
    // adapter it would differ from DoRA unmerged (peft #3608), so refuse.
    if (base.merged_adapters() > 0)
      throw Error(str("DoRA on ", base.name(), ": the weight already holds ",
                      base.merged_adapters(),
                      " merged adapter(s), and DoRA's norm ‖W + ΔW‖ must be taken on the base's "
                      "own W, so merging it now would change its output. On one module at most "
                      "one DoRA or (IA)3 set can be merged, and it must be merged first (LoRA "
                      "sets after it are exact); keep any other unmerged"));
    autograd::NoGrad ng;
    merge_norm_ = weight_norm(base, true).clone();
    add_to_base_weight(base, delta_weight(base), 1.0f);
    const float* m = m_.data();
    const float* n = merge_norm_.data();
    scale_base_weight(base, [&](int64_t o, int64_t) { return m[o] / n[o]; });
  } else {
    if (base.merged_adapters() > 1)
      throw Error(str("DoRA on ", base.name(), ": ", base.merged_adapters() - 1,
                      " adapter(s) were merged into the weight after it: unmerge them first"));
    const float* m = m_.data();
    const float* n = merge_norm_.data();
    for (int64_t o = 0; o < m_.numel(); ++o)
      if (m[o] == 0.0f)
        throw Error(str("DoRA on ", base.name(), ": magnitude of output ", o,
                        " is 0, the merged weight cannot be unmerged"));
    scale_base_weight(base, [&](int64_t o, int64_t) { return n[o] / m[o]; });
    add_to_base_weight(base, delta_weight(base), -1.0f);
  }
  merged_ = merge;
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

std::vector<std::string> select_modules(const std::vector<nn::Linear*>& linears,
                                        const std::vector<std::string>& targets) {
  if (targets.empty())
    throw Error("adapter: no target modules given (e.g. all-linear, q_proj, re:.*mlp.*)");
  std::vector<std::string> chosen;
  for (const std::string& t : targets) {
    std::vector<std::string> m = match_targets(linears, t);
    if (m.empty())
      throw Error(str("adapter target '", t,
                      "' matches no Linear of this model; nearest: ", near_names(linears, t)));
    chosen.insert(chosen.end(), m.begin(), m.end());
  }
  return chosen;
}

AdapterSet::AdapterSet(std::vector<nn::Linear*> linears, nn::ParameterSet& base,
                       const std::vector<std::string>& targets, const AdapterSpec& spec,
                       uint64_t seed, bool install)
    : spec_(spec), targets_(targets) {
  std::vector<std::string> chosen;
  if (!targets.empty()) chosen = select_modules(linears, targets);
  auto is_chosen = [&](const nn::Linear* l) {
    return std::find(chosen.begin(), chosen.end(), l->name()) != chosen.end();
  };
  for (nn::Linear* l : linears)
    if (install && is_chosen(l) && l->adapter())
      throw Error(str("module ", l->name(), " already has an adapter attached"));
  base.set_trainable("*", false);
  Rng rng(seed);
  const int64_t r = spec.lora.defaults.r;
  Tensor vera_a, vera_b;
  if (spec.kind == Kind::Vera) {
    // One frozen random pair for the whole set, as large as the largest module.
    if (r < 1) throw Error(str("VeRA rank r = ", r, ": expected >= 1"));
    int64_t max_in = 0, max_out = 0;
    for (nn::Linear* l : linears)
      if (is_chosen(l)) {
        max_in = std::max(max_in, l->in_features());
        max_out = std::max(max_out, l->out_features());
      }
    vera_a = Tensor::empty({r, max_in});
    vera_b = Tensor::empty({max_out, r});
    const float ba = 1.0f / std::sqrt(static_cast<float>(max_in));
    const float bb = 1.0f / std::sqrt(static_cast<float>(r));
    for (int64_t i = 0; i < vera_a.numel(); ++i) vera_a.data()[i] = rng.uniform(-ba, ba);
    for (int64_t i = 0; i < vera_b.numel(); ++i) vera_b.data()[i] = rng.uniform(-bb, bb);
    params_.add("vera_A", vera_a).set_requires_grad(false);
    params_.add("vera_B", vera_b).set_requires_grad(false);
  }
  std::vector<std::string> ff;
  if (spec.kind == Kind::Ia3)
    for (const std::string& t : spec.feedforward) {
      std::vector<std::string> m = match_targets(linears, t);
      ff.insert(ff.end(), m.begin(), m.end());
    }
  for (nn::Linear* l : linears) {
    if (!is_chosen(l)) continue;
    std::shared_ptr<Adapter> a;
    switch (spec.kind) {
      case Kind::Lora:
      case Kind::Dora:
        a = std::make_shared<Lora>(*l, spec.lora.for_module(l->name()), params_, rng,
                                   spec.kind == Kind::Dora, spec.dropout, spec.dora_exact_grad);
        break;
      case Kind::Vera:
        a = std::make_shared<Vera>(*l, vera_a, vera_b, spec.vera_d_init, spec.dropout, params_,
                                   module_seed(l->name()));
        break;
      case Kind::Ia3:
        a = std::make_shared<Ia3>(*l, std::find(ff.begin(), ff.end(), l->name()) != ff.end(),
                                  params_);
        break;
      case Kind::Bottleneck:
        a = std::make_shared<Bottleneck>(*l, r, spec.act, params_, rng);
        break;
    }
    if (install) l->set_adapter(a);
    linears_.push_back(l);
    adapters_.push_back(a);
    names_.push_back(l->name());
  }
}

AdapterSet::~AdapterSet() {
  if (attached_) detach();
}

std::vector<std::shared_ptr<Lora>> AdapterSet::loras() const {
  std::vector<std::shared_ptr<Lora>> out;
  for (const auto& a : adapters_)
    if (auto l = std::dynamic_pointer_cast<Lora>(a)) out.push_back(l);
  return out;
}

void AdapterSet::merge() {
  // Every refusal before any weight changes: a failed merge leaves all as it was.
  for (size_t i = 0; i < adapters_.size(); ++i) {
    if (adapters_[i]->merged()) continue;
    if (linears_[i]->tied())
      throw Error(str(linears_[i]->name(),
                      " shares its weight with the input embeddings (tie_word_embeddings): "
                      "merging the adapter would change the embeddings too; keep it unmerged"));
    // DoRA and (IA)3 refuse a weight that holds another merged adapter, in
    // shift_base before touching it: ask them now.
    const Kind k = adapters_[i]->kind();
    if ((k == Kind::Dora || k == Kind::Ia3) && linears_[i]->merged_adapters() > 0)
      adapters_[i]->shift_base(*linears_[i], true);
  }
  for (size_t i = 0; i < emb_loras_.size(); ++i)
    if (embs_[i]->tied() && !emb_loras_[i]->merged())
      throw Error(str(embs_[i]->name(),
                      " is tied to the lm_head (tie_word_embeddings): merging its LoRA would "
                      "change the output layer too; keep it unmerged"));
  for (const auto& [l, c] : linear_copies_)
    if (l->tied() && !c->merged())
      throw Error(str(l->name(), " shares its weight with the input embeddings: merging its ",
                      "modules_to_save copy would change them too; keep it unmerged"));
  for (const auto& [e, c] : table_copies_)
    if (e->tied() && !c->merged())
      throw Error(str(e->name(), " is tied to the lm_head: merging its modules_to_save copy ",
                      "would change the output layer too; keep it unmerged"));
  for (size_t i = 0; i < emb_loras_.size(); ++i) emb_loras_[i]->shift_base(*embs_[i], true);
  for (const auto& [l, c] : linear_copies_) c->shift_base(*l, true);
  for (const auto& [e, c] : table_copies_) c->shift_base(*e, true);
  for (size_t i = 0; i < adapters_.size(); ++i) {
    if (adapters_[i]->merged()) continue;
    adapters_[i]->shift_base(*linears_[i], true);
    linears_[i]->count_merge(+1);
  }
}

void AdapterSet::unmerge() {
  // Reverse order: exact even if two adapters of this set ever shared a module.
  for (size_t i = adapters_.size(); i-- > 0;) {
    if (!adapters_[i]->merged()) continue;
    adapters_[i]->shift_base(*linears_[i], false);
    linears_[i]->count_merge(-1);
  }
  for (size_t i = 0; i < emb_loras_.size(); ++i) emb_loras_[i]->shift_base(*embs_[i], false);
  for (const auto& [l, c] : linear_copies_) c->shift_base(*l, false);
  for (const auto& [e, c] : table_copies_) c->shift_base(*e, false);
}

void AdapterSet::detach() {
  unmerge();
  for (size_t i = 0; i < linears_.size(); ++i)
    if (linears_[i]->adapter() == adapters_[i]) linears_[i]->set_adapter(nullptr);
  for (size_t i = 0; i < embs_.size(); ++i)
    if (embs_[i]->adapter() == emb_loras_[i]) embs_[i]->set_adapter(nullptr);
  for (const auto& [l, c] : linear_copies_)
    if (l->adapter() == c) l->set_adapter(nullptr);
  for (const auto& [e, c] : table_copies_)
    if (e->adapter() == c) e->set_adapter(nullptr);
  attached_ = false;
}

void AdapterSet::add_copies(const std::vector<nn::Linear*>& linears,
                            const std::vector<nn::Embedding*>& embeddings,
                            const std::vector<std::string>& names) {
  for (const std::string& n : names) {
    nn::Linear* lin = nullptr;
    nn::Embedding* emb = nullptr;
    for (nn::Linear* l : linears)
      if (l->name() == n) lin = l;
    for (nn::Embedding* e : embeddings)
      if (e->name() == n) emb = e;
    if (lin) {
      if (lin->adapter()) throw Error(str("module ", n, " already has an adapter attached"));
      auto c = std::make_shared<LinearCopy>(*lin, params_);
      lin->set_adapter(c);
      linear_copies_.push_back({lin, c});
    } else if (emb) {
      if (emb->adapter()) throw Error(str("embedding ", n, " already has an adapter attached"));
      auto c = std::make_shared<TableCopy>(*emb, params_);
      emb->set_adapter(c);
      table_copies_.push_back({emb, c});
    } else {
      throw Error(str("modules_to_save: ", n,
                      " is not a Linear or an Embedding of this model (tessera copies those; "
                      "norms and whole blocks are not supported)"));
    }
    copy_names_.push_back(n);
  }
}

LinearCopy::LinearCopy(const nn::Linear& base, nn::ParameterSet& ps) {
  w_ = ps.add(base.name() + ".modules_to_save.weight", base.weight().clone());
  if (base.bias().defined())
    b_ = ps.add(base.name() + ".modules_to_save.bias", base.bias().clone());
}

Tensor LinearCopy::forward(const Tensor& x, const Tensor&, const nn::Linear& base) {
  if (merged_) return ops::linear(x, base.weight(), base.bias(), base.conv1d());
  return ops::linear(x, w_, b_, base.conv1d());
}

void LinearCopy::shift_base(nn::Linear& base, bool merge) {
  if (merged_ == merge) return;
  Tensor w = base.weight(), b = base.bias();
  if (merge) {
    saved_w_ = w.clone();
    w.copy_from(w_);
    if (b.defined()) {
      saved_b_ = b.clone();
      b.copy_from(b_);
    }
  } else {
    w.copy_from(saved_w_);
    if (b.defined()) b.copy_from(saved_b_);
  }
  merged_ = merge;
}

TableCopy::TableCopy(const nn::Embedding& base, nn::ParameterSet& ps) {
  w_ = ps.add(base.name() + ".modules_to_save.weight", base.weight().clone());
}

Tensor TableCopy::forward(const std::vector<int32_t>& ids, const Tensor& base_out,
                          const nn::Embedding&) {
  return merged_ ? base_out : ops::embedding(ids, w_);
}

void TableCopy::shift_base(nn::Embedding& base, bool merge) {
  if (merged_ == merge) return;
  Tensor w = base.weight();
  if (merge) {
    saved_ = w.clone();
    w.copy_from(w_);
  } else {
    w.copy_from(saved_);
  }
  merged_ = merge;
}

void AdapterSet::add_embeddings(const std::vector<nn::Embedding*>& embeddings,
                                const std::vector<std::string>& names) {
  if (spec_.kind != Kind::Lora && !names.empty())
    throw Error(str("embeddings take LoRA only; this set is ", kind_name(spec_.kind)));
  Rng rng(module_seed("embeddings"));
  for (const std::string& n : names) {
    nn::Embedding* e = nullptr;
    for (nn::Embedding* c : embeddings)
      if (c->name() == n) e = c;
    if (!e) throw Error(str("no embedding named ", n, " in this model"));
    if (e->adapter()) throw Error(str("embedding ", n, " already has an adapter attached"));
    auto l = std::make_shared<EmbeddingLora>(*e, spec_.lora.for_module(n), params_, rng);
    e->set_adapter(l);
    embs_.push_back(e);
    emb_loras_.push_back(l);
    emb_names_.push_back(n);
  }
}

EmbeddingLora::EmbeddingLora(const nn::Embedding& base, const LoraConfig& cfg, nn::ParameterSet& ps,
                             Rng& rng)
    : cfg_(cfg), scale_(cfg.scale()) {
  if (cfg.r < 1) throw Error(str("LoRA rank r = ", cfg.r, " for ", base.name(), ": expected >= 1"));
  a_ = ps.add(base.name() + ".lora_embedding_A", Tensor::zeros({cfg.r, base.num_embeddings()}));
  Tensor b = Tensor::empty({base.embedding_dim(), cfg.r});
  for (int64_t i = 0; i < b.numel(); ++i) b.data()[i] = rng.normal(0.0f, 1.0f);
  b_ = ps.add(base.name() + ".lora_embedding_B", b);
}

Tensor EmbeddingLora::forward(const std::vector<int32_t>& ids, const Tensor& base_out,
                              const nn::Embedding&) {
  if (merged_) return base_out;
  // peft: after_A = embedding(ids, Aᵀ); base + (after_A · Bᵀ) · s.
  Tensor after_a = ops::embedding(ids, ops::transpose(a_));  // [N, r]
  return ops::add(base_out, ops::scale(ops::matmul_nt(after_a, b_), scale_));
}

void EmbeddingLora::shift_base(nn::Embedding& base, bool merge) {
  if (merged_ == merge) return;
  autograd::NoGrad ng;
  // Δ = s·(B·A)ᵀ = s·Aᵀ·Bᵀ, [num_embeddings, dim].
  Tensor d = ops::matmul_nt(ops::transpose(a_), b_);
  Tensor w = base.weight();
  const float f = merge ? scale_ : -scale_;
  for (int64_t i = 0; i < w.numel(); ++i) w.data()[i] += f * d.data()[i];
  merged_ = merge;
}

}  // namespace tessera::adapters
