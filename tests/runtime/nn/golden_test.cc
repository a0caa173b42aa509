// The decoder against PyTorch + Hugging Face transformers: tiny GPT-2 and
// Llama checkpoints written by save_pretrained() load through the same path
// users use, and logits, loss and every parameter gradient match the golden
// values scripts/gen_golden.py recorded.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "runtime/autograd/ops.h"
#include "runtime/autograd/tape.h"
#include "runtime/common/error.h"
#include "runtime/io/hf.h"
#include "runtime/io/safetensors.h"
#include "tests/testing.h"

namespace tessera {
namespace {

class Golden : public ::testing::TestWithParam<std::string> {};

TEST_P(Golden, LogitsLossAndAllGradientsMatchPyTorch) {
  const std::string dir = testing::source_dir() + "/tests/fixtures/" + GetParam();
  auto model = io::load_hf_decoder(dir + "/model");
  auto golden = io::SafetensorsFile::open(dir + "/golden.safetensors");
  std::vector<int32_t> ids = testing::i32_values(*golden, "input_ids"),
                       tgt = testing::i32_values(*golden, "targets");
  const io::TensorInfo* idinfo = golden->find("input_ids");
  const int64_t B = idinfo->shape[0], T = idinfo->shape[1];

  model->params().zero_grad();
  autograd::Tape tape;
  Tensor logits = model->forward(ids, B, T);
  Tensor loss = ops::cross_entropy(logits, tgt);
  EXPECT_LT(testing::rel_err(logits.to_vector(), golden->load_f32("logits").to_vector()), 1e-5);
  EXPECT_NEAR(loss.item(), golden->load_f32("loss").item(), 1e-5);
  tape.backward(loss);

  int checked = 0;
  for (const auto& t : golden->tensors()) {
    if (t.name.rfind("grad.", 0) != 0) continue;
    const std::string name = t.name.substr(5);
    const Tensor* p = model->params().find(name);
    ASSERT_NE(p, nullptr) << "model lacks " << name;
    ASSERT_TRUE(p->grad().defined()) << name << " got no gradient";
    EXPECT_LT(testing::rel_err(p->grad().to_vector(), golden->load_f32(t).to_vector()), 1e-4)
        << name;
    ++checked;
  }
  // Every trainable parameter of the model was compared.
  EXPECT_EQ(checked, static_cast<int>(model->params().all().size()));
}

// golden/: scripts/gen_golden.py; families/: scripts/gen_families.py (the
// model families real small checkpoints use, tests/runtime/nn/families_test.cc).
INSTANTIATE_TEST_SUITE_P(Archs, Golden,
                         ::testing::Values("golden/gpt2", "golden/llama",
                                           "families/llama_headdim_bias_llama3",
                                           "families/llama_linear_rope", "families/mistral_window",
                                           "families/qwen2_bias_window", "families/qwen3_qknorm",
                                           "families/phi3_fused", "families/phi3_partial_rotary",
                                           "families/gemma", "families/gpt2_inverse_layer"));

TEST(HfCheckpoint, SaveThenLoadRoundTrips) {
  const std::string src = testing::source_dir() + "/tests/fixtures/golden/llama/model";
  auto a = io::load_hf_decoder(src);
  const std::string dir = testing::temp_dir("hf_roundtrip");
  io::save_hf_decoder(dir, *a);
  auto b = io::load_hf_decoder(dir);
  EXPECT_EQ(b->spec().kv_heads(), 2);
  for (size_t i = 0; i < a->params().all().size(); ++i)
    EXPECT_EQ(a->params().all()[i].tensor.to_vector(), b->params().all()[i].tensor.to_vector());
}

TEST(HfCheckpoint, LoadsShardedIndexAndHubStyleNames) {
  // Split the GPT-2 fixture into two shards with a model.safetensors.index.json,
  // naming tensors without the "transformer." prefix as hub GPT-2 files do.
  const std::string src = testing::source_dir() + "/tests/fixtures/golden/gpt2/model";
  auto f = io::SafetensorsFile::open(src + "/model.safetensors");
  const std::string dir = testing::temp_dir("hf_sharded");
  std::filesystem::copy_file(src + "/config.json", dir + "/config.json");
  std::vector<io::WriteEntry> shard[2];
  nlohmann::json map = nlohmann::json::object();
  int i = 0;
  for (const auto& t : f->tensors()) {
    std::string name = t.name.substr(std::string("transformer.").size());
    int s = i++ % 2;
    shard[s].push_back({name, t.dtype, t.shape, f->bytes(t), t.end - t.begin});
    map[name] = "model-0000" + std::to_string(s + 1) + "-of-00002.safetensors";
  }
  for (int s = 0; s < 2; ++s)
    io::save_safetensors(dir + "/model-0000" + std::to_string(s + 1) + "-of-00002.safetensors",
                         shard[s]);
  std::ofstream(dir + "/model.safetensors.index.json")
      << nlohmann::json{{"weight_map", map}}.dump();
  auto sharded = io::load_hf_decoder(dir);
  auto plain = io::load_hf_decoder(src);
  for (size_t k = 0; k < plain->params().all().size(); ++k)
    EXPECT_EQ(sharded->params().all()[k].tensor.to_vector(),
              plain->params().all()[k].tensor.to_vector());
  // A shard name that escapes the folder is refused.
  map.begin().value() = "../evil.safetensors";
  std::ofstream(dir + "/model.safetensors.index.json")
      << nlohmann::json{{"weight_map", map}}.dump();
  EXPECT_THROW(io::load_hf_decoder(dir), Error);
}

TEST(HfCheckpoint, LoadsHalfPrecisionWeights) {
  // Re-save the GPT-2 fixture in BF16 and F16 (as hub checkpoints often are).
  const std::string src = testing::source_dir() + "/tests/fixtures/golden/gpt2/model";
  auto f = io::SafetensorsFile::open(src + "/model.safetensors");
  for (io::DType dt : {io::DType::F16, io::DType::BF16}) {
    const std::string dir = testing::temp_dir(std::string("hf_half_") + io::dtype_name(dt));
    std::filesystem::copy_file(src + "/config.json", dir + "/config.json");
    std::vector<std::vector<uint16_t>> store;
    std::vector<io::WriteEntry> e;
    for (const auto& t : f->tensors()) {
      std::vector<float> v = f->load_f32(t).to_vector();
      std::vector<uint16_t> h(v.size());
      for (size_t i = 0; i < v.size(); ++i)
        h[i] = dt == io::DType::F16 ? io::f32_to_f16(v[i]) : io::f32_to_bf16(v[i]);
      store.push_back(std::move(h));
      e.push_back({t.name, dt, t.shape, store.back().data(), store.back().size() * 2});
    }
    io::save_safetensors(dir + "/model.safetensors", e);
    auto m = io::load_hf_decoder(dir);
    const float* w = m->params().at("transformer.h.0.attn.c_attn.weight").data();
    float ref = f->load_f32("transformer.h.0.attn.c_attn.weight").data()[0];
    EXPECT_NEAR(w[0], ref, std::fabs(ref) * (dt == io::DType::F16 ? 1e-3 : 1e-2));
  }
}

TEST(HfCheckpoint, RefusesMismatchesWithClearMessages) {
  const std::string src = testing::source_dir() + "/tests/fixtures/golden/gpt2/model";
  const std::string dir = testing::temp_dir("hf_bad");
  std::filesystem::copy_file(src + "/model.safetensors", dir + "/model.safetensors");
  auto expect_error = [&](const std::string& config, const std::string& needle) {
    std::ofstream(dir + "/config.json") << config;
    try {
      io::load_hf_decoder(dir);
      ADD_FAILURE() << "accepted: " << config;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  const std::string base = R"("vocab_size":61,"n_positions":16,"n_layer":2,"n_head":3)";
  expect_error("{" + base + R"(,"model_type":"gpt2","n_embd":48})", "wrong shape");
  expect_error("{" + base + R"(,"model_type":"gpt2","n_embd":24,"n_layer":3})", "missing");
  expect_error("{" + base + R"(,"model_type":"bert","n_embd":24})", "bert");
  expect_error("{" + base + R"(,"model_type":"gpt2"})", "n_embd");
  expect_error("{" + base + R"(,"model_type":"gpt2","n_embd":"24"})", "wrong type");
  expect_error("{" + base + R"(,"model_type":"gpt2","n_embd":25})", "multiple of n_head");
  expect_error("not json", "not valid JSON");
  std::filesystem::remove(dir + "/model.safetensors");
  expect_error("{" + base + R"(,"model_type":"gpt2","n_embd":24})", "model.safetensors");
}

}  // namespace
}  // namespace tessera
