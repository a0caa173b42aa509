// The command line's adapter shorthand: keys, per-kind defaults and refusals.
#include "adapters/spec.h"

#include <gtest/gtest.h>

#include "runtime/common/error.h"
#include "runtime/nn/models.h"

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

}  // namespace
}  // namespace tessera::adapters
