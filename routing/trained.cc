#include "routing/trained.h"

#include <google/protobuf/util/json_util.h>

#include <cmath>
#include <sstream>
#include <stdexcept>

#include "routing/spec.h"
#include "runtime/common/error.h"
#include "runtime/train/trainer.h"

namespace tessera::routing {

namespace {

void check_config(const RouterConfig& c, const std::string& source) {
  const std::string& k = c.kind();
  if (k != "mole" && k != "mixlora" && k != "poly")
    throw Error(str(source, ": router kind '", k, "': expected mole, mixlora or poly"));
  try {
    if (k == "poly") {
      PolyOptions o = poly_options(c);
      o.tasks = std::max<int64_t>(1, c.tasks_size());
      check_poly_options(o);
      if (!(c.logits_lr_scale() > 0) || !std::isfinite(c.logits_lr_scale()))
        throw Error(str("logits_lr = ", c.logits_lr_scale(), ": expected a finite value above 0"));
      if (!std::isfinite(c.alpha()))
        throw Error(str("alpha = ", c.alpha(), ": expected a finite value"));
    } else {
      check_gate_options(gate_options(c));
      if (k == "mixlora" &&
          (c.num_experts() < 1 || c.r() < 1 || !(c.alpha() > 0) || !std::isfinite(c.alpha())))
        throw Error(str("mixlora needs experts >= 1, r >= 1 and a finite alpha > 0 (got ",
                        c.num_experts(), ", ", c.r(), ", ", c.alpha(), ")"));
      if (k == "mixlora" && c.top_k() > c.num_experts())
        throw Error(str("top_k = ", c.top_k(), " for ", c.num_experts(), " experts"));
    }
  } catch (const Error& e) {
    throw Error(str(source, ": ", e.what()));
  }
}

}  // namespace

GateOptions gate_options(const RouterConfig& c) {
  GateOptions o;
  o.top_k = c.top_k();
  o.weights = gate_weights_names().parse(c.weights(), "weights");
  o.granularity = granularity_names().parse(c.granularity(), "granularity");
  o.combine = combine_names().parse(c.combine(), "mode");
  o.jitter = c.jitter();
  o.bias_update_rate = c.bias_update_rate();
  o.balance = c.balance();
  o.z_loss = c.z_loss();
  o.gating_balance = c.gating_balance();
  return o;
}

PolyOptions poly_options(const RouterConfig& c) {
  PolyOptions o;
  o.tasks = c.tasks_size();
  o.skills = c.skills();
  o.splits = c.splits();
  o.r = c.r();
  o.alpha = c.alpha();
  o.scale = poly_scale_names().parse(c.scale(), "scale");
  return o;
}

RouterConfig parse_router_config(const std::string& spec) {
  RouterConfig c;
  c.set_spec(spec);
  const size_t colon = spec.find(':');
  c.set_kind(spec.substr(0, colon));
  if (c.kind() != "mole" && c.kind() != "mixlora" && c.kind() != "poly")
    throw Error(str("router '", spec, "': kind '", c.kind(), "': expected mole, mixlora or poly"));
  const bool gate = c.kind() == "mole" || c.kind() == "mixlora";
  // Defaults.
  c.set_top_k(2);
  c.set_weights("renormalized");
  c.set_granularity("module");
  c.set_combine("merge-after");
  c.set_balance(gate ? 0.01f : 0.0f);
  c.set_num_experts(4);
  c.set_r(c.kind() == "poly" ? 8 : 4);
  c.set_alpha(c.kind() == "poly" ? 16.0f : 8.0f);
  c.set_skills(8);
  c.set_splits(1);
  c.set_scale("1/r");
  c.set_logits_lr_scale(1.0f);
  bool weights_given = false;
  const std::string what = str("router '", spec, "'");
  for (const auto& option : spec_options(spec, what)) {
    const std::string &key = option.first, &v = option.second;
    auto num = [&] { return spec_number(what, key, v, -1e6, 1e6, false); };
    auto whole = [&] { return static_cast<int64_t>(spec_number(what, key, v, 0, 65536, true)); };
    const bool poly = c.kind() == "poly", mix = c.kind() == "mixlora";
    if (gate && key == "top_k")
      c.set_top_k(whole());
    else if (gate && key == "weights") {
      c.set_weights(v);
      weights_given = true;
    } else if (gate && key == "granularity")
      c.set_granularity(v);
    else if (gate && key == "mode")
      c.set_combine(v);
    else if (gate && key == "jitter")
      c.set_jitter(static_cast<float>(num()));
    else if (gate && key == "bias_rate")
      c.set_bias_update_rate(static_cast<float>(num()));
    else if (gate && key == "balance")
      c.set_balance(static_cast<float>(num()));
    else if (gate && key == "z_loss")
      c.set_z_loss(static_cast<float>(num()));
    else if (gate && key == "gating_balance")
      c.set_gating_balance(static_cast<float>(num()));
    else if (mix && key == "experts")
      c.set_num_experts(whole());
    else if ((mix || poly) && key == "r")
      c.set_r(whole());
    else if ((mix || poly) && key == "alpha")
      c.set_alpha(static_cast<float>(num()));
    else if (poly && key == "skills")
      c.set_skills(whole());
    else if (poly && key == "splits")
      c.set_splits(whole());
    else if (poly && key == "scale")
      c.set_scale(v);
    else if (poly && key == "logits_lr")
      c.set_logits_lr_scale(static_cast<float>(num()));
    else
      throw Error(str("router '", spec, "': ", c.kind(), " takes no '", key, "'"));
  }
  if (gate && c.top_k() == 1 && !weights_given) c.set_weights("switch");
  check_config(c, str("router '", spec, "'"));
  return c;
}

std::string router_config_json(const RouterConfig& c) {
  std::string out;
  google::protobuf::util::JsonPrintOptions o;
  o.preserve_proto_field_names = true;
  if (!google::protobuf::util::MessageToJsonString(c, &out, o).ok())
    throw Error("router config: cannot write JSON");
  return out;
}

RouterConfig parse_router_config_json(const std::string& json, const std::string& source) {
  RouterConfig c;
  const auto st = google::protobuf::util::JsonStringToMessage(json, &c);
  if (!st.ok()) throw Error(str(source, ": router config: ", st.ToString()));
  check_config(c, source);
  return c;
}

TrainedRouter::TrainedRouter(
    const RouterConfig& c, const std::vector<nn::Linear*>& linears,
    const std::map<std::string, std::vector<adapters::LoraFactors>>& experts, nn::ParameterSet& ps,
    uint64_t seed)
    : c_(c) {
  check_config(c, "router");
  if (c.modules().empty()) throw Error("router: no modules to route");
  std::vector<std::string> modules(c.modules().begin(), c.modules().end());
  if (c.kind() == "poly") {
    poly_ = std::make_unique<PolyModel>(linears, modules, poly_options(c), ps, seed);
    return;
  }
  std::map<std::string, ExpertStack> stacks;
  Rng rng(seed);
  for (nn::Linear* l : linears) {
    if (std::find(modules.begin(), modules.end(), l->name()) == modules.end()) continue;
    if (c.kind() == "mixlora") {
      stacks[l->name()] = fresh_experts(ps, l->name(), c.num_experts(), c.r(), c.alpha(),
                                        l->in_features(), l->out_features(), rng);
    } else {
      auto it = experts.find(l->name());
      if (it == experts.end() || static_cast<int>(it->second.size()) != c.experts_size())
        throw Error(str("router: module ", l->name(), " needs the factors of its ",
                        c.experts_size(), " experts"));
      stacks[l->name()] = stack_experts(it->second);
    }
  }
  mixture_ = std::make_unique<Mixture>(linears, std::move(stacks), gate_options(c), ps, seed + 1);
}

void TrainedRouter::set_tasks(const std::vector<int32_t>& tasks) {
  if (poly_) poly_->set_tasks(tasks);
}

void TrainedRouter::add_to(train::Trainer& t, nn::ParameterSet& ps) {
  if (mixture_) mixture_->add_to(t);
  if (poly_) PolyModel::set_logits_lr_scale(ps, c_.logits_lr_scale());
}

}  // namespace tessera::routing
