// LoRA on the frozen base: gradients, zero-init identity, detach restores the
// base bit-exactly, merge/unmerge, hot == merged, target matching.
#include "adapters/lora.h"

#include <gtest/gtest.h>

#include "runtime/autograd/ops.h"
#include "runtime/common/error.h"
#include "runtime/nn/models.h"
#include "runtime/optim/optim.h"
#include "tests/testing.h"

namespace tessera::adapters {
namespace {

using testing::randn;

void randomise_B(AdapterSet& set, Rng& rng) {
  for (auto& p : set.params().all())
    if (p.name.find("lora_B") != std::string::npos)
      for (int64_t i = 0; i < p.tensor.numel(); ++i) p.tensor.data()[i] = rng.normal(0.0f, 0.3f);
}

TEST(Lora, GradientsOfAdapterAndInputMatchFiniteDifferences) {
  for (bool conv1d : {false, true}) {
    Rng rng(1);
    nn::ParameterSet ps;
    nn::Linear base(ps, "proj", 7, 5, true, conv1d, rng, nn::Init::Normal, 0.5f);
    AdapterSet set({&base}, ps, {"proj"}, LoraConfig{3, 6.0f, false}, 2);
    randomise_B(set, rng);
    Tensor x = randn({4, 7}, rng, 1.0f, true);
    std::vector<Tensor> inputs = {x};
    for (auto& p : set.params().all()) inputs.push_back(p.tensor);
    testing::expect_gradients_match([&] { return base.forward(x); }, inputs);
    EXPECT_FALSE(base.weight().grad().defined()) << "the frozen base got a weight gradient";
  }
}

TEST(Lora, ZeroInitIsIdentityAndDetachRestoresBitExactly) {
  Rng rng(3);
  nn::Decoder model(testing::tiny_decoder(nn::Flavor::Llama), rng);
  std::vector<int32_t> ids = {1, 5, 9, 2, 7, 3, 4, 0, 8, 6, 5, 1};
  std::vector<float> before = model.forward(ids, 2, 6).to_vector();
  {
    AdapterSet set(model.linears(), model.params(), {"all-linear"}, LoraConfig{4, 8.0f, false}, 7);
    EXPECT_EQ(set.modules().size(), 2u * 7u);  // q k v o gate up down per layer; no lm_head
    EXPECT_EQ(model.forward(ids, 2, 6).to_vector(), before);  // B = 0: no change
    randomise_B(set, rng);
    EXPECT_NE(model.forward(ids, 2, 6).to_vector(), before);
    set.detach();
    EXPECT_EQ(model.forward(ids, 2, 6).to_vector(), before);  // bit-exact
  }
  EXPECT_EQ(model.forward(ids, 2, 6).to_vector(), before);
}

TEST(Lora, HotEqualsMergedAndUnmergeRestoresWeights) {
  for (auto flavor : {nn::Flavor::Gpt2, nn::Flavor::Llama}) {
    Rng rng(4);
    nn::Decoder model(testing::tiny_decoder(flavor), rng);
    std::vector<std::vector<float>> w0;
    for (nn::Linear* l : model.linears()) w0.push_back(l->weight().to_vector());
    AdapterSet set(model.linears(), model.params(), {"all-linear"}, LoraConfig{2, 4.0f, true}, 9);
    randomise_B(set, rng);
    std::vector<int32_t> ids = {3, 1, 4, 1, 5, 9};
    std::vector<float> hot = model.forward(ids, 1, 6).to_vector();
    set.merge();
    std::vector<float> merged = model.forward(ids, 1, 6).to_vector();
    for (size_t i = 0; i < hot.size(); ++i)
      EXPECT_NEAR(merged[i], hot[i], 1e-4f * (1 + std::fabs(hot[i])));
    set.unmerge();
    size_t k = 0;
    for (nn::Linear* l : model.linears()) {
      std::vector<float> w = l->weight().to_vector();
      for (size_t i = 0; i < w.size(); ++i)
        EXPECT_NEAR(w[i], w0[k][i], 1e-6f * (1 + std::fabs(w0[k][i])));
      ++k;
    }
    std::vector<float> again = model.forward(ids, 1, 6).to_vector();  // adapters hot again
    for (size_t i = 0; i < hot.size(); ++i)
      EXPECT_NEAR(again[i], hot[i], 1e-5f * (1 + std::fabs(hot[i])));
  }
}

TEST(Lora, DeltaWeightMatchesHandComputation) {
  Rng rng(5);
  nn::ParameterSet ps;
  nn::Linear base(ps, "fc", 2, 2, false, false, rng, nn::Init::Zeros);
  AdapterSet set({&base}, ps, {"fc"}, LoraConfig{1, 2.0f, false}, 1);  // s = 2
  Tensor a = set.params().at("fc.lora_A.weight"), b = set.params().at("fc.lora_B.weight");
  a.copy_from(Tensor::from_vector({1.0f, 2.0f}, {1, 2}));
  b.copy_from(Tensor::from_vector({3.0f, -1.0f}, {2, 1}));
  // ΔW = 2 · [3, -1]ᵀ [1, 2] = [[6, 12], [-2, -4]]
  Tensor x = Tensor::from_vector({1.0f, 1.0f}, {1, 2});
  EXPECT_EQ(base.forward(x).to_vector(), (std::vector<float>{18.0f, -6.0f}));
  const LoraConfig rs{4, 8.0f, true};
  EXPECT_FLOAT_EQ(rs.scale(), 4.0f);  // rsLoRA: α/√r
}

TEST(Lora, OnlyAdapterTrainsAndBaseStaysBitIdentical) {
  Rng rng(6);
  nn::MlpClassifier model({20, {16}, 3, nn::Act::Gelu}, rng);
  std::vector<std::vector<float>> base0;
  for (auto& p : model.params().all()) base0.push_back(p.tensor.to_vector());
  AdapterSet set(model.linears(), model.params(), {"all-linear"}, LoraConfig{4, 8.0f, false}, 3);
  EXPECT_EQ(set.modules(), (std::vector<std::string>{"layers.0"}));
  optim::AdamW opt(set.params(), {});
  Tensor x = randn({8, 20}, rng);
  std::vector<int32_t> y = {0, 1, 2, 0, 1, 2, 0, 1};
  float first = 0, last = 0;
  for (int step = 0; step < 30; ++step) {
    set.params().zero_grad();
    autograd::Tape tape;
    Tensor loss = ops::cross_entropy(model.forward(x), y);
    (step == 0 ? first : last) = loss.item();
    tape.backward(loss);
    opt.step(1e-2f);
  }
  EXPECT_LT(last, first);
  size_t k = 0;
  for (auto& p : model.params().all()) {
    EXPECT_FALSE(p.tensor.grad().defined()) << p.name;
    EXPECT_EQ(p.tensor.to_vector(), base0[k++]) << p.name;
  }
}

TEST(Lora, TargetsByGlobRegexSuffixAndClearErrors) {
  Rng rng(7);
  nn::Decoder model(testing::tiny_decoder(nn::Flavor::Llama), rng);
  auto L = model.linears();
  EXPECT_EQ(match_targets(L, "q_proj").size(), 2u);
  EXPECT_EQ(match_targets(L, "model.layers.1.*").size(), 7u);
  EXPECT_EQ(match_targets(L, "re:.*\\.(q|v)_proj").size(), 4u);
  EXPECT_TRUE(match_targets(L, "proj").empty());  // a suffix must be a whole name component
  try {
    AdapterSet set(L, model.params(), {"q_prj"}, LoraConfig{}, 1);
    FAIL();
  } catch (const Error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("q_prj"), std::string::npos) << m;
    EXPECT_NE(m.find("q_proj"), std::string::npos) << m;  // the near match is suggested
  }
  EXPECT_THROW(AdapterSet(L, model.params(), {"re:("}, LoraConfig{}, 1), Error);
  EXPECT_THROW(AdapterSet(L, model.params(), {"q_proj"}, LoraConfig{0, 1.0f, false}, 1), Error);
}

}  // namespace
}  // namespace tessera::adapters
