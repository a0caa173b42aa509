// Training behaviour: determinism, bit-identical resume, and a short real-data run.
#include "runtime/train/trainer.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "runtime/common/error.h"
#include "runtime/train/config.h"
#include "tests/testing.h"

namespace tessera::train {
namespace {

// A small text corpus the test writes itself.
std::string make_corpus(const std::string& dir) {
  std::ofstream f(dir + "/corpus.txt");
  Rng rng(5);
  const char* words[] = {"the ", "adapter ", "library ", "routes ", "tokens ", "to ", "experts. "};
  for (int i = 0; i < 3000; ++i) f << words[rng.below(7)];
  return dir + "/corpus.txt";
}

RunConfig tiny_decoder(const std::string& dir, const std::string& flavor) {
  RunConfig c = resolve_config(
      "",
      {"decoder.flavor=" + flavor, "decoder.d_model=32", "decoder.n_layer=2", "decoder.n_head=4",
       "decoder.n_kv_head=" + std::string(flavor == "llama" ? "2" : "4"), "decoder.n_ctx=16",
       "batch_size=4", "steps=50", "optim.warmup_steps=5", "data.files=" + make_corpus(dir),
       "eval_batches=2", "out_dir=", "threads=2"},
      "decoder");
  return c;
}

class Determinism : public ::testing::TestWithParam<std::string> {};

TEST_P(Determinism, SameSeedSameLossesOver50Steps) {
  const std::string dir = testing::temp_dir("det_" + GetParam());
  RunConfig cfg = tiny_decoder(dir, GetParam());
  std::vector<float> a = Trainer(cfg).run();
  std::vector<float> b = Trainer(cfg).run();
  ASSERT_EQ(a.size(), 50u);
  EXPECT_EQ(a, b);  // bit-identical
  EXPECT_LT(a.back(), a.front() - 1.0f) << "the tiny LM should learn the word list";
  cfg.set_seed(cfg.seed() + 1);
  EXPECT_NE(Trainer(cfg).run(), a);
}

TEST_P(Determinism, ResumeEqualsUninterrupted) {
  const std::string dir = testing::temp_dir("resume_" + GetParam());
  RunConfig cfg = tiny_decoder(dir, GetParam());
  cfg.set_steps(30);
  std::vector<float> full = Trainer(cfg).run();
  Trainer first(cfg);
  std::vector<float> head = first.run(13);
  first.save_checkpoint(dir + "/ckpt.safetensors");
  Trainer second(cfg);
  second.load_checkpoint(dir + "/ckpt.safetensors");
  EXPECT_EQ(second.step(), 13);
  std::vector<float> tail = second.run();
  head.insert(head.end(), tail.begin(), tail.end());
  EXPECT_EQ(head, full);
  // Final weights are bit-identical too.
  Trainer straight(cfg);
  straight.run();
  auto& pa = second.params().all();
  auto& pb = straight.params().all();
  for (size_t i = 0; i < pa.size(); ++i)
    EXPECT_EQ(pa[i].tensor.to_vector(), pb[i].tensor.to_vector()) << pa[i].name;
}

INSTANTIATE_TEST_SUITE_P(Flavors, Determinism, ::testing::Values("gpt2", "llama"));

TEST(Checkpoint, RefusesAMismatchedModel) {
  const std::string dir = testing::temp_dir("mismatch");
  RunConfig cfg = tiny_decoder(dir, "gpt2");
  cfg.set_steps(2);
  Trainer t(cfg);
  t.run();
  t.save_checkpoint(dir + "/c.safetensors");
  RunConfig other = cfg;
  other.mutable_decoder()->set_d_model(64);
  Trainer u(other);
  try {
    u.load_checkpoint(dir + "/c.safetensors");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("does not fit"), std::string::npos) << e.what();
  }
  EXPECT_THROW(u.load_checkpoint(dir + "/none.safetensors"), Error);
}

TEST(Tokens, TrainsOnPreTokenisedBins) {
  const std::string dir = testing::temp_dir("tokbins");
  std::vector<uint16_t> toks(6000);
  for (size_t i = 0; i < toks.size(); ++i)
    toks[i] = static_cast<uint16_t>((i * 7) % 300);  // ids above 255
  std::ofstream(dir + "/train.bin", std::ios::binary)
      .write(reinterpret_cast<const char*>(toks.data()),
             static_cast<std::streamsize>(toks.size() * 2));
  RunConfig cfg = resolve_config(
      "",
      {"data.kind=tokens", "data.files=" + dir + "/train.bin", "data.token_bytes=2",
       "decoder.vocab_size=300", "decoder.d_model=32", "decoder.n_layer=1", "decoder.n_head=2",
       "decoder.n_ctx=16", "batch_size=4", "steps=60", "optim.lr=0.01", "optim.warmup_steps=2",
       "eval_batches=2", "out_dir=", "threads=2"},
      "decoder");
  Trainer t(cfg);
  std::vector<float> losses = t.run();
  EXPECT_LT(losses.back(), losses.front() - 1.0f);  // a periodic sequence is learnable
  cfg.mutable_decoder()->set_vocab_size(256);
  try {
    Trainer small(cfg);
    FAIL() << "a vocabulary smaller than the corpus ids was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("vocab_size"), std::string::npos) << e.what();
  }
}

TEST(FashionMnist, MlpReachesEightyPercentOnASubset) {
  RunConfig cfg = resolve_config("",
                                 {"data.limit_train=8192", "data.limit_test=2000", "epochs=0",
                                  "steps=192", "batch_size=128", "out_dir=", "threads=2"},
                                 "mlp");
  Trainer t(cfg);
  t.run();
  EvalResult e = t.evaluate();
  EXPECT_EQ(e.count, 2000);
  EXPECT_GE(e.accuracy, 0.80) << e.summary();
}

}  // namespace
}  // namespace tessera::train

namespace tessera::train {
namespace {

RunConfig sgd_decoder(const std::string& dir) {
  RunConfig c = tiny_decoder(dir, "gpt2");
  c.set_steps(3);
  c.mutable_optim()->set_kind("sgd");
  c.mutable_optim()->set_momentum(0.0f);
  c.mutable_optim()->set_weight_decay(0.0f);
  c.mutable_optim()->set_warmup_steps(0);
  c.mutable_optim()->set_schedule("constant");
  c.mutable_optim()->set_grad_clip(0.0f);
  return c;
}

// An extra term λ·Σ p² on one parameter: the reported loss is the workload's
// plus λ·Σ p², and SGD moves p by −lr·2λp on top of the plain step — by hand.
TEST(LossTerms, AddTheirValueAndTheirGradient) {
  const std::string dir = testing::temp_dir("loss_terms");
  const RunConfig cfg = sgd_decoder(dir);
  const float lambda = 0.25f, lr = cfg.optim().lr();
  Trainer plain(cfg), with(cfg);
  Tensor* p = with.params().find("transformer.h.0.mlp.c_fc.weight");
  ASSERT_NE(p, nullptr);
  const Tensor w = *p;
  const std::vector<float> before = w.to_vector();
  double sq = 0;
  for (float v : before) sq += double(v) * v;
  with.add_loss_term("l2", [&] { return ops::scale(ops::sum(ops::mul(w, w)), lambda); });
  EXPECT_THROW(with.add_loss_term("l2", [&] { return ops::sum(w); }), Error);  // one per name
  const StepStats a = plain.train_step(), b = with.train_step();
  ASSERT_EQ(b.terms.size(), 1u);
  EXPECT_EQ(b.terms[0].first, "l2");
  EXPECT_NEAR(b.terms[0].second, lambda * sq, 1e-3 * lambda * sq);
  EXPECT_NEAR(b.loss, a.loss + lambda * sq, 1e-4 * (a.loss + lambda * sq));
  const std::vector<float> got = w.to_vector();
  const std::vector<float> want_plain =
      plain.params().find("transformer.h.0.mlp.c_fc.weight")->to_vector();
  for (size_t i = 0; i < got.size(); ++i)
    ASSERT_NEAR(got[i], want_plain[i] - lr * 2.0f * lambda * before[i], 1e-6f) << i;
  // A term that returns no single value, or a non-finite one, stops naming itself.
  with.clear_loss_terms();
  with.add_loss_term("bad", [&] { return w; });
  EXPECT_THROW(with.train_step(), Error);
  with.clear_loss_terms();
  with.add_loss_term("nan", [&] { return ops::scale(ops::sum(w), NAN); });
  try {
    with.train_step();
    FAIL() << "a NaN term trained on";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'nan'"), std::string::npos) << e.what();
  }
}

// A subset of the training examples: with a subset of exactly one batch, the
// first step's batch is that subset whatever its order — the same SGD update
// up to summation order — and another subset gives another update.
TEST(TrainSubset, SamplesOnlyTheGivenExamples) {
  const std::string dir = testing::temp_dir("subset");
  RunConfig cfg = sgd_decoder(dir);  // batch_size 4
  const std::string name = "transformer.h.1.mlp.c_proj.weight";
  auto update = [&](std::vector<int64_t> subset) {
    Trainer t(cfg);
    const std::vector<float> before = t.params().find(name)->to_vector();
    t.set_train_subset(std::move(subset));
    t.train_step();
    std::vector<float> d = t.params().find(name)->to_vector();
    for (size_t i = 0; i < d.size(); ++i) d[i] -= before[i];
    return d;
  };
  const std::vector<float> a = update({7, 3, 11, 5});
  EXPECT_LT(testing::rel_err(update({5, 11, 3, 7}), a), 1e-4);
  EXPECT_GT(testing::rel_err(update({0, 1, 2, 4}), a), 0.05);
  // Epochs pass over the subset: 8 examples in batches of 4 are 2 steps an epoch.
  RunConfig by_epoch = cfg;
  by_epoch.set_steps(0);
  by_epoch.set_epochs(3);
  Trainer e(by_epoch);
  e.set_train_subset({0, 1, 2, 3, 4, 5, 6, 7});
  EXPECT_EQ(e.total_steps(), 6);
  // Refusals: out of range, repeated, smaller than one batch, after a step.
  Trainer t(cfg);
  EXPECT_THROW(t.set_train_subset({0, 1, 2, -1}), Error);
  EXPECT_THROW(t.set_train_subset({0, 1, 2, 2}), Error);
  EXPECT_THROW(t.set_train_subset({0, 1}), Error);
  EXPECT_THROW(t.set_train_subset({0, 1, 2, 1 << 30}), Error);
  t.train_step();
  EXPECT_THROW(t.set_train_subset({7, 3, 11, 5}), Error);
}

// A run on a subset resumes bit-identically on the same subset, and its
// checkpoint is refused by a run on every example or on another subset.
TEST(TrainSubset, ResumesOnlyOnTheSameSubset) {
  const std::string dir = testing::temp_dir("subset_resume");
  RunConfig cfg = sgd_decoder(dir);
  cfg.set_steps(6);
  const std::vector<int64_t> subset = {1, 4, 9, 16, 25, 36, 49, 64};
  Trainer whole(cfg);
  whole.set_train_subset(subset);
  const std::vector<float> full = whole.run();
  Trainer first(cfg);
  first.set_train_subset(subset);
  std::vector<float> losses = first.run(3);
  first.save_checkpoint(dir + "/ckpt.safetensors");
  Trainer second(cfg);
  second.set_train_subset(subset);
  second.load_checkpoint(dir + "/ckpt.safetensors");
  const std::vector<float> tail = second.run();
  losses.insert(losses.end(), tail.begin(), tail.end());
  EXPECT_EQ(losses, full);
  Trainer everything(cfg);
  EXPECT_THROW(everything.load_checkpoint(dir + "/ckpt.safetensors"), Error);
  Trainer other(cfg);
  other.set_train_subset({1, 4, 9, 16, 25, 36, 49, 65});
  EXPECT_THROW(other.load_checkpoint(dir + "/ckpt.safetensors"), Error);
  Trainer weights(cfg);  // weights only: the subset does not matter
  EXPECT_NO_THROW(weights.load_checkpoint(dir + "/ckpt.safetensors", true));
}

}  // namespace
}  // namespace tessera::train
