// The PEFT folders users bring, against what the real peft computes with them
// (scripts/gen_interchange_fixtures.py): Conv1D and Linear targets in one
// adapter, a target_modules entry the model lacks, keys that keep the adapter
// name — each loads exactly as peft loads it; a doubled key prefix, a saved
// lm_head weight of another base and a pickled .bin are refused by name.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>

#include "adapters/adapter_file.h"
#include "adapters/compose.h"
#include "adapters/peft.h"
#include "runtime/common/error.h"
#include "runtime/io/hf.h"
#include "runtime/io/safetensors.h"
#include "tests/testing.h"

namespace tessera::adapters {
namespace {

namespace fs = std::filesystem;

std::string fixture(const std::string& p) {
  return testing::source_dir() + "/tests/fixtures/interchange/" + p;
}

std::vector<int32_t> ids() {
  return testing::i32_values(*io::SafetensorsFile::open(fixture("ids.safetensors")), "input_ids");
}

// Base logits, and the logits with the folder's adapter imported.
struct Imported {
  std::vector<float> base, adapted;
  std::vector<std::string> modules, notes;
};
Imported import_and_run(const std::string& folder, const std::string& base = "gpt2_untied") {
  auto model = io::load_hf_decoder(fixture(base + "/model"));
  const std::vector<int32_t> x = ids();
  Imported r;
  r.base = model->forward(x, 2, 7).to_vector();
  PeftImport imp =
      import_peft(fixture(folder), model->linears(), model->params(), model->embeddings());
  r.adapted = model->forward(x, 2, 7).to_vector();
  r.modules = imp.set->modules();
  r.notes = imp.notes;
  return r;
}

std::vector<float> peft_logits(const std::string& folder) {
  return io::SafetensorsFile::open(fixture(folder + "/peft_golden.safetensors"))
      ->load_f32("logits")
      .to_vector();
}

// `set` (on the untied base) saved as tessera's adapter file, that file
// exported as a PEFT folder, and each loaded onto a fresh base: both give
// `want`, the logits with `set` attached.
void expect_round_trips(const AdapterSet& set, const std::vector<float>& want,
                        const std::string& name) {
  const std::string dir = testing::temp_dir(name);
  save_adapter(set, dir + "/a.safetensors", "tiny");
  adapter_file_to_peft(dir + "/a.safetensors", dir + "/peft");
  for (int path = 0; path < 2; ++path) {
    auto b = io::load_hf_decoder(fixture("gpt2_untied/model"));
    std::unique_ptr<AdapterSet> back =
        path == 0
            ? load_adapter(dir + "/a.safetensors", b->linears(), b->params(), nullptr,
                           b->embeddings())
            : std::move(import_peft(dir + "/peft", b->linears(), b->params(), b->embeddings()).set);
    EXPECT_EQ(b->forward(ids(), 2, 7).to_vector(), want) << name << (path ? " via PEFT" : "");
  }
}

bool any_note(const std::vector<std::string>& notes, const std::string& word) {
  for (const auto& n : notes)
    if (n.find(word) != std::string::npos) return true;
  return false;
}

TEST(PeftInterchange, Conv1dAndLinearTargetsInOneAdapterMatchPeft) {
  // peft saves fan_in_fan_out = false (lm_head's) and lm_head.base_layer.weight.
  Imported r = import_and_run("conv1d_and_linear");
  EXPECT_EQ(r.modules.size(), 3u);  // c_attn of 2 blocks + lm_head
  EXPECT_LT(testing::rel_err(r.adapted, peft_logits("conv1d_and_linear")), 1e-5);
  EXPECT_GT(testing::rel_err(r.base, peft_logits("conv1d_and_linear")), 1e-2);  // it does something
  EXPECT_TRUE(any_note(r.notes, "fan_in_fan_out")) << "the config/layout disagreement is noted";
  EXPECT_TRUE(any_note(r.notes, "base_layer"));
}

TEST(PeftInterchange, TessersOwnExportOfConv1dAndLinearComesBack) {
  auto a = io::load_hf_decoder(fixture("gpt2_untied/model"));
  PeftImport first = import_peft(fixture("conv1d_and_linear"), a->linears(), a->params());
  const std::string dir = testing::temp_dir("peft_mixed_rt");
  export_peft(*first.set, dir, "tiny");
  auto b = io::load_hf_decoder(fixture("gpt2_untied/model"));
  PeftImport second = import_peft(dir, b->linears(), b->params());
  EXPECT_EQ(b->forward(ids(), 2, 7).to_vector(), a->forward(ids(), 2, 7).to_vector());
  // Through tessera's adapter file and export-peft (adapter_file_to_peft) too.
  const std::string file = dir + "/a.safetensors", again = dir + "/again";
  save_adapter(*first.set, file, "tiny");
  adapter_file_to_peft(file, again);
  auto c = io::load_hf_decoder(fixture("gpt2_untied/model"));
  PeftImport third = import_peft(again, c->linears(), c->params());
  EXPECT_EQ(c->forward(ids(), 2, 7).to_vector(), a->forward(ids(), 2, 7).to_vector());
}

// GPT-2 with lm_head tied to wte: the LoRA on lm_head (a Linear over the
// embeddings' weight) computes what peft computes; merging it would change
// the embeddings too, so it is refused.
TEST(PeftInterchange, ALoraOnATiedLmHeadMatchesPeftAndStaysUnmerged) {
  auto model = io::load_hf_decoder(fixture("gpt2_tied/model"));
  PeftImport imp = import_peft(fixture("tied_lm_head"), model->linears(), model->params());
  EXPECT_EQ(imp.set->modules().back(), "lm_head");
  EXPECT_LT(testing::rel_err(model->forward(ids(), 2, 7).to_vector(), peft_logits("tied_lm_head")),
            1e-5);
  const std::string e = testing::error_of([&] { imp.set->merge(); });
  EXPECT_NE(e.find("shares its weight with the input embeddings"), std::string::npos) << e;
  EXPECT_LT(testing::rel_err(model->forward(ids(), 2, 7).to_vector(), peft_logits("tied_lm_head")),
            1e-5)
      << "a refused merge changed nothing";
}

TEST(PeftInterchange, ATargetTheModelLacksIsSkippedAsPeftSkipsIt) {
  Imported r = import_and_run("dead_target");
  EXPECT_EQ(r.modules.size(), 4u);
  EXPECT_LT(testing::rel_err(r.adapted, peft_logits("dead_target")), 1e-5);
  EXPECT_TRUE(any_note(r.notes, "'down_proj' matches no module"));
}

TEST(PeftInterchange, KeysThatKeepTheAdapterNameLoadAsPeftLoadsThem) {
  Imported r = import_and_run("name_kept");
  EXPECT_LT(testing::rel_err(r.adapted, peft_logits("name_kept")), 1e-5);
  EXPECT_TRUE(any_note(r.notes, "'default'"));
  // The same rule without a model (tessera merge reads factors()).
  EXPECT_EQ(read_peft(fixture("name_kept")).factors().size(), 4u);
}

TEST(PeftInterchange, ADoubledPrefixIsRefusedOnEveryPathListingTheKeys) {
  auto model = io::load_hf_decoder(fixture("gpt2_untied/model"));
  const std::string e = testing::error_of(
      [&] { import_peft(fixture("double_prefix"), model->linears(), model->params()); });
  EXPECT_NE(e.find("appears twice"), std::string::npos) << e;
  EXPECT_NE(e.find("keys found: base_model.model.base_model.model.transformer"), std::string::npos)
      << e;
  EXPECT_EQ(testing::error_of([&] { read_peft(fixture("double_prefix")).factors(); }), e);
}

TEST(PeftInterchange, ASavedLmHeadOfAnotherBaseIsRefused) {
  auto model = io::load_hf_decoder(fixture("gpt2_untied/model"));
  const std::string e = testing::error_of(
      [&] { import_peft(fixture("other_lm_head"), model->linears(), model->params()); });
  EXPECT_NE(e.find("lm_head.base_layer.weight"), std::string::npos) << e;
  EXPECT_NE(e.find("differs from this base's"), std::string::npos) << e;
}

TEST(PeftInterchange, APickledBinSaysHowToResave) {
  const std::string e = testing::error_of([&] { read_peft(fixture("bin_only")); });
  EXPECT_NE(e.find("adapter_model.bin"), std::string::npos) << e;
  EXPECT_NE(e.find("safe_serialization=True"), std::string::npos) << e;
}

// init_lora_weights "pissa" / "olora": peft changes the base weight when it
// loads the folder; tessera imports them as peft's own conversion does (a
// LoRA of twice the rank on the unchanged base) and computes what peft does.
TEST(PeftInterchange, PissaAndOloraLoadAsPeftLoadsThem) {
  for (const std::string name : {"pissa", "olora"}) {
    Imported r = import_and_run(name);
    EXPECT_LT(testing::rel_err(r.adapted, peft_logits(name)), 1e-4) << name;
    EXPECT_TRUE(any_note(r.notes, "twice the rank")) << name;
  }
  // Without a base there is nothing to convert against: refused by name.
  EXPECT_NE(
      testing::error_of([&] { read_peft(fixture("pissa")).factors(); }).find("merge --base BASE"),
      std::string::npos);
  // A randomised SVD cannot be repeated: refused, naming peft's conversion.
  const std::string e = testing::error_of([&] { read_peft(fixture("pissa_niter")); });
  EXPECT_NE(e.find("pissa_niter_4"), std::string::npos) << e;
  EXPECT_NE(e.find("path_initial_model_for_weight_conversion"), std::string::npos) << e;
}

TEST(PeftInterchange, LayersToTransformAndExcludeModulesSelectAsPeft) {
  Imported layers = import_and_run("layers");
  EXPECT_EQ(layers.modules,
            (std::vector<std::string>{"transformer.h.1.attn.c_attn", "transformer.h.1.mlp.c_fc"}));
  EXPECT_LT(testing::rel_err(layers.adapted, peft_logits("layers")), 1e-5);
  Imported ex = import_and_run("exclude");
  EXPECT_EQ(ex.modules, std::vector<std::string>{"transformer.h.1.attn.c_attn"});
  EXPECT_LT(testing::rel_err(ex.adapted, peft_logits("exclude")), 1e-5);
}

// rank_pattern / alpha_pattern: the first key that matches, in the order the
// file writes them (peft's get_pattern_key); a key matching nothing is noted.
TEST(PeftInterchange, PatternKeysResolveInTheFilesOrder) {
  Imported r = import_and_run("pattern_order");
  EXPECT_LT(testing::rel_err(r.adapted, peft_logits("pattern_order")), 1e-5);
  EXPECT_TRUE(any_note(r.notes, "rank_pattern key 'nothing_here' matches no targeted module"));
  const PeftFolder f = read_peft(fixture("pattern_order"));
  EXPECT_EQ(f.spec.for_module("transformer.h.1.attn.c_attn").r, 5);
  EXPECT_EQ(f.spec.for_module("transformer.h.1.attn.c_attn").alpha, 7.0f);
  EXPECT_EQ(f.spec.for_module("transformer.h.0.attn.c_attn").r, 3);
  EXPECT_EQ(f.spec.for_module("transformer.h.0.mlp.c_fc").r, 2);
}

// LoRA on an embedding (peft's lora.Embedding): untied, and tied to the
// lm_head (the lookup changes, the output layer keeps the base table).
TEST(PeftInterchange, EmbeddingLoraMatchesPeftAndRoundTrips) {
  for (const auto& [name, base] : {std::pair<std::string, std::string>{"embedding", "gpt2_untied"},
                                   {"tied_embedding", "gpt2_tied"}}) {
    Imported r = import_and_run(name, base);
    EXPECT_LT(testing::rel_err(r.adapted, peft_logits(name)), 1e-5) << name;
    EXPECT_GT(testing::rel_err(r.base, peft_logits(name)), 1e-2) << name;
  }
  auto a = io::load_hf_decoder(fixture("gpt2_untied/model"));
  PeftImport imp = import_peft(fixture("embedding"), a->linears(), a->params(), a->embeddings());
  ASSERT_EQ(imp.set->embedding_modules(), std::vector<std::string>{"transformer.wte"});
  EXPECT_EQ(imp.set->embedding_loras()[0]->config().r, 3);  // rank_pattern {"wte": 3}
  const std::vector<float> want = a->forward(ids(), 2, 7).to_vector();
  // tessera's adapter file and its PEFT export carry the embedding LoRA.
  expect_round_trips(*imp.set, want, "peft_embedding");
  // Merged into an untied table it computes the same; tied, merging is refused.
  imp.set->merge();
  EXPECT_LT(testing::rel_err(a->forward(ids(), 2, 7).to_vector(), want), 1e-5);
  imp.set->unmerge();
  auto t = io::load_hf_decoder(fixture("gpt2_tied/model"));
  PeftImport tied =
      import_peft(fixture("tied_embedding"), t->linears(), t->params(), t->embeddings());
  EXPECT_NE(testing::error_of([&] { tied.set->merge(); }).find("tied to the lm_head"),
            std::string::npos);
  // Combining factors (tessera merge) covers Linear LoRAs only: refused by name.
  EXPECT_NE(testing::error_of([&] {
              read_peft(fixture("embedding")).factors();
            }).find("embedding transformer.wte"),
            std::string::npos);
}

// modules_to_save (a Linear and an Embedding): the saved copies replace the
// modules, as peft's ModulesToSaveWrapper does; through tessera's adapter file
// and PEFT export and back; merged, the same; a norm is refused by name.
TEST(PeftInterchange, ModulesToSaveReplaceTheirModulesAsPeftDoes) {
  Imported r = import_and_run("modules_to_save");
  EXPECT_LT(testing::rel_err(r.adapted, peft_logits("modules_to_save")), 1e-5);
  EXPECT_TRUE(any_note(r.notes, "modules_to_save"));
  auto a = io::load_hf_decoder(fixture("gpt2_untied/model"));
  PeftImport imp =
      import_peft(fixture("modules_to_save"), a->linears(), a->params(), a->embeddings());
  EXPECT_EQ(imp.set->copied_modules(), (std::vector<std::string>{"lm_head", "transformer.wpe"}));
  const std::vector<float> want = a->forward(ids(), 2, 7).to_vector();
  expect_round_trips(*imp.set, want, "peft_mts");
  imp.set->merge();
  EXPECT_LT(testing::rel_err(a->forward(ids(), 2, 7).to_vector(), want), 1e-5);
  imp.set->unmerge();
  imp.set->detach();
  // (the LoRA's merge and unmerge round within float32)
  EXPECT_LT(testing::rel_err(a->forward(ids(), 2, 7).to_vector(), r.base), 1e-6)
      << "detach restores the base";
  auto c = io::load_hf_decoder(fixture("gpt2_untied/model"));
  const std::string e = testing::error_of(
      [&] { import_peft(fixture("save_norm"), c->linears(), c->params(), c->embeddings()); });
  EXPECT_NE(e.find("transformer.ln_f is not a Linear or an Embedding"), std::string::npos) << e;
}

// The new adapters' gradients against finite differences: LoRA on an
// embedding (A, B) and the copies of modules_to_save (a Linear's weight and
// bias, an Embedding's table).
TEST(PeftInterchange, EmbeddingLoraAndCopyGradientsMatchFiniteDifferences) {
  Rng rng(3);
  nn::Decoder model(testing::tiny_decoder(nn::Flavor::Gpt2), rng);
  nn::Embedding* wte = model.embeddings()[0];
  AdapterSpec spec(Kind::Lora, LoraConfig{2, 4.0f, false});
  AdapterSet set(model.linears(), model.params(), {}, spec, 1);
  set.add_embeddings(model.embeddings(), {wte->name()});
  set.add_copies(model.linears(), model.embeddings(),
                 {"transformer.h.1.mlp.c_fc", "transformer.wpe"});
  for (auto& p : set.params().all())
    for (int64_t i = 0; i < p.tensor.numel(); ++i) p.tensor.data()[i] += rng.normal(0.0f, 0.3f);
  const std::vector<int32_t> x = {3, 1, 4, 1, 5, 9};
  std::vector<Tensor> inputs;
  for (auto& p : set.params().all()) inputs.push_back(p.tensor);
  EXPECT_EQ(inputs.size(), 5u);  // lora_embedding_A/B, c_fc weight and bias, wpe table
  testing::expect_gradients_match([&] { return model.forward(x, 1, 6); }, inputs);
}

// Config edits of a folder: target_modules as the string "all-linear" (peft
// selects Linear/Conv1D layers only, never an embedding), and
// ensure_weight_tying on a tied model (peft then ties lm_head to the
// embedding's adapter: refused by name, not loaded differently).
TEST(PeftInterchange, AllLinearStringAndEnsureWeightTying) {
  auto edit = [](const std::string& src, const std::string& dst,
                 const std::function<void(nlohmann::json&)>& f) {
    fs::copy(src, dst, fs::copy_options::recursive | fs::copy_options::overwrite_existing);
    nlohmann::json c = nlohmann::json::parse(std::ifstream(dst + "/adapter_config.json"));
    f(c);
    std::ofstream(dst + "/adapter_config.json") << c.dump();
  };
  const std::string dir = testing::temp_dir("peft_config_edits");
  {
    Rng rng(5);
    auto m = io::load_hf_decoder(fixture("gpt2_untied/model"));
    AdapterSet all(m->linears(), m->params(), {"all-linear"},
                   AdapterSpec(Kind::Lora, LoraConfig{2, 4.0f, false}), 9);
    for (auto& p : all.params().all())
      for (int64_t i = 0; i < p.tensor.numel(); ++i) p.tensor.data()[i] = rng.normal(0.0f, 0.3f);
    export_peft(all, dir + "/listed", "tiny");
  }
  edit(dir + "/listed", dir + "/string", [](auto& c) { c["target_modules"] = "all-linear"; });
  auto a = io::load_hf_decoder(fixture("gpt2_untied/model"));
  PeftImport listed = import_peft(dir + "/listed", a->linears(), a->params(), a->embeddings());
  auto b = io::load_hf_decoder(fixture("gpt2_untied/model"));
  PeftImport string = import_peft(dir + "/string", b->linears(), b->params(), b->embeddings());
  EXPECT_EQ(string.set->modules(), listed.set->modules());
  EXPECT_TRUE(string.set->embedding_modules().empty());
  EXPECT_EQ(b->forward(ids(), 2, 7).to_vector(), a->forward(ids(), 2, 7).to_vector());

  edit(fixture("tied_embedding"), dir + "/tying", [](auto& c) { c["ensure_weight_tying"] = true; });
  auto t = io::load_hf_decoder(fixture("gpt2_tied/model"));
  const std::string e = testing::error_of(
      [&] { import_peft(dir + "/tying", t->linears(), t->params(), t->embeddings()); });
  EXPECT_NE(e.find("ensure_weight_tying = true"), std::string::npos) << e;
}

// An imported adapter whose pattern keys overlap keeps their order through
// tessera's own adapter file.
TEST(PeftInterchange, PatternOrderSurvivesTheAdapterFile) {
  auto a = io::load_hf_decoder(fixture("gpt2_untied/model"));
  PeftImport imp = import_peft(fixture("pattern_order"), a->linears(), a->params());
  const std::string file = testing::temp_dir("peft_order") + "/a.safetensors";
  save_adapter(*imp.set, file, "tiny");
  auto b = io::load_hf_decoder(fixture("gpt2_untied/model"));
  auto set = load_adapter(file, b->linears(), b->params());
  EXPECT_EQ(b->forward(ids(), 2, 7).to_vector(), a->forward(ids(), 2, 7).to_vector());
}

// peft #3608: DoRA's norm ‖W + ΔW‖ is of the base's own W, so a DoRA set
// merged over another merged set would not give the Stack's output.
TEST(MergeOrder, DoraAndIa3MergeOnlyOntoTheBasesOwnWeight) {
  for (Kind second : {Kind::Dora, Kind::Ia3}) {
    Rng rng(11);
    nn::Decoder model(testing::tiny_decoder(nn::Flavor::Gpt2), rng);
    AdapterSpec lora(Kind::Lora, LoraConfig{2, 4.0f, false});
    AdapterSpec other(second, LoraConfig{2, 4.0f, false});
    AdapterSet s1(model.linears(), model.params(), {"c_attn"}, lora, 3, false);
    AdapterSet s2(model.linears(), model.params(), {"c_attn"}, other, 4, false);
    for (auto* set : {&s1, &s2})
      for (auto& p : set->params().all())
        for (int64_t i = 0; i < p.tensor.numel(); ++i) p.tensor.data()[i] += rng.normal(0.0f, 0.3f);
    std::vector<int32_t> x = {3, 1, 4, 1, 5, 9};
    std::vector<float> stacked;
    {
      // The weight-reading kind first in the stack: y = LoRA(DoRA(h)).
      Composition comp(model.linears(), {&s2, &s1}, Compose::Stack);
      stacked = model.forward(x, 1, 6).to_vector();
      comp.detach();
    }
    // LoRA first, then the weight-reading kind: refused, the weight untouched by it.
    s1.merge();
    const std::string e = testing::error_of([&] { s2.merge(); });
    EXPECT_NE(e.find("already holds 1 merged adapter"), std::string::npos) << e;
    s1.unmerge();
    // The weight-reading kind first, then LoRA: exact.
    s2.merge();
    s1.merge();
    EXPECT_LT(testing::rel_err(model.forward(x, 1, 6).to_vector(), stacked), 1e-4)
        << kind_name(second);
    // Unmerging it under LoRA's delta is refused too; in order it is exact.
    EXPECT_NE(testing::error_of([&] { s2.unmerge(); }).find("after it"), std::string::npos);
    s1.unmerge();
    s2.unmerge();
  }
}

}  // namespace
}  // namespace tessera::adapters
