// Poly / MHR against PEFT's own PolyModel (tests/fixtures/poly,
// scripts/gen_poly_fixture.py) on an MLP and on the tiny Llama; the weights
// and the split mixing against finite differences; unknown tasks, MHR-z,
// MHR-μ and the logits' own learning rate.
#include "routing/poly.h"

#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "runtime/autograd/ops.h"
#include "runtime/autograd/tape.h"
#include "runtime/common/error.h"
#include "runtime/io/hf.h"
#include "runtime/io/safetensors.h"
#include "runtime/nn/models.h"
#include "runtime/optim/optim.h"
#include "tests/testing.h"

namespace tessera::routing {
namespace {

using testing::error_of;
using testing::expect_gradients_match;
using testing::randn;

std::shared_ptr<io::SafetensorsFile> fixture(const std::string& name) {
  return io::SafetensorsFile::open(testing::source_dir() + "/tests/fixtures/poly/" + name +
                                   ".safetensors");
}

PolyOptions options_of(const io::SafetensorsFile& f) {
  const Tensor meta = f.load_f32("meta");
  PolyOptions o;
  o.tasks = static_cast<int64_t>(meta.data()[0]);
  o.skills = static_cast<int64_t>(meta.data()[1]);
  o.splits = static_cast<int64_t>(meta.data()[2]);
  o.r = static_cast<int64_t>(meta.data()[3]);
  return o;
}

std::vector<int32_t> task_ids(const io::SafetensorsFile& f) {
  std::vector<int32_t> t;
  for (float v : f.load_f32("task_ids").to_vector()) t.push_back(static_cast<int32_t>(v));
  return t;
}

// Copies every fixture tensor named like a registered parameter into it.
int load_into(nn::ParameterSet& ps, const io::SafetensorsFile& f) {
  int n = 0;
  for (auto& p : ps.all()) {
    if (!f.find(p.name)) continue;
    const Tensor t = f.load_f32(p.name);
    EXPECT_EQ(t.shape(), p.tensor.shape()) << p.name;
    std::copy(t.data(), t.data() + t.numel(), p.tensor.data());
    ++n;
  }
  return n;
}

TEST(PolyPeft, MlpMatchesPolyModelInEvaluation) {
  auto f = fixture("mlp");
  const PolyOptions o = options_of(*f);
  nn::ParameterSet base, ps;
  Rng rng(1);
  nn::Linear fc1(base, "fc1", 24, 20, true, false, rng, nn::Init::Zeros);
  nn::Linear fc2(base, "fc2", 20, 12, true, false, rng, nn::Init::Zeros);
  EXPECT_EQ(load_into(base, *f), 4);
  PolyModel poly({&fc1, &fc2}, {"fc1", "fc2"}, o, ps, 3);
  EXPECT_EQ(load_into(ps, *f), 6);
  poly.set_tasks(task_ids(*f));
  const Tensor y = fc2.forward(ops::activation(fc1.forward(f->load_f32("x")), ops::Act::Relu));
  EXPECT_LT(testing::rel_err(y.to_vector(), f->load_f32("y").to_vector()), 1e-5);
}

TEST(PolyPeft, TinyLlamaMatchesPolyModelInEvaluation) {
  auto f = fixture("llama");
  const std::string golden = testing::source_dir() + "/tests/fixtures/golden/llama";
  auto model = io::load_hf_decoder(golden + "/model");
  std::vector<std::string> modules;
  for (nn::Linear* l : model->linears())
    if (f->find(l->name() + ".poly_lora_A")) modules.push_back(l->name());
  ASSERT_EQ(modules.size(), 8u);
  nn::ParameterSet ps;
  PolyModel poly(model->linears(), modules, options_of(*f), ps, 4);
  EXPECT_EQ(load_into(ps, *f), 24);
  poly.set_tasks(task_ids(*f));
  const std::vector<int32_t> ids =
      testing::i32_values(*io::SafetensorsFile::open(golden + "/golden.safetensors"), "input_ids");
  const Tensor logits = model->forward(ids, 2, static_cast<int64_t>(ids.size()) / 2);
  EXPECT_LT(testing::rel_err(logits.to_vector(), f->load_f32("logits").to_vector()), 1e-5);
  // The same tasks swapped route differently: the test sees the routing.
  poly.set_tasks({0, 2});
  const Tensor other = model->forward(ids, 2, static_cast<int64_t>(ids.size()) / 2);
  EXPECT_GT(testing::rel_err(other.to_vector(), f->load_f32("logits").to_vector()), 1e-3);
}

TEST(PolyOps, WeightsAndSplitMixingMatchFiniteDifferences) {
  Rng rng(5);
  const int64_t T = 3, q = 2, S = 4;
  Tensor z = randn({T, q * S}, rng, 1.5f, true);
  Tensor u = testing::uniform({T, q * S}, rng, 0.05f, 0.95f);
  for (float tau : {1.0f, 0.5f}) {
    expect_gradients_match([&] { return ops::poly_weights(z, S, u, tau); }, {z}, 1e-3f);
    expect_gradients_match([&] { return ops::poly_weights(z, S, Tensor(), tau); }, {z}, 1e-3f);
  }
  Tensor w = testing::uniform({T, q, S}, rng, 0.1f, 1.0f, true);
  Tensor A = randn({S, 3, 6}, rng, 1.0f, true), B = randn({S, 6, 3}, rng, 1.0f, true);
  expect_gradients_match([&] { return ops::poly_mix(w, A, true); }, {w, A});
  expect_gradients_match([&] { return ops::poly_mix(w, B, false); }, {w, B});
  // Values by hand: column j of task t's A takes split j / 3's weights.
  const Tensor m = ops::poly_mix(w, A, true);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < 3; ++i)
      for (int64_t j = 0; j < 6; ++j) {
        double want = 0;
        for (int64_t s = 0; s < S; ++s)
          want += double(w.data()[(t * q + j / 3) * S + s]) * A.data()[(s * 3 + i) * 6 + j];
        EXPECT_NEAR(m.data()[(t * 3 + i) * 6 + j], want, 1e-5);
      }
  // Evaluation weights by hand: σ(z) / Σσ(z) per split.
  const Tensor e = ops::poly_weights(z, S, Tensor());
  for (int64_t g = 0; g < T * q; ++g) {
    double sum = 0;
    for (int64_t s = 0; s < S; ++s) sum += 1 / (1 + std::exp(-z.data()[g * S + s]));
    for (int64_t s = 0; s < S; ++s)
      EXPECT_NEAR(e.data()[g * S + s], 1 / (1 + std::exp(-z.data()[g * S + s])) / sum, 1e-6);
  }
  EXPECT_THROW(ops::poly_weights(z, 3, Tensor()), Error);
  EXPECT_THROW(ops::poly_weights(z, S, Tensor::zeros({T, q * S})), Error);  // u = 0
  EXPECT_THROW(ops::poly_mix(w, randn({S, 3, 5}, rng), true), Error);       // 2 ∤ 5
}

// Two tasks, three skills, two splits, rank 2.
PolyOptions small_options() {
  PolyOptions o;
  o.tasks = 2;
  o.skills = 3;
  o.splits = 2;
  o.r = 2;
  return o;
}

// A Linear with Poly whose B is not zero, for the tests below.
struct PolyLinear {
  nn::ParameterSet base, ps;
  nn::Linear lin;
  std::shared_ptr<PolyLora> poly;
  PolyLinear(const PolyOptions& o) {
    Rng rng(7);
    lin = nn::Linear(base, "lin", 8, 6, true, false, rng, nn::Init::Normal, 0.5f);
    base.set_trainable("*", false);
    poly = std::make_shared<PolyLora>(ps, "lin", 8, 6, o, 9);
    Tensor& B = ps.at("lin.poly_lora_B");
    for (int64_t i = 0; i < B.numel(); ++i) B.data()[i] = rng.normal(0.0f, 0.5f);
    Tensor& Z = ps.at("lin.module_logits");
    for (int64_t i = 0; i < Z.numel(); ++i) Z.data()[i] = rng.normal(0.0f, 1.5f);
    lin.set_adapter(poly);
  }
};

TEST(PolyLora, AnUnknownTaskRoutesToTheSkillAverageMhrMu) {
  const PolyOptions o = small_options();
  PolyLinear p(o);
  Rng rng(3);
  const Tensor x = randn({4, 8}, rng);
  p.poly->set_tasks({-1, 1});  // two examples of two rows each
  const Tensor y = p.lin.forward(x);
  const adapters::LoraFactors avg = poly_average(*p.poly);
  EXPECT_FLOAT_EQ(avg.scale, 0.5f);  // 1/r
  const Tensor d = avg.delta();
  for (int64_t t = 0; t < 2; ++t)
    for (int64_t o2 = 0; o2 < 6; ++o2) {
      double want = p.lin.bias().data()[o2];
      for (int64_t i = 0; i < 8; ++i)
        want += (double(p.lin.weight().data()[o2 * 8 + i]) + d.data()[o2 * 8 + i]) *
                x.data()[t * 8 + i];
      EXPECT_NEAR(y.data()[t * 6 + o2], want, 1e-5);
    }
  EXPECT_NE(error_of([&] { p.poly->set_tasks({2}); }).find("task 2; 2 tasks"), std::string::npos);
  p.poly->set_tasks({0, 1, 0});
  EXPECT_NE(error_of([&] { p.lin.forward(x); }).find("3 task ids for 4 rows"), std::string::npos);
  EXPECT_NE(error_of([&] {
              nn::ParameterSet ps;
              PolyOptions bad = o;
              bad.splits = 3;
              PolyLora(ps, "m", 8, 6, bad, 1);
            }).find("3 splits do not divide"),
            std::string::npos);
}

// PEFT draws one RelaxedBernoulli sample per example: two identical inputs
// of one task get different adapters while training, the same in evaluation.
TEST(PolyLora, TrainingSamplesEachExampleEvaluationDoesNot) {
  const PolyOptions o = small_options();
  PolyLinear p(o);
  Rng rng(6);
  const Tensor row = randn({1, 8}, rng);
  const Tensor x = ops::concat_rows({row, row});
  p.poly->set_tasks({1, 1});
  const Tensor eval = p.lin.forward(x);
  for (int64_t c = 0; c < 6; ++c) EXPECT_EQ(eval.data()[c], eval.data()[6 + c]);
  autograd::Tape tape;
  const Tensor train = p.lin.forward(x);
  double diff = 0;
  for (int64_t c = 0; c < 6; ++c) diff += std::abs(train.data()[c] - train.data()[6 + c]);
  EXPECT_GT(diff, 1e-4);
}

// One SGD step of Σ R ⊙ y: MHR-z moves only the logits, and a logits
// learning-rate scale multiplies exactly their step.
TEST(PolyLora, MhrZTrainsOnlyTheLogitsAtTheirOwnLearningRate) {
  const PolyOptions o = small_options();
  Rng rng(4);
  const Tensor x = randn({4, 8}, rng), R = randn({4, 6}, rng);
  for (bool freeze : {false, true}) {
    SCOPED_TRACE(freeze ? "MHR-z" : "Poly");
    PolyLinear p(o);
    if (freeze) PolyModel::freeze_skills(p.ps);
    PolyModel::set_logits_lr_scale(p.ps, 10.0f);
    std::map<std::string, std::vector<float>> before, grad;
    for (auto& q : p.ps.all()) before[q.name] = q.tensor.to_vector();
    p.poly->set_tasks({0, 1});
    optim::SgdOptions so;
    so.momentum = 0;
    optim::Sgd sgd(p.ps, so);
    {
      autograd::Tape tape;
      tape.backward(ops::sum(ops::mul(p.lin.forward(x), R)));
    }
    for (auto& q : p.ps.all())
      grad[q.name] = q.tensor.grad().defined() ? q.tensor.grad().to_vector()
                                               : std::vector<float>(q.tensor.numel(), 0.0f);
    sgd.step(0.1f);
    for (auto& q : p.ps.all()) {
      const bool logits = q.name == "lin.module_logits";
      const float lr = logits ? 1.0f : (freeze ? 0.0f : 0.1f);
      double moved = 0;
      for (int64_t i = 0; i < q.tensor.numel(); ++i) {
        EXPECT_NEAR(q.tensor.data()[i], before[q.name][i] - lr * grad[q.name][i], 1e-6)
            << q.name << " " << i;
        moved += std::abs(q.tensor.data()[i] - before[q.name][i]);
      }
      if (logits || !freeze) {
        EXPECT_GT(moved, 1e-4) << q.name;
      }
    }
  }
}

}  // namespace
}  // namespace tessera::routing
