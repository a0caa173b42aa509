// Every differentiable op against central finite differences, over several
// shapes including size 1 and sizes that are not multiples of the SIMD width.
#include <gtest/gtest.h>

#include "runtime/autograd/ops.h"
#include "runtime/common/error.h"
#include "runtime/kernels/cpu/attention.h"
#include "tests/testing.h"

namespace tessera {
namespace {

using testing::expect_gradients_match;
using testing::randn;
using testing::uniform;

struct LinearCase {
  int64_t N, in, out;
  bool bias, conv1d;
};

class LinearGrad : public ::testing::TestWithParam<LinearCase> {};

TEST_P(LinearGrad, MatchesFiniteDifferences) {
  auto c = GetParam();
  Rng rng(1);
  Tensor x = randn({c.N, c.in}, rng, 1.0f, true);
  Tensor w = randn(c.conv1d ? Shape{c.in, c.out} : Shape{c.out, c.in}, rng, 0.5f, true);
  Tensor b = c.bias ? randn({c.out}, rng, 0.5f, true) : Tensor();
  std::vector<Tensor> in = {x, w};
  if (c.bias) in.push_back(b);
  expect_gradients_match([&] { return ops::linear(x, w, b, c.conv1d); }, in);
}

INSTANTIATE_TEST_SUITE_P(Shapes, LinearGrad,
                         ::testing::Values(LinearCase{1, 1, 1, true, false},
                                           LinearCase{3, 7, 5, true, false},
                                           LinearCase{4, 9, 17, false, false},
                                           LinearCase{2, 13, 3, true, true},
                                           LinearCase{5, 8, 16, false, true}),
                         [](const auto& info) {
                           const LinearCase& c = info.param;
                           return str("N", c.N, "_in", c.in, "_out", c.out, c.bias ? "_bias" : "",
                                      c.conv1d ? "_conv1d" : "");
                         });

TEST(LinearGrad, FrozenWeightGetsNoGradientAndNoWork) {
  Rng rng(2);
  Tensor x = randn({4, 6}, rng, 1.0f, true);
  Tensor w = randn({5, 6}, rng, 1.0f, false);  // frozen base weight
  Tensor b = randn({5}, rng, 1.0f, false);
  expect_gradients_match([&] { return ops::linear(x, w, b); }, {x});
  EXPECT_FALSE(w.grad().defined());
  EXPECT_FALSE(b.grad().defined());
}

TEST(LinearGrad, NothingRecordedWhenNothingNeedsGrad) {
  Rng rng(3);
  Tensor x = randn({4, 6}, rng), w = randn({5, 6}, rng);
  autograd::Tape tape;
  Tensor y = ops::linear(x, w, Tensor());
  EXPECT_FALSE(y.requires_grad());
  EXPECT_EQ(tape.size(), 0u);
}

TEST(ElementwiseGrad, AddSameShapeAndBroadcast) {
  Rng rng(4);
  for (Shape s : {Shape{1}, Shape{3, 5}, Shape{2, 3, 7}}) {
    Tensor a = randn(s, rng, 1.0f, true);
    Tensor b = randn(s, rng, 1.0f, true);
    expect_gradients_match([&] { return ops::add(a, b); }, {a, b});
    Shape tail(s.end() - 1, s.end());
    Tensor c = randn(tail, rng, 1.0f, true);
    expect_gradients_match([&] { return ops::add(a, c); }, {a, c});
  }
}

TEST(ElementwiseGrad, MulScaleSum) {
  Rng rng(5);
  for (Shape s : {Shape{1}, Shape{13}, Shape{4, 9}}) {
    Tensor a = randn(s, rng, 1.0f, true), b = randn(s, rng, 1.0f, true);
    expect_gradients_match([&] { return ops::mul(a, b); }, {a, b});
    expect_gradients_match([&] { return ops::scale(a, -0.7f); }, {a});
    expect_gradients_match([&] { return ops::sum(a); }, {a});
  }
}

std::string act_name(ops::Act a) {
  switch (a) {
    case ops::Act::Gelu:
      return "gelu";
    case ops::Act::GeluTanh:
      return "gelu_tanh";
    case ops::Act::Relu:
      return "relu";
    case ops::Act::Silu:
      return "silu";
  }
  return "?";
}

class ActivationGrad : public ::testing::TestWithParam<ops::Act> {};

TEST_P(ActivationGrad, MatchesFiniteDifferences) {
  Rng rng(6);
  for (Shape s : {Shape{1}, Shape{7}, Shape{3, 11}, Shape{2, 40}}) {
    // Keep ReLU inputs away from its kink where the derivative jumps.
    Tensor x = randn(s, rng, 2.0f, true);
    if (GetParam() == ops::Act::Relu)
      for (int64_t i = 0; i < x.numel(); ++i)
        if (std::fabs(x.data()[i]) < 0.05f) x.data()[i] = 0.3f;
    expect_gradients_match([&] { return ops::activation(x, GetParam()); }, {x});
  }
}

INSTANTIATE_TEST_SUITE_P(All, ActivationGrad,
                         ::testing::Values(ops::Act::Gelu, ops::Act::GeluTanh, ops::Act::Relu,
                                           ops::Act::Silu),
                         [](const auto& info) { return act_name(info.param); });

TEST(ActivationValues, MatchLibm) {
  // The vectorised erf/tanh/exp used by the kernels against libm.
  Rng rng(7);
  Tensor x = uniform({4001}, rng, -9.0f, 9.0f);
  for (auto act : {ops::Act::Gelu, ops::Act::GeluTanh, ops::Act::Silu}) {
    Tensor y = ops::activation(x, act);
    for (int64_t i = 0; i < x.numel(); ++i) {
      double v = x.data()[i], ref;
      if (act == ops::Act::Gelu)
        ref = 0.5 * v * (1.0 + std::erf(v / std::sqrt(2.0)));
      else if (act == ops::Act::GeluTanh)
        ref = 0.5 * v * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (v + 0.044715 * v * v * v)));
      else
        ref = v / (1.0 + std::exp(-v));
      ASSERT_NEAR(y.data()[i], ref, 2e-6 * std::max(1.0, std::fabs(ref))) << "x = " << v;
    }
  }
}

TEST(ElementwiseGrad, MulBroadcastDivRowNormTranspose) {
  Rng rng(21);
  Tensor a = randn({5, 7}, rng, 1.0f, true), v = randn({7}, rng, 1.0f, true);
  expect_gradients_match([&] { return ops::mul(a, v); }, {a, v});
  Tensor a3 = randn({2, 3, 4}, rng, 1.0f, true), v2 = randn({3, 4}, rng, 1.0f, true);
  expect_gradients_match([&] { return ops::mul(a3, v2); }, {a3, v2});
  Tensor num = randn({6}, rng, 1.0f, true), den = uniform({6}, rng, 0.5f, 2.0f, true);
  expect_gradients_match([&] { return ops::div(num, den); }, {num, den});
  Tensor m = randn({4, 9}, rng, 1.0f, true);
  expect_gradients_match([&] { return ops::row_norm(m); }, {m});
  Tensor one = randn({1, 1}, rng, 1.0f, true);
  expect_gradients_match([&] { return ops::transpose(m); }, {m});
  expect_gradients_match([&] { return ops::row_norm(one); }, {one});
  // Hand-computed: ‖(3, 4)‖ = 5; [[1,2],[3,4]]ᵀ = [[1,3],[2,4]].
  EXPECT_FLOAT_EQ(ops::row_norm(Tensor::from_vector({3, 4}, {1, 2})).item(), 5.0f);
  EXPECT_EQ(ops::transpose(Tensor::from_vector({1, 2, 3, 4}, {2, 2})).to_vector(),
            (std::vector<float>{1, 3, 2, 4}));
  EXPECT_THROW(ops::mul(a, randn({5}, rng)), Error);
}

TEST(ShapeGrad, SliceAndConcatRows) {
  Rng rng(23);
  Tensor x = randn({5, 3}, rng, 1.0f, true), y = randn({2, 3}, rng, 1.0f, true);
  expect_gradients_match([&] { return ops::slice_rows(x, 1, 4); }, {x});
  expect_gradients_match(
      [&] {
        return ops::concat_rows({y, ops::slice_rows(x, 0, 2), y});
      },
      {x, y});
  EXPECT_EQ(ops::slice_rows(Tensor::from_vector({1, 2, 3, 4}, {2, 2}), 1, 2).to_vector(),
            (std::vector<float>{3, 4}));
  EXPECT_THROW(ops::slice_rows(x, 3, 6), Error);
  EXPECT_THROW(ops::concat_rows({x, randn({2, 4}, rng)}), Error);
}

TEST(ElementwiseGrad, DropoutMasksAndRescalesOnlyWhileRecording) {
  Rng rng(22);
  Tensor x = Tensor::full({10000}, 1.0f);
  x.set_requires_grad(true);
  Rng drng(5);
  EXPECT_TRUE(ops::dropout(x, 0.25f, drng).same(x));  // no tape: evaluation, identity
  autograd::Tape tape;
  Tensor y = ops::dropout(x, 0.25f, drng);
  int64_t zeros = 0;
  for (float v : y.to_vector()) {
    if (v == 0.0f)
      ++zeros;
    else
      EXPECT_FLOAT_EQ(v, 1.0f / 0.75f);
  }
  EXPECT_NEAR(zeros / 10000.0, 0.25, 0.02);
  tape.backward(ops::sum(y));
  // The gradient passes exactly where the forward kept the element.
  for (int64_t i = 0; i < 10000; ++i) EXPECT_EQ(x.grad().data()[i], y.data()[i]);
  EXPECT_THROW(ops::dropout(x, 1.0f, drng), Error);
}

TEST(ElementwiseGrad, SwiGLU) {
  Rng rng(8);
  for (Shape s : {Shape{1}, Shape{5, 7}}) {
    Tensor g = randn(s, rng, 1.5f, true), u = randn(s, rng, 1.0f, true);
    expect_gradients_match([&] { return ops::swiglu(g, u); }, {g, u});
  }
}

TEST(NormGrad, LayerNormWithAndWithoutBias) {
  Rng rng(9);
  for (auto [N, C] : {std::pair<int64_t, int64_t>{1, 1}, {1, 5}, {3, 8}, {4, 13}}) {
    Tensor x = randn({N, C}, rng, 1.0f, true);
    Tensor w = randn({C}, rng, 0.5f, true), b = randn({C}, rng, 0.5f, true);
    if (C > 1)
      expect_gradients_match([&] { return ops::layernorm(x, w, b, 1e-5f); }, {x, w, b}, 1e-2f,
                             3e-2f, 3e-3f);
    expect_gradients_match([&] { return ops::layernorm(x, w, Tensor(), 1e-5f); }, {w});
  }
}

TEST(NormGrad, RMSNorm) {
  Rng rng(10);
  for (auto [N, C] : {std::pair<int64_t, int64_t>{1, 1}, {2, 7}, {3, 16}}) {
    Tensor x = randn({N, C}, rng, 1.0f, true), w = randn({C}, rng, 0.5f, true);
    expect_gradients_match([&] { return ops::rmsnorm(x, w, 1e-6f); }, {x, w});
  }
}

TEST(ShapeGrad, ReshapeCarriesGradient) {
  Rng rng(11);
  Tensor x = randn({2, 6}, rng, 1.0f, true), w = randn({3, 4}, rng, 1.0f, true);
  expect_gradients_match([&] { return ops::mul(ops::reshape(x, {3, 4}), w); }, {x, w});
}

TEST(EmbeddingGrad, RepeatedIdsAccumulate) {
  Rng rng(12);
  Tensor table = randn({5, 3}, rng, 1.0f, true);
  std::vector<int32_t> ids = {4, 0, 4, 2, 4};
  expect_gradients_match([&] { return ops::embedding(ids, table); }, {table});
  EXPECT_THROW(ops::embedding({5}, table), Error);
  EXPECT_THROW(ops::embedding({-1}, table), Error);
}

TEST(LossGrad, CrossEntropyWithIgnoredRows) {
  Rng rng(13);
  for (auto [N, V] : {std::pair<int64_t, int64_t>{1, 2}, {4, 7}, {6, 33}}) {
    Tensor logits = randn({N, V}, rng, 2.0f, true);
    std::vector<int32_t> t(N);
    for (int64_t i = 0; i < N; ++i) t[i] = static_cast<int32_t>(rng.below(V));
    if (N > 2) t[1] = -1;
    expect_gradients_match([&] { return ops::cross_entropy(logits, t); }, {logits});
  }
}

TEST(LossValue, CrossEntropyHandComputed) {
  // Two rows, logits [0, ln 3] → p = [1/4, 3/4]; targets 1 and 0.
  Tensor logits = Tensor::from_vector({0.0f, std::log(3.0f), 0.0f, std::log(3.0f)}, {2, 2});
  float loss = ops::cross_entropy(logits, {1, 0}).item();
  EXPECT_NEAR(loss, 0.5 * (-std::log(0.75) - std::log(0.25)), 1e-6);
  EXPECT_THROW(ops::cross_entropy(logits, {2, 0}), Error);
  EXPECT_THROW(ops::cross_entropy(logits, {0}), Error);
}

struct AttnCase {
  int64_t B, T, Hq, Hkv, D;
};

class AttentionGrad : public ::testing::TestWithParam<AttnCase> {};

TEST_P(AttentionGrad, SeparateQKV) {
  auto c = GetParam();
  Rng rng(14);
  Tensor q = randn({c.B * c.T, c.Hq * c.D}, rng, 1.0f, true);
  Tensor k = randn({c.B * c.T, c.Hkv * c.D}, rng, 1.0f, true);
  Tensor v = randn({c.B * c.T, c.Hkv * c.D}, rng, 1.0f, true);
  expect_gradients_match([&] { return ops::attention(q, k, v, c.B, c.T, c.Hq, c.Hkv); }, {q, k, v});
}

TEST_P(AttentionGrad, PackedQKV) {
  auto c = GetParam();
  Rng rng(15);
  Tensor qkv = randn({c.B * c.T, (c.Hq + 2 * c.Hkv) * c.D}, rng, 1.0f, true);
  expect_gradients_match([&] { return ops::attention_packed(qkv, c.B, c.T, c.Hq, c.Hkv); }, {qkv});
}

INSTANTIATE_TEST_SUITE_P(Shapes, AttentionGrad,
                         ::testing::Values(AttnCase{1, 1, 1, 1, 1}, AttnCase{1, 5, 2, 2, 3},
                                           AttnCase{2, 4, 4, 2, 5}, AttnCase{2, 6, 3, 1, 8},
                                           AttnCase{1, 9, 2, 1, 4}),
                         [](const auto& info) {
                           const AttnCase& c = info.param;
                           return str("B", c.B, "_T", c.T, "_Hq", c.Hq, "_Hkv", c.Hkv, "_D", c.D);
                         });

TEST(AttentionValues, CausalAndHandComputed) {
  // One head, D = 1: q = k = 1 for all positions → uniform weights over the prefix.
  const int64_t T = 3;
  Tensor q = Tensor::full({T, 1}, 1.0f), k = Tensor::full({T, 1}, 1.0f);
  Tensor v = Tensor::from_vector({1.0f, 2.0f, 6.0f}, {T, 1});
  Tensor o = ops::attention(q, k, v, 1, T, 1, 1);
  EXPECT_FLOAT_EQ(o.data()[0], 1.0f);
  EXPECT_FLOAT_EQ(o.data()[1], 1.5f);
  EXPECT_FLOAT_EQ(o.data()[2], 3.0f);
  EXPECT_THROW(ops::attention(q, k, v, 1, T, 3, 2), Error);  // heads must group evenly
}

// Partial rotary (Phi-3's partial_rotary_factor): the first R dims of each
// head rotate, the rest pass through unchanged; gradients by finite differences.
TEST(RopeGrad, PartialRotaryRotatesTheFirstDimsOnly) {
  Rng rng(17);
  const int64_t B = 2, T = 4, H = 2, D = 8, R = 6;
  Tensor cos = Tensor::empty({T, R / 2}), sin = Tensor::empty({T, R / 2});
  kernels::cpu::rope_tables(cos.data(), sin.data(), T, R, 10000.0f);
  Tensor x = randn({B * T, H * D}, rng, 1.0f, true);
  expect_gradients_match([&] { return ops::rope(x, cos, sin, B, T, H, R); }, {x});
  Tensor y = ops::rope(x, cos, sin, B, T, H, R);
  Tensor full = ops::rope(ops::slice_cols(x, 0, R), cos, sin, B, T, 1);  // head 0's first R dims
  for (int64_t r = 0; r < B * T; ++r) {
    for (int64_t i = 0; i < R; ++i)
      EXPECT_FLOAT_EQ(y.data()[r * H * D + i], full.data()[r * R + i]);
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = R; i < D; ++i)
        EXPECT_EQ(y.data()[r * H * D + h * D + i], x.data()[r * H * D + h * D + i]);
  }
  EXPECT_THROW(ops::rope(x, cos, sin, B, T, H, 7), Error);  // odd
}

TEST(RopeGrad, MatchesFiniteDifferencesAndPreservesNorm) {
  Rng rng(16);
  const int64_t B = 2, T = 5, H = 3, D = 6;
  Tensor cos = Tensor::empty({T, D / 2}), sin = Tensor::empty({T, D / 2});
  kernels::cpu::rope_tables(cos.data(), sin.data(), T, D, 10000.0f);
  Tensor x = randn({B * T, H * D}, rng, 1.0f, true);
  expect_gradients_match([&] { return ops::rope(x, cos, sin, B, T, H); }, {x});
  Tensor y = ops::rope(x, cos, sin, B, T, H);
  for (int64_t r = 0; r < B * T * H; ++r) {
    double nx = 0, ny = 0;
    for (int64_t i = 0; i < D; ++i) {
      nx += x.data()[r * D + i] * x.data()[r * D + i];
      ny += y.data()[r * D + i] * y.data()[r * D + i];
    }
    EXPECT_NEAR(nx, ny, 1e-4 * nx);  // a rotation keeps the norm
  }
  // Position 0 is the identity.
  for (int64_t i = 0; i < H * D; ++i) EXPECT_FLOAT_EQ(y.data()[i], x.data()[i]);
}

TEST(OpErrors, ShapeMismatchesNameTheOp) {
  Rng rng(17);
  Tensor x = randn({2, 3}, rng), w = randn({4, 5}, rng);
  try {
    ops::linear(x, w, Tensor());
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("linear"), std::string::npos) << e.what();
  }
  EXPECT_THROW(ops::add(x, randn({2}, rng)), Error);
  EXPECT_THROW(ops::mul(x, randn({3, 2}, rng)), Error);
}

// Gradients that pass through unchanged hand their buffer on (pass_grad):
// one tensor reshaped twice and used directly, an add whose first input is
// used again after it, and an add of a tensor to itself — each gradient must
// still be the sum of every use.
TEST(PassGrad, HandedOnBuffersStillSumEveryUse) {
  Rng rng(21);
  Tensor x = randn({4, 6}, rng, 1.0f, true), b = randn({4, 6}, rng, 1.0f, true);
  testing::expect_gradients_match(
      [&] {
        Tensor y = ops::reshape(x, {6, 4}), z = ops::reshape(x, {24});
        Tensor s = ops::add(x, b);  // x and b get dout: b a copy, x the buffer
        Tensor again = ops::mul(x, x);
        return ops::concat_rows(
            {ops::reshape(y, {4, 6}), ops::reshape(z, {4, 6}), s, again, ops::add(b, b)});
      },
      {x, b});
}

}  // namespace
}  // namespace tessera
