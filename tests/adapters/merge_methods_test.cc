// The merge-method registry: parsing of "name[:key=value,...]" with its
// refusals, and each registered method against the merge function it names.
#include "adapters/merge_methods.h"

#include <gtest/gtest.h>

#include "runtime/common/error.h"
#include "tests/testing.h"

namespace tessera::adapters {
namespace {

std::vector<LoraFactors> three_loras() {
  Rng rng(5);
  std::vector<LoraFactors> v;
  for (int64_t r : {2, 3, 2})
    v.push_back({testing::randn({r, 6}, rng), testing::randn({5, r}, rng), 0.5f * r});
  return v;
}

TEST(MergeMethods, ParsesArgumentsAndRefusesWhatAMethodDoesNotTake) {
  MergeRecipe r = parse_merge_method("dare_ties:p=0.3,density=0.7");
  EXPECT_EQ(r.method, "dare_ties");
  EXPECT_FLOAT_EQ(r.get("p", 0), 0.3f);
  EXPECT_FLOAT_EQ(r.get("density", 0), 0.7f);
  EXPECT_EQ(parse_merge_method("cat").args.size(), 0u);
  try {
    parse_merge_method("avg");
    FAIL() << "unknown method accepted";
  } catch (const Error& e) {
    for (const MergeMethod& m : merge_methods())
      EXPECT_NE(std::string(e.what()).find(m.name), std::string::npos) << e.what();
  }
  EXPECT_THROW(parse_merge_method("ties:p=0.5"), Error);        // ties takes density
  EXPECT_THROW(parse_merge_method("ties:density=x"), Error);    // not a number
  EXPECT_THROW(parse_merge_method("ties:density"), Error);      // not key=number
  EXPECT_THROW(parse_merge_method("linear:lambda=1e"), Error);  // trailing garbage
}

TEST(MergeMethods, EachMethodIsTheFunctionItNames) {
  const auto loras = three_loras();
  const std::vector<float> w = {1.0f, 0.5f, 2.0f};
  std::vector<Tensor> deltas;
  for (const auto& f : loras) deltas.push_back(f.delta());
  auto dense = [](const LoraFactors& f) { return f.delta().to_vector(); };
  Rng rng(0);
  // Dense results are refactored at the largest input rank (3) unless told.
  EXPECT_EQ(dense(merge_module(parse_merge_method("ties:density=0.4"), loras, w, 0, rng, 0)),
            dense(svd_factor(ties(deltas, w, 0.4f), 3)));
  EXPECT_EQ(dense(merge_module(parse_merge_method("linear:lambda=0.5"), loras, w, 2, rng, 0)),
            dense(svd_factor(task_arithmetic(deltas, w, 0.5f), 2)));
  EXPECT_EQ(dense(merge_module(parse_merge_method("cat"), loras, w, 0, rng, 0)),
            dense(merge_cat(loras, w)));
  // Defaults: ties density 0.2, dare p 0.5 (same generator state both sides).
  EXPECT_EQ(dense(merge_module(parse_merge_method("ties"), loras, w, 0, rng, 0)),
            dense(svd_factor(ties(deltas, w, 0.2f), 3)));
  Rng a(9), b(9);
  EXPECT_EQ(dense(merge_module(parse_merge_method("dare_linear"), loras, w, 0, a, 0)),
            dense(svd_factor(dare(deltas, w, 0.5f, b), 3)));
  EXPECT_EQ(dense(merge_module(parse_merge_method("svd:lambda=2"), loras, w, 0, rng, 0)),
            dense(svd_factor(task_arithmetic(deltas, w, 2.0f), 3)));
  Rng c(5), d(5);
  EXPECT_EQ(dense(merge_module(parse_merge_method("dare_ties:p=0.3"), loras, w, 0, c, 0)),
            dense(svd_factor(dare(deltas, w, 0.3f, d, true, 1.0f), 3)));
  std::vector<Tensor> pruned;
  for (const Tensor& t : deltas) pruned.push_back(prune_magnitude(t, 0.5f));
  EXPECT_EQ(
      dense(merge_module(parse_merge_method("magnitude_prune:density=0.5"), loras, w, 0, rng, 0)),
      dense(svd_factor(task_arithmetic(pruned, w), 3)));
  // lego:k as given (k < 1 refused by lego, naming it), else the largest rank.
  EXPECT_THROW(merge_module(parse_merge_method("lego:k=0"), loras, w, 0, rng, 0), Error);
  LegoOptions lo;
  lo.k = 3;
  lo.seed = 4;
  EXPECT_EQ(dense(merge_module(parse_merge_method("lego"), loras, w, 0, rng, 4)),
            dense(lego(loras, w, lo)));
}

TEST(MergeMethods, SoupAveragesAndAdaptersMergeModuleByModule) {
  const auto loras = three_loras();
  std::vector<std::vector<std::pair<std::string, LoraFactors>>> in;
  for (const auto& f : loras) in.push_back({{"q", f}, {"v", f}});
  const auto soup =
      merge_adapters(parse_merge_method("soup"), in, {"a", "b", "c"}, {1, 1, 2}, 0, 0);
  const auto lin =
      merge_adapters(parse_merge_method("linear"), in, {"a", "b", "c"}, {0.25f, 0.25f, 0.5f}, 0, 0);
  ASSERT_EQ(soup.size(), 2u);
  EXPECT_EQ(soup[1].first, "v");
  EXPECT_LT(testing::rel_err(soup[0].second.delta().to_vector(), lin[0].second.delta().to_vector()),
            1e-6);
  in[2].pop_back();
  EXPECT_THROW(merge_adapters(parse_merge_method("cat"), in, {"a", "b", "c"}, {1, 1, 1}, 0, 0),
               Error);  // c adapts one module, a two
  in[2] = {{"k", loras[2]}, {"v", loras[2]}};
  EXPECT_THROW(merge_adapters(parse_merge_method("cat"), in, {"a", "b", "c"}, {1, 1, 1}, 0, 0),
               Error);  // c has no q
  EXPECT_THROW(merge_adapters(parse_merge_method("cat"), in, {"a", "b", "c"}, {1, 1}, 0, 0),
               Error);  // weights per adapter
}

}  // namespace
}  // namespace tessera::adapters
