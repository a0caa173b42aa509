// Learned gates on a model: the gated slot against a hand computation, shared
// decisions per block and globally, the auxiliary losses and the
// loss-free bias through the trainer, and every bad option refused.
#include "routing/gates.h"

#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

#include "runtime/autograd/tape.h"
#include "runtime/common/error.h"
#include "runtime/train/config.h"
#include "runtime/train/trainer.h"
#include "tests/testing.h"

namespace tessera::routing {
namespace {

using testing::error_of;
using testing::randn;

TEST(GatedLora, AddsTheGatedMixtureOfTheSelectedExpertsOnly) {
  Rng rng(1);
  const int64_t N = 5, in = 6, out = 4, r = 2, E = 3;
  nn::ParameterSet ps;
  GateOptions o;
  o.top_k = 2;
  auto gate = std::make_shared<LearnedGate>(ps, "g", in, E, o, 3);
  ExpertStack s;
  s.A = randn({E, r, in}, rng, 0.5f);
  s.B = randn({E, out, r}, rng, 0.5f);
  s.scales = {0.5f, 2.0f, 1.0f};
  for (Combine c : {Combine::MergeAfter, Combine::MergeBefore}) {
    GatedLora slot(s, gate, c);
    const Tensor x = randn({N, in}, rng), base = randn({N, out}, rng);
    const Tensor y = slot.forward(x, base, nn::Linear());
    const Tensor& W = ps.at("g.weight");
    for (int64_t t = 0; t < N; ++t) {
      // Logits by hand; the two largest; weights renormalised over them.
      std::vector<double> z(E);
      for (int64_t e = 0; e < E; ++e)
        for (int64_t i = 0; i < in; ++i)
          z[e] += double(W.data()[e * in + i]) * x.data()[t * in + i];
      int a = 0;
      for (int e = 1; e < E; ++e) a = z[e] > z[a] ? e : a;
      int b = a == 0 ? 1 : 0;
      for (int e = 0; e < E; ++e) b = e != a && z[e] > z[b] ? e : b;
      const double wa = 1 / (1 + std::exp(z[b] - z[a])), wb = 1 - wa;
      ASSERT_EQ(slot.last().ids[t * 2], a);
      ASSERT_EQ(slot.last().ids[t * 2 + 1], b);
      // h_e = A_e x; merge-after: Σ w s_e B_e h_e; merge-before: Σ w s_e B_e (Σ w A x).
      auto h = [&](int e, int64_t j) {
        double v = 0;
        for (int64_t i = 0; i < in; ++i)
          v += double(s.A.data()[(e * r + j) * in + i]) * x.data()[t * in + i];
        return v;
      };
      for (int64_t o2 = 0; o2 < out; ++o2) {
        double want = base.data()[t * out + o2];
        for (auto [e, w] : {std::pair<int, double>{a, wa}, {b, wb}})
          for (int64_t j = 0; j < r; ++j) {
            const double z2 = c == Combine::MergeAfter ? h(e, j) : wa * h(a, j) + wb * h(b, j);
            want += w * s.scales[e] * s.B.data()[(e * out + o2) * r + j] * z2;
          }
        EXPECT_NEAR(y.data()[t * out + o2], want, 1e-5) << t << "," << o2;
      }
    }
  }
}

TEST(GateOptions, EveryBadOptionIsRefusedNamingIt) {
  GateOptions o;
  o.top_k = 1;
  EXPECT_NE(error_of([&] { check_gate_options(o); }).find("switch"), std::string::npos);
  o.weights = ops::GateWeights::Softmax;
  EXPECT_NO_THROW(check_gate_options(o));
  o.jitter = 1.0f;
  EXPECT_NE(error_of([&] { check_gate_options(o); }).find("jitter"), std::string::npos);
  o.jitter = 0;
  o.balance = -1;
  EXPECT_NE(error_of([&] { check_gate_options(o); }).find("balance"), std::string::npos);
  o.balance = NAN;
  EXPECT_NE(error_of([&] { check_gate_options(o); }).find("balance"), std::string::npos);
  o.balance = 0;
  o.top_k = 4;
  nn::ParameterSet ps;
  EXPECT_NE(error_of([&] { LearnedGate(ps, "g", 3, 3, o, 1); }).find("top_k = 4 for 3"),
            std::string::npos);
  EXPECT_EQ(granularity_names().parse("block", "granularity"), Granularity::Block);
  EXPECT_EQ(gate_weights_names().parse("straight-through", "weights"),
            ops::GateWeights::StraightThrough);
}

std::string make_corpus(const std::string& dir) {
  std::ofstream f(dir + "/corpus.txt");
  Rng rng(5);
  const char* words[] = {"the ", "adapter ", "library ", "routes ", "tokens ", "to ", "experts. "};
  for (int i = 0; i < 3000; ++i) f << words[rng.below(7)];
  return dir + "/corpus.txt";
}

RunConfig corpus_decoder(const std::string& dir, const std::string& flavor = "gpt2") {
  return train::resolve_config(
      "",
      {"decoder.flavor=" + flavor, "decoder.d_model=32", "decoder.n_layer=2", "decoder.n_head=4",
       "decoder.n_ctx=16", "batch_size=4", "steps=40", "optim.lr=0.01", "optim.warmup_steps=2",
       "data.files=" + make_corpus(dir), "eval_batches=2", "out_dir=", "threads=2"},
      "decoder");
}

// Fresh experts on both MLP projections of every block, the base frozen.
struct GatedRun {
  train::Trainer trainer;
  nn::ParameterSet trained;
  std::unique_ptr<Mixture> mixture;
  GatedRun(const RunConfig& cfg, const GateOptions& o, int64_t E) : trainer(cfg) {
    trainer.attach([&](std::vector<nn::Linear*> linears, nn::ParameterSet& base) {
      base.set_trainable("*", false);
      std::map<std::string, ExpertStack> experts;
      Rng rng(11);
      for (nn::Linear* l : linears)
        if (l->name().find(".mlp.") != std::string::npos)
          experts[l->name()] = fresh_experts(trained, l->name(), E, 4, 8.0f, l->in_features(),
                                             l->out_features(), rng);
      mixture = std::make_unique<Mixture>(linears, std::move(experts), o, trained, 21);
      return &trained;
    });
    mixture->add_to(trainer);
  }
};

TEST(Mixture, TrainsGatesAndExpertsWithTheAuxiliaryLosses) {
  const std::string dir = testing::temp_dir("gates_train");
  GateOptions o;
  o.top_k = 2;
  o.balance = 0.01f;
  o.z_loss = 0.001f;
  o.jitter = 0.01f;
  GatedRun run(corpus_decoder(dir), o, 4);
  ASSERT_EQ(run.mixture->gates().size(), 4u);  // per module: two blocks × two projections
  const std::vector<float> gate0 =
      run.trained.at(run.mixture->gates()[0]->name() + ".weight").to_vector();
  const double before = run.trainer.evaluate().loss;
  const train::StepStats first = run.trainer.train_step();
  ASSERT_EQ(first.terms.size(), 2u);
  EXPECT_EQ(first.terms[0].first, "balance");
  EXPECT_EQ(first.terms[1].first, "z_loss");
  EXPECT_GT(first.terms[0].second, 0.0f);
  for (int i = 0; i < 39; ++i) run.trainer.train_step();
  // A frozen random base limits what rank-4 experts on its MLPs can learn:
  // 5.52 → 5.20 nats with this seed.
  EXPECT_LT(run.trainer.evaluate().loss, before - 0.2);
  // The gate learned (it started U(±1/√32) and moved) and the experts left zero.
  const std::vector<float> gate1 =
      run.trained.at(run.mixture->gates()[0]->name() + ".weight").to_vector();
  double moved = 0;
  for (size_t i = 0; i < gate0.size(); ++i) moved += std::abs(gate1[i] - gate0[i]);
  EXPECT_GT(moved, 1e-3);
  double b = 0;
  for (float v : run.trained.at("transformer.h.0.mlp.c_fc.lora_B").to_vector()) b += std::abs(v);
  EXPECT_GT(b, 1e-3);
  // Evaluation runs the gates without recording or jitter.
  EXPECT_TRUE(std::isfinite(run.trainer.evaluate().loss));
}

TEST(Mixture, BlockAndGlobalGatesDecideOnceForEveryModuleTheyCover) {
  const std::string dir = testing::temp_dir("gates_share");
  for (Granularity g : {Granularity::Block, Granularity::Global}) {
    GateOptions o;
    o.top_k = 1;
    o.weights = ops::GateWeights::StraightThrough;
    o.granularity = g;
    GatedRun run(corpus_decoder(dir), o, 3);
    EXPECT_EQ(run.mixture->gates().size(), g == Granularity::Block ? 2u : 1u);
    run.trainer.train_step();
    const auto& slots = run.mixture->slots();
    ASSERT_EQ(slots.size(), 4u);
    EXPECT_TRUE(slots[0].second->decides());
    EXPECT_FALSE(slots[1].second->decides());
    EXPECT_EQ(slots[1].second->last().ids, slots[0].second->last().ids);
    if (g == Granularity::Global)
      EXPECT_EQ(slots[3].second->last().ids, slots[0].second->last().ids);
    else
      EXPECT_NE(slots[2].second->last().ids, slots[0].second->last().ids);
  }
}

// Llama's MLP calls gate_proj and up_proj as the two arguments of one
// function, in an order the compiler picks: a block's gate decides from
// whichever runs first, and the three projections share that decision.
TEST(Mixture, BlockGatesDecideWhateverOrderTheModulesRunIn) {
  const std::string dir = testing::temp_dir("gates_llama");
  GateOptions o;
  o.top_k = 2;
  o.granularity = Granularity::Block;
  GatedRun run(corpus_decoder(dir, "llama"), o, 3);
  ASSERT_EQ(run.mixture->gates().size(), 2u);
  for (int i = 0; i < 3; ++i) run.trainer.train_step();
  const auto& slots = run.mixture->slots();  // gate_proj, up_proj, down_proj per layer
  ASSERT_EQ(slots.size(), 6u);
  EXPECT_EQ(slots[0].second->last().ids, slots[1].second->last().ids);
  EXPECT_EQ(slots[0].second->last().ids, slots[2].second->last().ids);
  EXPECT_FALSE(slots[2].second->decides());  // down_proj: another width
  EXPECT_TRUE(std::isfinite(run.trainer.evaluate().loss));
}

// Two slots of one gate called B, A, B, A: A reuses B's decision; B's second
// call starts the next forward's.
TEST(LearnedGate, ASlotCalledAgainStartsTheNextDecision) {
  Rng rng(4);
  nn::ParameterSet ps;
  GateOptions o;
  o.top_k = 1;
  o.weights = ops::GateWeights::Softmax;
  auto gate = std::make_shared<LearnedGate>(ps, "g", 6, 4, o, 1);
  ExpertStack s;
  s.A = randn({4, 2, 6}, rng);
  s.B = randn({4, 3, 2}, rng);
  s.scales = {1, 1, 1, 1};
  GatedLora a(s, gate, Combine::MergeAfter), b(s, gate, Combine::MergeAfter);
  const Tensor x1 = randn({16, 6}, rng), x2 = randn({16, 6}, rng), base = randn({16, 3}, rng);
  b.forward(x1, base, nn::Linear());
  a.forward(x2, base, nn::Linear());
  EXPECT_EQ(a.last().ids, b.last().ids);  // reused: decided on x1
  const std::vector<int32_t> first = b.last().ids;
  b.forward(x2, base, nn::Linear());  // a new forward: decided on x2
  EXPECT_NE(b.last().ids, first);
  a.forward(x1, base, nn::Linear());
  EXPECT_EQ(a.last().ids, b.last().ids);
  // A call with another row count cannot reuse; a width the gate does not
  // take cannot decide.
  EXPECT_NO_THROW(a.forward(randn({5, 6}, rng), randn({5, 3}, rng), nn::Linear()));
  ExpertStack wide;
  wide.A = randn({4, 2, 9}, rng);
  wide.B = randn({4, 3, 2}, rng);
  wide.scales = {1, 1, 1, 1};
  GatedLora c(wide, gate, Combine::MergeAfter);
  EXPECT_NE(error_of([&] {
              c.forward(randn({7, 9}, rng), randn({7, 3}, rng), nn::Linear());
            }).find("decides from inputs of width 6"),
            std::string::npos);
}

TEST(Mixture, LossFreeBiasFollowsTheStepsLoad) {
  const std::string dir = testing::temp_dir("gates_bias");
  GateOptions o;
  o.top_k = 1;
  o.weights = ops::GateWeights::Softmax;
  o.granularity = Granularity::Global;
  o.bias_update_rate = 0.001f;
  GatedRun run(corpus_decoder(dir), o, 4);
  std::vector<float> want(4, 0.0f);
  for (int step = 0; step < 3; ++step) {
    run.trainer.train_step();
    // One decision per step (global gate): the loads are its selections.
    std::vector<int64_t> load(4, 0);
    for (int32_t id : run.mixture->slots()[0].second->last().ids) ++load[id];
    double mean = 0;
    for (int64_t c : load) mean += c / 4.0;
    for (int e = 0; e < 4; ++e) want[e] += 0.001f * ((mean > load[e]) - (mean < load[e]));
    for (int e = 0; e < 4; ++e) EXPECT_NEAR(run.mixture->gates()[0]->bias()[e], want[e], 1e-7);
  }
  double total = 0;
  for (float v : want) total += std::abs(v);
  EXPECT_GT(total, 0);
}

TEST(Mixture, RefusesAnUnknownModuleAndMismatchedExperts) {
  const std::string dir = testing::temp_dir("gates_bad");
  train::Trainer t(corpus_decoder(dir));
  nn::ParameterSet ps;
  Rng rng(2);
  t.attach([&](std::vector<nn::Linear*> linears, nn::ParameterSet& base) {
    base.set_trainable("*", false);
    std::map<std::string, ExpertStack> e;
    e["no.such.module"] = fresh_experts(ps, "x", 2, 2, 2.0f, 32, 128, rng);
    EXPECT_NE(error_of([&] {
                Mixture(linears, e, GateOptions{}, ps, 1);
              }).find("no module named 'no.such.module'"),
              std::string::npos);
    std::map<std::string, ExpertStack> wrong;
    wrong["transformer.h.0.mlp.c_fc"] = fresh_experts(ps, "y", 2, 2, 2.0f, 16, 128, rng);
    EXPECT_NE(error_of([&] {
                Mixture(linears, wrong, GateOptions{}, ps, 1);
              }).find("the module maps 32 -> 128"),
              std::string::npos);
    return &ps;
  });
}

}  // namespace
}  // namespace tessera::routing
