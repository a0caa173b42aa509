// Gradient readiness on the tape and the data-parallel GradReducer.
//
// Tape::watch must call ready(k) only once tensor k's gradient is final:
// checked by snapshotting every gradient when it fires and comparing with
// the gradient after backward (exact), on a graph where one parameter is
// used twice (early and late) and one not at all. GradReducer: two Gloo ranks
// (threads) each with half of a batch give, with overlap and without, one
// bucket per parameter or one for all, the gradient of the whole batch on
// one process (float summation order aside).
#include "runtime/train/grad_reducer.h"

#include <gtest/gtest.h>

#include <cmath>

#include "runtime/autograd/ops.h"
#include "runtime/autograd/tape.h"
#include "tests/runtime/dist/collectives_check.h"

namespace tessera::train {
namespace {

Tensor param(const Shape& shape, float seed) {
  std::vector<float> v;
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  for (int64_t i = 0; i < n; ++i)
    v.push_back(std::sin(seed * 1.7f + static_cast<float>(i) * 0.37f));
  Tensor t = Tensor::from_vector(v, shape);
  t.set_requires_grad(true);
  return t;
}

// rows [begin, end) of a fixed 8x3 input.
Tensor input(int64_t begin, int64_t end) {
  std::vector<float> v;
  for (int64_t r = begin; r < end; ++r)
    for (int64_t c = 0; c < 3; ++c) v.push_back(std::cos(static_cast<float>(r * 3 + c) * 0.9f));
  return Tensor::from_vector(v, {end - begin, 3});
}

struct Net {
  Tensor a = param({4, 3}, 1), b = param({3, 4}, 2), c = param({2, 2}, 3), d = param({3, 3}, 4);
  std::vector<nn::Parameter> ps{{"a", a}, {"b", b}, {"c", c}, {"d", d}};
  // d early, a, b, then d again; c unused. Mean over `rows_total` rows.
  Tensor loss(const Tensor& x, int64_t rows_total) const {
    Tensor h = ops::matmul_nt(x, d);
    h = ops::mul(h, h);
    h = ops::matmul_nt(h, a);
    h = ops::matmul_nt(h, b);
    h = ops::matmul_nt(h, d);
    return ops::scale(ops::sum(ops::mul(h, h)), 1.0f / static_cast<float>(rows_total));
  }
  std::vector<nn::Parameter*> ptrs() {
    std::vector<nn::Parameter*> v;
    for (nn::Parameter& p : ps) v.push_back(&p);
    return v;
  }
};

std::vector<float> grad_of(const Tensor& t) {
  return t.grad().defined() ? t.grad().to_vector() : std::vector<float>();
}

TEST(Tape, WatchFiresOnlyWhenAGradientIsFinal) {
  Net net;
  std::vector<size_t> order;
  std::vector<std::vector<float>> at_fire(4), d_when_b_fired(1);
  autograd::Tape tape;
  tape.watch({&net.a, &net.b, &net.c, &net.d}, [&](size_t k) {
    order.push_back(k);
    at_fire[k] = grad_of(net.ps[k].tensor);
    if (k == 1) d_when_b_fired[0] = grad_of(net.d);
  });
  Tensor loss = net.loss(input(0, 8), 8);
  tape.backward(loss);
  ASSERT_EQ(order.size(), 4u);
  // b (used last but one) before a, d (first used earliest) after both, c
  // (never used) at the end.
  EXPECT_EQ(order, (std::vector<size_t>{1, 0, 3, 2}));
  for (size_t k = 0; k < 4; ++k) EXPECT_EQ(at_fire[k], grad_of(net.ps[k].tensor)) << "param " << k;
  EXPECT_TRUE(at_fire[2].empty());  // c: no gradient at all
  // When b was final, d still missed its early use's part: it fired early
  // for a reason, not because backward was over.
  EXPECT_NE(d_when_b_fired[0], grad_of(net.d));
  // watch() after recording began is a mistake.
  autograd::Tape late;
  Net n2;
  Tensor l2 = n2.loss(input(0, 2), 2);
  EXPECT_NE(
      testing::error_of([&] { late.watch({&n2.a}, [](size_t) {}); }).find("before the forward"),
      std::string::npos);
}

TEST(GradReducer, TwoRanksGiveTheWholeBatchGradientWithAndWithoutOverlap) {
  // One process, the whole batch: the truth.
  Net whole;
  {
    autograd::Tape tape;
    tape.backward(whole.loss(input(0, 8), 8));
  }
  for (bool overlap : {true, false})
    for (size_t bucket : {size_t(4), size_t(1) << 20}) {
      std::vector<std::vector<std::vector<float>>> got(2);
      dist::on_gloo(2, "reducer", [&](dist::ProcessGroup& g) {
        Net net;
        GradReducer red(&g, net.ptrs(), bucket, overlap);
        EXPECT_EQ(red.buckets(), bucket == 4 ? 4u : 1u);
        for (int step = 0; step < 2; ++step) {  // twice: the reducer is reused
          for (nn::Parameter& p : net.ps) p.tensor.clear_grad();
          {
            autograd::Tape tape;
            red.begin(tape);
            // Rank r: rows 4r..4r+3, loss over its 4 rows; the mean over ranks
            // is the mean over all 8.
            tape.backward(net.loss(input(4 * g.rank(), 4 * g.rank() + 4), 4));
          }
          EXPECT_GE(red.finish(), 0.0);
        }
        for (nn::Parameter& p : net.ps) got[g.rank()].push_back(grad_of(p.tensor));
      });
      for (int r = 0; r < 2; ++r)
        for (size_t k = 0; k < 4; ++k) {
          const std::vector<float> want = k == 2 ? std::vector<float>(4, 0.0f)  // unused: zeros
                                                 : grad_of(whole.ps[k].tensor);
          ASSERT_EQ(got[r][k].size(), want.size()) << "param " << k;
          for (size_t i = 0; i < want.size(); ++i)
            EXPECT_NEAR(got[r][k][i], want[i], 1e-5f * (1.0f + std::abs(want[i])))
                << "overlap " << overlap << " bucket " << bucket << " rank " << r << " param " << k
                << "[" << i << "]";
        }
    }
}

}  // namespace
}  // namespace tessera::train
