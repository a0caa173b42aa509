#include "launch/config.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "runtime/common/error.h"
#include "runtime/nn/models.h"
#include "tests/testing.h"

namespace tessera::launch {
namespace {

using testing::error_of;

TEST(Config, DefaultsAreValidForBothModels) {
  EXPECT_NO_THROW(validate_config(default_config("mlp")));
  EXPECT_NO_THROW(validate_config(default_config("decoder")));
  EXPECT_EQ(default_config("decoder").decoder().d_model(), 256);
}

TEST(Config, FileOverridesDefaultsAndReplacesLists) {
  const std::string dir = testing::temp_dir("cfg");
  std::ofstream(dir + "/a.pbtxt")
      << "model: \"mlp\"\nmlp { hidden: 64 }\noptim { lr: 0.01 weight_decay: 0 }\n";
  PretrainConfig c = resolve_config(dir + "/a.pbtxt", {});
  ASSERT_EQ(c.mlp().hidden_size(), 1);  // replaced, not appended to [512, 512]
  EXPECT_EQ(c.mlp().hidden(0), 64);
  EXPECT_FLOAT_EQ(c.optim().lr(), 0.01f);
  EXPECT_FLOAT_EQ(c.optim().weight_decay(), 0.0f);  // an explicit zero is kept
  EXPECT_EQ(c.mlp().in_features(), 784);            // untouched defaults stay
}

TEST(Config, OverridesSetNestedScalarsAndLists) {
  PretrainConfig c =
      resolve_config("", {"optim.lr=3e-4", "mlp.hidden=32,16", "seed=7", "data.dir=/x y"}, "mlp");
  EXPECT_FLOAT_EQ(c.optim().lr(), 3e-4f);
  ASSERT_EQ(c.mlp().hidden_size(), 2);
  EXPECT_EQ(c.mlp().hidden(1), 16);
  EXPECT_EQ(c.seed(), 7u);
  EXPECT_EQ(c.data().dir(), "/x y");
  EXPECT_EQ(resolve_config("", {"model=decoder"}).model(), "decoder");
}

TEST(Config, UnknownKeyIsNamed) {
  std::string e = error_of([] { resolve_config("", {"optim.learning_rate=1"}, "mlp"); });
  EXPECT_NE(e.find("optim.learning_rate"), std::string::npos) << e;
  EXPECT_NE(e.find("lr"), std::string::npos) << e;  // lists the fields that exist
  const std::string dir = testing::temp_dir("cfg2");
  std::ofstream(dir + "/b.pbtxt") << "model: \"mlp\"\nbatchsize: 3\n";
  e = error_of([&] { resolve_config(dir + "/b.pbtxt", {}); });
  EXPECT_NE(e.find("batchsize"), std::string::npos) << e;
  EXPECT_NE(e.find("b.pbtxt:2"), std::string::npos) << e;  // file and line
}

TEST(Config, WrongTypeIsNamed) {
  std::string e = error_of([] { resolve_config("", {"batch_size=many"}, "mlp"); });
  EXPECT_NE(e.find("batch_size"), std::string::npos) << e;
  e = error_of([] { resolve_config("", {"optim=1"}, "mlp"); });
  EXPECT_NE(e.find("message"), std::string::npos) << e;
  e = error_of([] { resolve_config("", {"noequals"}, "mlp"); });
  EXPECT_NE(e.find("key=value"), std::string::npos) << e;
}

TEST(Config, OutOfRangeAndBadChoiceAreNamed) {
  std::string e = error_of([] { resolve_config("", {"batch_size=0"}, "mlp"); });
  EXPECT_NE(e.find("batch_size"), std::string::npos) << e;
  e = error_of([] { resolve_config("", {"optim.lr=0"}, "mlp"); });
  EXPECT_NE(e.find("optim.lr"), std::string::npos) << e;
  e = error_of([] { resolve_config("", {"data.holdout=0.9"}, "decoder"); });
  EXPECT_NE(e.find("data.holdout"), std::string::npos) << e;
  e = error_of([] { resolve_config("", {"optim.kind=adam"}, "mlp"); });
  EXPECT_NE(e.find("adamw"), std::string::npos) << e;
  e = error_of([] { resolve_config("", {"mlp.hidden=8,-1"}, "mlp"); });
  EXPECT_NE(e.find("mlp.hidden[1]"), std::string::npos) << e;
  e = error_of([] { resolve_config("", {}, "transformer"); });
  EXPECT_NE(e.find("model"), std::string::npos) << e;
}

TEST(Config, MissingFileIsNamed) {
  std::string e = error_of([] { resolve_config("/no/such.pbtxt", {}); });
  EXPECT_NE(e.find("/no/such.pbtxt"), std::string::npos) << e;
}

}  // namespace
}  // namespace tessera::launch

namespace tessera::launch {
namespace {

TEST(AdapterSpec, ParsesAndNamesMistakes) {
  AdapterArgs a =
      parse_adapter_spec("lora:r=4,alpha=8,rslora=true,dropout=0.1,targets=q_proj|re:.*v_proj");
  EXPECT_EQ(a.spec.kind, adapters::Kind::Lora);
  EXPECT_EQ(a.spec.lora.base.r, 4);
  EXPECT_FLOAT_EQ(a.spec.lora.base.alpha, 8.0f);
  EXPECT_TRUE(a.spec.lora.base.rslora);
  EXPECT_FLOAT_EQ(a.spec.dropout, 0.1f);
  EXPECT_EQ(a.targets, (std::vector<std::string>{"q_proj", "re:.*v_proj"}));
  EXPECT_EQ(parse_adapter_spec("lora").targets, (std::vector<std::string>{"all-linear"}));
  EXPECT_EQ(parse_adapter_spec("dora:exact_grad=true").spec.kind, adapters::Kind::Dora);
  EXPECT_TRUE(parse_adapter_spec("dora:exact_grad=true").spec.dora_exact_grad);
  EXPECT_FLOAT_EQ(parse_adapter_spec("vera:r=32,d_init=0.5").spec.vera_d_init, 0.5f);
  EXPECT_EQ(parse_adapter_spec("ia3:feedforward=down_proj").spec.feedforward,
            (std::vector<std::string>{"down_proj"}));
  AdapterArgs b = parse_adapter_spec("bottleneck:r=8,placement=pfeiffer,act=gelu");
  EXPECT_EQ(b.targets, adapters::placement_targets("pfeiffer"));
  EXPECT_EQ(b.spec.act, nn::Act::Gelu);
  EXPECT_EQ(parse_adapter_spec("bottleneck").targets, adapters::placement_targets("houlsby"));
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

TEST(Config, ShippedConfigsResolve) {
  int n = 0;
  for (const auto& e : std::filesystem::directory_iterator(testing::source_dir() + "/configs")) {
    if (e.path().extension() != ".pbtxt") continue;
    EXPECT_NO_THROW(resolve_config(e.path().string(), {})) << e.path();
    ++n;
  }
  EXPECT_GE(n, 3);
}

}  // namespace
}  // namespace tessera::launch
