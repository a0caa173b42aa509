// The model families real small checkpoints use (scripts/gen_families.py):
// Llama with head_dim apart, every bias and llama3 RoPE scaling; linear RoPE;
// Mistral's sliding window; Qwen2's q/k/v biases and per-layer window;
// Qwen3's q/k norms; Phi-3's fused projections and partial rotary; Gemma's
// scaled embeddings, (1 + w) norms and GeGLU; GPT-2's
// scale_attn_by_inverse_layer_idx. Their logits, loss and every gradient
// against transformers are checked by the Golden test (golden_test.cc); here:
// the architecture survives the config and the saved folder, a convention
// error moves the logits far past the tolerance, and what is not supported
// is refused naming the key.
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "runtime/autograd/ops.h"
#include "runtime/autograd/tape.h"
#include "runtime/common/error.h"
#include "runtime/io/hf.h"
#include "runtime/io/safetensors.h"
#include "runtime/train/trainer.h"
#include "tests/testing.h"

namespace tessera {
namespace {

std::string dir_of(const std::string& name) {
  return testing::source_dir() + "/tests/fixtures/families/" + name;
}

float loss_of(nn::Decoder& m, const io::SafetensorsFile& golden) {
  return ops::cross_entropy(m.forward(testing::i32_values(golden, "input_ids"), 2, 7),
                            testing::i32_values(golden, "targets"))
      .item();
}

class Family : public ::testing::TestWithParam<std::string> {};

// A checkpoint's config carries the architecture (set_decoder_config): the
// model rebuilt from it computes the same; save_hf_decoder writes a folder
// with the same architecture keys, which loads back to the same model.
TEST_P(Family, ArchitectureSurvivesTheConfigAndTheSavedFolder) {
  const std::string src = dir_of(GetParam()) + "/model";
  auto a = io::load_hf_decoder(src);
  auto golden = io::SafetensorsFile::open(dir_of(GetParam()) + "/golden.safetensors");
  DecoderConfig cfg;
  train::set_decoder_config(a->spec(), &cfg);
  Rng rng(0);
  nn::Decoder b(train::decoder_spec(cfg), rng);
  io::load_hf_weights(src, b);
  EXPECT_EQ(loss_of(b, *golden), loss_of(*a, *golden));
  const std::string dir = testing::temp_dir("family_" + GetParam());
  io::save_hf_decoder(dir, *a);
  auto c = io::load_hf_decoder(dir);
  EXPECT_EQ(loss_of(*c, *golden), loss_of(*a, *golden));
  // The saved config.json reads back to the same architecture, field by field.
  DecoderConfig back;
  train::set_decoder_config(io::read_hf_config(dir), &back);
  EXPECT_EQ(back.DebugString(), cfg.DebugString());
  nlohmann::json theirs = nlohmann::json::parse(std::ifstream(src + "/config.json"));
  nlohmann::json ours = nlohmann::json::parse(std::ifstream(dir + "/config.json"));
  for (const char* key :
       {"model_type", "architectures", "vocab_size", "hidden_size", "n_embd", "num_hidden_layers",
        "num_attention_heads", "num_key_value_heads", "intermediate_size", "n_inner", "head_dim",
        "attention_bias", "mlp_bias", "sliding_window", "use_sliding_window", "max_window_layers",
        "tie_word_embeddings", "scale_attn_by_inverse_layer_idx"}) {
    // (max_window_layers means nothing without a window)
    if (std::string(key) == "max_window_layers" && !theirs.value("use_sliding_window", false))
      continue;
    if (theirs.contains(key)) {
      EXPECT_EQ(ours[key], theirs[key]) << key;
    }
  }
  if (theirs.contains("rope_parameters"))
    for (auto& [k, v] : theirs["rope_parameters"].items()) {
      if (v.is_number()) {
        EXPECT_NEAR(ours["rope_parameters"][k].get<double>(), v.get<double>(),
                    1e-6 * std::abs(v.get<double>()))
            << k;
      } else {
        EXPECT_EQ(ours["rope_parameters"][k], v) << k;
      }
    }
}

INSTANTIATE_TEST_SUITE_P(Families, Family,
                         ::testing::Values("llama_headdim_bias_llama3", "llama_linear_rope",
                                           "mistral_window", "qwen2_bias_window", "qwen3_qknorm",
                                           "phi3_fused", "gemma", "gpt2_inverse_layer",
                                           "phi3_partial_rotary"));

// The fixtures are sensitive: each family's own convention, got wrong, moves
// the logits by over 100 times the 1e-5 the tests allow.
TEST(FamilyFixtures, AConventionErrorMovesTheLossPastTheTolerance) {
  struct Case {
    const char* name;
    std::function<void(nn::DecoderSpec&)> break_it;
  };
  const std::vector<Case> cases = {
      {"llama_headdim_bias_llama3", [](nn::DecoderSpec& s) { s.rope_scaling.type = "default"; }},
      {"llama_linear_rope", [](nn::DecoderSpec& s) { s.rope_scaling.factor = 1.0f; }},
      {"mistral_window", [](nn::DecoderSpec& s) { s.sliding_window += 1; }},
      {"qwen2_bias_window", [](nn::DecoderSpec& s) { s.max_window_layers = 0; }},
      {"qwen3_qknorm", [](nn::DecoderSpec& s) { s.rope_theta *= 2; }},
      {"phi3_fused", [](nn::DecoderSpec& s) { s.sliding_window = 0; }},
      {"phi3_partial_rotary", [](nn::DecoderSpec& s) { s.partial_rotary_factor = 1.0f; }},
      // Gemma read as a Llama: no (1 + w) norms, no embedding scale, SwiGLU.
      {"gemma", [](nn::DecoderSpec& s) { s.flavor = nn::Flavor::Llama; }},
      {"gpt2_inverse_layer", [](nn::DecoderSpec& s) { s.scale_attn_by_inverse_layer_idx = false; }},
  };
  for (const Case& c : cases) {
    const std::string src = dir_of(c.name) + "/model";
    auto golden = io::SafetensorsFile::open(dir_of(c.name) + "/golden.safetensors");
    nn::DecoderSpec s = io::read_hf_config(src);
    c.break_it(s);
    Rng rng(0);
    nn::Decoder wrong(s, rng);
    io::load_hf_weights(src, wrong);
    const Tensor logits = wrong.forward(testing::i32_values(*golden, "input_ids"), 2, 7);
    EXPECT_GT(testing::rel_err(logits.to_vector(), golden->load_f32("logits").to_vector()), 1e-3)
        << c.name;
  }
}

// What the families do not have yet is refused naming the config key.
TEST(FamilyConfig, UnsupportedSettingsAreRefusedByName) {
  const std::string src = dir_of("llama_linear_rope") + "/model";
  const std::string dir = testing::temp_dir("family_bad");
  std::filesystem::copy_file(src + "/model.safetensors", dir + "/model.safetensors",
                             std::filesystem::copy_options::overwrite_existing);
  const nlohmann::json good = nlohmann::json::parse(std::ifstream(src + "/config.json"));
  auto error = [&](const std::function<void(nlohmann::json&)>& edit) {
    nlohmann::json c = good;
    edit(c);
    std::ofstream(dir + "/config.json") << c.dump();
    return testing::error_of([&] { io::read_hf_config(dir); });
  };
  EXPECT_NE(error([](auto& c) { c["rope_parameters"]["rope_type"] = "yarn"; }).find("'yarn'"),
            std::string::npos);
  EXPECT_NE(error([](auto& c) { c["hidden_act"] = "gelu"; }).find("hidden_act"), std::string::npos);
  EXPECT_NE(error([](auto& c) { c["model_type"] = "gemma2"; }).find("gemma2"), std::string::npos);
  EXPECT_NE(error([](auto& c) { c["partial_rotary_factor"] = 0.5; }).find("partial_rotary_factor"),
            std::string::npos);
  EXPECT_NE(error([](auto& c) { c["pretraining_tp"] = 2; }).find("pretraining_tp"),
            std::string::npos);
  EXPECT_NE(error([](auto& c) {
              c["model_type"] = "mistral";
              c["mlp_bias"] = true;
            }).find("mlp_bias"),
            std::string::npos);
  EXPECT_EQ(error([](auto&) {}), "");
  // Keys a file leaves out take their family's class defaults.
  auto spec_of = [&](const std::function<void(nlohmann::json&)>& edit) {
    nlohmann::json c = good;
    edit(c);
    std::ofstream(dir + "/config.json") << c.dump();
    return io::read_hf_config(dir);
  };
  EXPECT_EQ(spec_of([](auto& c) {
              c["model_type"] = "mistral";
              c.erase("sliding_window");
            }).sliding_window,
            4096);
  EXPECT_EQ(spec_of([](auto& c) {
              c["model_type"] = "mistral";
              c["sliding_window"] = nullptr;
            }).sliding_window,
            0);
  EXPECT_EQ(spec_of([](auto& c) {
              c["model_type"] = "qwen3";
              c.erase("head_dim");
              c.erase("tie_word_embeddings");
            }).head_dim(),
            128);
  EXPECT_FALSE(spec_of([](auto& c) {
                 c["model_type"] = "qwen3";
                 c.erase("tie_word_embeddings");
               }).tie_embeddings);
}

// A tessera config may only give a family the settings transformers gives it:
// anything else would be dropped from the saved folder.
TEST(FamilyConfig, SettingsOfAnotherFamilyAreRefused) {
  auto error = [](const std::function<void(nn::DecoderSpec&)>& edit) {
    nn::DecoderSpec s = testing::tiny_decoder(nn::Flavor::Llama, 16);
    edit(s);
    return testing::error_of([&] { s.validate(); });
  };
  EXPECT_EQ(error([](auto&) {}), "");
  EXPECT_NE(error([](auto& s) {
              s.flavor = nn::Flavor::Mistral;
              s.attention_bias = true;
            }).find("attention_bias is not a mistral setting"),
            std::string::npos);
  EXPECT_NE(error([](auto& s) {
              s.flavor = nn::Flavor::Qwen2;
              s.mlp_bias = true;
            }).find("mlp_bias"),
            std::string::npos);
  EXPECT_NE(error([](auto& s) { s.sliding_window = 4; }).find("sliding_window is not a llama"),
            std::string::npos);
  EXPECT_NE(error([](auto& s) {
              s.flavor = nn::Flavor::Mistral;
              s.sliding_window = 4;
              s.max_window_layers = 1;
            }).find("max_window_layers"),
            std::string::npos);
  EXPECT_NE(error([](auto& s) {
              s.flavor = nn::Flavor::Phi3;
              s.rope_scaling.type = "linear";
              s.rope_scaling.factor = 2;
            }).find("not a phi3 setting"),
            std::string::npos);
}

}  // namespace
}  // namespace tessera
