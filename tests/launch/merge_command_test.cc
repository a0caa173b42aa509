// `tessera merge` on adapters written by the real peft library: the merged
// PEFT folder imports back and gives the expected delta weights.
#include <gtest/gtest.h>

#include <cstring>

#include "adapters/adapter_file.h"
#include "adapters/peft.h"
#include "launch/commands.h"
#include "runtime/common/error.h"
#include "runtime/io/hf.h"
#include "runtime/io/safetensors.h"
#include "tests/testing.h"

namespace tessera::launch {
namespace {

std::string fixture(const std::string& p) {
  return testing::source_dir() + "/tests/fixtures/" + p;
}

// Imports `dir` onto the tiny GPT-2 and compares every module's ΔW with
// `scale` × PEFT's own delta for the fixture adapter.
void expect_deltas(const std::string& dir, float scale, double tol) {
  auto model = io::load_hf_decoder(fixture("golden/gpt2/model"));
  adapters::PeftImport imp = adapters::import_peft(dir, model->linears(), model->params());
  auto golden = io::SafetensorsFile::open(fixture("peft/gpt2/peft_golden.safetensors"));
  ASSERT_EQ(imp.set->modules().size(), 8u);
  for (size_t i = 0; i < imp.set->modules().size(); ++i) {
    std::vector<float> ref = golden->load_f32("delta." + imp.set->modules()[i]).to_vector();
    for (float& v : ref) v *= scale;
    EXPECT_LT(testing::rel_err(
                  imp.set->loras()[i]->delta_weight(*imp.set->linears()[i]).to_vector(), ref),
              tol)
        << imp.set->modules()[i];
  }
}

TEST(MergeCommand, CatOfAnAdapterWithItselfIsExact) {
  const std::string out = testing::temp_dir("merge_cat");
  MergeOptions o;
  o.method = "cat";
  o.inputs = {fixture("peft/gpt2"), fixture("peft/gpt2")};
  o.weights = {0.25f, 0.5f};
  o.out = out;
  ASSERT_EQ(run_merge(o), 0);
  expect_deltas(out, 0.75f, 1e-5);
}

TEST(MergeCommand, SvdAndTiesRefactorToALora) {
  const std::string a = testing::temp_dir("merge_linear"), b = testing::temp_dir("merge_ties");
  MergeOptions o;
  o.method = "linear:lambda=2";
  o.inputs = {fixture("peft/gpt2"), fixture("peft/gpt2")};
  o.out = a;
  ASSERT_EQ(run_merge(o), 0);  // 2·(ΔW + ΔW), still of the input rank
  expect_deltas(a, 4.0f, 1e-4);
  o.method = "ties:density=1";
  o.inputs = {fixture("peft/gpt2")};
  o.out = b;
  ASSERT_EQ(run_merge(o), 0);  // one adapter, nothing trimmed: itself
  expect_deltas(b, 1.0f, 1e-4);
}

TEST(MergeCommand, LegoAndSoupIntoATesseraAdapterFile) {
  // LEGO of an adapter with itself, k = its rank (the default): every cluster
  // holds a unit and its copy, so each centroid is that unit and the merge
  // is the adapter itself (clusters average, they do not add up).
  const std::string dir = testing::temp_dir("merge_lego");
  MergeOptions o;
  o.method = "lego";
  o.inputs = {fixture("peft/gpt2"), fixture("peft/gpt2")};
  o.out = dir + "/lego.safetensors";
  ASSERT_EQ(run_merge(o), 0);
  adapters::AdapterFile f = adapters::read_adapter(o.out);
  auto peft = adapters::read_peft(fixture("peft/gpt2")).factors();
  auto merged = f.factors();
  ASSERT_EQ(merged.size(), peft.size());
  for (size_t i = 0; i < merged.size(); ++i) {
    std::vector<float> ref = peft[i].second.delta().to_vector();
    EXPECT_LT(testing::rel_err(merged[i].second.delta().to_vector(), ref), 1e-4) << merged[i].first;
  }
  // The uniform soup of an adapter with itself is the adapter.
  o.method = "soup";
  o.out = dir + "/soup";
  ASSERT_EQ(run_merge(o), 0);
  expect_deltas(o.out, 1.0f, 1e-4);
  // A tessera adapter file is an input too.
  o.inputs = {dir + "/lego.safetensors"};
  o.out = dir + "/soup2";
  ASSERT_EQ(run_merge(o), 0);
  expect_deltas(o.out, 1.0f, 1e-4);
}

TEST(MergeCommand, RefusesBadMethodsAndMismatchedAdapters) {
  MergeOptions o;
  o.inputs = {fixture("peft/gpt2")};
  o.out = testing::temp_dir("merge_bad");
  for (const char* m : {"average", "ties:density", "ties:p=0.3", "dare_linear:p=x"}) {
    o.method = m;
    EXPECT_THROW(run_merge(o), Error) << m;
  }
  o.method = "cat";
  o.inputs = {fixture("peft/gpt2"), fixture("peft/llama")};
  EXPECT_THROW(run_merge(o), Error);
  o.inputs = {fixture("peft/gpt2")};
  o.weights = {1.0f, 2.0f};
  EXPECT_THROW(run_merge(o), Error);
}

}  // namespace
}  // namespace tessera::launch

namespace tessera::launch {
namespace {

// merge --base reads each input against the base, by import-peft's rules:
// a PiSSA folder (whose factors alone are not the adapter) is converted, and
// the merged adapter computes what peft computes with the folder.
TEST(MergeCommand, WithABasePissaFoldersMergeExactly) {
  const std::string base = fixture("interchange/gpt2_untied/model");
  const std::string out = testing::temp_dir("merge_pissa") + "/m.safetensors";
  MergeOptions o;
  o.method = "linear";
  o.inputs = {fixture("interchange/pissa"), fixture("interchange/pissa")};
  o.weights = {0.5f, 0.5f};
  o.out = out;
  EXPECT_NE(testing::error_of([&] { run_merge(o); }).find("merge --base BASE"), std::string::npos)
      << "without a base the factors alone would be merged";
  o.base = base;
  ASSERT_EQ(testing::error_of([&] { run_merge(o); }), "");
  auto model = io::load_hf_decoder(base);
  auto set = adapters::load_adapter(out, model->linears(), model->params());
  const std::vector<int32_t> ids = testing::i32_values(
      *io::SafetensorsFile::open(fixture("interchange/ids.safetensors")), "input_ids");
  auto golden = io::SafetensorsFile::open(fixture("interchange/pissa/peft_golden.safetensors"));
  EXPECT_LT(testing::rel_err(model->forward(ids, 2, 7).to_vector(),
                             golden->load_f32("logits").to_vector()),
            1e-4);
}

}  // namespace
}  // namespace tessera::launch
