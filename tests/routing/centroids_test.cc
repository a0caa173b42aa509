// Hidden-state centroids: the normalised mean of the inputs each module saw,
// the base output untouched, the row budget, and a taken slot refused.
#include "routing/centroids.h"

#include <gtest/gtest.h>

#include <cmath>

#include "routing/routers.h"
#include "runtime/common/rng.h"
#include "runtime/nn/parameters.h"
#include "tests/testing.h"

namespace tessera::routing {
namespace {

TEST(Centroids, NormalisedMeanOfTheFirstRowsAndTheBaseUntouched) {
  Rng rng(4);
  nn::ParameterSet ps;
  nn::Linear l1(ps, "h.0.fc", 3, 2, true, false, rng, nn::Init::Normal, 0.5f);
  nn::Linear l2(ps, "h.0.proj", 2, 3, false, false, rng, nn::Init::Normal, 0.5f);
  const Tensor x1 = Tensor::from_vector({1, 2, 2, 3, 0, 4}, {2, 3});
  const Tensor x2 = Tensor::from_vector({5, 5, 5, 9, 9, 9}, {2, 3});
  const std::vector<float> plain = l1.forward(x1).to_vector();
  {
    CentroidRecorder rec({&l1, &l2}, 3);
    EXPECT_EQ(l1.forward(x1).to_vector(), plain);  // passed through
    const Tensor h = l1.forward(x1);               // 2 more rows into l1 (4 > 3: one kept)
    l2.forward(h);
    l1.forward(x2);  // budget spent: nothing more
    EXPECT_EQ(rec.rows(), 3);
    const auto c = rec.centroids();
    ASSERT_EQ(c.size(), 2u);
    EXPECT_EQ(c[0].first, "centroid/h.0.fc");
    // Rows (1,2,2), (3,0,4), (1,2,2): sum (5,4,8), norm √105.
    const double n = std::sqrt(105.0);
    EXPECT_NEAR(c[0].second[0], 5 / n, 1e-6);
    EXPECT_NEAR(c[0].second[1], 4 / n, 1e-6);
    EXPECT_NEAR(c[0].second[2], 8 / n, 1e-6);
    // l2 saw the two rows of h.
    const std::vector<float> hv = h.to_vector();
    const double s0 = hv[0] + hv[2], s1 = hv[1] + hv[3], m = std::sqrt(s0 * s0 + s1 * s1);
    EXPECT_NEAR(c[1].second[0], s0 / m, 1e-6);
    EXPECT_NEAR(c[1].second[1], s1 / m, 1e-6);
    // Routing by them: an input along the first centroid picks expert 0.
    const Tensor C =
        Tensor::from_vector({c[0].second[0], c[0].second[1], c[0].second[2], 0, 0, 1}, {2, 3});
    EXPECT_EQ(centroid_route(Tensor::from_vector({5, 4, 8}, {1, 3}), C, 1).ids[0], 0);
  }
  EXPECT_EQ(l1.adapter(), nullptr);  // the slot is given back
  EXPECT_EQ(l1.forward(x1).to_vector(), plain);
}

TEST(Centroids, RefusesATakenSlotAndAZeroBudget) {
  Rng rng(1);
  nn::ParameterSet ps;
  nn::Linear l(ps, "m", 2, 2, false, false, rng, nn::Init::Normal, 0.5f);
  EXPECT_THROW(CentroidRecorder({&l}, 0), Error);
  CentroidRecorder a({&l}, 4);
  EXPECT_NE(testing::error_of([&] { CentroidRecorder b({&l}, 4); }).find("'m' already holds"),
            std::string::npos);
  const auto c = a.centroids();
  for (float v : c[0].second) EXPECT_EQ(v, 0.0f);  // saw nothing
}

}  // namespace
}  // namespace tessera::routing
