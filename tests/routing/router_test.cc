// Routers' shared pieces: top-k softmax by hand, Arrow's scores, experts of
// different rank and α stacked exactly, and a routed Linear against the
// mixture computed densely in double.
#include "routing/router.h"

#include <gtest/gtest.h>

#include <cmath>

#include "routing/arrow.h"
#include "runtime/common/rng.h"
#include "runtime/nn/parameters.h"
#include "tests/testing.h"

namespace tessera::routing {
namespace {

using adapters::LoraFactors;

TEST(TopKSoftmax, KeepsTheKLargestAndSoftmaxesOnlyThose) {
  // Row 0: 1, 0, 0.6 → experts 0 and 2, softmax(1, 0.6); row 1 ties 0.5/0.5
  // → the lower id first.
  const TopK t = top_k_softmax({1.0f, 0.0f, 0.6f, 0.5f, 0.2f, 0.5f}, 2, 3, 2, 1.0f);
  EXPECT_EQ(t.ids, (std::vector<int32_t>{0, 2, 0, 2}));
  const double e = std::exp(0.4);
  EXPECT_NEAR(t.weights[0], e / (e + 1), 1e-7);
  EXPECT_NEAR(t.weights[1], 1 / (e + 1), 1e-7);
  EXPECT_NEAR(t.weights[2], 0.5, 1e-7);
  // Temperature 2 halves the gap; k = E keeps all; k = 1 gives weight 1.
  const TopK t2 = top_k_softmax({1.0f, 0.0f, 0.6f}, 1, 3, 2, 2.0f);
  EXPECT_NEAR(t2.weights[0], std::exp(0.2) / (std::exp(0.2) + 1), 1e-7);
  EXPECT_EQ(top_k_softmax({1.0f, 0.0f, 0.6f}, 1, 3, 3, 1.0f).ids, (std::vector<int32_t>{0, 2, 1}));
  EXPECT_EQ(top_k_softmax({3.0f}, 1, 1, 1, 1.0f).weights, std::vector<float>{1.0f});
  EXPECT_NE(testing::error_of([] {
              top_k_softmax({1, 2}, 1, 2, 3, 1.0f);
            }).find("top_k = 3: expected 1 to the number of experts (2)"),
            std::string::npos);
  EXPECT_NE(testing::error_of([] {
              top_k_softmax({1, 2}, 1, 2, 1, 0.0f);
            }).find("temperature"),
            std::string::npos);
}

TEST(ArrowRoute, ScoresAreAbsoluteDotsWithTheUnnormalisedInput) {
  // x rows (1, 0) and (0, −2); prototypes e0 = (1, 0), e1 = (0, 1), e2 = (0.6, 0.8).
  const Tensor x = Tensor::from_vector({1, 0, 0, -2}, {2, 2});
  const Tensor p = Tensor::from_vector({1, 0, 0, 1, 0.6f, 0.8f}, {3, 2});
  const TopK t = arrow_route(x, p, 2, 1.0f);
  EXPECT_EQ(t.ids, (std::vector<int32_t>{0, 2, 1, 2}));
  // Row 1: |−2·1| = 2 and |−2·0.8| = 1.6 (cosine would give 1 and 0.8).
  const double e = std::exp(0.4);
  EXPECT_NEAR(t.weights[2], e / (e + 1), 1e-6);
  EXPECT_NEAR(t.weights[0], e / (e + 1), 1e-6);  // 1 vs 0.6
  EXPECT_THROW(arrow_route(x, Tensor::zeros({3, 4}), 2, 1.0f), Error);
}

// Experts of rank 2 (α 4), 4 (α 4, rsLoRA-like scale) and 3 on one module.
std::vector<LoraFactors> experts(int64_t in, int64_t out, Rng& rng) {
  std::vector<LoraFactors> ex;
  for (auto [r, s] : {std::pair<int64_t, float>{2, 2.0f}, {4, 2.0f}, {3, 0.7f}}) {
    std::vector<float> a(static_cast<size_t>(r * in)), b(static_cast<size_t>(out * r));
    for (float& v : a) v = rng.normal(0.0f, 0.5f);
    for (float& v : b) v = rng.normal(0.0f, 0.5f);
    ex.push_back({Tensor::from_vector(a, {r, in}), Tensor::from_vector(b, {out, r}), s});
  }
  return ex;
}

// y = Wx + Σ_j w_j s_j B_j A_j x (merge-after) or with z = Σ_j w_j A_j x
// padded to the largest rank (merge-before), in double.
std::vector<double> dense(const std::vector<LoraFactors>& ex, const std::vector<float>& x,
                          const std::vector<float>& base, const TopK& t, int64_t N, int64_t in,
                          int64_t out, bool before) {
  std::vector<double> y(base.begin(), base.end());
  int64_t rmax = 0;
  for (const auto& f : ex) rmax = std::max(rmax, f.rank());
  for (int64_t n = 0; n < N; ++n) {
    std::vector<double> z(static_cast<size_t>(rmax), 0.0);
    for (int64_t j = 0; j < t.k; ++j) {
      const LoraFactors& f = ex[t.ids[n * t.k + j]];
      const double w = t.weights[n * t.k + j];
      std::vector<double> h(static_cast<size_t>(f.rank()), 0.0);
      for (int64_t i = 0; i < f.rank(); ++i)
        for (int64_t c = 0; c < in; ++c) h[i] += double(f.A.data()[i * in + c]) * x[n * in + c];
      if (before) {
        for (int64_t i = 0; i < f.rank(); ++i) z[i] += w * h[i];
      } else {
        for (int64_t o = 0; o < out; ++o)
          for (int64_t i = 0; i < f.rank(); ++i)
            y[n * out + o] += w * f.scale * f.B.data()[o * f.rank() + i] * h[i];
      }
    }
    if (before)
      for (int64_t j = 0; j < t.k; ++j) {
        const LoraFactors& f = ex[t.ids[n * t.k + j]];
        const double w = t.weights[n * t.k + j];
        for (int64_t o = 0; o < out; ++o)
          for (int64_t i = 0; i < f.rank(); ++i)
            y[n * out + o] += w * f.scale * f.B.data()[o * f.rank() + i] * z[i];
      }
  }
  return y;
}

TEST(RoutedLora, MixesExpertsOfDifferentRankAndScaleExactlyInBothModes) {
  Rng rng(7);
  const int64_t N = 5, in = 6, out = 4;
  const std::vector<LoraFactors> ex = experts(in, out, rng);
  nn::ParameterSet ps;
  nn::Linear lin(ps, "m", in, out, true, false, rng, nn::Init::Normal, 0.5f);
  std::vector<float> xv(static_cast<size_t>(N * in));
  for (float& v : xv) v = rng.normal();
  const Tensor x = Tensor::from_vector(xv, {N, in});
  const std::vector<float> base = lin.forward(x).to_vector();
  std::vector<Tensor> protos;
  std::vector<float> pv;
  for (const auto& f : ex)
    for (float v : arrow_prototype(f)) pv.push_back(v);
  const Tensor P = Tensor::from_vector(pv, {3, in});
  for (Combine c : {Combine::MergeAfter, Combine::MergeBefore}) {
    auto slot = std::make_shared<RoutedLora>(
        stack_experts(ex), [&](const Tensor& in_x) { return arrow_route(in_x, P, 2, 1.0f); }, c);
    lin.set_adapter(slot);
    const std::vector<float> y = lin.forward(x).to_vector();
    const std::vector<double> want =
        dense(ex, xv, base, slot->last(), N, in, out, c == Combine::MergeBefore);
    for (size_t i = 0; i < y.size(); ++i)
      EXPECT_NEAR(y[i], want[i], 1e-5 * (1 + std::abs(want[i]))) << combine_names().name(c);
    for (int64_t n = 0; n < N; ++n)
      EXPECT_NEAR(slot->last().weights[n * 2] + slot->last().weights[n * 2 + 1], 1.0f, 1e-6);
  }
  // k = 1: both modes are the chosen expert alone, y = Wx + s B A x.
  std::vector<std::vector<float>> k1;
  for (Combine c : {Combine::MergeAfter, Combine::MergeBefore}) {
    auto slot = std::make_shared<RoutedLora>(
        stack_experts(ex), [&](const Tensor& in_x) { return arrow_route(in_x, P, 1, 1.0f); }, c);
    lin.set_adapter(slot);
    k1.push_back(lin.forward(x).to_vector());
    const TopK& t = slot->last();
    for (int64_t n = 0; n < N; ++n) {
      const LoraFactors& f = ex[t.ids[n]];
      const Tensor d = f.delta();  // s·B·A [out, in]
      for (int64_t o = 0; o < out; ++o) {
        double want = base[n * out + o];
        for (int64_t c2 = 0; c2 < in; ++c2) want += double(d.data()[o * in + c2]) * xv[n * in + c2];
        EXPECT_NEAR(k1.back()[n * out + o], want, 1e-5);
      }
    }
  }
  for (size_t i = 0; i < k1[0].size(); ++i) EXPECT_NEAR(k1[0][i], k1[1][i], 1e-6);
  lin.set_adapter(nullptr);
}

TEST(StackExperts, PadsExactlyAndRefusesMismatchedExperts) {
  Rng rng(3);
  std::vector<LoraFactors> ex = experts(6, 4, rng);
  const ExpertStack s = stack_experts(ex);
  EXPECT_EQ(s.A.shape(), (Shape{3, 4, 6}));
  EXPECT_EQ(s.B.shape(), (Shape{3, 4, 4}));
  EXPECT_EQ(s.scales, (std::vector<float>{2.0f, 2.0f, 0.7f}));
  EXPECT_EQ(s.A.data()[0 * 24 + 2 * 6], 0.0f);  // expert 0's padded rows
  ex.push_back({Tensor::zeros({2, 5}), Tensor::zeros({4, 2}), 1.0f});
  EXPECT_NE(testing::error_of([&] { stack_experts(ex); }).find("expert 3"), std::string::npos);
  EXPECT_THROW(stack_experts({}), Error);
}

}  // namespace
}  // namespace tessera::routing
