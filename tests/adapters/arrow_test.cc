// Arrow prototypes against a hand case and LAPACK's SVD.
#include "adapters/arrow.h"

#include <gtest/gtest.h>

#include <cmath>

namespace tessera::adapters {
namespace {

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

}  // namespace
}  // namespace tessera::adapters
