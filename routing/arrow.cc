#include "routing/arrow.h"

#include <algorithm>
#include <cmath>

#include "routing/linalg.h"
#include "runtime/common/error.h"

// LAPACK (Debian's OpenBLAS carries it), column-major, Fortran calling
// convention: the hidden lengths of character arguments come last.
extern "C" {
void dgeqrf_(const int* m, const int* n, double* a, const int* lda, double* tau, double* work,
             const int* lwork, int* info);
void dorgqr_(const int* m, const int* n, const int* k, double* a, const int* lda, const double* tau,
             double* work, const int* lwork, int* info);
}

namespace tessera::routing {

namespace {

// Runs a LAPACK call twice: a workspace query, then the call.
template <typename Call>
void with_workspace(const char* what, Call&& call) {
  int info = 0, lwork = -1;
  double size = 0;
  call(&size, &lwork, &info);
  if (info != 0) throw Error(str("arrow_prototype: LAPACK ", what, " failed (info ", info, ")"));
  lwork = std::max(1, static_cast<int>(size));
  std::vector<double> work(static_cast<size_t>(lwork));
  call(work.data(), &lwork, &info);
  if (info != 0) throw Error(str("arrow_prototype: LAPACK ", what, " failed (info ", info, ")"));
}

}  // namespace

std::vector<float> arrow_prototype(const adapters::LoraFactors& f) {
  const int64_t r = f.A.size(0), in = f.A.size(1), out = f.B.size(0);
  if (f.B.size(1) != r)
    throw Error(str("arrow_prototype: lora_B [", out, ", ", f.B.size(1), "] does not fit lora_A [",
                    r, ", ", in, "]"));
  std::vector<float> zero(static_cast<size_t>(in), 0.0f);
  if (r == 0 || in == 0 || out == 0) return zero;
  const float* A = f.A.data();
  const float* B = f.B.data();
  // Row-major A [r, in] is column-major Aᵀ [in, r] with lda = in. With
  // r > in the QR is of a wide matrix: keep k = min(in, r) columns of Q.
  const int m = static_cast<int>(in), n = static_cast<int>(r), k = std::min(m, n);
  std::vector<double> q(A, A + r * in);  // becomes R (upper triangle) and then Q
  std::vector<double> tau(static_cast<size_t>(k));
  with_workspace("dgeqrf", [&](double* work, const int* lwork, int* info) {
    dgeqrf_(&m, &n, q.data(), &m, tau.data(), work, lwork, info);
  });
  // R [k, r] (upper trapezoidal), column-major in q's top rows.
  std::vector<double> R(static_cast<size_t>(k) * r, 0.0);
  for (int j = 0; j < n; ++j)
    for (int i = 0; i <= std::min(j, k - 1); ++i) R[i * r + j] = q[j * m + i];  // R row-major
  with_workspace("dorgqr", [&](double* work, const int* lwork, int* info) {
    dorgqr_(&m, &k, &k, q.data(), &m, tau.data(), work, lwork, info);
  });
  // M = B Rᵀ [out, k]; S = Mᵀ M [k, k] = R BᵀB Rᵀ.
  std::vector<double> M(static_cast<size_t>(out) * k, 0.0);
  for (int64_t o = 0; o < out; ++o)
    for (int i = 0; i < k; ++i) {
      double s = 0;
      for (int64_t j = 0; j < r; ++j) s += double(B[o * r + j]) * R[i * r + j];
      M[o * k + i] = s;
    }
  std::vector<double> S(static_cast<size_t>(k) * k, 0.0);
  for (int i = 0; i < k; ++i)
    for (int j = 0; j < k; ++j) {
      double s = 0;
      for (int64_t o = 0; o < out; ++o) s += M[o * k + i] * M[o * k + j];
      S[i * k + j] = s;  // symmetric: row- and column-major agree
    }
  const std::vector<double> w = symmetric_eigen(S, k, "arrow_prototype");
  // Eigenvalues ascending: the last column of S is u. σ₁² = w[k-1].
  if (!(w[k - 1] > 0)) return zero;
  const double* u = S.data() + static_cast<size_t>(k - 1) * k;
  std::vector<double> p(static_cast<size_t>(in), 0.0);
  for (int i = 0; i < k; ++i)
    for (int64_t c = 0; c < in; ++c) p[c] += q[static_cast<size_t>(i) * m + c] * u[i];
  double norm = 0;
  for (double x : p) norm += x * x;
  norm = std::sqrt(norm);
  if (!(norm > 0)) return zero;
  int64_t big = 0;
  for (int64_t c = 1; c < in; ++c)
    if (std::abs(p[c]) > std::abs(p[big])) big = c;
  const double sign = p[big] < 0 ? -1.0 : 1.0;
  std::vector<float> proto(static_cast<size_t>(in));
  for (int64_t c = 0; c < in; ++c) proto[c] = static_cast<float>(sign * p[c] / norm);
  return proto;
}

std::vector<std::pair<std::string, std::vector<float>>> arrow_signatures(
    const adapters::AdapterFile& adapter) {
  std::vector<std::pair<std::string, std::vector<float>>> out;
  if (adapter.spec.kind != adapters::Kind::Lora && adapter.spec.kind != adapters::Kind::Dora)
    return out;
  for (const auto& [module, factors] : adapter.linear_factors())
    out.push_back({"arrow/" + module, arrow_prototype(factors)});
  return out;
}

std::vector<adapters::LoraFactors> gen_know_sub(const std::vector<adapters::LoraFactors>& tasks,
                                                const std::vector<adapters::LoraFactors>& general) {
  if (general.empty()) throw Error("gen_know_sub: no general experts to subtract");
  const Shape sa = general[0].A.shape(), sb = general[0].B.shape();
  auto check = [&](const adapters::LoraFactors& f, const char* what, size_t i) {
    if (f.A.shape() != sa || f.B.shape() != sb)
      throw Error(str("gen_know_sub: ", what, " expert ", i, " has lora_A [", f.A.size(0), ", ",
                      f.A.size(1), "] and lora_B [", f.B.size(0), ", ", f.B.size(1),
                      "]; general expert 0 has [", sa[0], ", ", sa[1], "] and [", sb[0], ", ",
                      sb[1], "]"));
  };
  const int64_t na = shape_numel(sa), nb = shape_numel(sb);
  std::vector<double> mean_a(static_cast<size_t>(na), 0.0), mean_b(static_cast<size_t>(nb), 0.0);
  for (size_t g = 0; g < general.size(); ++g) {
    check(general[g], "general", g);
    for (int64_t i = 0; i < na; ++i) mean_a[i] += general[g].A.data()[i];
    for (int64_t i = 0; i < nb; ++i) mean_b[i] += general[g].B.data()[i];
  }
  const double n = static_cast<double>(general.size());
  std::vector<adapters::LoraFactors> out;
  for (size_t t = 0; t < tasks.size(); ++t) {
    check(tasks[t], "task", t);
    adapters::LoraFactors f{Tensor::empty(sa), Tensor::empty(sb), tasks[t].scale};
    for (int64_t i = 0; i < na; ++i)
      f.A.data()[i] = static_cast<float>(tasks[t].A.data()[i] - mean_a[i] / n);
    for (int64_t i = 0; i < nb; ++i)
      f.B.data()[i] = static_cast<float>(tasks[t].B.data()[i] - mean_b[i] / n);
    out.push_back(std::move(f));
  }
  return out;
}

TopK arrow_route(const Tensor& x, const Tensor& prototypes, int64_t top_k, float temperature) {
  std::vector<float> scores = table_scores(x, prototypes, 1.0f, "arrow routing");
  for (float& s : scores) s = std::abs(s);
  return top_k_softmax(scores, x.size(0), prototypes.size(0), top_k, temperature);
}

}  // namespace tessera::routing
