// The adapter kinds beside LoRA/DoRA (see adapters/lora.h for the formulas):
// VeRA, (IA)³ and bottleneck adapters.
#pragma once

#include "adapters/lora.h"

namespace tessera::adapters {

class Vera : public Adapter {
 public:
  // A [r, in] and B [out, r] are frozen slices of the set's shared vera_A / vera_B;
  // registers "<module>.vera_lambda_d" [r] and "<module>.vera_lambda_b" [out].
  Vera(const nn::Linear& base, const Tensor& shared_a, const Tensor& shared_b, float d_init,
       float dropout, nn::ParameterSet& ps, uint64_t seed);
  Tensor forward(const Tensor& x, const Tensor& base_out, const nn::Linear& base) override;
  Kind kind() const override { return Kind::Vera; }
  void shift_base(nn::Linear& base, bool merge) override;
  // diag(λ_b)·B·diag(λ_d)·A laid out like the base weight.
  Tensor delta_weight(const nn::Linear& base) const;
  const Tensor& lambda_d() const { return ld_; }
  const Tensor& lambda_b() const { return lb_; }

 private:
  // This module's slices of the shared pair, read when used (the shared
  // tensors may be reloaded after attach).
  Tensor a_slice() const;
  Tensor b_slice() const;
  Tensor va_, vb_, ld_, lb_;
  int64_t in_, out_;
  float dropout_;
  Rng rng_;
};

class Ia3 : public Adapter {
 public:
  // Registers "<module>.ia3_l": [in] for a feed-forward module (input scaled),
  // [out] otherwise (output scaled); ones at start.
  Ia3(const nn::Linear& base, bool feedforward, nn::ParameterSet& ps);
  Tensor forward(const Tensor& x, const Tensor& base_out, const nn::Linear& base) override;
  bool needs_base_out() const override { return !ff_ || merged_; }
  Kind kind() const override { return Kind::Ia3; }
  void shift_base(nn::Linear& base, bool merge) override;
  bool feedforward() const { return ff_; }
  const Tensor& scaling() const { return l_; }

 private:
  Tensor l_;
  bool ff_;
};

class Bottleneck : public Adapter {
 public:
  // Registers "<module>.adapter_down.weight" [m, out] (+ bias) and
  // "<module>.adapter_up.weight" [out, m] (zeros, + bias).
  Bottleneck(const nn::Linear& base, int64_t width, kernels::cpu::Act act, nn::ParameterSet& ps,
             Rng& rng);
  Tensor forward(const Tensor& x, const Tensor& base_out, const nn::Linear& base) override;
  Kind kind() const override { return Kind::Bottleneck; }
  void shift_base(nn::Linear& base, bool merge) override;  // throws: not linear

 private:
  Tensor dw_, db_, uw_, ub_;
  kernels::cpu::Act act_;
};

}  // namespace tessera::adapters
