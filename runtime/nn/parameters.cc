#include "runtime/nn/parameters.h"

#include <algorithm>

#include "runtime/common/error.h"

namespace tessera::nn {

bool glob_match(const std::string& p, const std::string& s) {
  size_t pi = 0, si = 0, star = std::string::npos, mark = 0;
  while (si < s.size()) {
    if (pi < p.size() && (p[pi] == '?' || p[pi] == s[si])) {
      ++pi;
      ++si;
    } else if (pi < p.size() && p[pi] == '*') {
      star = pi++;
      mark = si;
    } else if (star != std::string::npos) {
      pi = star + 1;
      si = ++mark;
    } else {
      return false;
    }
  }
  while (pi < p.size() && p[pi] == '*') ++pi;
  return pi == p.size();
}

Tensor& ParameterSet::add(const std::string& name, Tensor t) {
  if (index_.count(name) || aliases_.count(name))
    throw InternalError(str("parameter '", name, "' registered twice"));
  t.set_requires_grad(true);
  index_[name] = params_.size();
  params_.push_back({name, std::move(t)});
  return params_.back().tensor;
}

void ParameterSet::alias(const std::string& name, const std::string& target) {
  TESSERA_CHECK(index_.count(target), "alias target ", target, " missing");
  aliases_[name] = target;
}

Tensor* ParameterSet::find(const std::string& name) {
  auto a = aliases_.find(name);
  auto it = index_.find(a == aliases_.end() ? name : a->second);
  return it == index_.end() ? nullptr : &params_[it->second].tensor;
}

const Tensor* ParameterSet::find(const std::string& name) const {
  return const_cast<ParameterSet*>(this)->find(name);
}

Tensor& ParameterSet::at(const std::string& name) {
  if (Tensor* t = find(name)) return *t;
  // Suggest names sharing the longest prefix.
  std::vector<std::pair<size_t, std::string>> near;
  for (const auto& p : params_) {
    size_t k = 0;
    while (k < name.size() && k < p.name.size() && name[k] == p.name[k]) ++k;
    near.push_back({k, p.name});
  }
  std::sort(near.begin(), near.end(), [](auto& a, auto& b) { return a.first > b.first; });
  std::string hint;
  for (size_t i = 0; i < near.size() && i < 3; ++i) hint += (i ? ", " : "") + near[i].second;
  throw Error(str("no parameter named '", name, "'", hint.empty() ? "" : "; nearest: " + hint));
}

int ParameterSet::set_trainable(const std::string& glob, bool trainable) {
  int n = 0;
  for (auto& p : params_)
    if (glob_match(glob, p.name)) {
      p.tensor.set_requires_grad(trainable);
      if (!trainable) p.tensor.clear_grad();
      ++n;
    }
  return n;
}

int ParameterSet::set_lr_scale(const std::string& glob, float scale) {
  int n = 0;
  for (auto& p : params_)
    if (glob_match(glob, p.name)) {
      p.lr_scale = scale;
      ++n;
    }
  return n;
}

std::vector<Parameter*> ParameterSet::trainable() {
  std::vector<Parameter*> out;
  for (auto& p : params_)
    if (p.tensor.requires_grad()) out.push_back(&p);
  return out;
}

int64_t ParameterSet::count(bool trainable_only) const {
  int64_t n = 0;
  for (const auto& p : params_)
    if (!trainable_only || p.tensor.requires_grad()) n += p.tensor.numel();
  return n;
}

void ParameterSet::zero_grad() {
  for (auto& p : params_) {
    Tensor g = p.tensor.grad();
    if (g.defined()) g.zero_();
  }
}

}  // namespace tessera::nn
