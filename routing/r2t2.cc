#include "routing/r2t2.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "runtime/common/error.h"

namespace tessera::routing {

namespace {

void check(const Tensor& emb, const Tensor& routes, const ReferenceSet& ref, const R2T2Options& o,
           const char* what) {
  if (ref.embeddings.ndim() != 2 || ref.routes.ndim() != 2 ||
      ref.routes.size(0) != ref.embeddings.size(0) || ref.embeddings.size(0) == 0)
    throw Error(str(what,
                    ": the reference set needs embeddings [R, d] and routes [R, E] for R > 0"
                    " rows"));
  if (emb.ndim() != 2 || emb.size(1) != ref.embeddings.size(1))
    throw Error(str(what, ": embeddings of width ", emb.ndim() == 2 ? emb.size(1) : -1,
                    " against a reference set of width ", ref.embeddings.size(1)));
  if (routes.ndim() != 2 || routes.size(0) != emb.size(0) || routes.size(1) != ref.routes.size(1))
    throw Error(str(what, ": routes must be [", emb.size(0), ", ", ref.routes.size(1), "]"));
  if (o.k < 1 || o.k > ref.embeddings.size(0))
    throw Error(
        str(what, ": k = ", o.k, " neighbours in a reference set of ", ref.embeddings.size(0)));
  if (!(o.alpha >= 0 && o.alpha <= 1))
    throw Error(str(what, ": alpha = ", o.alpha, " (expected a value in [0, 1])"));
  if (!(o.bandwidth >= 0) || !std::isfinite(o.bandwidth))
    throw Error(str(what, ": bandwidth = ", o.bandwidth, " (expected 0 or more)"));
}

}  // namespace

Neighbours nearest_neighbours(const ReferenceSet& ref, const float* e, const R2T2Options& o) {
  const int64_t R = ref.embeddings.size(0), d = ref.embeddings.size(1);
  std::vector<double> dist(static_cast<size_t>(R));
  const float* emb = ref.embeddings.data();
  for (int64_t i = 0; i < R; ++i) {
    double s = 0;
    for (int64_t c = 0; c < d; ++c) {
      const double t = double(emb[i * d + c]) - e[c];
      s += t * t;
    }
    dist[i] = s;
  }
  std::vector<int64_t> order(static_cast<size_t>(R));
  std::iota(order.begin(), order.end(), 0);
  const int64_t k = std::min(o.k, R);
  std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int64_t a, int64_t b) {
    return dist[a] < dist[b] || (dist[a] == dist[b] && a < b);
  });
  Neighbours n;
  n.index.assign(order.begin(), order.begin() + k);
  double h = o.bandwidth;
  if (h == 0) {
    std::vector<double> dk;
    for (int64_t i : n.index) dk.push_back(std::sqrt(dist[i]));
    std::sort(dk.begin(), dk.end());
    h = dk.size() % 2 ? dk[dk.size() / 2] : 0.5 * (dk[dk.size() / 2 - 1] + dk[dk.size() / 2]);
  }
  for (int64_t i : n.index) n.weight.push_back(h > 0 ? std::exp(-dist[i] / (2 * h * h)) : 1.0);
  return n;
}

Tensor r2t2_kernel_regression(const Tensor& embeddings, const Tensor& routes,
                              const ReferenceSet& ref, const R2T2Options& o) {
  check(embeddings, routes, ref, o, "r2t2 kernel regression");
  const int64_t N = embeddings.size(0), d = embeddings.size(1), E = routes.size(1);
  Tensor out = Tensor::empty({N, E});
  // Rows are independent (each its own copy): threads change no result.
#pragma omp parallel for schedule(dynamic, 8) if (N * ref.embeddings.size(0) * d > (1 << 18))
  for (int64_t t = 0; t < N; ++t) {
    const Neighbours n = nearest_neighbours(ref, embeddings.data() + t * d, o);
    double sum = 0;
    std::vector<double> mix(static_cast<size_t>(E), 0.0);
    for (size_t j = 0; j < n.index.size(); ++j) {
      sum += n.weight[j];
      for (int64_t e = 0; e < E; ++e) mix[e] += n.weight[j] * ref.routes.data()[n.index[j] * E + e];
    }
    for (int64_t e = 0; e < E; ++e)
      out.data()[t * E + e] = static_cast<float>(o.alpha * routes.data()[t * E + e] +
                                                 (1 - o.alpha) * (sum > 0 ? mix[e] / sum : 0.0));
  }
  return out;
}

std::vector<float> project_to_simplex(const std::vector<float>& v) {
  // Duchi et al.: sort descending, find the largest ρ with u_ρ − (Σ_{j≤ρ} u_j − 1)/ρ > 0.
  std::vector<double> u(v.begin(), v.end());
  std::sort(u.begin(), u.end(), std::greater<double>());
  double cum = 0, theta = 0;
  for (size_t j = 0; j < u.size(); ++j) {
    cum += u[j];
    const double t = (cum - 1) / static_cast<double>(j + 1);
    if (u[j] - t > 0) theta = t;
  }
  std::vector<float> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = static_cast<float>(std::max(0.0, v[i] - theta));
  return out;
}

Tensor r2t2_ngd(const Tensor& embeddings, const Tensor& routes, const ReferenceSet& ref,
                const R2T2Options& o, const NeighbourLossGrad& loss_grad) {
  check(embeddings, routes, ref, o, "r2t2 ngd");
  if (o.steps < 0 || !(o.lr > 0) || !std::isfinite(o.lr))
    throw Error(str("r2t2 ngd: steps = ", o.steps, ", lr = ", o.lr,
                    " (expected steps >= 0 and a finite lr above 0)"));
  const int64_t N = embeddings.size(0), d = embeddings.size(1), E = routes.size(1);
  Tensor out = Tensor::empty({N, E});
  std::vector<float> grad(static_cast<size_t>(E));
  for (int64_t t = 0; t < N; ++t) {
    const Neighbours n = nearest_neighbours(ref, embeddings.data() + t * d, o);
    double sum = 0;
    for (double w : n.weight) sum += w;
    // This input's own copy: nothing carries over to the next input.
    std::vector<float> r(routes.data() + t * E, routes.data() + (t + 1) * E);
    for (int step = 0; step < o.steps && sum > 0; ++step) {
      std::vector<double> g(static_cast<size_t>(E), 0.0);
      for (size_t j = 0; j < n.index.size(); ++j) {
        std::fill(grad.begin(), grad.end(), 0.0f);
        loss_grad(n.index[j], r, &grad);
        for (int64_t e = 0; e < E; ++e) g[e] += n.weight[j] / sum * grad[e];
      }
      for (int64_t e = 0; e < E; ++e) r[e] -= static_cast<float>(o.lr * g[e]);
      r = project_to_simplex(r);
    }
    std::copy(r.begin(), r.end(), out.data() + t * E);
  }
  return out;
}

}  // namespace tessera::routing
