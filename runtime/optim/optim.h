// Optimizers over the trainable parameters of a ParameterSet, a learning-rate
// schedule, and global-norm gradient clipping.
//
// AdamW follows torch.optim.AdamW exactly (decoupled decay p -= lr·wd·p, then
// the bias-corrected Adam step), so a recipe transfers between the two.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "runtime/nn/parameters.h"

namespace tessera::optim {

struct AdamWOptions {
  float lr = 1e-3f, beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f, weight_decay = 0.01f;
  bool decay_vectors = true;  // decay 1-D tensors (biases, norm gains) too
};
struct SgdOptions {
  float lr = 0.01f, momentum = 0.9f, weight_decay = 0.0f;
  bool decay_vectors = true;
};

class Optimizer {
 public:
  virtual ~Optimizer() = default;
  // One update with learning rate lr of every trainable parameter that has a gradient.
  virtual void step(float lr) = 0;
  int64_t steps() const { return steps_; }
  // Optimizer state as named tensors (for checkpoints): "<slot>.<param name>".
  virtual std::vector<nn::Parameter> state() = 0;
  void set_steps(int64_t s) { steps_ = s; }

 protected:
  int64_t steps_ = 0;
};

class AdamW : public Optimizer {
 public:
  AdamW(nn::ParameterSet& params, const AdamWOptions& o);
  void step(float lr) override;
  std::vector<nn::Parameter> state() override;

 private:
  std::vector<nn::Parameter*> params_;
  std::vector<Tensor> m_, v_;
  AdamWOptions o_;
};

class Sgd : public Optimizer {
 public:
  Sgd(nn::ParameterSet& params, const SgdOptions& o);
  void step(float lr) override;
  std::vector<nn::Parameter> state() override;

 private:
  std::vector<nn::Parameter*> params_;
  std::vector<Tensor> buf_;
  SgdOptions o_;
};

// Linear warmup from 0 over `warmup` steps, then cosine decay from base_lr to
// base_lr·min_ratio at `total`; constant schedule when cosine is false.
struct Schedule {
  float base_lr = 1e-3f;
  int64_t warmup = 0;
  int64_t total = 1;
  float min_ratio = 0.0f;
  bool cosine = true;
  float at(int64_t step) const;
};

// L2 norm over all gradients of trainable parameters; when max_norm > 0 and
// the norm exceeds it, scales every gradient by max_norm / norm. Returns the
// norm before clipping.
float clip_grad_norm(nn::ParameterSet& params, float max_norm);

}  // namespace tessera::optim
