// The weighted top-k LoRA gather kernel (runtime/kernels/cpu/lora.h) through
// its op: values against a plain per-row loop over the slots, gradients to x,
// base_out, A, B and the weights against finite differences in both mixing
// modes, dropout with its mask replayed, and refusals of bad routing.
#include <gtest/gtest.h>

#include <optional>

#include "runtime/autograd/ops.h"
#include "runtime/common/error.h"
#include "tests/testing.h"

namespace tessera::ops {
namespace {

using testing::randn;

// The definition, one row and one slot at a time, in double.
std::vector<float> reference(const Tensor& x, const Tensor& base, const Tensor& A, const Tensor& B,
                             const std::vector<int32_t>& ids, int64_t k, const Tensor& w,
                             const std::vector<float>& s, LoraMix mix) {
  const int64_t N = x.size(0), in = x.size(1), out = B.size(1), r = A.size(1);
  const int64_t M = static_cast<int64_t>(ids.size()) / k, G = N / M;
  std::vector<float> y = base.to_vector();
  for (int64_t t = 0; t < N; ++t) {
    const int64_t g = t / G;
    std::vector<double> z(r, 0.0);
    for (int64_t j = 0; j < k; ++j) {
      const int32_t e = ids[g * k + j];
      if (e < 0) continue;
      const double wj = w.defined() ? w.data()[g * k + j] : 1.0;
      std::vector<double> h(r, 0.0);
      for (int64_t q = 0; q < r; ++q)
        for (int64_t c = 0; c < in; ++c)
          h[q] += A.data()[(e * r + q) * in + c] * x.data()[t * in + c];
      for (int64_t q = 0; q < r; ++q) z[q] += wj * h[q];
      if (mix == LoraMix::Parameter) continue;
      for (int64_t o = 0; o < out; ++o) {
        double v = 0.0;
        for (int64_t q = 0; q < r; ++q) v += B.data()[(e * out + o) * r + q] * h[q];
        y[t * out + o] += static_cast<float>(wj * s[e] * v);
      }
    }
    if (mix == LoraMix::Output) continue;
    for (int64_t j = 0; j < k; ++j) {
      const int32_t e = ids[g * k + j];
      if (e < 0) continue;
      const double wj = w.defined() ? w.data()[g * k + j] : 1.0;
      for (int64_t o = 0; o < out; ++o) {
        double v = 0.0;
        for (int64_t q = 0; q < r; ++q) v += B.data()[(e * out + o) * r + q] * z[q];
        y[t * out + o] += static_cast<float>(wj * s[e] * v);
      }
    }
  }
  return y;
}

struct Case {
  int64_t N, k;
  std::vector<int32_t> ids;
};

// Per-row single experts with the base (-1) mixed in; per-group (3 rows each);
// one expert with more rows than a kernel block (64); two and three weighted
// experts per token and per example, with empty slots and an expert repeated
// in two slots of one row.
std::vector<Case> cases() {
  std::vector<int32_t> many(70 * 2);
  for (int64_t t = 0; t < 70; ++t) many[t * 2] = 1, many[t * 2 + 1] = static_cast<int32_t>(t % 3);
  return {Case{6, 1, {0, 2, -1, 2, 1, 0}},          Case{9, 1, {1, -1, 1}},
          Case{70, 1, std::vector<int32_t>(70, 1)}, Case{5, 2, {0, 2, 1, -1, -1, -1, 2, 0, 1, 1}},
          Case{8, 3, {2, 0, 1, -1, 1, 2}},          Case{70, 2, many}};
}

TEST(LoraGather, ValuesMatchTheDefinitionInBothMixingModes) {
  for (LoraMix mix : {LoraMix::Output, LoraMix::Parameter})
    for (const Case& c : cases()) {
      Rng rng(11);
      const int64_t E = 3, r = 2, in = 5, out = 4, M = static_cast<int64_t>(c.ids.size()) / c.k;
      Tensor x = randn({c.N, in}, rng), base = randn({c.N, out}, rng);
      Tensor A = randn({E, r, in}, rng, 0.5f), B = randn({E, out, r}, rng, 0.5f);
      Tensor w = testing::uniform({M, c.k}, rng, 0.1f, 1.0f);
      std::vector<float> s = {0.5f, 2.0f, 1.5f};
      for (const Tensor& wt : {w, Tensor()}) {
        std::vector<float> got = lora_gather(x, base, A, B, c.ids, c.k, wt, s, mix).to_vector();
        EXPECT_LT(testing::rel_err(got, reference(x, base, A, B, c.ids, c.k, wt, s, mix)), 1e-6)
            << "N " << c.N << " k " << c.k << (wt.defined() ? " weighted" : "");
      }
    }
}

TEST(LoraGather, ModesDifferWithTwoExpertsAndAgreeWithOne) {
  Rng rng(12);
  Tensor x = randn({4, 5}, rng), base = randn({4, 3}, rng);
  Tensor A = randn({2, 2, 5}, rng), B = randn({2, 3, 2}, rng);
  Tensor w = testing::uniform({4, 2}, rng, 0.2f, 1.0f);
  const std::vector<int32_t> two = {0, 1, 1, 0, 0, 1, 1, 0};
  auto out2 = lora_gather(x, base, A, B, two, 2, w, {1.0f, 2.0f}, LoraMix::Output).to_vector();
  auto par2 = lora_gather(x, base, A, B, two, 2, w, {1.0f, 2.0f}, LoraMix::Parameter).to_vector();
  EXPECT_GT(testing::rel_err(out2, par2), 1e-2);  // cross terms B_0 A_1 x
  const std::vector<int32_t> one = {0, 1, 1, 0};
  auto out1 = lora_gather(x, base, A, B, one, 1, Tensor(), {1.0f, 2.0f}).to_vector();
  auto par1 =
      lora_gather(x, base, A, B, one, 1, Tensor(), {1.0f, 2.0f}, LoraMix::Parameter).to_vector();
  EXPECT_LT(testing::rel_err(out1, par1), 1e-6);
}

TEST(LoraGather, GradientsMatchFiniteDifferences) {
  for (LoraMix mix : {LoraMix::Output, LoraMix::Parameter})
    for (const Case& c : cases()) {
      Rng rng(1);
      const int64_t E = 3, r = 2, in = 5, out = 4, M = static_cast<int64_t>(c.ids.size()) / c.k;
      Tensor x = randn({c.N, in}, rng, 1.0f, true);
      Tensor base = randn({c.N, out}, rng, 1.0f, true);
      Tensor A = randn({E, r, in}, rng, 0.5f, true), B = randn({E, out, r}, rng, 0.5f, true);
      Tensor w = testing::uniform({M, c.k}, rng, 0.1f, 1.0f, true);
      std::vector<float> s = {0.5f, 2.0f, 1.5f};
      SCOPED_TRACE(::testing::Message() << "N " << c.N << " k " << c.k << " mix "
                                        << (mix == LoraMix::Output ? "output" : "parameter"));
      testing::expect_gradients_match(
          [&] { return lora_gather(x, base, A, B, c.ids, c.k, w, s, mix); }, {x, base, A, B, w});
      // Unweighted (the single-adapter and mixed-batch path).
      testing::expect_gradients_match(
          [&] { return lora_gather(x, base, A, B, c.ids, c.k, Tensor(), s, mix); },
          {x, base, A, B});
    }
}

TEST(LoraGather, GradientsThroughDropoutWithItsMaskReplayed) {
  // Each evaluation draws the same mask (the generator restarts), as one
  // training step's forward and backward see one mask. Dropout acts only while
  // a tape records, so the finite-difference evaluations run under a tape of
  // their own.
  for (LoraMix mix : {LoraMix::Output, LoraMix::Parameter}) {
    Rng rng(3);
    Tensor x = randn({6, 5}, rng, 1.0f, true), base = randn({6, 4}, rng);
    Tensor A = randn({3, 2, 5}, rng, 0.5f, true), B = randn({3, 4, 2}, rng, 0.5f, true);
    Tensor w = testing::uniform({6, 2}, rng, 0.1f, 1.0f, true);
    const std::vector<int32_t> ids = {0, 1, 2, -1, 1, 2, 0, 0, 2, 1, -1, -1};
    int zeros = 0;
    auto f = [&] {
      std::optional<autograd::Tape> own;
      if (!autograd::Tape::current()) own.emplace();
      Rng mask(42);
      Tensor xd = dropout(x, 0.3f, mask);
      zeros = 0;
      for (int64_t i = 0; i < xd.numel(); ++i) zeros += xd.data()[i] == 0.0f;
      return lora_gather(xd, base, A, B, ids, 2, w, {1.0f, 0.5f, 2.0f}, mix);
    };
    testing::expect_gradients_match(f, {x, A, B, w});
    EXPECT_GT(zeros, 0) << "the mask dropped nothing: the case tests no replay";
  }
}

TEST(LoraGather, IsBitIdenticalAcrossCalls) {
  Rng rng(4);
  const Case c = cases().back();
  Tensor x = randn({c.N, 5}, rng), base = randn({c.N, 4}, rng);
  Tensor A = randn({3, 2, 5}, rng, 0.5f, true), B = randn({3, 4, 2}, rng, 0.5f, true);
  Tensor w = testing::uniform({c.N, 2}, rng, 0.1f, 1.0f, true);
  std::vector<std::vector<float>> runs;
  for (int i = 0; i < 2; ++i) {
    A.clear_grad(), B.clear_grad(), w.clear_grad();
    autograd::Tape tape;
    Tensor y = lora_gather(x, base, A, B, c.ids, 2, w, {1, 1, 1}, LoraMix::Parameter);
    tape.backward(sum(mul(y, y)));
    std::vector<float> v = y.to_vector();
    for (const Tensor* t : {&A, &B, &w}) {
      auto g = t->grad().to_vector();
      v.insert(v.end(), g.begin(), g.end());
    }
    runs.push_back(v);
  }
  EXPECT_EQ(runs[0], runs[1]);
}

TEST(LoraGather, InPlaceWritesIntoTheBaseOutputWithTheSameValuesAndGradients) {
  Rng rng(6);
  const std::vector<int32_t> ids = {0, 2, 1, -1, 2, 2};
  Tensor x = randn({6, 5}, rng, 1.0f, true);
  Tensor A = randn({3, 2, 5}, rng, 0.5f, true), B = randn({3, 4, 2}, rng, 0.5f, true);
  Tensor w = testing::uniform({3, 2}, rng, 0.1f, 1.0f, true);
  const Tensor base0 = randn({6, 4}, rng);
  const std::vector<float> s = {1.0f, 0.5f, 2.0f};
  const std::vector<float> want =
      lora_gather(x, base0, A, B, ids, 2, w, s, LoraMix::Output).to_vector();
  Tensor base = base0.clone();
  Tensor y = lora_gather(x, base, A, B, ids, 2, w, s, LoraMix::Output, true);
  EXPECT_EQ(y.to_vector(), want);
  EXPECT_EQ(base.to_vector(), want) << "in place: the base output's buffer holds the result";
  // Gradients as the copying op's (base_out needs none: it is fresh each time).
  testing::expect_gradients_match(
      [&] {
        Tensor b = base0.clone();
        return lora_gather(x, b, A, B, ids, 2, w, s, LoraMix::Output, true);
      },
      {x, A, B, w});
}

TEST(LoraGather, RefusesBadRouting) {
  Rng rng(2);
  Tensor x = randn({4, 3}, rng), base = randn({4, 2}, rng);
  Tensor A = randn({2, 1, 3}, rng), B = randn({2, 2, 1}, rng);
  const std::vector<float> s = {1, 1};
  EXPECT_THROW(lora_gather(x, base, A, B, {0, 2, 0, 0}, 1, Tensor(), s), Error);  // id range
  EXPECT_THROW(lora_gather(x, base, A, B, {0, 1, 0}, 1, Tensor(), s),
               Error);                                                        // 3 does not divide 4
  EXPECT_THROW(lora_gather(x, base, A, B, {0, 1}, 1, Tensor(), {1}), Error);  // scales per expert
  EXPECT_THROW(lora_gather(x, base, B, A, {0, 1}, 1, Tensor(), s), Error);    // shapes
  EXPECT_THROW(lora_gather(x, base, A, B, {0, 1, 1}, 2, Tensor(), s), Error);  // not k per group
  EXPECT_THROW(lora_gather(x, base, A, B, {0, 1, 1, 0}, 2, Tensor::zeros({2, 1}), s),
               Error);                                                      // weights not [M, k]
  EXPECT_THROW(lora_gather(x, base, A, B, {0, 1}, 0, Tensor(), s), Error);  // k = 0
}

}  // namespace
}  // namespace tessera::ops
