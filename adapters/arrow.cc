#include "adapters/arrow.h"

#include <algorithm>
#include <cmath>

namespace tessera::adapters {

std::vector<float> arrow_prototype(const LoraFactors& f) {
  const int64_t r = f.A.size(0), in = f.A.size(1), out = f.B.size(0);
  const float* A = f.A.data();
  const float* B = f.B.data();
  // G = BᵀB [r, r]: ‖B·A·v‖² = (Av)ᵀ G (Av), so iterate v ← Aᵀ G A v.
  std::vector<double> G(static_cast<size_t>(r * r), 0.0);
  for (int64_t o = 0; o < out; ++o)
    for (int64_t i = 0; i < r; ++i)
      for (int64_t j = 0; j < r; ++j) G[i * r + j] += double(B[o * r + i]) * B[o * r + j];
  std::vector<double> v(static_cast<size_t>(in)), av(static_cast<size_t>(r)),
      gav(static_cast<size_t>(r));
  // A fixed start with a component along every row of A: their sum, plus a
  // little of every coordinate in case the rows cancel.
  for (int64_t c = 0; c < in; ++c) {
    v[c] = 1e-3 * (1.0 + static_cast<double>(c % 7));
    for (int64_t k = 0; k < r; ++k) v[c] += A[k * in + c];
  }
  auto normalise = [](std::vector<double>& x) {
    double n = 0;
    for (double e : x) n += e * e;
    n = std::sqrt(n);
    if (n > 0)
      for (double& e : x) e /= n;
    return n;
  };
  normalise(v);
  for (int it = 0; it < 500; ++it) {
    for (int64_t k = 0; k < r; ++k) {
      double s = 0;
      for (int64_t c = 0; c < in; ++c) s += double(A[k * in + c]) * v[c];
      av[k] = s;
    }
    for (int64_t i = 0; i < r; ++i) {
      double s = 0;
      for (int64_t j = 0; j < r; ++j) s += G[i * r + j] * av[j];
      gav[i] = s;
    }
    std::vector<double> next(static_cast<size_t>(in), 0.0);
    for (int64_t k = 0; k < r; ++k)
      for (int64_t c = 0; c < in; ++c) next[c] += double(A[k * in + c]) * gav[k];
    if (normalise(next) == 0) return std::vector<float>(static_cast<size_t>(in), 0.0f);
    double change = 0;
    for (int64_t c = 0; c < in; ++c) change = std::max(change, std::abs(next[c] - v[c]));
    v.swap(next);
    if (change < 1e-9) break;
  }
  int64_t big = 0;
  for (int64_t c = 1; c < in; ++c)
    if (std::abs(v[c]) > std::abs(v[big])) big = c;
  const double sign = v[big] < 0 ? -1.0 : 1.0;
  std::vector<float> out_v(static_cast<size_t>(in));
  for (int64_t c = 0; c < in; ++c) out_v[c] = static_cast<float>(sign * v[c]);
  return out_v;
}

std::vector<std::pair<std::string, std::vector<float>>> arrow_signatures(
    const AdapterFile& adapter) {
  std::vector<std::pair<std::string, std::vector<float>>> out;
  if (adapter.spec.kind != Kind::Lora && adapter.spec.kind != Kind::Dora) return out;
  for (const auto& [module, factors] : adapter.linear_factors())
    out.push_back({"arrow/" + module, arrow_prototype(factors)});
  return out;
}

}  // namespace tessera::adapters
