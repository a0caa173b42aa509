#include "runtime/optim/optim.h"

#include <gtest/gtest.h>

#include <cmath>

namespace tessera::optim {
namespace {

TEST(AdamW, TwoStepsMatchHandComputation) {
  nn::ParameterSet ps;
  Tensor& w = ps.add("w", Tensor::from_vector({1.0f, -2.0f}, {2}));
  AdamWOptions o;
  o.lr = 0.1f;
  o.weight_decay = 0.5f;
  AdamW opt(ps, o);
  std::vector<std::vector<float>> grads = {{0.5f, -1.0f}, {0.25f, 2.0f}};
  double p[2] = {1.0, -2.0}, m[2] = {0, 0}, v[2] = {0, 0};
  for (int t = 1; t <= 2; ++t) {
    w.ensure_grad().copy_from(Tensor::from_vector(grads[t - 1], {2}));
    opt.step(o.lr);
    for (int i = 0; i < 2; ++i) {
      double g = grads[t - 1][i];
      p[i] *= 1.0 - 0.1 * 0.5;
      m[i] = 0.9 * m[i] + 0.1 * g;
      v[i] = 0.999 * v[i] + 0.001 * g * g;
      double mh = m[i] / (1 - std::pow(0.9, t)), vh = v[i] / (1 - std::pow(0.999, t));
      p[i] -= 0.1 * mh / (std::sqrt(vh) + 1e-8);
      EXPECT_NEAR(w.data()[i], p[i], 1e-6) << "step " << t << " element " << i;
    }
  }
}

// A parameter's lr_scale is its group's learning rate: the step and the
// decoupled decay both use lr · scale (scale 3 at lr 0.1 is lr 0.3).
TEST(AdamW, LrScaleIsTheParametersOwnLearningRate) {
  nn::ParameterSet a, b;
  Tensor& wa = a.add("w", Tensor::from_vector({1.0f, -2.0f}, {2}));
  Tensor& wb = b.add("w", Tensor::from_vector({1.0f, -2.0f}, {2}));
  EXPECT_EQ(a.set_lr_scale("w", 3.0f), 1);
  AdamWOptions o;
  o.weight_decay = 0.5f;
  AdamW oa(a, o), ob(b, o);
  for (int t = 0; t < 3; ++t) {
    wa.ensure_grad().copy_from(Tensor::from_vector({0.5f, -1.0f + t}, {2}));
    wb.ensure_grad().copy_from(Tensor::from_vector({0.5f, -1.0f + t}, {2}));
    oa.step(0.1f);
    ob.step(0.3f);
  }
  EXPECT_EQ(wa.to_vector(), wb.to_vector());
}

TEST(AdamW, SkipsDecayOfVectorsWhenAsked) {
  nn::ParameterSet ps;
  Tensor& b = ps.add("b", Tensor::from_vector({1.0f}, {1}));
  AdamWOptions o;
  o.lr = 0.1f;
  o.weight_decay = 1.0f;
  o.decay_vectors = false;
  AdamW opt(ps, o);
  b.ensure_grad().zero_();
  opt.step(o.lr);
  EXPECT_FLOAT_EQ(b.data()[0], 1.0f);
}

TEST(Sgd, MomentumMatchesTorchSemantics) {
  nn::ParameterSet ps;
  Tensor& w = ps.add("w", Tensor::from_vector({1.0f}, {1}));
  SgdOptions o;
  o.lr = 0.1f;
  o.momentum = 0.9f;
  Sgd opt(ps, o);
  w.ensure_grad().fill_(1.0f);
  opt.step(o.lr);  // buf = 1, w = 0.9
  EXPECT_FLOAT_EQ(w.data()[0], 0.9f);
  opt.step(o.lr);  // buf = 1.9, w = 0.71
  EXPECT_NEAR(w.data()[0], 0.71f, 1e-6);
}

TEST(Schedule, WarmupThenCosine) {
  Schedule s{1.0f, 10, 110, 0.1f, true};
  EXPECT_FLOAT_EQ(s.at(0), 0.1f);
  EXPECT_FLOAT_EQ(s.at(9), 1.0f);
  EXPECT_FLOAT_EQ(s.at(10), 1.0f);
  EXPECT_NEAR(s.at(60), 0.55f, 1e-6);  // halfway: min + (1-min)/2
  EXPECT_NEAR(s.at(110), 0.1f, 1e-6);
  EXPECT_NEAR(s.at(500), 0.1f, 1e-6);
  Schedule c{0.5f, 0, 100, 0.0f, false};
  EXPECT_FLOAT_EQ(c.at(77), 0.5f);
}

TEST(Clip, GlobalNormScalesAllGradients) {
  nn::ParameterSet ps;
  Tensor& a = ps.add("a", Tensor::zeros({2}));
  Tensor& b = ps.add("b", Tensor::zeros({1}));
  a.ensure_grad().copy_from(Tensor::from_vector({3.0f, 0.0f}, {2}));
  b.ensure_grad().copy_from(Tensor::from_vector({4.0f}, {1}));
  EXPECT_FLOAT_EQ(clip_grad_norm(ps, 0.0f), 5.0f);  // no clipping, just the norm
  EXPECT_FLOAT_EQ(a.grad().data()[0], 3.0f);
  EXPECT_FLOAT_EQ(clip_grad_norm(ps, 1.0f), 5.0f);
  EXPECT_NEAR(a.grad().data()[0], 0.6f, 1e-6);
  EXPECT_NEAR(b.grad().data()[0], 0.8f, 1e-6);
}

}  // namespace
}  // namespace tessera::optim
