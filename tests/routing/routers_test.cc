// Task, uniform and centroid routing by hand, and routing telemetry.
#include "routing/routers.h"

#include <gtest/gtest.h>

#include <cmath>

#include "tests/testing.h"

namespace tessera::routing {
namespace {

TEST(TaskRoute, OneExpertPerRowAndTheBaseForMinusOne) {
  const TopK t = task_route({2, 0, -1}, 3);
  EXPECT_EQ(t.k, 1);
  EXPECT_EQ(t.ids, (std::vector<int32_t>{2, 0, -1}));
  EXPECT_EQ(t.weights, (std::vector<float>{1, 1, 0}));
  EXPECT_NE(testing::error_of([] { task_route({3}, 3); }).find("row 0 names expert 3 of 3"),
            std::string::npos);
}

TEST(UniformRoute, EveryExpertAtOneOverE) {
  const TopK t = uniform_route(2, 4);
  EXPECT_EQ(t.k, 4);
  EXPECT_EQ(t.ids, (std::vector<int32_t>{0, 1, 2, 3, 0, 1, 2, 3}));
  for (float w : t.weights) EXPECT_EQ(w, 0.25f);
}

TEST(CentroidRoute, LogitsAreDotsOverRootDimensionSoftmaxedOverAllOrTopK) {
  // x = (2, 0, 0, 0); centroids e0 = (1,0,0,0), e1 = (0,1,0,0), e2 = (0.6,0.8,0,0).
  // Logits over √4 = 2: 1, 0, 0.6.
  const Tensor x = Tensor::from_vector({2, 0, 0, 0}, {1, 4});
  const Tensor c = Tensor::from_vector({1, 0, 0, 0, 0, 1, 0, 0, 0.6f, 0.8f, 0, 0}, {3, 4});
  const TopK all = centroid_route(x, c);
  const double z = std::exp(1.0) + 1 + std::exp(0.6);
  EXPECT_EQ(all.ids, (std::vector<int32_t>{0, 2, 1}));
  EXPECT_NEAR(all.weights[0], std::exp(1.0) / z, 1e-6);
  EXPECT_NEAR(all.weights[1], std::exp(0.6) / z, 1e-6);
  EXPECT_NEAR(all.weights[2], 1 / z, 1e-6);
  const TopK two = centroid_route(x, c, 2);
  EXPECT_NEAR(two.weights[0], std::exp(0.4) / (std::exp(0.4) + 1), 1e-6);
  EXPECT_THROW(centroid_route(x, Tensor::zeros({3, 5})), Error);
}

TEST(RoutingStats, AccuracyMassLoadAndEntropyByHand) {
  // Row 0: 0.7 on e1 (true), 0.3 on e0. Row 1: 0.6 on e2, 0.4 on e0 (true 0).
  // Row 2: task unknown, 0.5 / 0.5 on e1 and e2.
  TopK t;
  t.k = 2;
  t.ids = {1, 0, 2, 0, 1, 2};
  t.weights = {0.7f, 0.3f, 0.6f, 0.4f, 0.5f, 0.5f};
  const RoutingStats s = routing_stats(t, 3, {1, 0, -1});
  EXPECT_EQ(s.rows_with_task, 2);
  EXPECT_DOUBLE_EQ(s.accuracy, 0.5);
  EXPECT_NEAR(s.correct_mass, (0.7 + 0.4) / 2, 1e-7);
  EXPECT_NEAR(s.load[0], 0.7 / 3, 1e-7);
  EXPECT_NEAR(s.load[1], 1.2 / 3, 1e-7);
  EXPECT_NEAR(s.load[2], 1.1 / 3, 1e-7);
  auto H = [](double a, double b) { return -a * std::log(a) - b * std::log(b); };
  EXPECT_NEAR(s.entropy, (H(0.7, 0.3) + H(0.6, 0.4) + H(0.5, 0.5)) / 3, 1e-6);
  // Uniform routing has the largest entropy, log E; task routing zero.
  EXPECT_NEAR(routing_stats(uniform_route(3, 4), 4).entropy, std::log(4.0), 1e-6);
  EXPECT_EQ(routing_stats(task_route({0, 1}, 2), 2, {0, 1}).entropy, 0.0);
  EXPECT_EQ(routing_stats(task_route({0, 1}, 2), 2, {0, 1}).accuracy, 1.0);
  EXPECT_THROW(routing_stats(t, 3, {1}), Error);
}

}  // namespace
}  // namespace tessera::routing
