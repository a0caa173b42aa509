#include "routing/routers.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "runtime/common/error.h"

namespace tessera::routing {

TopK task_route(const std::vector<int32_t>& task, int64_t E) {
  TopK t;
  t.k = 1;
  for (size_t m = 0; m < task.size(); ++m) {
    if (task[m] < -1 || task[m] >= E)
      throw Error(str("task routing: row ", m, " names expert ", task[m], " of ", E,
                      " (expected 0 to ", E - 1, ", or -1 for the base alone)"));
    t.ids.push_back(task[m]);
    t.weights.push_back(task[m] < 0 ? 0.0f : 1.0f);
  }
  return t;
}

TopK uniform_route(int64_t M, int64_t E) {
  if (E < 1) throw Error("uniform routing: no experts");
  TopK t;
  t.k = E;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t e = 0; e < E; ++e) {
      t.ids.push_back(static_cast<int32_t>(e));
      t.weights.push_back(1.0f / static_cast<float>(E));
    }
  return t;
}

TopK centroid_route(const Tensor& x, const Tensor& centroids, int64_t top_k) {
  const float scale = x.ndim() == 2 ? 1.0f / std::sqrt(static_cast<float>(x.size(1))) : 1.0f;
  const std::vector<float> logits = table_scores(x, centroids, scale, "centroid routing");
  const int64_t E = centroids.size(0);
  return top_k_softmax(logits, x.size(0), E, top_k == 0 ? E : top_k, 1.0f);
}

Tensor prefix_mean(const Tensor& x, int64_t T) {
  if (x.ndim() != 2) throw Error("prefix_mean: expected rows [tokens, in]");
  const int64_t N = x.size(0), in = x.size(1);
  if (T < 1 || N % T != 0) throw Error(str("prefix_mean: ", N, " rows are not sequences of ", T));
  Tensor out = Tensor::empty({N, in});
  const float* xp = x.data();
  float* op = out.data();
  std::vector<double> acc(static_cast<size_t>(in));
  for (int64_t s = 0; s < N / T; ++s) {
    std::fill(acc.begin(), acc.end(), 0.0);
    for (int64_t t = 0; t < T; ++t) {
      const int64_t n = s * T + t;
      for (int64_t i = 0; i < in; ++i) {
        acc[i] += xp[n * in + i];
        op[n * in + i] = static_cast<float>(acc[i] / static_cast<double>(t + 1));
      }
    }
  }
  return out;
}

Tensor dense_routes(const TopK& t, int64_t E) {
  const int64_t M = t.k > 0 ? static_cast<int64_t>(t.ids.size()) / t.k : 0;
  Tensor d = Tensor::zeros({M, E});
  for (int64_t m = 0; m < M; ++m)
    for (int64_t j = 0; j < t.k; ++j) {
      const int32_t e = t.ids[m * t.k + j];
      if (e < 0) continue;
      if (e >= E) throw Error(str("dense_routes: expert ", e, " of ", E));
      d.data()[m * E + e] += t.weights[m * t.k + j];
    }
  return d;
}

TopK top_k_renormalized(const Tensor& routes, int64_t k) {
  if (routes.ndim() != 2) throw Error("top_k_renormalized: expected routes [rows, experts]");
  const int64_t M = routes.size(0), E = routes.size(1);
  if (k < 1 || k > E)
    throw Error(str("router top_k = ", k, ": expected 1 to the number of experts (", E, ")"));
  TopK t;
  t.k = k;
  t.ids.resize(static_cast<size_t>(M * k));
  t.weights.resize(static_cast<size_t>(M * k));
  std::vector<int32_t> order;
  for (int64_t m = 0; m < M; ++m) {
    const float* r = routes.data() + m * E;
    top_k_order(r, E, k, &order);
    double sum = 0;
    for (int64_t j = 0; j < k; ++j) sum += std::max(0.0f, r[order[j]]);
    for (int64_t j = 0; j < k; ++j) {
      t.ids[m * k + j] = order[j];
      t.weights[m * k + j] = sum > 0 ? static_cast<float>(std::max(0.0f, r[order[j]]) / sum)
                                     : 1.0f / static_cast<float>(k);
    }
  }
  return t;
}

RoutingStats routing_stats(const TopK& t, int64_t E, const std::vector<int32_t>& task) {
  RoutingStats s;
  s.load.assign(static_cast<size_t>(E), 0.0);
  const int64_t M = t.k > 0 ? static_cast<int64_t>(t.ids.size()) / t.k : 0;
  if (!task.empty() && static_cast<int64_t>(task.size()) != M)
    throw Error(str("routing_stats: ", task.size(), " task ids for ", M, " rows"));
  double total = 0;
  for (int64_t m = 0; m < M; ++m) {
    int32_t top = -1;
    float top_w = -1, on_true = 0;
    double h = 0;
    for (int64_t j = 0; j < t.k; ++j) {
      const int32_t e = t.ids[m * t.k + j];
      const float w = t.weights[m * t.k + j];
      if (e < 0) continue;
      s.load[e] += w;
      total += w;
      if (w > 0) h -= w * std::log(static_cast<double>(w));
      if (w > top_w) top_w = w, top = e;
      if (!task.empty() && e == task[m]) on_true += w;
    }
    s.entropy += h;
    if (!task.empty() && task[m] >= 0) {
      ++s.rows_with_task;
      s.accuracy += top == task[m] ? 1.0 : 0.0;
      s.correct_mass += on_true;
    }
  }
  if (total > 0)
    for (double& l : s.load) l /= total;
  if (M > 0) s.entropy /= static_cast<double>(M);
  if (s.rows_with_task > 0) {
    s.accuracy /= static_cast<double>(s.rows_with_task);
    s.correct_mass /= static_cast<double>(s.rows_with_task);
  }
  return s;
}

}  // namespace tessera::routing
