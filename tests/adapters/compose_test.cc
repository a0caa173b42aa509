// Stack, Average, BatchSplit and Parallel compositions against running each
// adapter set alone, finite-difference gradients through a composite, errors.
#include "adapters/compose.h"

#include <gtest/gtest.h>

#include "adapters/kinds.h"
#include "runtime/autograd/ops.h"
#include "runtime/common/error.h"
#include "runtime/nn/models.h"
#include "tests/testing.h"

namespace tessera::adapters {
namespace {

using testing::randn;

void perturb(AdapterSet& set, Rng& rng) {
  for (auto& p : set.params().all())
    if (p.tensor.requires_grad())
      for (int64_t i = 0; i < p.tensor.numel(); ++i) p.tensor.data()[i] += rng.normal(0, 0.3f);
}

// Runs f with `set` alone in the slots (sets here are built with install = false).
std::vector<float> alone(AdapterSet& set, const std::function<Tensor()>& f) {
  for (size_t k = 0; k < set.modules().size(); ++k)
    set.linears()[k]->set_adapter(set.adapters()[k]);
  std::vector<float> y = f().to_vector();
  for (nn::Linear* l : set.linears()) l->set_adapter(nullptr);
  return y;
}

TEST(Compose, StackAddsLorasAndNestsBottlenecks) {
  Rng rng(1);
  nn::ParameterSet ps;
  nn::Linear base(ps, "proj", 6, 5, true, false, rng, nn::Init::Normal, 0.5f);
  AdapterSet bn({&base}, ps, {"proj"}, AdapterSpec(Kind::Bottleneck, LoraConfig{3, 1, false}), 1,
                false);
  AdapterSet lo({&base}, ps, {"proj"}, LoraConfig{2, 4.0f, false}, 2, false);
  perturb(bn, rng);
  perturb(lo, rng);
  Tensor x = randn({4, 6}, rng);
  Composition c({&base}, {&bn, &lo}, Compose::Stack);
  std::vector<float> got = base.forward(x).to_vector();
  c.detach();
  // bottleneck first, then the LoRA adds s·B·A·x to its output.
  std::vector<float> want = alone(bn, [&] { return base.forward(x); });
  auto l = lo.loras()[0];
  Tensor d = ops::scale(ops::matmul_nt(ops::matmul_nt(x, l->A()), l->B()), l->scale());
  for (size_t i = 0; i < want.size(); ++i) want[i] += d.data()[i];
  EXPECT_LT(testing::rel_err(got, want), 1e-6);
}

TEST(Compose, AverageWeighsEachAdaptersOutput) {
  Rng rng(2);
  nn::ParameterSet ps;
  nn::Linear base(ps, "proj", 6, 5, true, true, rng, nn::Init::Normal, 0.5f);
  AdapterSpec dora(Kind::Dora, LoraConfig{2, 4, false});
  dora.dora_exact_grad = true;  // finite differences see the norm's gradient too
  AdapterSet a({&base}, ps, {"proj"}, dora, 1, false);
  AdapterSet b({&base}, ps, {"proj"}, AdapterSpec(Kind::Ia3, LoraConfig{}), 2, false);
  perturb(a, rng);
  perturb(b, rng);
  Tensor x = randn({3, 6}, rng);
  std::vector<float> ya = alone(a, [&] { return base.forward(x); });
  std::vector<float> yb = alone(b, [&] { return base.forward(x); });
  Composition c({&base}, {&a, &b}, Compose::Average, {0.25f, 0.75f});
  std::vector<float> got = base.forward(x).to_vector();
  for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], 0.25f * ya[i] + 0.75f * yb[i], 1e-5);
  // Gradients through the composite reach both sets and the input.
  Tensor xg = randn({3, 6}, rng, 1.0f, true);
  std::vector<Tensor> inputs = {xg};
  for (AdapterSet* s : {&a, &b})
    for (auto& p : s->params().all())
      if (p.tensor.requires_grad()) inputs.push_back(p.tensor);
  testing::expect_gradients_match([&] { return base.forward(xg); }, inputs);
}

TEST(Compose, BatchSplitSendsExampleRangesToTheirAdapters) {
  Rng rng(3);
  nn::Decoder model(testing::tiny_decoder(nn::Flavor::Gpt2, 12, 5), rng);
  AdapterSet a(model.linears(), model.params(), {"all-linear"}, LoraConfig{2, 4, false}, 1, false);
  AdapterSet b(model.linears(), model.params(), placement_targets("houlsby"),
               AdapterSpec(Kind::Bottleneck, LoraConfig{4, 1, false}), 2, false);
  perturb(a, rng);
  perturb(b, rng);
  const int64_t T = 5;
  std::vector<int32_t> ids(3 * T);
  for (auto& t : ids) t = static_cast<int32_t>(rng.uniform(0, 30));
  std::vector<int32_t> first(ids.begin(), ids.begin() + T), rest(ids.begin() + T, ids.end());
  std::vector<float> want = alone(a, [&] { return model.forward(first, 1, T); });
  std::vector<float> wb = alone(b, [&] { return model.forward(rest, 2, T); });
  want.insert(want.end(), wb.begin(), wb.end());
  Composition c(model.linears(), {&a, &b}, Compose::BatchSplit);
  c.set_splits({1, 2});
  EXPECT_LT(testing::rel_err(model.forward(ids, 3, T).to_vector(), want), 1e-6);
  c.set_splits({2, 2});  // 4 examples do not fit 3
  EXPECT_THROW(model.forward(ids, 3, T), Error);
  EXPECT_THROW(c.set_splits({3}), Error);
}

TEST(Compose, ParallelRunsEachAdapterWithItsOwnHeadOnAReplica) {
  Rng rng(4);
  nn::MlpClassifier model(nn::MlpSpec{8, {6}, 3}, rng);
  // Each set adapts the classifier too: its own head.
  AdapterSet a(model.linears(), model.params(), {"layers.0", "classifier"}, LoraConfig{2, 4, false},
               1, false);
  AdapterSet b(model.linears(), model.params(), {"layers.0", "classifier"},
               AdapterSpec(Kind::Vera, LoraConfig{3, 1, false}), 2, false);
  perturb(a, rng);
  perturb(b, rng);
  Tensor x = randn({4, 8}, rng);
  std::vector<float> ya = alone(a, [&] { return model.forward(x); });
  std::vector<float> yb = alone(b, [&] { return model.forward(x); });
  Composition c(model.linears(), {&a, &b}, Compose::Parallel);
  std::vector<Tensor> outs = c.split_outputs(model.forward(c.replicate(x, 4)));
  ASSERT_EQ(outs.size(), 2u);
  EXPECT_LT(testing::rel_err(outs[0].to_vector(), ya), 1e-6);
  EXPECT_LT(testing::rel_err(outs[1].to_vector(), yb), 1e-6);
}

TEST(Compose, MistakesAreRefused) {
  Rng rng(5);
  nn::ParameterSet ps;
  nn::Linear base(ps, "proj", 4, 4, true, false, rng, nn::Init::Normal, 0.5f);
  AdapterSet a({&base}, ps, {"proj"}, LoraConfig{2, 4, false}, 1, false);
  AdapterSet b({&base}, ps, {"proj"}, LoraConfig{2, 4, false}, 2, false);
  EXPECT_THROW(Composition({&base}, {&a}, Compose::Stack), Error);
  EXPECT_THROW(Composition({&base}, {&a, &b}, Compose::Average, {1.0f}), Error);
  EXPECT_THROW(Composition({&base}, {&a, &b}, Compose::Stack, {0.5f, 0.5f}), Error);
  {
    Composition c({&base}, {&a, &b}, Compose::BatchSplit);
    Tensor x = randn({2, 4}, rng);
    EXPECT_THROW(base.forward(x), Error);  // no splits yet
    EXPECT_THROW(c.replicate(x, 2), Error);
    EXPECT_THROW(c.set_splits({1, -1}), Error);
  }
  AdapterSet installed({&base}, ps, {"proj"}, LoraConfig{2, 4, false}, 3);
  EXPECT_THROW(Composition({&base}, {&installed, &a}, Compose::Stack), Error);
}

}  // namespace
}  // namespace tessera::adapters
