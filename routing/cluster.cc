#include "routing/cluster.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>

#include "routing/linalg.h"
#include "runtime/common/error.h"
#include "runtime/common/rng.h"

namespace tessera::routing {

std::vector<float> lora_feature(const ModuleFactors& modules) {
  std::vector<float> v;
  for (const auto& [name, f] : modules) {
    v.insert(v.end(), f.A.data(), f.A.data() + f.A.numel());
    v.insert(v.end(), f.B.data(), f.B.data() + f.B.numel());
  }
  return v;
}

std::vector<float> init_free_feature(const ModuleFactors& modules, int64_t m, uint64_t seed) {
  if (m < 1) throw Error(str("init-free feature: sketch width ", m, " (expected at least 1)"));
  std::vector<float> v;
  for (const auto& [name, f] : modules) {
    const int64_t r = f.A.size(0), in = f.A.size(1), out = f.B.size(0);
    // FNV-1a of the name: the same R on every toolchain.
    uint64_t h = 1469598103934665603ULL;
    for (unsigned char ch : name) h = (h ^ ch) * 1099511628211ULL;
    Rng rng(seed ^ h);
    const float sd = 1.0f / std::sqrt(static_cast<float>(m));
    std::vector<double> R(static_cast<size_t>(in * m));
    for (double& x : R) x = rng.normal(0.0f, sd);
    std::vector<double> AR(static_cast<size_t>(r * m), 0.0);  // A R [r, m]
    for (int64_t j = 0; j < r; ++j)
      for (int64_t c = 0; c < in; ++c) {
        const double a = f.A.data()[j * in + c];
        for (int64_t t = 0; t < m; ++t) AR[j * m + t] += a * R[c * m + t];
      }
    for (int64_t o = 0; o < out; ++o)
      for (int64_t t = 0; t < m; ++t) {
        double s = 0;
        for (int64_t j = 0; j < r; ++j) s += double(f.B.data()[o * r + j]) * AR[j * m + t];
        v.push_back(static_cast<float>(f.scale * s));
      }
  }
  return v;
}

std::vector<double> sparsify(const std::vector<float>& v, double theta, double* threshold) {
  const size_t D = v.size();
  std::vector<double> out(D, 0.0);
  if (D == 0) return out;
  // numpy.quantile(|v|, θ), linear: position θ(n − 1) in the sorted values.
  std::vector<float> s(D);
  for (size_t i = 0; i < D; ++i) s[i] = std::abs(v[i]);
  std::sort(s.begin(), s.end());
  const double pos = theta * static_cast<double>(D - 1);
  const size_t lo = static_cast<size_t>(std::floor(pos));
  const double frac = pos - static_cast<double>(lo);
  const double thr = lo + 1 < D ? s[lo] + frac * (double(s[lo + 1]) - s[lo]) : s[lo];
  if (threshold) *threshold = thr;
  for (size_t i = 0; i < D; ++i) out[i] = std::abs(v[i]) <= thr ? 0.0 : double(v[i]);
  return out;
}

std::vector<std::vector<double>> svd_embeddings(const std::vector<std::vector<float>>& features,
                                                double sparsity, int64_t components) {
  const int64_t N = static_cast<int64_t>(features.size());
  if (N == 0) throw Error("svd_embeddings: no experts");
  if (!(sparsity >= 0 && sparsity < 1))
    throw Error(str("MBC sparsity threshold ", sparsity, ": expected a value in [0, 1)"));
  if (components < 1) throw Error(str("MBC components ", components, ": expected at least 1"));
  const size_t D = features[0].size();
  std::vector<std::vector<double>> X(static_cast<size_t>(N));
  for (int64_t e = 0; e < N; ++e) {
    if (features[e].size() != D)
      throw Error(str("svd_embeddings: expert ", e, " has ", features[e].size(),
                      " values, expert 0 has ", D, " (experts of different shapes)"));
    X[e] = sparsify(features[e], sparsity);
  }
  // X = U Σ Vᵀ: the Gram matrix G = X Xᵀ = U Σ² Uᵀ gives U Σ = u √λ.
  std::vector<double> G(static_cast<size_t>(N * N));
  for (int64_t i = 0; i < N; ++i)
    for (int64_t j = i; j < N; ++j) {
      double s = 0;
      for (size_t d = 0; d < D; ++d) s += X[i][d] * X[j][d];
      G[i * N + j] = G[j * N + i] = s;
    }
  const std::vector<double> w = symmetric_eigen(G, static_cast<int>(N), "svd_embeddings");
  const int64_t c = std::max<int64_t>(1, std::min(components, N - 1));
  std::vector<std::vector<double>> out(static_cast<size_t>(N), std::vector<double>(c));
  for (int64_t t = 0; t < c; ++t) {
    const int64_t col = N - 1 - t;  // eigenvalues ascending: largest last
    const double sigma = std::sqrt(std::max(0.0, w[col]));
    for (int64_t i = 0; i < N; ++i) out[i][t] = G[col * N + i] * sigma;
  }
  for (auto& row : out) {
    double n = 0;
    for (double x : row) n += x * x;
    n = std::sqrt(n);
    if (n > 0)
      for (double& x : row) x /= n;
  }
  return out;
}

std::vector<std::vector<double>> cosine_matrix(const std::vector<std::vector<double>>& rows) {
  const size_t N = rows.size();
  std::vector<double> norm(N);
  for (size_t i = 0; i < N; ++i) {
    double s = 0;
    for (double x : rows[i]) s += x * x;
    norm[i] = std::sqrt(s);
  }
  std::vector<std::vector<double>> c(N, std::vector<double>(N));
  for (size_t i = 0; i < N; ++i)
    for (size_t j = 0; j < N; ++j) {
      double s = 0;
      for (size_t d = 0; d < rows[i].size(); ++d) s += rows[i][d] * rows[j][d];
      c[i][j] = norm[i] > 0 && norm[j] > 0 ? s / (norm[i] * norm[j]) : 0.0;
    }
  return c;
}

namespace {

double sq_dist(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (size_t d = 0; d < a.size(); ++d) s += (a[d] - b[d]) * (a[d] - b[d]);
  return s;
}

// sklearn's _kmeans_plusplus: the first centre uniformly, then each next
// one the best (lowest potential) of 2 + ⌊ln k⌋ candidates drawn ∝ D².
std::vector<std::vector<double>> plus_plus(const std::vector<std::vector<double>>& x, int64_t k,
                                           Rng& rng) {
  const size_t N = x.size();
  const int trials = 2 + static_cast<int>(std::log(static_cast<double>(k)));
  std::vector<std::vector<double>> centres;
  centres.push_back(x[rng.next_u64() % N]);
  std::vector<double> closest(N);
  for (size_t i = 0; i < N; ++i) closest[i] = sq_dist(x[i], centres[0]);
  while (static_cast<int64_t>(centres.size()) < k) {
    double pot = 0;
    for (double d : closest) pot += d;
    size_t best = 0;
    double best_pot = std::numeric_limits<double>::infinity();
    std::vector<double> best_closest;
    for (int t = 0; t < trials; ++t) {
      size_t cand = 0;
      if (pot > 0) {
        double u = rng.uniform() * pot, acc = 0;
        cand = N - 1;
        for (size_t i = 0; i < N; ++i) {
          acc += closest[i];
          if (acc > u) {
            cand = i;
            break;
          }
        }
      } else {
        cand = rng.next_u64() % N;
      }
      std::vector<double> c2(N);
      double p = 0;
      for (size_t i = 0; i < N; ++i) p += (c2[i] = std::min(closest[i], sq_dist(x[i], x[cand])));
      if (p < best_pot) {
        best_pot = p;
        best = cand;
        best_closest = std::move(c2);
      }
    }
    centres.push_back(x[best]);
    closest = std::move(best_closest);
  }
  return centres;
}

// Each row to its nearest centre (ties: the lower centre); returns the
// inertia, Σ squared distance to the assigned centres.
double assign(const std::vector<std::vector<double>>& x, const std::vector<std::vector<double>>& c,
              std::vector<int>* labels) {
  double inertia = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    double bd = std::numeric_limits<double>::infinity();
    for (size_t j = 0; j < c.size(); ++j) {
      const double dd = sq_dist(x[i], c[j]);
      if (dd < bd) {
        bd = dd;
        (*labels)[i] = static_cast<int>(j);
      }
    }
    inertia += bd;
  }
  return inertia;
}

}  // namespace

KMeans kmeans(const std::vector<std::vector<double>>& x, int64_t k, int n_init, uint64_t seed) {
  const int64_t N = static_cast<int64_t>(x.size());
  if (k < 1 || k > N)
    throw Error(str("k-means: k = ", k, " clusters for ", N, " experts (expected 1 to ", N, ")"));
  if (n_init < 1) throw Error(str("k-means: n_init = ", n_init, " (expected at least 1)"));
  const size_t d = x[0].size();
  // sklearn's tol: 1e-4 × the mean of the per-feature variances.
  double var = 0;
  for (size_t j = 0; j < d; ++j) {
    double m = 0, m2 = 0;
    for (const auto& r : x) m += r[j] / N;
    for (const auto& r : x) m2 += (r[j] - m) * (r[j] - m) / N;
    var += m2 / static_cast<double>(d);
  }
  const double tol = 1e-4 * var;
  Rng rng(seed);
  KMeans best;
  best.inertia = std::numeric_limits<double>::infinity();
  for (int run = 0; run < n_init; ++run) {
    std::vector<std::vector<double>> c = plus_plus(x, k, rng);
    std::vector<int> labels(static_cast<size_t>(N), 0);
    for (int it = 0; it < 300; ++it) {
      assign(x, c, &labels);
      std::vector<std::vector<double>> nc(static_cast<size_t>(k), std::vector<double>(d, 0.0));
      std::vector<int64_t> count(static_cast<size_t>(k), 0);
      for (int64_t i = 0; i < N; ++i) {
        ++count[labels[i]];
        for (size_t t = 0; t < d; ++t) nc[labels[i]][t] += x[i][t];
      }
      double shift = 0;
      for (int64_t j = 0; j < k; ++j) {
        if (count[j] == 0) {
          nc[j] = c[j];  // an empty cluster keeps its centre
        } else {
          for (double& v : nc[j]) v /= static_cast<double>(count[j]);
        }
        shift += sq_dist(nc[j], c[j]);
      }
      c = std::move(nc);
      if (shift <= tol) break;
    }
    const double inertia = assign(x, c, &labels);
    if (inertia < best.inertia) {
      best.inertia = inertia;
      best.labels = labels;
    }
  }
  return best;
}

std::vector<int> mbc_clusters(const std::vector<std::vector<float>>& features,
                              const MbcOptions& o) {
  return kmeans(cosine_matrix(svd_embeddings(features, o.sparsity, o.components)), o.k, o.n_init,
                o.seed)
      .labels;
}

std::vector<int> canonical_labels(const std::vector<int>& labels) {
  std::map<int, int> seen;
  std::vector<int> out;
  for (int l : labels) {
    auto it = seen.find(l);
    if (it == seen.end()) it = seen.emplace(l, static_cast<int>(seen.size())).first;
    out.push_back(it->second);
  }
  return out;
}

}  // namespace tessera::routing
