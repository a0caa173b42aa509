// tessera's adapter file: every kind saves and loads bit-exactly onto a fresh
// base; malformed files and wrong bases are refused with a message naming them.
#include "adapters/adapter_file.h"

#include <gtest/gtest.h>

#include <fstream>

#include <nlohmann/json.hpp>

#include "runtime/common/error.h"
#include "runtime/io/safetensors.h"
#include "runtime/nn/models.h"
#include "tests/testing.h"

namespace tessera::adapters {
namespace {

const std::vector<int32_t> kIds = {1, 5, 9, 2, 7, 3, 4, 0, 8, 6, 5, 1};

TEST(AdapterFile, EveryKindRoundTripsBitExactly) {
  for (Kind k : {Kind::Lora, Kind::Dora, Kind::Vera, Kind::Ia3, Kind::Bottleneck}) {
    for (nn::Flavor f : {nn::Flavor::Gpt2, nn::Flavor::Llama}) {
      Rng r1(3), r2(3);
      nn::Decoder a(testing::tiny_decoder(f), r1),
          b(testing::tiny_decoder(f), r2);  // the same base twice
      AdapterSpec s(k, LoraConfig{3, 5.0f, true});
      s.lora.rank_pattern = {{"layers.1.mlp.down_proj", 2}};
      s.dropout = 0.1f;
      auto targets = k == Kind::Bottleneck ? placement_targets("pfeiffer")
                                           : std::vector<std::string>{"all-linear"};
      AdapterSet set(a.linears(), a.params(), targets, s, 11);
      Rng rng(5);
      for (auto& p : set.params().all())
        for (int64_t i = 0; i < p.tensor.numel(); ++i) p.tensor.data()[i] += rng.normal(0, 0.2f);
      const std::string path =
          testing::temp_dir("adapter_file") + "/" + kind_name(k) + ".safetensors";
      save_adapter(set, path, "tiny-base");
      std::string base_model;
      auto loaded = load_adapter(path, b.linears(), b.params(), &base_model);
      EXPECT_EQ(base_model, "tiny-base");
      EXPECT_EQ(loaded->kind(), k);
      EXPECT_EQ(loaded->modules(), set.modules());
      EXPECT_EQ(loaded->spec().dropout, 0.1f);
      EXPECT_EQ(b.forward(kIds, 2, 6).to_vector(), a.forward(kIds, 2, 6).to_vector())
          << kind_name(k) << " " << nn::flavor_name(f);
      AdapterFile info = read_adapter(path);
      EXPECT_EQ(info.modules, set.modules());
      if (k == Kind::Lora || k == Kind::Dora) {
        auto fs = info.factors();
        ASSERT_EQ(fs.size(), set.loras().size());
        for (size_t i = 0; i < fs.size(); ++i) {
          EXPECT_EQ(fs[i].second.scale, set.loras()[i]->scale());
          EXPECT_EQ(fs[i].second.A.to_vector(), set.loras()[i]->A().to_vector());
        }
      } else {
        EXPECT_THROW(info.factors(), Error);
      }
    }
  }
}

// An adapter as a value in memory: the file's bytes round-trip bit for bit,
// the value's factors are the file's, a PEFT folder written from the value is
// the one written from the file, and a LoRA built from factors in memory is
// the file save_lora_factors writes — no scratch files on the way.
TEST(AdapterValue, BytesFactorsAndPeftWithoutFiles) {
  Rng r(3);
  nn::Decoder m(testing::tiny_decoder(nn::Flavor::Gpt2), r);
  AdapterSet set(m.linears(), m.params(), {"all-linear"}, AdapterSpec(Kind::Dora, {3, 5.0f, false}),
                 11);
  Rng rng(5);
  for (auto& p : set.params().all())
    for (int64_t i = 0; i < p.tensor.numel(); ++i) p.tensor.data()[i] += rng.normal(0, 0.2f);
  const std::string dir = testing::temp_dir("adapter_value");
  save_adapter(set, dir + "/a.safetensors", "tiny-base", "f00d");
  const AdapterFile file = read_adapter(dir + "/a.safetensors");
  const std::vector<uint8_t> bytes = adapter_bytes(file);
  const AdapterFile value = read_adapter_bytes(bytes, "in memory");
  EXPECT_EQ(adapter_bytes(value), bytes);
  EXPECT_EQ(value.modules, file.modules);
  EXPECT_EQ(value.base_fingerprint, "f00d");
  const auto ff = file.factors(), vf = value.factors();
  ASSERT_EQ(ff.size(), vf.size());
  for (size_t i = 0; i < ff.size(); ++i) {
    EXPECT_EQ(vf[i].second.A.to_vector(), ff[i].second.A.to_vector());
    EXPECT_EQ(vf[i].second.B.to_vector(), ff[i].second.B.to_vector());
  }
  EXPECT_EQ(value.magnitudes().size(), file.magnitudes().size());
  adapter_file_to_peft(dir + "/a.safetensors", dir + "/from_file");
  adapter_to_peft(value, dir + "/from_value");
  for (const char* f : {"/adapter_config.json", "/adapter_model.safetensors"}) {
    std::ifstream a(dir + "/from_file" + f, std::ios::binary),
        b(dir + "/from_value" + f, std::ios::binary);
    EXPECT_EQ(std::string(std::istreambuf_iterator<char>(a), {}),
              std::string(std::istreambuf_iterator<char>(b), {}))
        << f;
  }
  save_lora_factors(dir + "/f.safetensors", vf, std::vector<bool>(vf.size(), true), "tiny-base");
  const AdapterFile built =
      lora_factors_adapter(vf, std::vector<bool>(vf.size(), true), "tiny-base");
  std::ifstream saved(dir + "/f.safetensors", std::ios::binary);
  const std::string on_disk(std::istreambuf_iterator<char>(saved), {});
  const std::vector<uint8_t> in_memory = adapter_bytes(built);
  EXPECT_EQ(on_disk, std::string(in_memory.begin(), in_memory.end()));
  // Bytes that are not an adapter are refused naming their source.
  EXPECT_THROW(read_adapter_bytes({1, 2, 3}, "three bytes"), Error);
}

using testing::error_of;

TEST(AdapterFile, RefusesWrongBasesAndMalformedFiles) {
  Rng r1(3), r2(3), r3(3);
  nn::Decoder a(testing::tiny_decoder(nn::Flavor::Llama), r1);
  AdapterSet set(a.linears(), a.params(), {"q_proj", "v_proj"}, LoraConfig{2, 4.0f, false}, 1);
  const std::string dir = testing::temp_dir("adapter_file_bad");
  const std::string path = dir + "/a.safetensors";
  save_adapter(set, path, "tiny");
  // Another width: shapes do not fit.
  nn::Decoder wide(testing::tiny_decoder(nn::Flavor::Llama, 16), r2);
  EXPECT_NE(error_of([&] {
              load_adapter(path, wide.linears(), wide.params());
            }).find("is [2, 12] but this base needs [2, 16]"),
            std::string::npos);
  // Another architecture: the targets select nothing.
  nn::Decoder gpt(testing::tiny_decoder(nn::Flavor::Gpt2), r3);
  EXPECT_NE(error_of([&] { load_adapter(path, gpt.linears(), gpt.params()); }).find("q_proj"),
            std::string::npos);
  EXPECT_NE(error_of([&] { read_adapter(dir + "/missing.safetensors"); }).find("does not exist"),
            std::string::npos);
  // A safetensors file without our metadata.
  io::save_safetensors(dir + "/plain.safetensors", {io::WriteEntry::f32("x", Tensor::zeros({2}))});
  EXPECT_NE(
      error_of([&] { read_adapter(dir + "/plain.safetensors"); }).find("not a tessera adapter"),
      std::string::npos);
  // Metadata edits: a missing field, a bad kind, a future format.
  auto f = io::SafetensorsFile::open(path);
  auto edited = [&](const std::function<void(nlohmann::json&)>& edit) {
    nlohmann::json j = nlohmann::json::parse(f->metadata().at("tessera.adapter"));
    edit(j);
    std::vector<io::WriteEntry> e;
    for (const auto& t : f->tensors()) e.push_back(io::WriteEntry::f32(t.name, f->load_f32(t)));
    const std::string p = dir + "/edited.safetensors";
    io::save_safetensors(p, e, {{"tessera.adapter", j.dump()}});
    return error_of([&] { read_adapter(p); });
  };
  EXPECT_NE(edited([](auto& j) { j.erase("r"); }).find("'r'"), std::string::npos);
  EXPECT_NE(edited([](auto& j) { j["kind"] = "lokr"; }).find("lokr"), std::string::npos);
  EXPECT_NE(edited([](auto& j) { j["format"] = 9; }).find("format 9"), std::string::npos);
  EXPECT_NE(edited([](auto& j) { j["act"] = "tanh"; }).find("tanh"), std::string::npos);
}

}  // namespace
}  // namespace tessera::adapters
