// Arrow prototypes: a hand case, LAPACK's SVD of the formed delta, and
// experts built with a known top direction whose σ₂/σ₁ is adversarial.
#include "routing/arrow.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <tuple>

#include "runtime/common/error.h"
#include "runtime/common/rng.h"

namespace tessera::routing {
namespace {

using adapters::LoraFactors;
using adapters::svd_factor;

TEST(Arrow, PrototypeIsTheTopRightSingularVectorWithAFixedSign) {
  // Hand case: A's rows a0 = (1,1,0,0)/√2, a1 = (0,0,1,-1)/√2; B sends a1 to
  // -2·e0 and a0 to e1, so σ = 2, 1 and the top right vector is ±a1; the sign
  // makes its first largest-magnitude entry positive.
  const float h = std::sqrt(0.5f);
  LoraFactors f{Tensor::from_vector({h, h, 0, 0, 0, 0, h, -h}, {2, 4}),
                Tensor::from_vector({0, -2, 1, 0, 0, 0}, {3, 2}), 1.0f};
  std::vector<float> v = arrow_prototype(f);
  ASSERT_EQ(v.size(), 4u);
  EXPECT_NEAR(v[0], 0, 1e-6);
  EXPECT_NEAR(v[1], 0, 1e-6);
  EXPECT_NEAR(v[2], h, 1e-6);
  EXPECT_NEAR(v[3], -h, 1e-6);
  // A random rank-8 module against LAPACK's SVD of the formed delta.
  Rng rng(3);
  std::vector<float> a(8 * 50), b(30 * 8);
  for (float& x : a) x = rng.normal();
  for (float& x : b) x = rng.normal();
  LoraFactors g{Tensor::from_vector(a, {8, 50}), Tensor::from_vector(b, {30, 8}), 0.5f};
  std::vector<float> p = arrow_prototype(g);
  LoraFactors top = svd_factor(g.delta(), 1);  // A row ∝ the top right singular vector
  double dot = 0, n = 0, nt = 0;
  for (int c = 0; c < 50; ++c) {
    dot += double(p[c]) * top.A.data()[c];
    n += double(p[c]) * p[c];
    nt += double(top.A.data()[c]) * top.A.data()[c];
  }
  EXPECT_NEAR(n, 1.0, 1e-6);
  EXPECT_GT(std::abs(dot) / std::sqrt(n * nt), 0.99999);
  // A zero delta has no direction.
  LoraFactors z{Tensor::zeros({2, 3}), Tensor::zeros({4, 2}), 1.0f};
  for (float x : arrow_prototype(z)) EXPECT_EQ(x, 0.0f);
}

// Orthonormal columns [rows, cols] (Gram-Schmidt in double of Gaussians).
std::vector<double> orthonormal(int64_t rows, int64_t cols, Rng& rng) {
  std::vector<double> q(static_cast<size_t>(rows * cols));
  for (double& x : q) x = rng.normal();
  for (int64_t j = 0; j < cols; ++j) {
    for (int pass = 0; pass < 2; ++pass)
      for (int64_t i = 0; i < j; ++i) {
        double d = 0;
        for (int64_t r = 0; r < rows; ++r) d += q[r * cols + i] * q[r * cols + j];
        for (int64_t r = 0; r < rows; ++r) q[r * cols + j] -= d * q[r * cols + i];
      }
    double n = 0;
    for (int64_t r = 0; r < rows; ++r) n += q[r * cols + j] * q[r * cols + j];
    for (int64_t r = 0; r < rows; ++r) q[r * cols + j] /= std::sqrt(n);
  }
  return q;
}

// B·A = U diag(σ) Vᵀ exactly, hidden behind a random invertible G:
// A = G Vᵀ [r, in], B = U diag(σ) G⁻¹ [out, r] (G upper-triangular with a
// dominant diagonal, inverted by back substitution). The top right singular
// vector is V's first column, known without any SVD.
struct Known {
  LoraFactors f;
  std::vector<double> v1;
};
Known known_expert(int64_t r, int64_t in, int64_t out, const std::vector<double>& sigma,
                   uint64_t seed) {
  Rng rng(seed);
  const std::vector<double> U = orthonormal(out, r, rng), V = orthonormal(in, r, rng);
  std::vector<double> G(static_cast<size_t>(r * r), 0.0), Gi(static_cast<size_t>(r * r), 0.0);
  for (int64_t i = 0; i < r; ++i)
    for (int64_t j = i; j < r; ++j) G[i * r + j] = i == j ? 1.5 + rng.uniform() : rng.normal();
  for (int64_t c = 0; c < r; ++c)  // Gi column c solves G x = e_c
    for (int64_t i = r - 1; i >= 0; --i) {
      double s = i == c ? 1.0 : 0.0;
      for (int64_t j = i + 1; j < r; ++j) s -= G[i * r + j] * Gi[j * r + c];
      Gi[i * r + c] = s / G[i * r + i];
    }
  std::vector<float> a(static_cast<size_t>(r * in)), b(static_cast<size_t>(out * r));
  for (int64_t i = 0; i < r; ++i)
    for (int64_t c = 0; c < in; ++c) {
      double s = 0;
      for (int64_t j = 0; j < r; ++j) s += G[i * r + j] * V[c * r + j];
      a[i * in + c] = static_cast<float>(s);
    }
  for (int64_t o = 0; o < out; ++o)
    for (int64_t j = 0; j < r; ++j) {
      double s = 0;
      for (int64_t i = 0; i < r; ++i) s += U[o * r + i] * sigma[i] * Gi[i * r + j];
      b[o * r + j] = static_cast<float>(s);
    }
  Known k{LoraFactors{Tensor::from_vector(a, {r, in}), Tensor::from_vector(b, {out, r}), 2.0f}, {}};
  for (int64_t c = 0; c < in; ++c) k.v1.push_back(V[c * r]);
  return k;
}

// |cos| between the prototype and the known direction, and the prototype's norm.
double alignment(const std::vector<float>& p, const std::vector<double>& v, double* norm) {
  double dot = 0, n = 0;
  for (size_t c = 0; c < p.size(); ++c) {
    dot += p[c] * v[c];
    n += double(p[c]) * p[c];
  }
  *norm = std::sqrt(n);
  return std::abs(dot) / *norm;
}

// σ₂/σ₁ = 0.95 and 0.999 (where 15 power steps, PEFT's, are degrees off):
// the exact prototype is the known direction to float precision, unit
// length, with its largest entry positive; and scaling B·A or changing the
// factorisation leaves it unchanged bit for bit in direction.
TEST(Arrow, ExactOnAdversarialSpectraWhereIterationIsNot) {
  for (double ratio : {0.95, 0.999})
    for (auto [r, in, out] :
         {std::tuple<int64_t, int64_t, int64_t>{8, 64, 48}, {4, 256, 256}, {16, 32, 40}}) {
      std::vector<double> sigma(static_cast<size_t>(r));
      sigma[0] = 3.0;
      for (int64_t i = 1; i < r; ++i) sigma[i] = 3.0 * ratio * std::pow(0.9, double(i - 1));
      const Known k = known_expert(r, in, out, sigma, 17 + static_cast<uint64_t>(r));
      const std::vector<float> p = arrow_prototype(k.f);
      double norm = 0;
      const double cos = alignment(p, k.v1, &norm);
      EXPECT_NEAR(norm, 1.0, 1e-6);
      EXPECT_GT(cos, 1.0 - 1e-7) << "ratio " << ratio << " r " << r << " in " << in;
      EXPECT_GT(*std::max_element(p.begin(), p.end()),
                -*std::min_element(p.begin(), p.end()) - 1e-7f);
      // PEFT's 15 steps of power iteration from a fixed start, in double, for
      // contrast: at 0.999 it is nowhere near converged.
      if (ratio > 0.99 && r == 8) {
        std::vector<double> v(static_cast<size_t>(in), 1.0), bav(static_cast<size_t>(out));
        const float *A = k.f.A.data(), *B = k.f.B.data();
        for (int it = 0; it < 15; ++it) {
          std::vector<double> av(static_cast<size_t>(r), 0.0), next(static_cast<size_t>(in), 0.0);
          for (int64_t i = 0; i < r; ++i)
            for (int64_t c = 0; c < in; ++c) av[i] += A[i * in + c] * v[c];
          for (int64_t o = 0; o < out; ++o) {
            bav[o] = 0;
            for (int64_t i = 0; i < r; ++i) bav[o] += B[o * r + i] * av[i];
          }
          std::vector<double> btb(static_cast<size_t>(r), 0.0);
          for (int64_t i = 0; i < r; ++i)
            for (int64_t o = 0; o < out; ++o) btb[i] += B[o * r + i] * bav[o];
          for (int64_t i = 0; i < r; ++i)
            for (int64_t c = 0; c < in; ++c) next[c] += A[i * in + c] * btb[i];
          double n = 0;
          for (double x : next) n += x * x;
          for (double& x : next) x /= std::sqrt(n);
          v.swap(next);
        }
        double dot = 0;
        for (int64_t c = 0; c < in; ++c) dot += v[c] * k.v1[c];
        EXPECT_LT(std::abs(dot), 1.0 - 1e-4) << "15 power steps converged after all";
      }
    }
}

// Wide modules (r > in), a rank-deficient A, and mismatched factors.
TEST(Arrow, WideRankDeficientAndMismatchedFactors) {
  Rng rng(5);
  std::vector<float> a(6 * 4), b(5 * 6);
  for (float& x : a) x = rng.normal();
  for (float& x : b) x = rng.normal();
  LoraFactors wide{Tensor::from_vector(a, {6, 4}), Tensor::from_vector(b, {5, 6}), 1.0f};
  const std::vector<float> p = arrow_prototype(wide);
  LoraFactors top = svd_factor(wide.delta(), 1);
  double dot = 0, nt = 0;
  for (int c = 0; c < 4; ++c) {
    dot += double(p[c]) * top.A.data()[c];
    nt += double(top.A.data()[c]) * top.A.data()[c];
  }
  EXPECT_GT(std::abs(dot) / std::sqrt(nt), 1.0 - 1e-6);
  for (int c = 0; c < 4; ++c) a[2 * 4 + c] = 0.0f;  // one zero row of A
  LoraFactors deficient{Tensor::from_vector(a, {6, 4}), Tensor::from_vector(b, {5, 6}), 1.0f};
  double n = 0;
  for (float x : arrow_prototype(deficient)) n += double(x) * x;
  EXPECT_NEAR(n, 1.0, 1e-6);
  LoraFactors bad{Tensor::from_vector(a, {6, 4}), Tensor::zeros({5, 3}), 1.0f};
  EXPECT_THROW(arrow_prototype(bad), Error);
}

}  // namespace
}  // namespace tessera::routing
