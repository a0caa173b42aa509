// R2-T2 test-time re-routing: kernel regression by hand, NGD converging to
// what kernel regression with alpha 0 gives on a quadratic loss, the simplex
// projection, and every result independent of the test set's order.
#include "routing/r2t2.h"
#include "routing/routers.h"
#include "routing/spec.h"

#include <gtest/gtest.h>

#include <cmath>

#include "runtime/common/error.h"
#include "runtime/common/rng.h"
#include "tests/testing.h"

namespace tessera::routing {
namespace {

// Reference points on a line at 0, 1, 2, 10 with one-hot routes over 3 experts.
ReferenceSet line() {
  ReferenceSet r;
  r.embeddings = Tensor::from_vector({0, 1, 2, 10}, {4, 1});
  r.routes = Tensor::from_vector({1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 1}, {4, 3});
  return r;
}

TEST(R2T2, KernelRegressionByHand) {
  R2T2Options o;
  o.k = 2;
  o.alpha = 0.25f;
  o.bandwidth = 1.0f;
  // x = 0.4: neighbours 0 (d = .4) and 1 (d = .6); K = exp(−d²/2).
  const Tensor out = r2t2_kernel_regression(Tensor::from_vector({0.4f}, {1, 1}),
                                            Tensor::from_vector({0, 0, 1}, {1, 3}), line(), o);
  const double k0 = std::exp(-0.16 / 2), k1 = std::exp(-0.36 / 2), s = k0 + k1;
  EXPECT_NEAR(out.data()[0], 0.75 * k0 / s, 1e-6);
  EXPECT_NEAR(out.data()[1], 0.75 * k1 / s, 1e-6);
  EXPECT_NEAR(out.data()[2], 0.25, 1e-6);
  // Bandwidth 0: the median neighbour distance (.5 for d = .4, .6).
  o.bandwidth = 0;
  const Tensor med = r2t2_kernel_regression(Tensor::from_vector({0.4f}, {1, 1}),
                                            Tensor::from_vector({0, 0, 1}, {1, 3}), line(), o);
  const double m0 = std::exp(-0.16 / 0.5), m1 = std::exp(-0.36 / 0.5);
  EXPECT_NEAR(med.data()[0], 0.75 * m0 / (m0 + m1), 1e-6);
}

TEST(R2T2, ProjectionOntoTheSimplex) {
  EXPECT_EQ(project_to_simplex({0.2f, 0.3f, 0.5f}), (std::vector<float>{0.2f, 0.3f, 0.5f}));
  EXPECT_EQ(project_to_simplex({2, 0, 0}), (std::vector<float>{1, 0, 0}));
  // (.6, .6, -1): θ = .1 → (.5, .5, 0).
  const std::vector<float> p = project_to_simplex({0.6f, 0.6f, -1.0f});
  EXPECT_NEAR(p[0], 0.5f, 1e-6);
  EXPECT_NEAR(p[1], 0.5f, 1e-6);
  EXPECT_EQ(p[2], 0.0f);
}

// ℓ_i(r) = ||r − r_i||²: NGD's fixed point is the kernel-weighted mean of
// the neighbours' routes, what kernel regression gives with alpha = 0.
TEST(R2T2, NgdOnAQuadraticFindsTheKernelMean) {
  const ReferenceSet ref = line();
  R2T2Options o;
  o.k = 3;
  o.bandwidth = 1.5f;
  o.steps = 200;
  o.lr = 0.1f;
  auto loss_grad = [&](int64_t i, const std::vector<float>& r, std::vector<float>* g) {
    double l = 0;
    for (size_t e = 0; e < r.size(); ++e) {
      const double d = r[e] - ref.routes.data()[i * 3 + e];
      l += d * d;
      (*g)[e] = static_cast<float>(2 * d);
    }
    return l;
  };
  const Tensor emb = Tensor::from_vector({0.9f, 1.7f}, {2, 1});
  const Tensor start = Tensor::from_vector({0, 0, 1, 1, 0, 0}, {2, 3});
  const Tensor ngd = r2t2_ngd(emb, start, ref, o, loss_grad);
  o.alpha = 0;
  const Tensor kr = r2t2_kernel_regression(emb, start, ref, o);
  for (int64_t i = 0; i < 6; ++i) EXPECT_NEAR(ngd.data()[i], kr.data()[i], 1e-4) << i;
}

// The reference code updates shared router state test input after test
// input; here each input works on its own copy: shuffled, the results are
// the same rows, bit for bit.
TEST(R2T2, ResultsDoNotDependOnTheTestSetsOrder) {
  Rng rng(3);
  ReferenceSet ref;
  ref.embeddings = testing::randn({40, 6}, rng);
  ref.routes = Tensor::empty({40, 4});
  for (int64_t i = 0; i < 40; ++i) {
    std::vector<float> v(4);
    for (float& x : v) x = rng.uniform();
    v = project_to_simplex(v);
    std::copy(v.begin(), v.end(), ref.routes.data() + i * 4);
  }
  const Tensor emb = testing::randn({12, 6}, rng);
  Tensor routes = Tensor::empty({12, 4});
  for (int64_t i = 0; i < 48; ++i) routes.data()[i] = 0.25f;
  R2T2Options o;
  o.steps = 5;
  auto loss_grad = [&](int64_t i, const std::vector<float>& r, std::vector<float>* g) {
    for (size_t e = 0; e < r.size(); ++e) (*g)[e] = r[e] - ref.routes.data()[i * 4 + e] + 0.1f * e;
    return 0.0;
  };
  const Tensor a = r2t2_ngd(emb, routes, ref, o, loss_grad);
  const Tensor ka = r2t2_kernel_regression(emb, routes, ref, o);
  std::vector<int64_t> perm = {7, 2, 11, 0, 5, 9, 1, 4, 10, 3, 8, 6};
  Tensor pe = Tensor::empty({12, 6}), pr = Tensor::empty({12, 4});
  for (int64_t i = 0; i < 12; ++i) {
    std::copy(emb.data() + perm[i] * 6, emb.data() + perm[i] * 6 + 6, pe.data() + i * 6);
    std::copy(routes.data() + perm[i] * 4, routes.data() + perm[i] * 4 + 4, pr.data() + i * 4);
  }
  const Tensor b = r2t2_ngd(pe, pr, ref, o, loss_grad), kb = r2t2_kernel_regression(pe, pr, ref, o);
  for (int64_t i = 0; i < 12; ++i)
    for (int64_t e = 0; e < 4; ++e) {
      EXPECT_EQ(b.data()[i * 4 + e], a.data()[perm[i] * 4 + e]);
      EXPECT_EQ(kb.data()[i * 4 + e], ka.data()[perm[i] * 4 + e]);
    }
  // One input alone: the same as in company.
  const Tensor one =
      r2t2_ngd(Tensor::from_vector({emb.data() + 18, emb.data() + 24}, {1, 6}),
               Tensor::from_vector({0.25f, 0.25f, 0.25f, 0.25f}, {1, 4}), ref, o, loss_grad);
  for (int64_t e = 0; e < 4; ++e) EXPECT_EQ(one.data()[e], a.data()[3 * 4 + e]);
}

TEST(R2T2, BadInputsAreRefused) {
  const ReferenceSet ref = line();
  R2T2Options o;
  o.k = 5;  // more than the 4 references
  const Tensor emb = Tensor::from_vector({0.5f}, {1, 1}),
               r = Tensor::from_vector({1, 0, 0}, {1, 3});
  EXPECT_THROW(r2t2_kernel_regression(emb, r, ref, o), Error);
  o.k = 2;
  o.alpha = 1.5f;
  EXPECT_THROW(r2t2_kernel_regression(emb, r, ref, o), Error);
  o.alpha = 0.5f;
  EXPECT_THROW(r2t2_kernel_regression(Tensor::from_vector({0.5f, 1}, {1, 2}), r, ref, o), Error);
  EXPECT_THROW(r2t2_kernel_regression(emb, Tensor::from_vector({1, 0}, {1, 2}), ref, o), Error);
  o.lr = 0;
  EXPECT_THROW(
      r2t2_ngd(emb, r, ref, o,
               [](int64_t, const std::vector<float>&, std::vector<float>*) { return 0.0; }),
      Error);
}

}  // namespace
}  // namespace tessera::routing

namespace tessera::routing {
namespace {

TEST(R2T2, DenseRoutesAndTheirTopKRenormalised) {
  TopK t;
  t.k = 2;
  t.ids = {2, 0, 1, -1};
  t.weights = {0.75f, 0.25f, 1.0f, 0.0f};
  const Tensor d = dense_routes(t, 3);
  EXPECT_EQ(d.to_vector(), (std::vector<float>{0.25f, 0, 0.75f, 0, 1, 0}));
  // Row 0: (.2, .5, .3) → top 2 = experts 1, 2 with .5/.8, .3/.8; ties → lower id.
  const TopK k =
      top_k_renormalized(Tensor::from_vector({0.2f, 0.5f, 0.3f, 0.4f, 0.4f, 0.2f}, {2, 3}), 2);
  EXPECT_EQ(k.ids, (std::vector<int32_t>{1, 2, 0, 1}));
  EXPECT_NEAR(k.weights[0], 0.625f, 1e-7);
  EXPECT_NEAR(k.weights[1], 0.375f, 1e-7);
  EXPECT_NEAR(k.weights[2], 0.5f, 1e-7);
  const TopK zero = top_k_renormalized(Tensor::zeros({1, 3}), 2);
  EXPECT_EQ(zero.weights, (std::vector<float>{0.5f, 0.5f}));
  EXPECT_THROW(top_k_renormalized(Tensor::zeros({1, 3}), 4), Error);
}

}  // namespace
}  // namespace tessera::routing

namespace tessera::routing {
namespace {

TEST(PrefixMean, RunningMeanWithinEachSequenceOnly) {
  // Two sequences of 3 tokens, width 2.
  const Tensor x = Tensor::from_vector({1, 2, 3, 4, 5, 6, 10, 0, 20, 0, 30, 3}, {6, 2});
  EXPECT_EQ(prefix_mean(x, 3).to_vector(),
            (std::vector<float>{1, 2, 2, 3, 3, 4, 10, 0, 15, 0, 20, 1}));
  EXPECT_EQ(prefix_mean(x, 1).to_vector(), x.to_vector());  // one row per example: itself
  EXPECT_THROW(prefix_mean(x, 4), Error);
  EXPECT_EQ(parse_router_spec("centroid:top_k=1,context=prefix").label(),
            "centroid top_k=1 merge-after prefix");
  EXPECT_THROW(parse_router_spec("arrow:context=prefix,candidates=4"), Error);
  EXPECT_THROW(parse_router_spec("arrow:context=sequence"), Error);
  EXPECT_THROW(parse_router_spec("uniform:context=prefix"), Error);
}

}  // namespace
}  // namespace tessera::routing
