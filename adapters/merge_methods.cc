#include "adapters/merge_methods.h"

#include <algorithm>
#include <sstream>
#include <stdexcept>

#include "runtime/common/error.h"

namespace tessera::adapters {

const std::vector<MergeMethod>& merge_methods() {
  static const std::vector<MergeMethod> methods = {
      {"cat", {}},
      {"linear", {{"lambda", 1.0f}}},
      {"svd", {{"lambda", 1.0f}}},
      {"ties", {{"density", 0.2f}}},
      {"dare_linear", {{"p", 0.5f}}},
      {"dare_ties", {{"p", 0.5f}, {"density", 1.0f}}},
      {"magnitude_prune", {{"density", 0.2f}}},
      {"lego", {{"k", 0.0f}}},  // default: the largest input rank
      {"soup", {}},
  };
  return methods;
}

float MergeRecipe::get(const std::string& key, float fallback) const {
  auto it = args.find(key);
  return it == args.end() ? fallback : it->second;
}

namespace {

const MergeMethod& find_method(const std::string& name) {
  for (const MergeMethod& m : merge_methods())
    if (m.name == name) return m;
  std::string list;
  const auto& all = merge_methods();
  for (size_t i = 0; i < all.size(); ++i)
    list += (i == 0 ? "" : i + 1 == all.size() ? " or " : ", ") + all[i].name;
  throw Error(str("merge method '", name, "': expected ", list));
}

float default_of(const MergeRecipe& r, const std::string& key) {
  for (const auto& [k, v] : find_method(r.method).args)
    if (k == key) return r.get(key, v);
  return r.get(key, 0.0f);
}

}  // namespace

MergeRecipe parse_merge_method(const std::string& spec) {
  MergeRecipe r;
  r.spec = spec;
  const size_t colon = spec.find(':');
  r.method = spec.substr(0, colon);
  if (colon != std::string::npos) {
    std::stringstream ss(spec.substr(colon + 1));
    std::string kv;
    while (std::getline(ss, kv, ',')) {
      const size_t eq = kv.find('=');
      try {
        if (eq == std::string::npos) throw std::invalid_argument(kv);
        size_t pos = 0;
        r.args[kv.substr(0, eq)] = std::stof(kv.substr(eq + 1), &pos);
        if (pos != kv.size() - eq - 1) throw std::invalid_argument(kv);
      } catch (const std::logic_error&) {
        throw Error(str("merge method '", spec, "': '", kv, "' is not key=number"));
      }
    }
  }
  const MergeMethod& m = find_method(r.method);
  for (const auto& [k, v] : r.args)
    if (std::none_of(m.args.begin(), m.args.end(), [&](const auto& a) { return a.first == k; }))
      throw Error(str("merge method '", spec, "': '", r.method, "' takes no '", k, "'"));
  return r;
}

LoraFactors merge_module(const MergeRecipe& recipe, const std::vector<LoraFactors>& loras,
                         const std::vector<float>& weights, int64_t rank, Rng& rng, uint64_t seed) {
  const std::string& method = recipe.method;
  int64_t rmax = 0;
  for (const LoraFactors& f : loras) rmax = std::max(rmax, f.rank());
  if (method == "cat") return merge_cat(loras, weights);
  if (method == "lego") {
    LegoOptions lo;
    // No k: the largest input rank. A k given is passed on as it is (lego
    // refuses k < 1, naming it).
    lo.k = recipe.args.count("k") ? static_cast<int64_t>(recipe.args.at("k")) : rmax;
    lo.seed = seed;
    return lego(loras, weights, lo);
  }
  std::vector<Tensor> deltas;
  for (const LoraFactors& f : loras) deltas.push_back(f.delta());
  Tensor d;
  if (method == "linear" || method == "svd") {
    d = task_arithmetic(deltas, weights, default_of(recipe, "lambda"));
  } else if (method == "soup") {
    d = task_arithmetic(deltas, weights);
  } else if (method == "ties") {
    d = ties(deltas, weights, default_of(recipe, "density"));
  } else if (method == "dare_linear") {
    d = dare(deltas, weights, default_of(recipe, "p"), rng);
  } else if (method == "dare_ties") {
    d = dare(deltas, weights, default_of(recipe, "p"), rng, true, default_of(recipe, "density"));
  } else if (method == "magnitude_prune") {
    for (Tensor& t : deltas) t = prune_magnitude(t, default_of(recipe, "density"));
    d = task_arithmetic(deltas, weights);
  } else {
    find_method(method);  // throws for a method not in the registry
    throw Error(str("merge method '", method, "' is registered but not dispatched"));
  }
  const int64_t r = std::min(rank > 0 ? rank : rmax, std::min(d.size(0), d.size(1)));
  return svd_factor(d, r);
}

std::vector<std::pair<std::string, LoraFactors>> merge_adapters(
    const MergeRecipe& recipe,
    const std::vector<std::vector<std::pair<std::string, LoraFactors>>>& inputs,
    const std::vector<std::string>& names, std::vector<float> weights, int64_t rank,
    uint64_t seed) {
  if (inputs.empty()) throw Error("merge: no adapters to combine");
  if (weights.size() != inputs.size())
    throw Error(str("merge: ", weights.size(), " weights for ", inputs.size(), " adapters"));
  if (recipe.method == "soup") {  // the uniform soup: the weights' mean
    float total = 0;
    for (float x : weights) total += x;
    for (float& x : weights) x /= total;
  }
  for (size_t i = 1; i < inputs.size(); ++i)
    if (inputs[i].size() != inputs[0].size())
      throw Error(str("merge: '", names[i], "' adapts ", inputs[i].size(), " modules, '", names[0],
                      "' ", inputs[0].size(), " (merge adapters of the same targets)"));
  Rng rng(seed);
  std::vector<std::pair<std::string, LoraFactors>> merged;
  for (const auto& [name, first] : inputs[0]) {
    std::vector<LoraFactors> loras;
    for (size_t i = 0; i < inputs.size(); ++i) {
      auto it = std::find_if(inputs[i].begin(), inputs[i].end(),
                             [&](const auto& p) { return p.first == name; });
      if (it == inputs[i].end())
        throw Error(str("merge: '", names[i], "' has no adapter for module ", name));
      loras.push_back(it->second);
    }
    merged.push_back({name, merge_module(recipe, loras, weights, rank, rng, seed)});
  }
  return merged;
}

}  // namespace tessera::adapters
