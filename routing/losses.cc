#include "routing/losses.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "runtime/common/error.h"

namespace tessera::routing {

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

}  // namespace

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
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int32_t a, int32_t b) {
      return pt[a] > pt[b] || (pt[a] == pt[b] && a < b);
    });
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

}  // namespace tessera::routing
