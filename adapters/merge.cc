#include "adapters/merge.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "runtime/common/error.h"
#include "runtime/kernels/cpu/matmul.h"

extern "C" void sgesdd_(const char* jobz, const int* m, const int* n, float* a, const int* lda,
                        float* s, float* u, const int* ldu, float* vt, const int* ldvt, float* work,
                        const int* lwork, int* iwork, int* info);

namespace tessera::adapters {

namespace {

void check_same(const std::vector<Tensor>& deltas, const std::vector<float>& weights,
                const char* method) {
  if (deltas.empty()) throw Error(str(method, ": nothing to merge"));
  if (weights.size() != deltas.size())
    throw Error(str(method, ": ", weights.size(), " weights for ", deltas.size(), " adapters"));
  for (size_t i = 1; i < deltas.size(); ++i)
    if (deltas[i].shape() != deltas[0].shape())
      throw Error(str(method, ": adapter ", i, " updates a ", shape_str(deltas[i].shape()),
                      " weight, adapter 0 a ", shape_str(deltas[0].shape()), " one"));
}

// Indices of the k = round(density·n) largest magnitudes (ties: lower index first).
std::vector<char> top_mask(const float* x, int64_t n, float density) {
  if (density < 0.0f || density > 1.0f)
    throw Error(str("density ", density, " must be within [0, 1]"));
  const int64_t k = static_cast<int64_t>(std::llround(static_cast<double>(density) * n));
  std::vector<int64_t> idx(static_cast<size_t>(n));
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(),
                   [&](int64_t a, int64_t b) { return std::fabs(x[a]) > std::fabs(x[b]); });
  std::vector<char> keep(static_cast<size_t>(n), 0);
  for (int64_t i = 0; i < k; ++i) keep[idx[i]] = 1;
  return keep;
}

// Sign election and disjoint mean over already weighted/trimmed task tensors.
Tensor disjoint_merge(const std::vector<std::vector<float>>& tau, const Shape& shape) {
  Tensor out = Tensor::zeros(shape);
  const int64_t n = out.numel();
  for (int64_t j = 0; j < n; ++j) {
    double total = 0.0;
    for (const auto& t : tau) total += t[j];
    if (total == 0.0) continue;
    const bool positive = total > 0.0;
    double sum = 0.0;
    int count = 0;
    for (const auto& t : tau)
      if (t[j] != 0.0f && (t[j] > 0.0f) == positive) {
        sum += t[j];
        ++count;
      }
    out.data()[j] = count ? static_cast<float>(sum / count) : 0.0f;
  }
  return out;
}

}  // namespace

Tensor LoraFactors::delta(bool in_out) const {
  const int64_t r = A.size(0), in = A.size(1), out = B.size(0);
  if (B.size(1) != r)
    throw Error(
        str("LoRA factors disagree: A ", shape_str(A.shape()), ", B ", shape_str(B.shape())));
  Tensor d = Tensor::empty(in_out ? Shape{in, out} : Shape{out, in});
  if (in_out)  // (s·B·A)ᵀ = s·Aᵀ·Bᵀ
    kernels::cpu::gemm(true, true, in, out, r, scale, A.data(), in, B.data(), r, 0.0f, d.data(),
                       out);
  else
    kernels::cpu::gemm(false, false, out, in, r, scale, B.data(), r, A.data(), in, 0.0f, d.data(),
                       in);
  return d;
}

LoraFactors merge_cat(const std::vector<LoraFactors>& loras, const std::vector<float>& weights) {
  if (loras.empty()) throw Error("cat: nothing to merge");
  if (weights.size() != loras.size())
    throw Error(str("cat: ", weights.size(), " weights for ", loras.size(), " adapters"));
  const int64_t in = loras[0].A.size(1), out = loras[0].B.size(0);
  int64_t r = 0;
  for (size_t i = 0; i < loras.size(); ++i) {
    if (loras[i].A.size(1) != in || loras[i].B.size(0) != out)
      throw Error(str("cat: adapter ", i, " is for a ", loras[i].B.size(0), "x", loras[i].A.size(1),
                      " weight, adapter 0 for ", out, "x", in));
    r += loras[i].rank();
  }
  LoraFactors m;
  m.A = Tensor::empty({r, in});
  m.B = Tensor::empty({out, r});
  int64_t at = 0;
  for (size_t i = 0; i < loras.size(); ++i) {
    const int64_t ri = loras[i].rank();
    const float c = weights[i] * loras[i].scale;  // folded into A so ΔW is exact
    for (int64_t k = 0; k < ri; ++k)
      for (int64_t j = 0; j < in; ++j)
        m.A.data()[(at + k) * in + j] = c * loras[i].A.data()[k * in + j];
    for (int64_t o = 0; o < out; ++o)
      for (int64_t k = 0; k < ri; ++k) m.B.data()[o * r + at + k] = loras[i].B.data()[o * ri + k];
    at += ri;
  }
  return m;
}

Tensor task_arithmetic(const std::vector<Tensor>& deltas, const std::vector<float>& weights,
                       float lambda) {
  check_same(deltas, weights, "task_arithmetic");
  Tensor out = Tensor::zeros(deltas[0].shape());
  for (size_t i = 0; i < deltas.size(); ++i)
    for (int64_t j = 0; j < out.numel(); ++j)
      out.data()[j] += lambda * weights[i] * deltas[i].data()[j];
  return out;
}

Tensor prune_magnitude(const Tensor& delta, float density) {
  Tensor out = delta.clone();
  std::vector<char> keep = top_mask(delta.data(), delta.numel(), density);
  for (int64_t j = 0; j < out.numel(); ++j)
    if (!keep[j]) out.data()[j] = 0.0f;
  return out;
}

Tensor ties(const std::vector<Tensor>& deltas, const std::vector<float>& weights, float density) {
  check_same(deltas, weights, "ties");
  std::vector<std::vector<float>> tau;
  for (size_t i = 0; i < deltas.size(); ++i) {
    std::vector<float> t(static_cast<size_t>(deltas[i].numel()));
    for (size_t j = 0; j < t.size(); ++j) t[j] = weights[i] * deltas[i].data()[j];
    std::vector<char> keep = top_mask(t.data(), static_cast<int64_t>(t.size()), density);
    for (size_t j = 0; j < t.size(); ++j)
      if (!keep[j]) t[j] = 0.0f;
    tau.push_back(std::move(t));
  }
  return disjoint_merge(tau, deltas[0].shape());
}

Tensor dare(const std::vector<Tensor>& deltas, const std::vector<float>& weights, float drop_p,
            Rng& rng, bool ties_combine, float density) {
  check_same(deltas, weights, "dare");
  if (!(drop_p >= 0.0f && drop_p < 1.0f))
    throw Error(str("dare: drop probability ", drop_p, " must be within [0, 1)"));
  const float keep_scale = 1.0f / (1.0f - drop_p);
  std::vector<std::vector<float>> tau;
  for (size_t i = 0; i < deltas.size(); ++i) {
    std::vector<float> t(static_cast<size_t>(deltas[i].numel()));
    for (size_t j = 0; j < t.size(); ++j)
      t[j] = rng.uniform() < drop_p ? 0.0f : weights[i] * deltas[i].data()[j] * keep_scale;
    if (ties_combine && density < 1.0f) {
      std::vector<char> keep = top_mask(t.data(), static_cast<int64_t>(t.size()), density);
      for (size_t j = 0; j < t.size(); ++j)
        if (!keep[j]) t[j] = 0.0f;
    }
    tau.push_back(std::move(t));
  }
  if (ties_combine) return disjoint_merge(tau, deltas[0].shape());
  Tensor out = Tensor::zeros(deltas[0].shape());
  for (const auto& t : tau)
    for (int64_t j = 0; j < out.numel(); ++j) out.data()[j] += t[j];
  return out;
}

LoraFactors lego(const std::vector<LoraFactors>& loras, const std::vector<float>& weights,
                 const LegoOptions& o) {
  if (loras.empty()) throw Error("lego: nothing to merge");
  if (weights.size() != loras.size())
    throw Error(str("lego: ", weights.size(), " weights for ", loras.size(), " adapters"));
  const int64_t in = loras[0].A.size(1), out = loras[0].B.size(0), D = in + out;
  // Units: [√(w·s)·A_i, √(w·s)·B_:,i] so that Σ unit_B ⊗ unit_A = Σ w·s·B·A.
  std::vector<std::vector<float>> units;
  for (size_t l = 0; l < loras.size(); ++l) {
    const LoraFactors& f = loras[l];
    if (f.A.ndim() != 2 || f.B.ndim() != 2 || f.A.size(1) != in || f.B.size(0) != out ||
        f.B.size(1) != f.rank())
      throw Error(str("lego: adapter ", l, " (A ", shape_str(f.A.shape()), ", B ",
                      shape_str(f.B.shape()), ") does not share in = ", in, " / out = ", out,
                      " with adapter 0"));
    const float ws = weights[l] * f.scale;
    if (ws < 0.0f)
      throw Error(str("lego: adapter ", l, " has weight × scale ", ws,
                      " < 0, which rank-1 units cannot carry"));
    const float c = std::sqrt(ws);
    for (int64_t i = 0; i < f.rank(); ++i) {
      std::vector<float> u(static_cast<size_t>(D));
      for (int64_t j = 0; j < in; ++j) u[j] = c * f.A.data()[i * in + j];
      for (int64_t j = 0; j < out; ++j) u[in + j] = c * f.B.data()[j * f.rank() + i];
      // (a, b) and (−a, −b) give the same update: canonical sign, largest |a_j| positive.
      int64_t arg = 0;
      for (int64_t j = 1; j < in; ++j)
        if (std::fabs(u[j]) > std::fabs(u[arg])) arg = j;
      if (u[arg] < 0)
        for (float& v : u) v = -v;
      units.push_back(std::move(u));
    }
  }
  const int64_t U = static_cast<int64_t>(units.size()), k = o.k;
  if (k < 1 || k > U)
    throw Error(
        str("lego: k = ", k, " clusters from ", U, " rank-1 units (need 1 <= k <= ", U, ")"));
  auto dist2 = [&](const std::vector<float>& a, const std::vector<float>& b) {
    double d = 0;
    for (int64_t j = 0; j < D; ++j) d += (static_cast<double>(a[j]) - b[j]) * (a[j] - b[j]);
    return d;
  };
  // k-means++ initialisation (seeded), then Lloyd's iterations.
  Rng rng(o.seed);
  std::vector<std::vector<float>> cent;
  cent.push_back(units[static_cast<size_t>(rng.uniform() * U) % U]);
  std::vector<double> best(static_cast<size_t>(U), 1e300);
  while (static_cast<int64_t>(cent.size()) < k) {
    double total = 0;
    for (int64_t u = 0; u < U; ++u) {
      best[u] = std::min(best[u], dist2(units[u], cent.back()));
      total += best[u];
    }
    int64_t pick = U - 1;
    if (total > 0) {
      double r = rng.uniform() * total;
      for (int64_t u = 0; u < U; ++u) {
        r -= best[u];
        if (r <= 0) {
          pick = u;
          break;
        }
      }
    } else {
      pick = static_cast<int64_t>(cent.size());  // all units identical: any distinct index
    }
    cent.push_back(units[pick]);
  }
  std::vector<int64_t> assign(static_cast<size_t>(U), -1);
  for (int it = 0; it < std::max(1, o.iterations); ++it) {
    bool changed = false;
    for (int64_t u = 0; u < U; ++u) {
      int64_t c = 0;
      double d = dist2(units[u], cent[0]);
      for (int64_t j = 1; j < k; ++j) {
        double dj = dist2(units[u], cent[j]);
        if (dj < d) {
          d = dj;
          c = j;
        }
      }
      if (assign[u] != c) {
        assign[u] = c;
        changed = true;
      }
    }
    for (int64_t j = 0; j < k; ++j) {
      std::vector<double> sum(static_cast<size_t>(D), 0.0);
      int64_t n = 0;
      for (int64_t u = 0; u < U; ++u)
        if (assign[u] == j) {
          for (int64_t t = 0; t < D; ++t) sum[t] += units[u][t];
          ++n;
        }
      if (n == 0) continue;  // an empty cluster keeps its centroid
      for (int64_t t = 0; t < D; ++t) cent[j][t] = static_cast<float>(sum[t] / n);
    }
    if (!changed && it > 0) break;
  }
  LoraFactors outf{Tensor::zeros({k, in}), Tensor::zeros({out, k}), 1.0f};
  for (int64_t j = 0; j < k; ++j) {
    std::vector<float> c = cent[j];
    if (o.rescale) {
      double member_norm = 0, cn = 0;
      int64_t n = 0;
      for (int64_t u = 0; u < U; ++u)
        if (assign[u] == j) {
          member_norm += std::sqrt(dist2(units[u], std::vector<float>(D, 0.0f)));
          ++n;
        }
      cn = std::sqrt(dist2(c, std::vector<float>(D, 0.0f)));
      if (n > 0 && cn > 0) {
        // Parameter reweighting: the centroid gets its members' mean norm.
        const float f = static_cast<float>(member_norm / n / cn);
        for (float& v : c) v *= f;
      }
    }
    for (int64_t t = 0; t < in; ++t) outf.A.data()[j * in + t] = c[t];
    for (int64_t t = 0; t < out; ++t) outf.B.data()[t * k + j] = c[in + t];
  }
  return outf;
}

std::vector<size_t> greedy_soup(const std::vector<double>& own,
                                const std::function<double(const std::vector<size_t>&)>& score) {
  if (own.empty()) throw Error("greedy_soup: no ingredients");
  std::vector<size_t> order(own.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return own[a] > own[b]; });
  std::vector<size_t> soup = {order[0]};
  double best = score(soup);
  for (size_t i = 1; i < order.size(); ++i) {
    soup.push_back(order[i]);
    const double s = score(soup);
    if (s >= best)
      best = s;
    else
      soup.pop_back();
  }
  return soup;
}

LoraFactors svd_factor(const Tensor& delta, int64_t rank) {
  if (delta.ndim() != 2)
    throw Error(str("svd: expected a 2-D delta, got ", shape_str(delta.shape())));
  const int64_t out = delta.size(0), in = delta.size(1), k = std::min(out, in);
  if (rank < 1 || rank > k)
    throw Error(
        str("svd: rank ", rank, " must be within [1, ", k, "] for a ", out, "x", in, " delta"));
  // LAPACK is column-major: the row-major [out, in] buffer is the column-major
  // matrix Dᵀ [in, out]. Dᵀ = U' Σ V'ᵀ gives D = V' Σ U'ᵀ.
  int m = static_cast<int>(in), n = static_cast<int>(out), lda = m, ldu = m,
      ldvt = static_cast<int>(k);
  std::vector<float> a(delta.data(), delta.data() + delta.numel()), s(static_cast<size_t>(k)),
      u(static_cast<size_t>(m) * k), vt(static_cast<size_t>(k) * n);
  std::vector<int> iwork(static_cast<size_t>(8 * k));
  int info = 0, lwork = -1;
  float wsize = 0;
  sgesdd_("S", &m, &n, a.data(), &lda, s.data(), u.data(), &ldu, vt.data(), &ldvt, &wsize, &lwork,
          iwork.data(), &info);
  lwork = static_cast<int>(wsize) + 1;
  std::vector<float> work(static_cast<size_t>(lwork));
  sgesdd_("S", &m, &n, a.data(), &lda, s.data(), u.data(), &ldu, vt.data(), &ldvt, work.data(),
          &lwork, iwork.data(), &info);
  if (info != 0) throw Error(str("svd: LAPACK sgesdd failed (info ", info, ")"));
  // Column-major U' [in, k]: U'(i, c) = u[c*in + i]; V'ᵀ [k, out]: V'ᵀ(c, o) = vt[o*k + c].
  LoraFactors f;
  f.A = Tensor::empty({rank, in});   // √σ_c · U'(:, c)ᵀ
  f.B = Tensor::empty({out, rank});  // V'(o, c) · √σ_c
  for (int64_t c = 0; c < rank; ++c) {
    const float r = std::sqrt(s[c]);
    for (int64_t i = 0; i < in; ++i) f.A.data()[c * in + i] = r * u[c * in + i];
    for (int64_t o = 0; o < out; ++o) f.B.data()[o * rank + c] = r * vt[o * k + c];
  }
  return f;
}

}  // namespace tessera::adapters
