// Named parameters of a model, in registration order, addressed by Hugging
// Face-style names ("model.layers.3.self_attn.q_proj.weight"). Names are the
// interface: checkpoints, optimizers and (later) adapters find tensors by them.
#pragma once

#include <deque>
#include <string>
#include <unordered_map>
#include <vector>

#include "runtime/tensor/tensor.h"

namespace tessera::nn {

struct Parameter {
  std::string name;
  Tensor tensor;
  // The optimizer steps this parameter with lr · lr_scale (a parameter
  // group's own learning rate: Poly's module logits, say).
  float lr_scale = 1.0f;
};

class ParameterSet {
 public:
  // Registers a tensor; it requires a gradient unless frozen later.
  Tensor& add(const std::string& name, Tensor t);
  // Registers an existing tensor under a second name that shares it (tied weights)
  // — the alias is not trained or saved twice.
  void alias(const std::string& name, const std::string& target);

  // A deque: references returned by add() stay valid as parameters are added.
  const std::deque<Parameter>& all() const { return params_; }
  std::deque<Parameter>& all() { return params_; }
  Tensor* find(const std::string& name);
  const Tensor* find(const std::string& name) const;
  Tensor& at(const std::string& name);  // throws Error listing near names
  bool is_alias(const std::string& name) const { return aliases_.count(name) > 0; }
  const std::unordered_map<std::string, std::string>& aliases() const { return aliases_; }

  // Freezes (requires_grad = false) or unfreezes every parameter whose name
  // matches the glob ('*' any run, '?' one char). Returns how many matched.
  int set_trainable(const std::string& glob, bool trainable);
  std::vector<Parameter*> trainable();
  // Sets lr_scale of every parameter whose name matches the glob. Returns how
  // many matched.
  int set_lr_scale(const std::string& glob, float scale);
  int64_t count(bool trainable_only = false) const;
  void zero_grad();

 private:
  std::deque<Parameter> params_;
  std::unordered_map<std::string, size_t> index_;
  std::unordered_map<std::string, std::string> aliases_;
};

bool glob_match(const std::string& pattern, const std::string& text);

}  // namespace tessera::nn
