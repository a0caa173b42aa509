#include "runtime/nn/layers.h"

#include <cmath>

namespace tessera::nn {

namespace {
Tensor init_tensor(const Shape& s, Init init, Rng& rng, float std, int64_t fan_in) {
  Tensor t = Tensor::empty(s);
  float* p = t.data();
  const int64_t n = t.numel();
  switch (init) {
    case Init::Zeros:
      t.zero_();
      break;
    case Init::Ones:
      t.fill_(1.0f);
      break;
    case Init::Normal:
      for (int64_t i = 0; i < n; ++i) p[i] = rng.normal(0.0f, std);
      break;
    case Init::TorchDefault: {
      // torch.nn.Linear: kaiming_uniform(a=√5) for W and U(±1/√fan_in) for b — both ±1/√fan_in.
      float bound = 1.0f / std::sqrt(static_cast<float>(fan_in));
      for (int64_t i = 0; i < n; ++i) p[i] = rng.uniform(-bound, bound);
      break;
    }
  }
  return t;
}
}  // namespace

Linear::Linear(ParameterSet& ps, const std::string& prefix, int64_t in, int64_t out, bool bias,
               bool conv1d, Rng& rng, Init init, float std)
    : name_(prefix), in_(in), out_(out), conv1d_(conv1d) {
  Shape ws = conv1d ? Shape{in, out} : Shape{out, in};
  weight_ = ps.add(prefix + ".weight", init_tensor(ws, init, rng, std, in));
  if (bias) {
    Init binit = init == Init::TorchDefault ? Init::TorchDefault : Init::Zeros;
    bias_ = ps.add(prefix + ".bias", init_tensor({out}, binit, rng, std, in));
  }
}

Linear Linear::tied(const std::string& name, const Tensor& weight) {
  Linear l;
  l.name_ = name;
  l.out_ = weight.size(0);
  l.in_ = weight.size(1);
  l.weight_ = weight;
  l.tied_ = true;
  return l;
}

Tensor Linear::forward(const Tensor& x) const {
  if (adapter_ && !adapter_->needs_base_out()) return adapter_->forward(x, Tensor(), *this);
  Tensor y = ops::linear(x, weight_, bias_, conv1d_);
  if (adapter_) y = adapter_->forward_owned(x, y, *this);
  return y;
}

LayerNorm::LayerNorm(ParameterSet& ps, const std::string& prefix, int64_t dim, float eps, bool bias)
    : eps_(eps) {
  weight_ = ps.add(prefix + ".weight", Tensor::full({dim}, 1.0f));
  if (bias) bias_ = ps.add(prefix + ".bias", Tensor::zeros({dim}));
}

RMSNorm::RMSNorm(ParameterSet& ps, const std::string& prefix, int64_t dim, float eps,
                 bool unit_offset)
    : eps_(eps), unit_offset_(unit_offset) {
  weight_ = ps.add(prefix + ".weight", Tensor::full({dim}, unit_offset ? 0.0f : 1.0f));
  if (unit_offset) ones_ = Tensor::full({dim}, 1.0f);
}

Embedding::Embedding(ParameterSet& ps, const std::string& name, int64_t num, int64_t dim, Rng& rng,
                     float std)
    : name_(name.size() > 7 && name.compare(name.size() - 7, 7, ".weight") == 0
                ? name.substr(0, name.size() - 7)
                : name) {
  weight_ = ps.add(name, init_tensor({num, dim}, Init::Normal, rng, std, dim));
}

}  // namespace tessera::nn
