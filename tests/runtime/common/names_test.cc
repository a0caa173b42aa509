// The one enum <-> name helper: names both ways, and the one refusal message.
#include "runtime/common/names.h"

#include <gtest/gtest.h>

#include "runtime/nn/models.h"

namespace tessera {
namespace {

TEST(NameTable, NamesBothWaysAndListsEveryChoiceWhenRefusing) {
  enum class C { A, B, Z };
  const NameTable<C> t = {{C::A, "alpha"}, {C::B, "beta"}};
  EXPECT_STREQ(t.name(C::B), "beta");
  EXPECT_STREQ(t.name(C::Z), "?");
  EXPECT_EQ(t.parse("alpha", "thing"), C::A);
  EXPECT_EQ(t.list(), "alpha or beta");
  try {
    t.parse("gamma", "config field x");
    FAIL() << "an unknown name was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), "config field x 'gamma': expected one of alpha or beta");
  }
  // The tables in use round-trip every row.
  for (const auto& [f, n] : nn::flavor_names().rows()) EXPECT_EQ(nn::flavor_of(n), f);
  for (const auto& [a, n] : nn::act_names().rows()) EXPECT_EQ(nn::act_names().parse(n, "x"), a);
  EXPECT_EQ(nn::flavor_names().list(), "gpt2, llama, mistral, qwen2, qwen3, phi3 or gemma");
}

}  // namespace
}  // namespace tessera
