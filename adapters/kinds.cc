#include "adapters/kinds.h"

#include <algorithm>
#include <cmath>

#include "adapters/base_weight.h"
#include "adapters/merge.h"
#include "runtime/autograd/ops.h"
#include "runtime/common/error.h"

namespace tessera::adapters {

// ---- VeRA ----

Vera::Vera(const nn::Linear& base, const Tensor& shared_a, const Tensor& shared_b, float d_init,
           float dropout, nn::ParameterSet& ps, uint64_t seed)
    : va_(shared_a),
      vb_(shared_b),
      in_(base.in_features()),
      out_(base.out_features()),
      dropout_(dropout),
      rng_(seed) {
  if (!(dropout >= 0.0f && dropout < 1.0f))
    throw Error(str("adapter dropout ", dropout, " for ", base.name(), ": expected [0, 1)"));
  const int64_t r = shared_a.size(0), out = base.out_features();
  ld_ = ps.add(base.name() + ".vera_lambda_d", Tensor::full({r}, d_init));
  lb_ = ps.add(base.name() + ".vera_lambda_b", Tensor::zeros({out}));
}

// A = vera_A[:, :in], B = vera_B[:out, :], as PEFT slices them.
Tensor Vera::a_slice() const {
  const int64_t r = va_.size(0), ld = va_.size(1);
  Tensor a = Tensor::empty({r, in_});
  for (int64_t k = 0; k < r; ++k) std::copy_n(va_.data() + k * ld, in_, a.data() + k * in_);
  return a;
}

Tensor Vera::b_slice() const {
  Tensor b = Tensor::empty({out_, vb_.size(1)});
  std::copy_n(vb_.data(), b.numel(), b.data());
  return b;
}

Tensor Vera::forward(const Tensor& x, const Tensor& base_out, const nn::Linear&) {
  if (merged_) return base_out;
  Tensor h = ops::mul(ops::matmul_nt(ops::dropout(x, dropout_, rng_), a_slice()), ld_);
  return ops::add(base_out, ops::mul(ops::matmul_nt(h, b_slice()), lb_));
}

Tensor Vera::delta_weight(const nn::Linear& base) const {
  const int64_t r = vb_.size(1);
  Tensor bs = b_slice();  // → diag(λ_b)·B·diag(λ_d)
  for (int64_t o = 0; o < out_; ++o)
    for (int64_t k = 0; k < r; ++k) bs.data()[o * r + k] *= lb_.data()[o] * ld_.data()[k];
  return LoraFactors{a_slice(), bs, 1.0f}.delta(base.conv1d());
}

void Vera::shift_base(nn::Linear& base, bool merge) {
  if (merged_ == merge) return;
  add_to_base_weight(base, delta_weight(base), merge ? 1.0f : -1.0f);
  merged_ = merge;
}

// ---- (IA)³ ----

Ia3::Ia3(const nn::Linear& base, bool feedforward, nn::ParameterSet& ps) : ff_(feedforward) {
  l_ = ps.add(base.name() + ".ia3_l",
              Tensor::full({feedforward ? base.in_features() : base.out_features()}, 1.0f));
}

Tensor Ia3::forward(const Tensor& x, const Tensor& base_out, const nn::Linear& base) {
  if (merged_) return base_out;
  if (ff_) return ops::linear(ops::mul(x, l_), base.weight(), base.bias(), base.conv1d());
  return ops::mul(base_out, l_);
}

void Ia3::shift_base(nn::Linear& base, bool merge) {
  if (merged_ == merge) return;
  // (IA)3 scales the weight: folded over another merged adapter it would
  // scale that one's delta too, which unmerged it does not.
  if (merge && base.merged_adapters() > 0)
    throw Error(str("(IA)3 on ", base.name(), ": the weight already holds ", base.merged_adapters(),
                    " merged adapter(s), which its scaling would rescale too. On one module at "
                    "most one DoRA or (IA)3 set can be merged, and it must be merged first (LoRA "
                    "sets after it are exact); keep any other unmerged"));
  if (!merge && base.merged_adapters() > 1)
    throw Error(str("(IA)3 on ", base.name(), ": ", base.merged_adapters() - 1,
                    " adapter(s) were merged into the weight after it: unmerge them first"));
  const float* l = l_.data();
  if (!merge)
    for (int64_t k = 0; k < l_.numel(); ++k)
      if (l[k] == 0.0f)
        throw Error(str("(IA)3 on ", base.name(), ": scaling ", k,
                        " is 0, the merged weight cannot be unmerged"));
  if (ff_) {
    scale_base_weight(
        base, [&](int64_t, int64_t i) { return l[i]; }, !merge);
  } else {
    scale_base_weight(
        base, [&](int64_t o, int64_t) { return l[o]; }, !merge);
    if (base.bias().defined()) {
      Tensor b = base.bias();
      for (int64_t o = 0; o < b.numel(); ++o)
        b.data()[o] = merge ? b.data()[o] * l[o] : b.data()[o] / l[o];
    }
  }
  merged_ = merge;
}

// ---- Bottleneck ----

Bottleneck::Bottleneck(const nn::Linear& base, int64_t width, kernels::cpu::Act act,
                       nn::ParameterSet& ps, Rng& rng)
    : act_(act) {
  if (width < 1)
    throw Error(str("bottleneck width r = ", width, " for ", base.name(), ": expected >= 1"));
  const int64_t d = base.out_features();
  Tensor dw = Tensor::empty({width, d});
  const float bound = 1.0f / std::sqrt(static_cast<float>(d));
  for (int64_t i = 0; i < dw.numel(); ++i) dw.data()[i] = rng.uniform(-bound, bound);
  dw_ = ps.add(base.name() + ".adapter_down.weight", dw);
  db_ = ps.add(base.name() + ".adapter_down.bias", Tensor::zeros({width}));
  // Up-projection at zero: the adapter starts as the identity (Houlsby's near-identity init).
  uw_ = ps.add(base.name() + ".adapter_up.weight", Tensor::zeros({d, width}));
  ub_ = ps.add(base.name() + ".adapter_up.bias", Tensor::zeros({d}));
}

Tensor Bottleneck::forward(const Tensor& x, const Tensor& base_out, const nn::Linear&) {
  (void)x;
  Tensor h = ops::activation(ops::linear(base_out, dw_, db_), act_);
  return ops::add(base_out, ops::linear(h, uw_, ub_));
}

void Bottleneck::shift_base(nn::Linear& base, bool merge) {
  if (merge)
    throw Error(str("bottleneck adapter on ", base.name(),
                    " is non-linear and cannot be merged into the base weights"));
}

}  // namespace tessera::adapters
