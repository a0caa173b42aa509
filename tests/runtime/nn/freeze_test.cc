// A frozen base: parameters frozen by glob get no gradient and stay
// bit-identical through training steps, while the rest trains — the contract
// every adapter workload relies on.
#include <gtest/gtest.h>

#include "runtime/autograd/ops.h"
#include "runtime/autograd/tape.h"
#include "runtime/nn/models.h"
#include "runtime/optim/optim.h"
#include "tests/testing.h"

namespace tessera::nn {
namespace {

TEST(Freeze, FrozenBaseGetsNoGradientAndStaysBitIdentical) {
  Rng rng(3);
  DecoderSpec spec;
  spec.flavor = Flavor::Llama;
  spec.vocab_size = 40;
  spec.n_ctx = 8;
  spec.d_model = 16;
  spec.n_layer = 2;
  spec.n_head = 4;
  spec.n_kv_head = 2;
  spec.tie_embeddings = false;
  Decoder model(spec, rng);
  // Freeze every transformer block; embeddings, final norm and head still train.
  const int frozen = model.params().set_trainable("model.layers.*", false);
  EXPECT_EQ(frozen, 2 * 9);
  EXPECT_EQ(model.params().set_trainable("no.such.*", false), 0);
  std::vector<std::vector<float>> before;
  for (const auto& p : model.params().all()) before.push_back(p.tensor.to_vector());

  optim::AdamW opt(model.params(), {});
  std::vector<int32_t> ids(2 * 8), tgt(2 * 8);
  for (size_t i = 0; i < ids.size(); ++i) {
    ids[i] = static_cast<int32_t>(rng.below(40));
    tgt[i] = static_cast<int32_t>(rng.below(40));
  }
  for (int step = 0; step < 3; ++step) {
    model.params().zero_grad();
    autograd::Tape tape;
    tape.backward(ops::cross_entropy(model.forward(ids, 2, 8), tgt));
    opt.step(1e-2f);
  }
  size_t k = 0;
  for (const auto& p : model.params().all()) {
    const bool is_frozen = p.name.rfind("model.layers.", 0) == 0;
    EXPECT_EQ(p.tensor.requires_grad(), !is_frozen) << p.name;
    if (is_frozen) {
      EXPECT_FALSE(p.tensor.grad().defined()) << p.name << " got a weight gradient";
      EXPECT_EQ(p.tensor.to_vector(), before[k]) << p.name << " changed";
    } else {
      EXPECT_TRUE(p.tensor.grad().defined()) << p.name;
      EXPECT_NE(p.tensor.to_vector(), before[k]) << p.name << " did not train";
    }
    ++k;
  }
}

TEST(Freeze, GlobMatching) {
  EXPECT_TRUE(glob_match("model.layers.*.q_proj.weight", "model.layers.3.self_attn.q_proj.weight"));
  EXPECT_TRUE(glob_match("*", ""));
  EXPECT_TRUE(glob_match("a?c", "abc"));
  EXPECT_FALSE(glob_match("a?c", "ac"));
  EXPECT_FALSE(glob_match("model.*.bias", "model.layers.0.weight"));
}

}  // namespace
}  // namespace tessera::nn
