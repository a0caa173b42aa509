// PEFT interchange against adapters written by the real `peft` library
// (scripts/gen_peft_fixtures.py): import gives PEFT's own delta weights and
// logits; export → import round-trips exactly; bad folders are refused.
#include "adapters/peft.h"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>

#include "runtime/common/error.h"
#include "runtime/io/hf.h"
#include "runtime/io/safetensors.h"
#include "tests/testing.h"

namespace tessera::adapters {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::string fixture(const std::string& p) {
  return testing::source_dir() + "/tests/fixtures/" + p;
}

std::vector<int32_t> golden_ids(const std::string& arch) {
  return testing::i32_values(
      *io::SafetensorsFile::open(fixture("golden/" + arch + "/golden.safetensors")), "input_ids");
}

class PeftGolden : public ::testing::TestWithParam<std::string> {};

// "gpt2_dora" is a DoRA adapter on the gpt2 golden base.
std::string arch_of(const std::string& fixture_name) {
  return fixture_name.substr(0, fixture_name.find('_'));
}

TEST_P(PeftGolden, ImportMatchesPeftDeltaWeightsAndLogits) {
  const std::string name = GetParam(), arch = arch_of(name);
  auto model = io::load_hf_decoder(fixture("golden/" + arch + "/model"));
  PeftImport imp = import_peft(fixture("peft/" + name), model->linears(), model->params());
  EXPECT_EQ(imp.set->kind(), name == "gpt2_dora" ? Kind::Dora : Kind::Lora);
  auto golden = io::SafetensorsFile::open(fixture("peft/" + name + "/peft_golden.safetensors"));
  int deltas = 0;
  for (size_t i = 0; i < imp.set->modules().size(); ++i) {
    const std::string& m = imp.set->modules()[i];
    Tensor d = imp.set->loras()[i]->delta_weight(*imp.set->linears()[i]);
    EXPECT_LT(testing::rel_err(d.to_vector(), golden->load_f32("delta." + m).to_vector()), 1e-5)
        << m;
    ++deltas;
  }
  EXPECT_EQ(deltas + 1, static_cast<int>(golden->tensors().size()));  // every PEFT module, + logits
  std::vector<int32_t> ids = golden_ids(arch);
  Tensor logits = model->forward(ids, 2, static_cast<int64_t>(ids.size()) / 2);
  EXPECT_LT(testing::rel_err(logits.to_vector(), golden->load_f32("logits").to_vector()), 1e-5);
  EXPECT_TRUE(imp.notes.empty()) << imp.notes.front();
}

TEST_P(PeftGolden, ExportThenImportRoundTripsExactly) {
  const std::string name = GetParam(), arch = arch_of(name);
  auto a = io::load_hf_decoder(fixture("golden/" + arch + "/model"));
  PeftImport first = import_peft(fixture("peft/" + name), a->linears(), a->params());
  const std::string dir = testing::temp_dir("peft_rt_" + name);
  export_peft(*first.set, dir, "tessera/tiny-" + arch);
  auto b = io::load_hf_decoder(fixture("golden/" + arch + "/model"));
  PeftImport second = import_peft(dir, b->linears(), b->params());
  EXPECT_EQ(second.base_model, "tessera/tiny-" + arch);
  ASSERT_EQ(first.set->modules(), second.set->modules());
  for (size_t i = 0; i < first.set->loras().size(); ++i) {
    EXPECT_EQ(first.set->loras()[i]->A().to_vector(), second.set->loras()[i]->A().to_vector());
    EXPECT_EQ(first.set->loras()[i]->B().to_vector(), second.set->loras()[i]->B().to_vector());
    EXPECT_EQ(first.set->loras()[i]->scale(), second.set->loras()[i]->scale());
    if (first.set->kind() == Kind::Dora) {
      EXPECT_EQ(first.set->loras()[i]->magnitude().to_vector(),
                second.set->loras()[i]->magnitude().to_vector());
    }
  }
  EXPECT_EQ(first.set->kind(), second.set->kind());
}

INSTANTIATE_TEST_SUITE_P(Archs, PeftGolden, ::testing::Values("gpt2", "llama", "gpt2_dora"));

// Copies the GPT-2 fixture, lets `edit` change its config, and returns the import error.
std::string import_error(const std::function<void(json&)>& edit, const std::string& name,
                         std::vector<std::string>* notes = nullptr) {
  const std::string dir = testing::temp_dir("peft_bad_" + name);
  fs::copy(fixture("peft/gpt2"), dir,
           fs::copy_options::recursive | fs::copy_options::overwrite_existing);
  json c = json::parse(std::ifstream(dir + "/adapter_config.json"));
  edit(c);
  std::ofstream(dir + "/adapter_config.json") << c.dump();
  auto model = io::load_hf_decoder(fixture("golden/gpt2/model"));
  try {
    PeftImport imp = import_peft(dir, model->linears(), model->params());
    if (notes) *notes = imp.notes;
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(PeftImport, RefusesWhatItCannotHonour) {
  EXPECT_NE(import_error([](json& c) { c["peft_type"] = "IA3"; }, "type").find("IA3"),
            std::string::npos);
  // use_dora on a LoRA folder: the magnitude vectors are missing.
  EXPECT_NE(
      import_error([](json& c) { c["use_dora"] = true; }, "dora").find("lora_magnitude_vector"),
      std::string::npos);
  // A DoRA folder cannot be combined as plain LoRA factors (tessera merge).
  try {
    read_peft(fixture("peft/gpt2_dora")).factors();
    ADD_FAILURE() << "DoRA factors() did not throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("DoRA"), std::string::npos) << e.what();
  }
  EXPECT_NE(import_error([](json& c) { c["bias"] = "all"; }, "bias").find("bias"),
            std::string::npos);
  EXPECT_NE(import_error([](json& c) { c.erase("r"); }, "r").find("'r'"), std::string::npos);
  EXPECT_NE(import_error([](json& c) { c["r"] = "four"; }, "rtype").find("'r'"), std::string::npos);
  // Shapes that disagree with the config: the adapter was trained with another rank.
  EXPECT_NE(import_error([](json& c) { c["rank_pattern"] = json::object(); }, "rank").find("needs"),
            std::string::npos);
  // fan_in_fan_out is per module, from its layout, as in peft: a note, not a refusal.
  std::vector<std::string> fifo;
  EXPECT_EQ(import_error([](json& c) { c["fan_in_fan_out"] = false; }, "fifo", &fifo), "");
  ASSERT_FALSE(fifo.empty());
  EXPECT_NE(fifo[0].find("fan_in_fan_out"), std::string::npos);
  EXPECT_NE(import_error([](json& c) { c["target_modules"] = {"c_attn"}; }, "extra")
                .find("does not select"),
            std::string::npos);
  EXPECT_NE(import_error([](json& c) { c["target_modules"] = {"q_proj"}; }, "arch").find("q_proj"),
            std::string::npos);
  std::vector<std::string> notes;
  EXPECT_EQ(import_error([](json& c) { c["shiny_new_option"] = 3; }, "unknown", &notes), "");
  ASSERT_EQ(notes.size(), 1u);
  EXPECT_NE(notes[0].find("shiny_new_option"), std::string::npos);
}

TEST(PeftImport, RefusesAnAdapterForAnotherBase) {
  // The Llama adapter on the GPT-2 base: its targets do not exist there.
  auto model = io::load_hf_decoder(fixture("golden/gpt2/model"));
  EXPECT_THROW(import_peft(fixture("peft/llama"), model->linears(), model->params()), Error);
  EXPECT_THROW(import_peft("/nonexistent", model->linears(), model->params()), Error);
}

}  // namespace
}  // namespace tessera::adapters
