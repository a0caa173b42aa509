// Mixed-adapter batches: a mixed batch against running each row with its own
// adapter, and training several experts in one pass against training each
// alone (the gather kernel's own tests: tests/runtime/kernels/lora_test.cc).
#include "adapters/bank.h"

#include <gtest/gtest.h>

#include "runtime/autograd/ops.h"
#include "runtime/common/error.h"
#include "runtime/nn/models.h"
#include "runtime/optim/optim.h"
#include "tests/testing.h"

namespace tessera::adapters {
namespace {

using testing::randn;

TEST(BankSet, MixedBatchEqualsEachRowWithItsOwnAdapter) {
  Rng rng(3);
  nn::Decoder model(testing::tiny_decoder(nn::Flavor::Llama), rng);
  const int64_t E = 4, T = 6;
  std::vector<int32_t> ids = {2, -1, 0, 3, 2, 1};  // one expert per sequence
  const int64_t Bn = static_cast<int64_t>(ids.size());
  std::vector<int32_t> tok(Bn * T);
  for (auto& t : tok) t = static_cast<int32_t>(rng.uniform(0, 30));
  // Reference: each sequence alone through an AdapterSet holding its expert.
  LoraSpec spec(LoraConfig{3, 6.0f, false});
  spec.rank_pattern = {{"down_proj", 2}};  // a module of another rank
  std::vector<std::vector<std::pair<std::string, LoraFactors>>> experts;
  for (int64_t e = 0; e < E; ++e) {
    AdapterSet set(model.linears(), model.params(), {"all-linear"}, spec, 10 + e);
    for (auto& p : set.params().all())
      for (int64_t i = 0; i < p.tensor.numel(); ++i) p.tensor.data()[i] += rng.normal(0, 0.3f);
    std::vector<std::pair<std::string, LoraFactors>> f;
    for (size_t i = 0; i < set.modules().size(); ++i)
      f.push_back(
          {set.modules()[i], LoraFactors{set.loras()[i]->A().clone(), set.loras()[i]->B().clone(),
                                         set.loras()[i]->scale()}});
    experts.push_back(f);
  }
  std::vector<float> want;
  for (int64_t b = 0; b < Bn; ++b) {
    std::vector<int32_t> one(tok.begin() + b * T, tok.begin() + (b + 1) * T);
    std::vector<float> y;
    if (ids[b] < 0) {
      y = model.forward(one, 1, T).to_vector();
    } else {
      AdapterSet set(model.linears(), model.params(), {"all-linear"}, spec, 0);
      for (size_t i = 0; i < set.modules().size(); ++i) {
        Tensor(set.loras()[i]->A()).copy_from(experts[ids[b]][i].second.A);
        Tensor(set.loras()[i]->B()).copy_from(experts[ids[b]][i].second.B);
      }
      y = model.forward(one, 1, T).to_vector();
    }
    want.insert(want.end(), y.begin(), y.end());
  }
  // One bank of rank 3 everywhere: the rank-2 modules are zero-padded, exactly.
  BankSet bank(model.linears(), model.params(), {"all-linear"}, E, LoraConfig{3, 6.0f, false}, 1);
  for (int64_t e = 0; e < E; ++e) bank.load_expert(e, experts[e]);
  bank.route(ids);
  std::vector<float> got = model.forward(tok, Bn, T).to_vector();
  EXPECT_LT(testing::rel_err(got, want), 1e-5);
  // Expert slices read back what was loaded (padding dropped by the rank).
  auto back = bank.expert(1);
  EXPECT_EQ(back[0].second.scale, experts[1][0].second.scale);
  EXPECT_THROW(bank.route({0, 4}), Error);
  EXPECT_THROW(bank.load_expert(0, {}), Error);
}

TEST(BankSet, ExpertsTrainedTogetherMatchEachTrainedAlone) {
  // Two tasks on one MLP base; the loss is the sum of per-task means, so each
  // expert's gradient is exactly its own task's.
  Rng rng(4);
  nn::MlpClassifier model(nn::MlpSpec{10, {8}, 3}, rng);
  const int64_t n = 12;
  Tensor xs[2] = {randn({n, 10}, rng), randn({n, 10}, rng)};
  std::vector<int32_t> ys[2];
  for (auto& y : ys)
    for (int64_t i = 0; i < n; ++i) y.push_back(static_cast<int32_t>(rng.uniform(0, 3)));
  const LoraConfig cfg{2, 4.0f, false};
  std::vector<std::vector<std::pair<std::string, LoraFactors>>> alone, init;
  for (int t = 0; t < 2; ++t) {
    AdapterSet set(model.linears(), model.params(), {"all-linear"}, cfg, 20 + t);
    std::vector<std::pair<std::string, LoraFactors>> f0;
    for (size_t i = 0; i < set.modules().size(); ++i)
      f0.push_back({set.modules()[i],
                    LoraFactors{set.loras()[i]->A().clone(), set.loras()[i]->B().clone(), 2.0f}});
    init.push_back(f0);
    optim::AdamW opt(set.params(), {});
    for (int step = 0; step < 6; ++step) {
      set.params().zero_grad();
      autograd::Tape tape;
      tape.backward(ops::cross_entropy(model.forward(xs[t]), ys[t]));
      opt.step(1e-2f);
    }
    std::vector<std::pair<std::string, LoraFactors>> f;
    for (size_t i = 0; i < set.modules().size(); ++i)
      f.push_back({set.modules()[i],
                   LoraFactors{set.loras()[i]->A().clone(), set.loras()[i]->B().clone(), 2.0f}});
    alone.push_back(f);
  }
  BankSet bank(model.linears(), model.params(), {"all-linear"}, 3, cfg, 1);
  for (int t = 0; t < 2; ++t) bank.load_expert(t, init[t]);
  std::vector<float> unused_before = bank.expert(2)[0].second.A.to_vector();
  Tensor x = Tensor::empty({2 * n, 10});
  std::copy_n(xs[0].data(), n * 10, x.data());
  std::copy_n(xs[1].data(), n * 10, x.data() + n * 10);
  std::vector<int32_t> route(n, 0);
  route.insert(route.end(), n, 1);
  bank.route(route);
  optim::AdamW opt(bank.params(), {});
  for (int step = 0; step < 6; ++step) {
    bank.params().zero_grad();
    autograd::Tape tape;
    Tensor logits = model.forward(x);
    std::vector<int32_t> t0(2 * n, -1), t1(2 * n, -1);  // -1: ignored row
    for (int64_t i = 0; i < n; ++i) {
      t0[i] = ys[0][i];
      t1[n + i] = ys[1][i];
    }
    // mean over each task's rows: cross_entropy averages over non-ignored rows.
    tape.backward(ops::add(ops::cross_entropy(logits, t0), ops::cross_entropy(logits, t1)));
    opt.step(1e-2f);
  }
  for (int t = 0; t < 2; ++t) {
    auto got = bank.expert(t);
    for (size_t i = 0; i < got.size(); ++i) {
      EXPECT_LT(testing::rel_err(got[i].second.A.to_vector(), alone[t][i].second.A.to_vector()),
                1e-4)
          << t << " " << got[i].first;
      EXPECT_LT(testing::rel_err(got[i].second.B.to_vector(), alone[t][i].second.B.to_vector()),
                1e-4)
          << t << " " << got[i].first;
    }
  }
  // The unrouted expert got no gradient. (AdamW's decoupled weight decay still
  // shrinks it: compare its direction, not its values.)
  EXPECT_FALSE(bank.params().all().front().tensor.grad().to_vector().empty());
  std::vector<float> unused_after = bank.expert(2)[0].second.A.to_vector();
  const float ratio = unused_after[0] / unused_before[0];
  for (size_t i = 0; i < unused_after.size(); ++i)
    EXPECT_NEAR(unused_after[i], unused_before[i] * ratio, 1e-6);
}

}  // namespace
}  // namespace tessera::adapters
