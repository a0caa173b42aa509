// Merge methods on small matrices against hand-computed results.
#include "adapters/merge.h"

#include <gtest/gtest.h>

#include "runtime/common/error.h"
#include "runtime/common/rng.h"

#include <cmath>

namespace tessera::adapters {
namespace {

Tensor T(std::vector<float> v, Shape s) {
  return Tensor::from_vector(v, s);
}

void expect_near(const Tensor& a, const std::vector<float>& b, float tol = 1e-5f) {
  ASSERT_EQ(a.numel(), static_cast<int64_t>(b.size()));
  for (size_t i = 0; i < b.size(); ++i) EXPECT_NEAR(a.data()[i], b[i], tol) << "element " << i;
}

TEST(Merge, CatIsExactAndRanksAddUp) {
  // ΔW = 1·2·[1;2][1,0] + 0.5·1·[3;0][0,1] = [[2, 1.5], [4, 0]]
  LoraFactors a{T({1, 0}, {1, 2}), T({1, 2}, {2, 1}), 2.0f};
  LoraFactors b{T({0, 1, 5, 5}, {2, 2}), T({3, 0, 0, 0}, {2, 2}),
                1.0f};  // rank 2, second row unused
  LoraFactors m = merge_cat({a, b}, {1.0f, 0.5f});
  EXPECT_EQ(m.rank(), 3);
  expect_near(m.delta(), {2.0f, 1.5f, 4.0f, 0.0f});
  LoraFactors wrong{T({1, 0, 0}, {1, 3}), T({1, 2}, {2, 1}), 1.0f};
  EXPECT_THROW(merge_cat({a, wrong}, {1, 1}), Error);
  EXPECT_THROW(merge_cat({a}, {1, 1}), Error);
}

TEST(Merge, TaskArithmetic) {
  expect_near(task_arithmetic({T({1, 2}, {1, 2}), T({3, -4}, {1, 2})}, {1.0f, 0.5f}, 2.0f),
              {5.0f, 0.0f});
  EXPECT_THROW(task_arithmetic({T({1, 2}, {1, 2}), T({3}, {1, 1})}, {1, 1}), Error);
}

TEST(Merge, TiesTrimsElectsAndTakesTheDisjointMean) {
  // Trimmed to the top 2 of 4 each: [.5,-.2,0,0], [-.3,-.4,0,0], [.4,0,-.6,0];
  // elected signs +,-,-,0; means of agreeing entries: .45, -.3, -.6, 0.
  Tensor t1 = T({0.5f, -0.2f, 0.1f, 0.0f}, {1, 4});
  Tensor t2 = T({-0.3f, -0.4f, 0.05f, 0.2f}, {1, 4});
  Tensor t3 = T({0.4f, 0.1f, -0.6f, 0.05f}, {1, 4});
  expect_near(ties({t1, t2, t3}, {1, 1, 1}, 0.5f), {0.45f, -0.3f, -0.6f, 0.0f});
  // density 1 and agreeing signs: the plain mean.
  expect_near(ties({T({2, 4}, {1, 2}), T({4, 2}, {1, 2})}, {1, 1}, 1.0f), {3.0f, 3.0f});
  EXPECT_THROW(ties({t1}, {1}, 1.5f), Error);
}

TEST(Merge, MagnitudePrune) {
  expect_near(prune_magnitude(T({3, -1, 0.5f, -4}, {2, 2}), 0.5f), {3, 0, 0, -4});
  expect_near(prune_magnitude(T({3, -1}, {1, 2}), 0.0f), {0, 0});
}

TEST(Merge, DareDropsAndRescalesSeeded) {
  Tensor ones = Tensor::full({100, 100}, 1.0f);
  Rng r1(9), r2(9);
  Tensor a = dare({ones}, {1.0f}, 0.5f, r1), b = dare({ones}, {1.0f}, 0.5f, r2);
  EXPECT_EQ(a.to_vector(), b.to_vector());  // seeded: reproducible
  double sum = 0;
  int kept = 0;
  for (float v : a.to_vector()) {
    EXPECT_TRUE(v == 0.0f || v == 2.0f) << v;  // dropped, or rescaled by 1/(1-p)
    sum += v;
    kept += v != 0.0f;
  }
  EXPECT_NEAR(sum / 10000.0, 1.0, 0.03);  // the expectation is preserved
  EXPECT_GT(kept, 4700);
  EXPECT_LT(kept, 5300);
  Rng r3(1);
  expect_near(dare({T({1, 2}, {1, 2}), T({3, -4}, {1, 2})}, {1.0f, 0.5f}, 0.0f, r3), {2.5f, 0.0f});
  Rng r4(1);
  EXPECT_THROW(dare({ones}, {1.0f}, 1.0f, r4), Error);
}

TEST(Merge, SvdFactorIsTheBestLowRankApproximation) {
  // diag(3, 2, 1) at rank 2 keeps the two largest singular values.
  Tensor d = T({3, 0, 0, 0, 2, 0, 0, 0, 1}, {3, 3});
  LoraFactors f = svd_factor(d, 2);
  EXPECT_EQ(f.rank(), 2);
  expect_near(f.delta(), {3, 0, 0, 0, 2, 0, 0, 0, 0});
  // A rectangular rank-1 matrix is recovered exactly at rank 1.
  Tensor r1 = T({1, 2, 3, 2, 4, 6}, {2, 3});
  expect_near(svd_factor(r1, 1).delta(), {1, 2, 3, 2, 4, 6}, 1e-4f);
  EXPECT_THROW(svd_factor(r1, 3), Error);
  // cat then svd: merging two rank-1 LoRAs back to rank 1 when they are parallel.
  LoraFactors a{T({1, 1}, {1, 2}), T({1, 0}, {2, 1}), 1.0f},
      b{T({2, 2}, {1, 2}), T({1, 0}, {2, 1}), 1.0f};
  expect_near(svd_factor(merge_cat({a, b}, {1, 1}).delta(), 1).delta(), {3, 3, 0, 0}, 1e-5f);
}

TEST(Merge, LegoClustersRankOneUnitsHandComputed) {
  // Unit 1: a = (1, 0), b = (2, 0); unit 2: a = (0, 1), b = (0, 2); s = 1.
  LoraFactors l1{Tensor::from_vector({1, 0}, {1, 2}), Tensor::from_vector({2, 0}, {2, 1}), 1.0f};
  LoraFactors l2{Tensor::from_vector({0, 1}, {1, 2}), Tensor::from_vector({0, 2}, {2, 1}), 1.0f};
  // k = 2: each unit its own cluster, the result is the sum [[2,0],[0,2]].
  LegoOptions o;
  o.k = 2;
  expect_near(lego({l1, l2}, {1, 1}, o).delta(), {2, 0, 0, 2}, 1e-6f);
  // k = 1: centroid (0.5, 0.5 | 1, 1), norm √2.5; members' norm √5, so the
  // centroid scales by √2: (0.7071, 0.7071 | 1.4142, 1.4142) → b ⊗ a = all ones.
  o.k = 1;
  LoraFactors m = lego({l1, l2}, {1, 1}, o);
  EXPECT_EQ(m.rank(), 1);
  expect_near(m.delta(), {1, 1, 1, 1}, 1e-5f);
  o.rescale = false;
  expect_near(lego({l1, l2}, {1, 1}, o).delta(), {0.5f, 0.5f, 0.5f, 0.5f}, 1e-6f);
  // (−a, −b) is the same update: with canonical signs it joins (a, b).
  LoraFactors neg{Tensor::from_vector({-1, 0}, {1, 2}), Tensor::from_vector({-2, 0}, {2, 1}), 1.0f};
  o.rescale = true;
  expect_near(lego({l1, neg}, {1, 1}, o).delta(), {2, 0, 0, 0}, 1e-6f);
  // Mixed ranks; weights and scales enter through √(w·s).
  LoraFactors r2{Tensor::from_vector({1, 0, 0, 1}, {2, 2}),
                 Tensor::from_vector({1, 0, 0, 1}, {2, 2}), 4.0f};
  o.k = 3;
  expect_near(lego({l1, r2}, {1, 0.25f}, o).delta(), {3, 0, 0, 1}, 1e-5f);
  o.k = 4;
  EXPECT_THROW(lego({l1, l2}, {1, 1}, o), Error);  // 2 units
  LoraFactors wide{Tensor::zeros({1, 3}), Tensor::zeros({2, 1}), 1.0f};
  o.k = 1;
  EXPECT_THROW(lego({l1, wide}, {1, 1}, o), Error);
}

TEST(Merge, GreedySoupKeepsIngredientsThatDoNotHurt) {
  // Tried in order of their own score: 1, 2, 0. {1} 0.9, {1,2} 0.95, {1,2,0} 0.8.
  std::vector<double> own = {0.5, 0.9, 0.7};
  auto score = [](const std::vector<size_t>& s) {
    if (s == std::vector<size_t>{1}) return 0.9;
    if (s == std::vector<size_t>{1, 2}) return 0.95;
    return 0.8;
  };
  EXPECT_EQ(greedy_soup(own, score), (std::vector<size_t>{1, 2}));
  EXPECT_THROW(greedy_soup({}, score), Error);
}

}  // namespace
}  // namespace tessera::adapters

namespace tessera::adapters {
namespace {}  // namespace
}  // namespace tessera::adapters
