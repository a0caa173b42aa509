#include "runtime/optim/optim.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "runtime/common/error.h"

namespace tessera::optim {

namespace {
constexpr int64_t kPar = 1 << 15;
bool decays(const nn::Parameter& p, bool decay_vectors) {
  return decay_vectors || p.tensor.ndim() >= 2;
}
}  // namespace

AdamW::AdamW(nn::ParameterSet& params, const AdamWOptions& o) : params_(params.trainable()), o_(o) {
  for (auto* p : params_) {
    m_.push_back(Tensor::zeros(p->tensor.shape()));
    v_.push_back(Tensor::zeros(p->tensor.shape()));
  }
}

void AdamW::step(float lr) {
  ++steps_;
  const float b1 = o_.beta1, b2 = o_.beta2, eps = o_.eps;
  const float bc1 = 1.0f - std::pow(b1, static_cast<float>(steps_));
  const float bc2 = 1.0f - std::pow(b2, static_cast<float>(steps_));
  const float bc2_sqrt = std::sqrt(bc2);
  for (size_t i = 0; i < params_.size(); ++i) {
    Tensor g = params_[i]->tensor.grad();
    if (!g.defined()) continue;
    const float plr = lr * params_[i]->lr_scale;
    const float step_size = plr / bc1;
    float* __restrict p = params_[i]->tensor.data();
    const float* __restrict gp = g.data();
    float* __restrict m = m_[i].data();
    float* __restrict v = v_[i].data();
    const float decay = decays(*params_[i], o_.decay_vectors) ? 1.0f - plr * o_.weight_decay : 1.0f;
    const int64_t n = g.numel();
#pragma omp parallel for simd if (n > kPar) schedule(static)
    for (int64_t j = 0; j < n; ++j) {
      float gj = gp[j];
      m[j] = b1 * m[j] + (1.0f - b1) * gj;
      v[j] = b2 * v[j] + (1.0f - b2) * gj * gj;
      float denom = std::sqrt(v[j]) / bc2_sqrt + eps;
      p[j] = p[j] * decay - step_size * m[j] / denom;
    }
  }
}

std::vector<nn::Parameter> AdamW::state() {
  std::vector<nn::Parameter> out;
  for (size_t i = 0; i < params_.size(); ++i) {
    out.push_back({"exp_avg." + params_[i]->name, m_[i]});
    out.push_back({"exp_avg_sq." + params_[i]->name, v_[i]});
  }
  return out;
}

Sgd::Sgd(nn::ParameterSet& params, const SgdOptions& o) : params_(params.trainable()), o_(o) {
  for (auto* p : params_) buf_.push_back(Tensor::zeros(p->tensor.shape()));
}

void Sgd::step(float lr) {
  ++steps_;
  const bool first = steps_ == 1;
  for (size_t i = 0; i < params_.size(); ++i) {
    Tensor g = params_[i]->tensor.grad();
    if (!g.defined()) continue;
    float* __restrict p = params_[i]->tensor.data();
    const float* __restrict gp = g.data();
    float* __restrict b = buf_[i].data();
    const float wd = decays(*params_[i], o_.decay_vectors) ? o_.weight_decay : 0.0f;
    const float mu = o_.momentum, plr = lr * params_[i]->lr_scale;
    const int64_t n = g.numel();
    // torch.optim.SGD: d = g + wd·p; buf = d on the first step, else mu·buf + d; p -= lr·buf.
#pragma omp parallel for simd if (n > kPar) schedule(static)
    for (int64_t j = 0; j < n; ++j) {
      float d = gp[j] + wd * p[j];
      b[j] = (first || mu == 0.0f) ? d : mu * b[j] + d;
      p[j] -= plr * b[j];
    }
  }
}

std::vector<nn::Parameter> Sgd::state() {
  std::vector<nn::Parameter> out;
  for (size_t i = 0; i < params_.size(); ++i)
    out.push_back({"momentum_buffer." + params_[i]->name, buf_[i]});
  return out;
}

float Schedule::at(int64_t step) const {
  if (warmup > 0 && step < warmup)
    return base_lr * static_cast<float>(step + 1) / static_cast<float>(warmup);
  if (!cosine) return base_lr;
  int64_t span = total - warmup;
  if (span <= 0) return base_lr;
  double progress = static_cast<double>(step - warmup) / static_cast<double>(span);
  if (progress > 1.0) progress = 1.0;
  double coeff = 0.5 * (1.0 + std::cos(M_PI * progress));
  return static_cast<float>(base_lr * (min_ratio + (1.0 - min_ratio) * coeff));
}

float clip_grad_norm(nn::ParameterSet& params, float max_norm) {
  double sq = 0.0;
  for (auto* p : params.trainable()) {
    Tensor g = p->tensor.grad();
    if (!g.defined()) continue;
    const float* d = g.data();
    const int64_t n = g.numel();
    // Fixed chunks summed in order: the norm does not depend on the thread count.
    constexpr int64_t kChunk = 4096;
    const int64_t chunks = (n + kChunk - 1) / kChunk;
    std::vector<double> part(static_cast<size_t>(chunks));
#pragma omp parallel for if (n > kPar) schedule(static)
    for (int64_t c = 0; c < chunks; ++c) {
      // Within a chunk a float simd sum is exact enough (4096 terms); chunks add in double.
      float s = 0.0f;
      const int64_t end = std::min(n, (c + 1) * kChunk);
#pragma omp simd reduction(+ : s)
      for (int64_t j = c * kChunk; j < end; ++j) s += d[j] * d[j];
      part[c] = s;
    }
    for (double s : part) sq += s;
  }
  float norm = static_cast<float>(std::sqrt(sq));
  if (max_norm > 0.0f && norm > max_norm) {
    float c = max_norm / (norm + 1e-6f);
    for (auto* p : params.trainable()) {
      Tensor g = p->tensor.grad();
      if (!g.defined()) continue;
      float* d = g.data();
      const int64_t n = g.numel();
#pragma omp parallel for simd if (n > kPar) schedule(static)
      for (int64_t j = 0; j < n; ++j) d[j] *= c;
    }
  }
  return norm;
}

}  // namespace tessera::optim
