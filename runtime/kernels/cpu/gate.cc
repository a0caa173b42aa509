#include "runtime/kernels/cpu/gate.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "runtime/common/error.h"

namespace tessera::kernels::cpu {

namespace {

// p = softmax(z) in double; returns logsumexp(z).
double softmax_row(const float* z, int64_t E, double* p) {
  double m = z[0];
  for (int64_t e = 1; e < E; ++e) m = std::max(m, double(z[e]));
  double s = 0;
  for (int64_t e = 0; e < E; ++e) s += (p[e] = std::exp(double(z[e]) - m));
  for (int64_t e = 0; e < E; ++e) p[e] /= s;
  return m + std::log(s);
}

// The k largest of score[0..E) first in `order` (E entries; ties: the lower
// id first), the selection every gate and loss here shares.
void top_k_order(const double* score, int64_t k, std::vector<int32_t>* order) {
  std::iota(order->begin(), order->end(), 0);
  std::partial_sort(order->begin(), order->begin() + k, order->end(), [&](int32_t a, int32_t b) {
    return score[a] > score[b] || (score[a] == score[b] && a < b);
  });
}

}  // namespace

void top_k_gate_forward(float* weights, int32_t* ids, float* probs, const float* logits,
                        const float* bias, int64_t N, int64_t E, int64_t k, GateWeights mode) {
  std::vector<double> p(static_cast<size_t>(E)), sel(static_cast<size_t>(E));
  std::vector<int32_t> order(static_cast<size_t>(E));
  for (int64_t t = 0; t < N; ++t) {
    const float* z = logits + t * E;
    softmax_row(z, E, p.data());
    for (int64_t e = 0; e < E; ++e) {
      probs[t * E + e] = static_cast<float>(p[e]);
      sel[e] = double(z[e]) + (bias ? double(bias[e]) : 0.0);
    }
    top_k_order(sel.data(), k, &order);
    double sum = 0;
    for (int64_t j = 0; j < k; ++j) sum += p[order[j]];
    for (int64_t j = 0; j < k; ++j) {
      ids[t * k + j] = order[j];
      weights[t * k + j] =
          static_cast<float>(mode == GateWeights::Softmax ? p[order[j]] : p[order[j]] / sum);
    }
  }
}

void top_k_gate_backward(float* dlogits, const float* dweights, const float* probs,
                         const int32_t* ids, int64_t N, int64_t E, int64_t k, GateWeights mode) {
  std::vector<double> dp(static_cast<size_t>(E));
  for (int64_t t = 0; t < N; ++t) {
    const float* p = probs + t * E;
    const float* dw = dweights + t * k;
    const int32_t* id = ids + t * k;
    std::fill(dp.begin(), dp.end(), 0.0);
    if (mode == GateWeights::Renormalized) {
      // w_j = p_j / S: dL/dp_j = (dw_j − Σ_l dw_l w_l) / S.
      double S = 0, dot = 0;
      for (int64_t j = 0; j < k; ++j) S += p[id[j]];
      for (int64_t j = 0; j < k; ++j) dot += double(dw[j]) * p[id[j]] / S;
      for (int64_t j = 0; j < k; ++j) dp[id[j]] += (dw[j] - dot) / S;
    } else {
      for (int64_t j = 0; j < k; ++j) dp[id[j]] += dw[j];
    }
    // Through the softmax: dz = p ⊙ (dp − pᵀdp).
    double pd = 0;
    for (int64_t e = 0; e < E; ++e) pd += p[e] * dp[e];
    for (int64_t e = 0; e < E; ++e) dlogits[t * E + e] += static_cast<float>(p[e] * (dp[e] - pd));
  }
}

double load_balancing_loss(const float* logits, int64_t rows, int64_t E, int64_t k,
                           const float* mask, float* grad) {
  if (k < 1 || k > E)
    throw Error(
        str("load-balancing loss: top_k = ", k, " for ", E, " experts (expected 1 to ", E, ")"));
  std::vector<double> p(static_cast<size_t>(rows * E)), f(static_cast<size_t>(E), 0.0),
      P(static_cast<size_t>(E), 0.0);
  std::vector<int32_t> order(static_cast<size_t>(E));
  double kept = 0;
  for (int64_t t = 0; t < rows; ++t) {
    double* pt = p.data() + t * E;
    softmax_row(logits + t * E, E, pt);
    const double m = mask ? mask[t] : 1.0;
    if (m == 0) continue;
    kept += m;
    top_k_order(pt, k, &order);
    for (int64_t j = 0; j < k; ++j) f[order[j]] += m;
    for (int64_t e = 0; e < E; ++e) P[e] += m * pt[e];
  }
  if (grad) std::fill(grad, grad + rows * E, 0.0f);
  if (kept == 0) return 0.0;
  double loss = 0;
  for (int64_t e = 0; e < E; ++e) {
    f[e] /= kept;
    P[e] /= kept;
    loss += f[e] * P[e];
  }
  loss *= static_cast<double>(E);
  if (grad)
    for (int64_t t = 0; t < rows; ++t) {
      const double m = mask ? mask[t] : 1.0;
      if (m == 0) continue;
      const double* pt = p.data() + t * E;
      double dot = 0;  // pᵀ g with g = E f
      for (int64_t e = 0; e < E; ++e) dot += pt[e] * E * f[e];
      for (int64_t e = 0; e < E; ++e)
        grad[t * E + e] = static_cast<float>(m / kept * pt[e] * (E * f[e] - dot));
    }
  return loss;
}

double router_z_loss(const float* logits, int64_t rows, int64_t E, float* grad) {
  if (rows == 0) return 0.0;
  std::vector<double> p(static_cast<size_t>(E));
  double loss = 0;
  for (int64_t t = 0; t < rows; ++t) {
    const double lse = softmax_row(logits + t * E, E, p.data());
    loss += lse * lse;
    if (grad)
      for (int64_t e = 0; e < E; ++e)
        grad[t * E + e] = static_cast<float>(2.0 * lse * p[e] / static_cast<double>(rows));
  }
  return loss / static_cast<double>(rows);
}

double gating_balance_loss(const float* logits, int64_t rows, int64_t E, float temperature,
                           float* grad) {
  if (!(temperature > 0))
    throw Error(str("gating-balance loss: temperature = ", temperature, " (expected above 0)"));
  if (grad) std::fill(grad, grad + rows * E, 0.0f);
  if (rows == 0) return 0.0;
  std::vector<double> p(static_cast<size_t>(rows * E)), q(static_cast<size_t>(E), 0.0);
  std::vector<float> zt(static_cast<size_t>(E));
  for (int64_t t = 0; t < rows; ++t) {
    for (int64_t e = 0; e < E; ++e) zt[e] = logits[t * E + e] / temperature;
    softmax_row(zt.data(), E, p.data() + t * E);
    for (int64_t e = 0; e < E; ++e) q[e] += p[t * E + e];
  }
  double loss = 0;
  for (int64_t e = 0; e < E; ++e) {
    q[e] /= static_cast<double>(rows);
    loss -= std::log(q[e]);
  }
  if (grad)
    for (int64_t t = 0; t < rows; ++t) {
      // dL/dp_te = −1 / (rows q_e); through softmax(z/τ).
      const double* pt = p.data() + t * E;
      double dot = 0;
      for (int64_t e = 0; e < E; ++e) dot += pt[e] * (-1.0 / (rows * q[e]));
      for (int64_t e = 0; e < E; ++e)
        grad[t * E + e] =
            static_cast<float>(pt[e] * (-1.0 / (rows * q[e]) - dot) / double(temperature));
    }
  return loss;
}

}  // namespace tessera::kernels::cpu
