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
  RunConfig c = resolve_config(dir + "/a.pbtxt", {});
  ASSERT_EQ(c.mlp().hidden_size(), 1);  // replaced, not appended to [512, 512]
  EXPECT_EQ(c.mlp().hidden(0), 64);
  EXPECT_FLOAT_EQ(c.optim().lr(), 0.01f);
  EXPECT_FLOAT_EQ(c.optim().weight_decay(), 0.0f);  // an explicit zero is kept
  EXPECT_EQ(c.mlp().in_features(), 784);            // untouched defaults stay
}

TEST(Config, OverridesSetNestedScalarsAndLists) {
  RunConfig c =
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
