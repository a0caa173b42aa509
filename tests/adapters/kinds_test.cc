// DoRA, VeRA, (IA)³ and bottleneck adapters: finite-difference gradients,
// hand-computed forwards, merge/unmerge and hot == merged, detach restores the
// base bit-exactly, placements, adapter dropout.
#include <gtest/gtest.h>

#include <cmath>

#include "adapters/kinds.h"
#include "adapters/lora.h"
#include "runtime/autograd/ops.h"
#include "runtime/common/error.h"
#include "runtime/nn/models.h"
#include "runtime/optim/optim.h"
#include "tests/testing.h"

namespace tessera::adapters {
namespace {

using testing::randn;

// Moves every trainable adapter tensor off its initial value, so gradients
// and merges are exercised away from the identity start.
void perturb(AdapterSet& set, Rng& rng, float std = 0.3f) {
  for (auto& p : set.params().all())
    if (p.tensor.requires_grad())
      for (int64_t i = 0; i < p.tensor.numel(); ++i) p.tensor.data()[i] += rng.normal(0.0f, std);
}

AdapterSpec spec_of(Kind k, int64_t r = 3) {
  AdapterSpec s(k, LoraConfig{r, 6.0f, false});
  s.feedforward = {"ff"};
  s.dora_exact_grad = true;
  return s;
}

struct KindCase {
  Kind kind;
  const char* module;  // "ff" selects (IA)³'s input scaling
};

class AdapterGrad : public ::testing::TestWithParam<KindCase> {};

TEST_P(AdapterGrad, AdapterAndInputGradientsMatchFiniteDifferences) {
  const KindCase c = GetParam();
  for (bool conv1d : {false, true}) {
    Rng rng(11);
    nn::ParameterSet ps;
    nn::Linear base(ps, c.module, 7, 5, true, conv1d, rng, nn::Init::Normal, 0.5f);
    AdapterSet set({&base}, ps, {c.module}, spec_of(c.kind), 2);
    perturb(set, rng);
    Tensor x = randn({4, 7}, rng, 1.0f, true);
    std::vector<Tensor> inputs = {x};
    for (auto& p : set.params().all())
      if (p.tensor.requires_grad()) inputs.push_back(p.tensor);
    ASSERT_GT(inputs.size(), 1u);
    testing::expect_gradients_match([&] { return base.forward(x); }, inputs);
    EXPECT_FALSE(base.weight().grad().defined()) << "the frozen base got a weight gradient";
    EXPECT_FALSE(base.bias().grad().defined());
  }
}

INSTANTIATE_TEST_SUITE_P(Kinds, AdapterGrad,
                         ::testing::Values(KindCase{Kind::Dora, "proj"},
                                           KindCase{Kind::Vera, "proj"},
                                           KindCase{Kind::Ia3, "proj"}, KindCase{Kind::Ia3, "ff"},
                                           KindCase{Kind::Bottleneck, "proj"}),
                         [](const auto& info) {
                           return str(kind_name(info.param.kind), "_", info.param.module);
                         });

TEST(Dora, HandComputedForward) {
  // W = [[1,0],[0,2]], b = [0.5,-1], A = [[1,1]], B = [[1],[0]], s = α/r = 1.
  // W + ΔW = [[2,1],[0,2]], row norms √5 and 2; m = [1, 3]; x = [1, 2]:
  // (W+ΔW)·x = [4, 4]  →  y = [4/√5 + 0.5, 3·4/2 − 1].
  Rng rng(1);
  nn::ParameterSet ps;
  nn::Linear base(ps, "proj", 2, 2, true, false, rng, nn::Init::Zeros);
  Tensor(base.weight()).copy_from(Tensor::from_vector({1, 0, 0, 2}, {2, 2}));
  Tensor(base.bias()).copy_from(Tensor::from_vector({0.5f, -1.0f}, {2}));
  AdapterSet set({&base}, ps, {"proj"}, AdapterSpec(Kind::Dora, LoraConfig{1, 1.0f, false}), 1);
  auto l = set.loras().at(0);
  // m starts as the row norms of W.
  EXPECT_EQ(l->magnitude().to_vector(), (std::vector<float>{1.0f, 2.0f}));
  Tensor(l->A()).copy_from(Tensor::from_vector({1, 1}, {1, 2}));
  Tensor(l->B()).copy_from(Tensor::from_vector({1, 0}, {2, 1}));
  Tensor(l->magnitude()).copy_from(Tensor::from_vector({1, 3}, {2}));
  std::vector<float> y = base.forward(Tensor::from_vector({1, 2}, {1, 2})).to_vector();
  EXPECT_NEAR(y[0], 4.0f / std::sqrt(5.0f) + 0.5f, 1e-6);
  EXPECT_NEAR(y[1], 5.0f, 1e-6);
}

TEST(Dora, DetachedNormGradientTreatsTheNormAsConstant) {
  // PEFT (and the DoRA paper, §4.3) detach ‖W + ΔW‖: the gradient is that of
  // y = (W·x + ΔW·x) ⊙ m / n₀ + b with n₀ a constant.
  Rng rng(5);
  nn::ParameterSet ps;
  nn::Linear base(ps, "proj", 6, 4, true, false, rng, nn::Init::Normal, 0.5f);
  AdapterSet set({&base}, ps, {"proj"}, AdapterSpec(Kind::Dora, LoraConfig{2, 4.0f, false}), 3);
  perturb(set, rng);
  auto l = set.loras().at(0);
  Tensor x = randn({3, 6}, rng);
  Tensor n0 = l->weight_norm(base, true).clone();
  auto reference = [&] {
    Tensor d = ops::scale(ops::matmul_nt(ops::matmul_nt(x, l->A()), l->B()), l->scale());
    Tensor y = ops::mul(ops::add(ops::linear(x, base.weight(), Tensor()), d),
                        ops::div(l->magnitude(), n0));
    return ops::add(y, base.bias());
  };
  auto grads = [&](const std::function<Tensor()>& f) {
    set.params().zero_grad();
    for (auto& p : set.params().all()) p.tensor.clear_grad();
    autograd::Tape tape;
    tape.backward(ops::sum(ops::mul(f(), f().clone())));
    std::vector<std::vector<float>> g;
    for (auto& p : set.params().all()) g.push_back(p.tensor.grad().to_vector());
    return g;
  };
  auto got = grads([&] { return base.forward(x); });
  auto want = grads(reference);
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i)
    for (size_t j = 0; j < got[i].size(); ++j) EXPECT_NEAR(got[i][j], want[i][j], 1e-4);
}

TEST(Vera, HandComputedForwardAndSharedSlices) {
  Rng rng(2);
  nn::ParameterSet ps;
  nn::Linear a(ps, "a", 3, 2, true, false, rng, nn::Init::Normal, 0.5f);
  nn::Linear b(ps, "b", 2, 4, false, true, rng, nn::Init::Normal, 0.5f);
  AdapterSpec s(Kind::Vera, LoraConfig{2, 1.0f, false});
  AdapterSet set({&a, &b}, ps, {"a", "b"}, s, 9);
  const Tensor& VA = *set.params().find("vera_A");  // [r, max in] = [2, 3]
  const Tensor& VB = *set.params().find("vera_B");  // [max out, r] = [4, 2]
  ASSERT_EQ(VA.shape(), (Shape{2, 3}));
  ASSERT_EQ(VB.shape(), (Shape{4, 2}));
  EXPECT_FALSE(VA.requires_grad());
  EXPECT_EQ(set.params().count(true), (2 + 2) + (2 + 4));  // λ_d [r] + λ_b [out] per module
  // λ_b = 0 at start: the identity.
  Tensor x = Tensor::from_vector({1.0f, -2.0f, 0.5f}, {1, 3});
  Tensor plain = ops::linear(x, a.weight(), a.bias());
  EXPECT_EQ(a.forward(x).to_vector(), plain.to_vector());
  Tensor(*set.params().find("a.vera_lambda_d")).copy_from(Tensor::from_vector({0.5f, -1.0f}, {2}));
  Tensor(*set.params().find("a.vera_lambda_b")).copy_from(Tensor::from_vector({2.0f, 3.0f}, {2}));
  // y = W·x + b + λ_b ⊙ B[:2]·(λ_d ⊙ A[:, :3]·x), by hand.
  const float* A = VA.data();
  const float* B = VB.data();
  float h[2];
  for (int k = 0; k < 2; ++k) {
    h[k] = 0;
    for (int i = 0; i < 3; ++i) h[k] += A[k * 3 + i] * x.data()[i];
  }
  h[0] *= 0.5f;
  h[1] *= -1.0f;
  std::vector<float> y = a.forward(x).to_vector();
  const float lb[2] = {2.0f, 3.0f};
  for (int o = 0; o < 2; ++o)
    EXPECT_NEAR(y[o], plain.data()[o] + lb[o] * (B[o * 2] * h[0] + B[o * 2 + 1] * h[1]), 1e-5);
  // The second module uses A[:, :2] (in = 2) and all four rows of B.
  Tensor x2 = Tensor::from_vector({1.0f, 1.0f}, {1, 2});
  Tensor(*set.params().find("b.vera_lambda_d")).fill_(1.0f);
  Tensor(*set.params().find("b.vera_lambda_b")).fill_(1.0f);
  std::vector<float> y2 = b.forward(x2).to_vector();
  Tensor p2 = ops::linear(x2, b.weight(), Tensor(), true);
  for (int o = 0; o < 4; ++o) {
    float d = 0;
    for (int k = 0; k < 2; ++k) d += B[o * 2 + k] * (A[k * 3] + A[k * 3 + 1]);
    EXPECT_NEAR(y2[o], p2.data()[o] + d, 1e-5);
  }
}

TEST(Ia3, HandComputedScalingOfOutputsAndInputs) {
  Rng rng(3);
  nn::ParameterSet ps;
  nn::Linear k(ps, "k", 2, 2, true, false, rng, nn::Init::Zeros);
  nn::Linear ff(ps, "ff", 2, 1, false, false, rng, nn::Init::Zeros);
  Tensor(k.weight()).copy_from(Tensor::from_vector({1, 2, 3, 4}, {2, 2}));
  Tensor(k.bias()).copy_from(Tensor::from_vector({1, 1}, {2}));
  Tensor(ff.weight()).copy_from(Tensor::from_vector({1, 1}, {1, 2}));
  AdapterSpec s(Kind::Ia3, LoraConfig{});
  s.feedforward = {"ff"};
  AdapterSet set({&k, &ff}, ps, {"k", "ff"}, s, 1);
  ASSERT_EQ(set.params().find("k.ia3_l")->shape(), (Shape{2}));   // [out]
  ASSERT_EQ(set.params().find("ff.ia3_l")->shape(), (Shape{2}));  // [in]
  Tensor(*set.params().find("k.ia3_l")).copy_from(Tensor::from_vector({2, -1}, {2}));
  Tensor(*set.params().find("ff.ia3_l")).copy_from(Tensor::from_vector({3, 0.5f}, {2}));
  Tensor x = Tensor::from_vector({1, 1}, {1, 2});
  // k: l ⊙ (W·x + b) = [2·4, −1·8]; ff: W·(l ⊙ x) = 3 + 0.5.
  EXPECT_EQ(k.forward(x).to_vector(), (std::vector<float>{8.0f, -8.0f}));
  EXPECT_EQ(ff.forward(x).to_vector(), (std::vector<float>{3.5f}));
}

struct MergeCase {
  Kind kind;
  bool conv1d;
};
class AdapterMerge : public ::testing::TestWithParam<MergeCase> {};

TEST_P(AdapterMerge, HotEqualsMergedAndUnmergeRestoresTheBase) {
  const MergeCase c = GetParam();
  for (const char* module : {"proj", "ff"}) {
    Rng rng(21);
    nn::ParameterSet ps;
    nn::Linear base(ps, module, 9, 6, true, c.conv1d, rng, nn::Init::Normal, 0.5f);
    const std::vector<float> w0 = base.weight().to_vector(), b0 = base.bias().to_vector();
    Tensor x = randn({5, 9}, rng);
    AdapterSet set({&base}, ps, {module}, spec_of(c.kind), 4);
    perturb(set, rng);
    std::vector<float> hot = base.forward(x).to_vector();
    set.merge();
    std::vector<float> merged = base.forward(x).to_vector();
    EXPECT_LT(testing::rel_err(merged, hot), 1e-5) << module;
    EXPECT_GT(testing::rel_err(base.weight().to_vector(), w0), 1e-3) << "merge changed nothing";
    set.unmerge();
    EXPECT_LT(testing::rel_err(base.weight().to_vector(), w0), 1e-6) << module;
    EXPECT_LT(testing::rel_err(base.bias().to_vector(), b0), 1e-6) << module;
    EXPECT_LT(testing::rel_err(base.forward(x).to_vector(), hot), 1e-5) << module;
  }
}

INSTANTIATE_TEST_SUITE_P(
    Kinds, AdapterMerge,
    ::testing::Values(MergeCase{Kind::Lora, false}, MergeCase{Kind::Dora, false},
                      MergeCase{Kind::Dora, true}, MergeCase{Kind::Vera, false},
                      MergeCase{Kind::Vera, true}, MergeCase{Kind::Ia3, false},
                      MergeCase{Kind::Ia3, true}),
    [](const auto& info) {
      return str(kind_name(info.param.kind), info.param.conv1d ? "_conv1d" : "");
    });

TEST(Bottleneck, RefusesToMergeAndStaysUsable) {
  Rng rng(4);
  nn::ParameterSet ps;
  nn::Linear base(ps, "proj", 4, 4, true, false, rng, nn::Init::Normal, 0.5f);
  AdapterSet set({&base}, ps, {"proj"}, spec_of(Kind::Bottleneck, 2), 1);
  perturb(set, rng);
  Tensor x = randn({2, 4}, rng);
  std::vector<float> before = base.forward(x).to_vector();
  try {
    set.merge();
    FAIL() << "merge of a bottleneck adapter did not throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cannot be merged"), std::string::npos) << e.what();
  }
  EXPECT_EQ(base.forward(x).to_vector(), before);
}

TEST(AdapterKinds, PlacementsSelectTheSublayerOutputs) {
  Rng rng(1);
  nn::Decoder g(testing::tiny_decoder(nn::Flavor::Gpt2), rng),
      l(testing::tiny_decoder(nn::Flavor::Llama), rng);
  nn::MlpClassifier m(nn::MlpSpec{8, {6, 5}, 3}, rng);
  auto count = [](std::vector<nn::Linear*> L, const std::string& p) {
    return select_modules(L, placement_targets(p)).size();
  };
  EXPECT_EQ(count(g.linears(), "houlsby"), 4u);   // attn.c_proj + mlp.c_proj per layer
  EXPECT_EQ(count(g.linears(), "pfeiffer"), 2u);  // mlp.c_proj
  EXPECT_EQ(count(l.linears(), "houlsby"), 4u);   // o_proj + down_proj
  EXPECT_EQ(count(l.linears(), "pfeiffer"), 2u);
  EXPECT_EQ(count(m.linears(), "houlsby"), 2u);  // the hidden layers, not the classifier
  EXPECT_THROW(placement_targets("sideways"), Error);
}

TEST(AdapterKinds, EveryKindTrainsOnADecoderWithTheBaseBitIdentical) {
  for (Kind k : {Kind::Lora, Kind::Dora, Kind::Vera, Kind::Ia3, Kind::Bottleneck}) {
    for (nn::Flavor f : {nn::Flavor::Gpt2, nn::Flavor::Llama}) {
      Rng rng(7);
      nn::Decoder model(testing::tiny_decoder(f), rng);
      std::vector<std::vector<float>> base0;
      for (auto& p : model.params().all()) base0.push_back(p.tensor.to_vector());
      std::vector<int32_t> ids = {1, 5, 9, 2, 7, 3, 4, 0, 8, 6, 5, 1};
      std::vector<int32_t> tgt = {5, 9, 2, 7, 3, 4, 0, 8, 6, 5, 1, 2};
      std::vector<float> plain = model.forward(ids, 2, 6).to_vector();
      AdapterSpec s(k, LoraConfig{4, 8.0f, false});
      auto targets = k == Kind::Bottleneck ? placement_targets("houlsby")
                                           : std::vector<std::string>{"all-linear"};
      AdapterSet set(model.linears(), model.params(), targets, s, 3);
      // Every kind starts as the identity.
      EXPECT_LT(testing::rel_err(model.forward(ids, 2, 6).to_vector(), plain), 1e-6)
          << kind_name(k);
      optim::AdamW opt(set.params(), optim::AdamWOptions{});
      float first = 0, last = 0;
      for (int step = 0; step < 30; ++step) {
        autograd::Tape tape;
        Tensor loss = ops::cross_entropy(model.forward(ids, 2, 6), tgt);
        (step == 0 ? first : last) = loss.item();
        tape.backward(loss);
        opt.step(k == Kind::Ia3 || k == Kind::Vera ? 0.1f : 3e-2f);  // vectors want larger steps
        set.params().zero_grad();
      }
      EXPECT_LT(last, first - 0.02f) << kind_name(k) << " " << nn::flavor_name(f);
      size_t i = 0;
      for (auto& p : model.params().all())
        EXPECT_EQ(p.tensor.to_vector(), base0[i++]) << p.name << " changed under " << kind_name(k);
      set.detach();
      EXPECT_EQ(model.forward(ids, 2, 6).to_vector(), plain) << kind_name(k);
    }
  }
}

TEST(AdapterKinds, DropoutActsOnlyWhileTraining) {
  for (Kind k : {Kind::Lora, Kind::Vera}) {
    Rng rng(8);
    nn::ParameterSet ps;
    nn::Linear base(ps, "proj", 16, 8, true, false, rng, nn::Init::Normal, 0.5f);
    AdapterSpec s = spec_of(k, 4);
    s.dropout = 0.5f;
    AdapterSet set({&base}, ps, {"proj"}, s, 1);
    perturb(set, rng);
    Tensor x = randn({4, 16}, rng);
    std::vector<float> eval1 = base.forward(x).to_vector();
    EXPECT_EQ(base.forward(x).to_vector(), eval1);  // evaluation: deterministic, no dropout
    autograd::Tape tape;
    Tensor xg = x.clone();
    xg.set_requires_grad(true);
    std::vector<float> train1 = base.forward(xg).to_vector();
    std::vector<float> train2 = base.forward(xg).to_vector();
    EXPECT_GT(testing::rel_err(train1, eval1), 1e-3) << kind_name(k);
    EXPECT_NE(train1, train2) << "two training passes drew the same mask";
  }
}

TEST(AdapterKinds, BadSpecsAreRefused) {
  Rng rng(9);
  nn::ParameterSet ps;
  nn::Linear base(ps, "proj", 4, 4, true, false, rng, nn::Init::Normal, 0.5f);
  AdapterSpec s = spec_of(Kind::Lora);
  s.dropout = 1.0f;
  EXPECT_THROW(AdapterSet({&base}, ps, {"proj"}, s, 1), Error);
  EXPECT_THROW(AdapterSet({&base}, ps, {"proj"}, spec_of(Kind::Vera, 0), 1), Error);
  EXPECT_THROW(AdapterSet({&base}, ps, {"proj"}, spec_of(Kind::Bottleneck, 0), 1), Error);
  EXPECT_THROW(parse_kind("lokr"), Error);
  EXPECT_EQ(parse_kind("dora"), Kind::Dora);
}

}  // namespace
}  // namespace tessera::adapters
