// Arrow against PEFT's own layer (tests/fixtures/arrow, from
// scripts/gen_arrow_fixture.py): the prototypes agree up to sign, the
// routing weights and the routed output (merge-after, per-expert scales)
// agree to 1e-5, at PEFT's defaults (k 3, T 1), at k 2, T 0.5, and after
// GenKnowSub with two general experts (gen_know_sub on copies, PEFT in place).
#include <gtest/gtest.h>

#include <cmath>

#include "routing/arrow.h"
#include "routing/router.h"
#include "runtime/common/error.h"
#include "runtime/io/hf.h"
#include "runtime/io/safetensors.h"
#include "runtime/nn/parameters.h"
#include "tests/testing.h"

namespace tessera::routing {
namespace {

void check_case(const std::string& name) {
  SCOPED_TRACE(name);
  auto f = io::SafetensorsFile::open(std::string(TESSERA_SOURCE_DIR) + "/tests/fixtures/arrow/" +
                                     name + ".safetensors");
  const Tensor x = f->load_f32("x"), peft_p = f->load_f32("prototypes"),
               coeff = f->load_f32("coeff"), delta = f->load_f32("delta"),
               scaling = f->load_f32("scaling");
  const int64_t E = peft_p.size(0), in = x.size(1), N = x.size(0);
  const int64_t k = static_cast<int64_t>(f->load_f32("top_k").data()[0]);
  const float T = f->load_f32("temperature").data()[0];
  std::vector<adapters::LoraFactors> experts;
  std::vector<float> protos;
  for (int64_t e = 0; e < E; ++e)
    experts.push_back({f->load_f32("lora_A." + std::to_string(e)),
                       f->load_f32("lora_B." + std::to_string(e)), scaling.data()[e]});
  std::vector<adapters::LoraFactors> general;
  for (int g = 0; f->find("general.lora_A." + std::to_string(g)); ++g)
    general.push_back({f->load_f32("general.lora_A." + std::to_string(g)),
                       f->load_f32("general.lora_B." + std::to_string(g)), 1.0f});
  if (!general.empty()) {
    const std::vector<adapters::LoraFactors> given = experts;
    experts = gen_know_sub(experts, general);
    EXPECT_NE(experts[0].A.data()[0], given[0].A.data()[0]);             // a copy changed...
    EXPECT_EQ(given[0].A.data()[0], f->load_f32("lora_A.0").data()[0]);  // ...not the input
  }
  for (int64_t e = 0; e < E; ++e) {
    const std::vector<float> p = arrow_prototype(experts[static_cast<size_t>(e)]);
    double dot = 0;
    for (int64_t c = 0; c < in; ++c) dot += double(p[c]) * peft_p.data()[e * in + c];
    EXPECT_NEAR(std::abs(dot), 1.0, 1e-5) << "expert " << e;  // the same line, maybe flipped
    protos.insert(protos.end(), p.begin(), p.end());
  }
  const Tensor P = Tensor::from_vector(protos, {E, in});
  const TopK t = arrow_route(x, P, k, T);
  for (int64_t n = 0; n < N; ++n) {
    std::vector<float> w(static_cast<size_t>(E), 0.0f);
    for (int64_t j = 0; j < k; ++j) w[t.ids[n * k + j]] = t.weights[n * k + j];
    for (int64_t e = 0; e < E; ++e)
      EXPECT_NEAR(w[e], coeff.data()[n * E + e], 1e-5) << "token " << n << " expert " << e;
  }
  // The routed output on a zero base is PEFT's delta.
  RoutedLora slot(
      stack_experts(experts), [&](const Tensor& xi) { return arrow_route(xi, P, k, T); },
      Combine::MergeAfter);
  nn::ParameterSet ps;
  Rng rng(1);
  nn::Linear zero(ps, "m", in, delta.size(1), false, false, rng, nn::Init::Zeros);
  const std::vector<float> y = slot.forward(x, zero.forward(x), zero).to_vector();
  double worst = 0;
  for (size_t i = 0; i < y.size(); ++i)
    worst = std::max(worst, std::abs(double(y[i]) - delta.data()[i]) /
                                (1.0 + std::abs(double(delta.data()[i]))));
  EXPECT_LT(worst, 1e-5);
}

TEST(ArrowPeft, PrototypesWeightsAndOutputMatchPeftsArrowLayer) {
  check_case("k3_t1");
  check_case("k2_t05");
  check_case("gks_k3_t1");
}

// PEFT's create_arrow_model end to end (tests/fixtures/arrow_model, from
// scripts/gen_arrow_model_fixture.py) on the tiny Hugging Face Llama: four
// task experts (each its own alpha) on q/v/up/down, Arrow top-2 in every
// module, with and without GenKnowSub; tessera's exact prototypes and the
// gather kernel give PEFT's logits.
void check_model_case(const std::string& name) {
  SCOPED_TRACE(name);
  const std::string root = std::string(TESSERA_SOURCE_DIR) + "/tests/fixtures/";
  auto f = io::SafetensorsFile::open(root + "arrow_model/" + name + ".safetensors");
  auto model = io::load_hf_decoder(root + "golden/llama/model");
  const Tensor scaling = f->load_f32("scaling");
  const int64_t k = static_cast<int64_t>(f->load_f32("top_k").data()[0]);
  const float T = f->load_f32("temperature").data()[0];
  int routed = 0;
  for (nn::Linear* l : model->linears()) {
    if (!f->find("e0." + l->name() + ".lora_A")) continue;
    std::vector<adapters::LoraFactors> experts, general;
    for (int e = 0; f->find(str("e", e, ".", l->name(), ".lora_A")); ++e)
      experts.push_back({f->load_f32(str("e", e, ".", l->name(), ".lora_A")),
                         f->load_f32(str("e", e, ".", l->name(), ".lora_B")), scaling.data()[e]});
    for (int g = 0; f->find(str("g", g, ".", l->name(), ".lora_A")); ++g)
      general.push_back({f->load_f32(str("g", g, ".", l->name(), ".lora_A")),
                         f->load_f32(str("g", g, ".", l->name(), ".lora_B")), 1.0f});
    if (!general.empty()) experts = gen_know_sub(experts, general);
    std::vector<float> protos;
    for (const auto& e : experts) {
      const std::vector<float> p = arrow_prototype(e);
      protos.insert(protos.end(), p.begin(), p.end());
    }
    const Tensor P =
        Tensor::from_vector(protos, {static_cast<int64_t>(experts.size()), l->in_features()});
    l->set_adapter(std::make_shared<RoutedLora>(
        stack_experts(experts), [P, k, T](const Tensor& x) { return arrow_route(x, P, k, T); },
        Combine::MergeAfter));
    ++routed;
  }
  ASSERT_EQ(routed, 8);  // q, v, up, down in both layers
  const std::vector<int32_t> ids = testing::i32_values(
      *io::SafetensorsFile::open(root + "golden/llama/golden.safetensors"), "input_ids");
  const Tensor logits = model->forward(ids, 2, static_cast<int64_t>(ids.size()) / 2);
  EXPECT_LT(testing::rel_err(logits.to_vector(), f->load_f32("logits").to_vector()), 1e-5);
  // The experts matter: the base alone is far from it.
  EXPECT_GT(testing::rel_err(f->load_f32("plain").to_vector(), f->load_f32("logits").to_vector()),
            0.1);
}

TEST(ArrowPeft, CreateArrowModelOnTheTinyLlamaMatchesPeftsLogits) {
  check_model_case("llama_k2");
  check_model_case("llama_k2_gks");
}

}  // namespace
}  // namespace tessera::routing
