// The adapter spec: the command line's shorthand (keys, per-kind defaults and
// refusals) and the AdapterConfig message's JSON form.
#include "adapters/spec.h"

#include <gtest/gtest.h>

#include <functional>

#include "runtime/common/error.h"
#include "runtime/nn/models.h"
#include "tests/testing.h"

namespace tessera::adapters {
namespace {

TEST(AdapterSpec, ParsesAndNamesMistakes) {
  AdapterArgs a =
      parse_adapter_spec("lora:r=4,alpha=8,rslora=true,dropout=0.1,targets=q_proj|re:.*v_proj");
  EXPECT_EQ(a.spec.kind, Kind::Lora);
  EXPECT_EQ(a.spec.lora.defaults.r, 4);
  EXPECT_FLOAT_EQ(a.spec.lora.defaults.alpha, 8.0f);
  EXPECT_TRUE(a.spec.lora.defaults.rslora);
  EXPECT_FLOAT_EQ(a.spec.dropout, 0.1f);
  EXPECT_EQ(a.targets, (std::vector<std::string>{"q_proj", "re:.*v_proj"}));
  EXPECT_EQ(parse_adapter_spec("lora").targets, (std::vector<std::string>{"all-linear"}));
  EXPECT_EQ(parse_adapter_spec("dora:exact_grad=true").spec.kind, Kind::Dora);
  EXPECT_TRUE(parse_adapter_spec("dora:exact_grad=true").spec.dora_exact_grad);
  EXPECT_FLOAT_EQ(parse_adapter_spec("vera:r=32,d_init=0.5").spec.vera_d_init, 0.5f);
  EXPECT_EQ(parse_adapter_spec("ia3:feedforward=down_proj").spec.feedforward,
            (std::vector<std::string>{"down_proj"}));
  AdapterArgs b = parse_adapter_spec("bottleneck:r=8,placement=pfeiffer,act=gelu");
  EXPECT_EQ(b.targets, placement_targets("pfeiffer"));
  EXPECT_EQ(b.spec.act, nn::Act::Gelu);
  EXPECT_EQ(parse_adapter_spec("bottleneck").targets, placement_targets("houlsby"));
  for (const char* bad :
       {"lokr:r=4", "lora:r=0", "lora:r=x", "lora:rank=4", "lora:r", "lora:rslora=yes",
        "lora:targets=", "lora:dropout=1", "lora:placement=houlsby", "bottleneck:placement=middle",
        "bottleneck:act=tanh", "vera:d_init=x", "ia3:exact_grad=true"}) {
    try {
      parse_adapter_spec(bad);
      ADD_FAILURE() << bad;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(bad), std::string::npos) << e.what();
    }
  }
}

// The AdapterConfig message's JSON form, pinned: field-number order, the
// patterns as ordered objects (first match wins, so order is kept through a
// round trip even against sorting), and the optional late fields.
TEST(AdapterConfigMessage, JsonFormIsPinnedAndRoundTripsInOrder) {
  AdapterConfig c;
  c.set_format(1);
  c.set_kind("lora");
  c.set_r(4);
  c.set_alpha(8.0f);
  c.set_dropout(0.5f);
  c.set_vera_d_init(0.5f);
  c.add_feedforward("fc2");
  c.set_act("relu");
  for (auto [p, r] : {std::pair{"z.*", 2}, std::pair{"a.*", 6}}) {
    RankPattern* x = c.add_rank_pattern();
    x->set_pattern(p);
    x->set_r(r);
  }
  AlphaPattern* ap = c.add_alpha_pattern();
  ap->set_pattern("q");
  ap->set_alpha(1.5f);
  c.add_targets("all-linear");
  c.add_modules("h.0.attn.c_attn");
  c.add_conv1d(true);
  c.set_base_model("gpt2");
  const std::string j = config_json(c);
  EXPECT_EQ(
      j, R"({"format":1,"kind":"lora","r":4,"alpha":8.0,"rslora":false,"dropout":0.5,)"
         R"("dora_exact_grad":false,"vera_d_init":0.5,"feedforward":["fc2"],"act":"relu",)"
         R"("rank_pattern":{"z.*":2,"a.*":6},"alpha_pattern":{"q":1.5},"targets":["all-linear"],)"
         R"("modules":["h.0.attn.c_attn"],"conv1d":[true],"base_model":"gpt2",)"
         R"("base_fingerprint":"","embedding_modules":[],"modules_to_save":[]})");
  const AdapterConfig back = parse_config_json(j, "j");
  EXPECT_EQ(back.SerializeAsString(), c.SerializeAsString());
  // Through the value and back: the spec keeps the patterns' order.
  const AdapterFile a = adapter_from_config(back, "j");
  ASSERT_EQ(a.spec.lora.rank_pattern.size(), 2u);
  EXPECT_EQ(a.spec.lora.rank_pattern[0].first, "z.*");
  EXPECT_EQ(adapter_config(a).SerializeAsString(), c.SerializeAsString());
}

// Every field set away from its default survives message -> JSON -> message
// -> AdapterFile -> message (a field dropped by any step fails here).
TEST(AdapterConfigMessage, EveryFieldSurvivesTheRoundTrips) {
  AdapterConfig c;
  c.set_format(1);
  c.set_kind("dora");
  c.set_r(12);
  c.set_alpha(3.25f);
  c.set_rslora(true);
  c.set_dropout(0.125f);
  c.set_dora_exact_grad(true);
  c.set_vera_d_init(0.75f);
  c.add_feedforward("down_proj");
  c.add_feedforward("re:.*fc2");
  c.set_act("gelu_tanh");
  RankPattern* rp = c.add_rank_pattern();
  rp->set_pattern("q_proj");
  rp->set_r(3);
  AlphaPattern* ap = c.add_alpha_pattern();
  ap->set_pattern("v_proj");
  ap->set_alpha(7.5f);
  c.add_targets("q_proj");
  c.add_targets("v_proj");
  c.add_modules("l.0.q_proj");
  c.add_modules("l.0.v_proj");
  c.add_conv1d(false);
  c.add_conv1d(true);
  c.set_base_model("llama-tiny");
  c.set_base_fingerprint("ab12");
  c.add_embedding_modules("embed_tokens");
  c.add_modules_to_save("lm_head");
  const AdapterConfig back = parse_config_json(config_json(c), "j");
  EXPECT_EQ(back.DebugString(), c.DebugString());
  EXPECT_EQ(adapter_config(adapter_from_config(back, "j")).DebugString(), c.DebugString());
}

TEST(AdapterConfigMessage, RefusesWhatItCannotFollowNamingTheSourceAndField) {
  AdapterConfig c = parse_config_json(
      R"({"format":1,"kind":"dora","r":8,"alpha":16,"rslora":true,"dropout":0,)"
      R"("dora_exact_grad":true,"vera_d_init":0.1,"feedforward":[],"act":"gelu",)"
      R"("rank_pattern":{},"alpha_pattern":{},"targets":[],"modules":["m"],"conv1d":[false],)"
      R"("base_model":"b"})",
      "old.safetensors");
  EXPECT_EQ(c.base_fingerprint(), "");  // absent in files written before it
  EXPECT_EQ(adapter_from_config(c, "x").spec.kind, Kind::Dora);
  auto err = [](const std::function<void()>& f) { return testing::error_of(f); };
  EXPECT_NE(err([] { parse_config_json(R"({"format":2})", "f.st"); }).find("'f.st' has format 2"),
            std::string::npos);
  EXPECT_NE(err([] {
              parse_config_json(R"({"format":1,"kind":"lora"})", "f.st");
            }).find("'f.st': metadata field 'r' is missing"),
            std::string::npos);
  EXPECT_NE(err([] { parse_config_json("[1]", "f.st"); }).find("not a JSON object"),
            std::string::npos);
  AdapterConfig bad = c;
  bad.add_conv1d(true);
  EXPECT_NE(err([&] { adapter_from_config(bad, "rec"); }).find("1 modules but 2 conv1d flags"),
            std::string::npos);
  bad = c;
  bad.set_kind("lorax");
  EXPECT_NE(err([&] { adapter_from_config(bad, "rec"); }).find("lorax"), std::string::npos);
  bad = c;
  bad.clear_modules();
  bad.clear_conv1d();
  EXPECT_NE(err([&] { adapter_from_config(bad, "rec"); }).find("adapts no module"),
            std::string::npos);
}

}  // namespace
}  // namespace tessera::adapters
