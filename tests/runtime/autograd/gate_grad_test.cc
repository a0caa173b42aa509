// The top-k gate and the gates' auxiliary losses on the tape: every gradient
// against central finite differences, the k = 1 behaviour of each weight mode
// (the renormalised gate gets no task gradient; Switch and straight-through
// do), and the gate trained end to end through the weighted LoRA gather.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "runtime/autograd/ops.h"
#include "runtime/autograd/tape.h"
#include "runtime/common/error.h"
#include "tests/testing.h"

namespace tessera {
namespace {

using ops::GateWeights;
using testing::expect_gradients_match;
using testing::randn;

// Logits whose entries in a row are at least `gap` apart, so that a finite
// difference step never changes the selection.
Tensor separated_logits(int64_t N, int64_t E, Rng& rng, float gap = 0.4f) {
  Tensor z = Tensor::empty({N, E});
  std::vector<int> order(static_cast<size_t>(E));
  for (int64_t t = 0; t < N; ++t) {
    std::iota(order.begin(), order.end(), 0);
    for (int64_t e = E - 1; e > 0; --e) std::swap(order[e], order[rng.next_u64() % (e + 1)]);
    for (int64_t e = 0; e < E; ++e)
      z.data()[t * E + e] = gap * order[e] - 1.0f + rng.uniform(-0.05f, 0.05f);
  }
  z.set_requires_grad(true);
  return z;
}

TEST(TopKGate, WeightsFollowTheirDefinition) {
  Rng rng(4);
  const int64_t N = 6, E = 5;
  Tensor z = separated_logits(N, E, rng);
  for (int64_t k : {1, 2, 3}) {
    const ops::Gate r = ops::top_k_gate(z, k, GateWeights::Renormalized);
    const ops::Gate s = ops::top_k_gate(z, k, GateWeights::Softmax);
    const ops::Gate st = ops::top_k_gate(z, k, GateWeights::StraightThrough);
    for (int64_t t = 0; t < N; ++t) {
      const float* row = z.data() + t * E;
      double denom = 0;
      for (int64_t e = 0; e < E; ++e) denom += std::exp(row[e]);
      std::vector<int> order(static_cast<size_t>(E));
      std::iota(order.begin(), order.end(), 0);
      std::sort(order.begin(), order.end(), [&](int a, int b) { return row[a] > row[b]; });
      double kept = 0;
      for (int64_t j = 0; j < k; ++j) kept += std::exp(row[order[j]]) / denom;
      double sum = 0;
      for (int64_t j = 0; j < k; ++j) {
        EXPECT_EQ(r.ids[t * k + j], order[j]);
        const double p = std::exp(row[order[j]]) / denom;
        EXPECT_NEAR(s.weights.data()[t * k + j], p, 1e-6);
        EXPECT_NEAR(r.weights.data()[t * k + j], p / kept, 1e-6);
        EXPECT_EQ(st.weights.data()[t * k + j], r.weights.data()[t * k + j]);
        sum += r.weights.data()[t * k + j];
      }
      EXPECT_NEAR(sum, 1.0, 1e-6);  // Σ_e w = 1 per token
    }
  }
}

TEST(TopKGate, GradientsMatchFiniteDifferencesInEveryMode) {
  Rng rng(5);
  for (int64_t k : {1, 2, 4}) {
    Tensor z = separated_logits(7, 5, rng);
    for (GateWeights m : {GateWeights::Renormalized, GateWeights::Softmax}) {
      SCOPED_TRACE(::testing::Message() << "k=" << k << " mode " << static_cast<int>(m));
      expect_gradients_match([&] { return ops::top_k_gate(z, k, m).weights; }, {z}, 1e-3f);
    }
  }
}

// d(Σ R ⊙ weights)/dz for one mode.
std::vector<float> gate_grad(const Tensor& z, int64_t k, GateWeights m) {
  z.clear_grad();
  Rng rng(8);
  Tensor R = randn({z.size(0), k}, rng);
  {
    autograd::Tape tape;
    tape.backward(ops::sum(ops::mul(ops::top_k_gate(z, k, m).weights, R)));
  }
  return z.grad().to_vector();
}

TEST(TopKGate, AtKOneOnlySwitchAndStraightThroughTrainTheGate) {
  Rng rng(6);
  Tensor z = separated_logits(5, 4, rng);
  for (float g : gate_grad(z, 1, GateWeights::Renormalized)) EXPECT_EQ(g, 0.0f);
  const std::vector<float> sw = gate_grad(z, 1, GateWeights::Softmax);
  EXPECT_GT(*std::max_element(sw.begin(), sw.end(),
                              [](float a, float b) { return std::abs(a) < std::abs(b); }),
            1e-3f);
  // Straight-through: Switch's gradient at any k, the renormalised forward.
  for (int64_t k : {1, 3})
    EXPECT_EQ(gate_grad(z, k, GateWeights::StraightThrough), gate_grad(z, k, GateWeights::Softmax));
  const ops::Gate st = ops::top_k_gate(z, 1, GateWeights::StraightThrough);
  for (int64_t t = 0; t < 5; ++t) EXPECT_EQ(st.weights.data()[t], 1.0f);
}

TEST(TopKGate, BiasSteersSelectionOnly) {
  Rng rng(7);
  const int64_t N = 4, E = 3;
  Tensor z = separated_logits(N, E, rng);
  // A large bias on expert 2 selects it first everywhere; its weight stays its
  // softmax probability from the logits alone.
  const ops::Gate g = ops::top_k_gate(z, 1, GateWeights::Softmax, {0.0f, 0.0f, 100.0f});
  for (int64_t t = 0; t < N; ++t) {
    EXPECT_EQ(g.ids[t], 2);
    double denom = 0;
    for (int64_t e = 0; e < E; ++e) denom += std::exp(z.data()[t * E + e]);
    EXPECT_NEAR(g.weights.data()[t], std::exp(z.data()[t * E + 2]) / denom, 1e-6);
  }
  EXPECT_THROW(ops::top_k_gate(z, 1, GateWeights::Softmax, {0.0f}), Error);
  EXPECT_THROW(ops::top_k_gate(z, 4), Error);
  EXPECT_THROW(ops::top_k_gate(z, 0), Error);
  EXPECT_THROW(ops::top_k_gate(Tensor::zeros({3}), 1), Error);
}

// A gated mixture of LoRA experts end to end: logits = x W_gᵀ, the gate, the
// gather. Every input — x, the gate W_g, the experts' A and B — gets its
// finite-difference gradient in both combine modes, and at k = 1 the Switch
// gate's gradient is not zero.
TEST(TopKGate, GatedMixtureTrainsGateAndExpertsThroughTheGather) {
  Rng rng(9);
  const int64_t N = 9, in = 6, out = 5, r = 3, E = 4;
  Tensor x = randn({N, in}, rng, 1.0f, true), Wg = randn({E, in}, rng, 1.0f, true);
  Tensor A = randn({E, r, in}, rng, 0.5f, true), B = randn({E, out, r}, rng, 0.5f, true);
  Tensor base = randn({N, out}, rng, 1.0f);
  const std::vector<float> scales = {1.0f, 0.5f, 2.0f, 0.25f};
  // The selection must not change under the finite-difference step: check
  // the gate's margins once, with this seed.
  for (int64_t k : {1, 2}) {
    for (ops::LoraMix mix : {ops::LoraMix::Output, ops::LoraMix::Parameter}) {
      SCOPED_TRACE(::testing::Message() << "k=" << k << " mix " << static_cast<int>(mix));
      auto f = [&] {
        const ops::Gate g = ops::top_k_gate(ops::matmul_nt(x, Wg), k, GateWeights::Softmax);
        return ops::lora_gather(x, base, A, B, g.ids, k, g.weights, scales, mix);
      };
      expect_gradients_match(f, {x, Wg, A, B}, 1e-3f, 3e-2f, 3e-3f);
    }
  }
  Wg.clear_grad();
  {
    autograd::Tape tape;
    const ops::Gate g = ops::top_k_gate(ops::matmul_nt(x, Wg), 1, GateWeights::Softmax);
    tape.backward(ops::sum(ops::lora_gather(x, base, A, B, g.ids, 1, g.weights, scales)));
  }
  double norm = 0;
  for (float v : Wg.grad().to_vector()) norm += double(v) * v;
  EXPECT_GT(norm, 1e-6);
}

TEST(GateLosses, GradientsMatchFiniteDifferences) {
  Rng rng(10);
  Tensor z = separated_logits(8, 5, rng);
  const std::vector<float> mask = {1, 1, 0, 1, 1, 0, 1, 1};
  expect_gradients_match([&] { return ops::load_balancing_loss(z, 2, mask); }, {z}, 1e-3f);
  expect_gradients_match([&] { return ops::router_z_loss(z); }, {z}, 1e-3f);
  expect_gradients_match([&] { return ops::gating_balance_loss(z, 1.0f); }, {z}, 1e-3f);
  expect_gradients_match([&] { return ops::gating_balance_loss(z, 2.5f); }, {z}, 1e-3f);
  // Scaled by the trainer's coefficient: the gradient scales with it.
  expect_gradients_match([&] { return ops::scale(ops::load_balancing_loss(z, 1), 0.01f); }, {z},
                         1e-3f);
}

TEST(GateLosses, GatingBalanceIsMinimalAtUniformUsage) {
  const int64_t E = 4;
  // Rows that each prefer a different expert equally: mean usage uniform, L =
  // E log E; one expert preferred by all rows: larger.
  Tensor even = Tensor::zeros({E, E}), skewed = Tensor::zeros({E, E});
  for (int64_t t = 0; t < E; ++t) {
    even.data()[t * E + t] = 2.0f;
    skewed.data()[t * E] = 2.0f;
  }
  EXPECT_NEAR(ops::gating_balance_loss(even).data()[0], E * std::log(double(E)), 1e-5);
  EXPECT_GT(ops::gating_balance_loss(skewed).data()[0], E * std::log(double(E)) + 0.5);
  EXPECT_THROW(ops::gating_balance_loss(even, 0.0f), Error);
  EXPECT_THROW(ops::load_balancing_loss(even, 5), Error);
  EXPECT_THROW(ops::load_balancing_loss(even, 1, {1, 0}), Error);
}

}  // namespace
}  // namespace tessera
