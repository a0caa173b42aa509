// Fused ops against their composition from primitives: values and gradients.
#include <gtest/gtest.h>

#include "runtime/autograd/ops.h"
#include "tests/testing.h"

namespace tessera {
namespace {

using testing::randn;

// Runs f under a tape with objective sum(f() * R) and returns the output and
// the gradients of `inputs`.
std::vector<std::vector<float>> run(const std::function<Tensor()>& f, std::vector<Tensor> inputs,
                                    uint64_t seed) {
  for (auto& x : inputs) x.clear_grad();
  autograd::Tape tape;
  Tensor out = f();
  Rng rng(seed);
  Tensor r = randn(out.shape(), rng);
  tape.backward(ops::sum(ops::mul(out, r)));
  std::vector<std::vector<float>> res = {out.to_vector()};
  for (auto& x : inputs) res.push_back(x.grad().to_vector());
  return res;
}

void expect_close(const std::vector<std::vector<float>>& a,
                  const std::vector<std::vector<float>>& b, float tol) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t k = 0; k < a.size(); ++k) {
    ASSERT_EQ(a[k].size(), b[k].size());
    for (size_t i = 0; i < a[k].size(); ++i)
      ASSERT_NEAR(a[k][i], b[k][i], tol * std::max(1.0f, std::fabs(b[k][i])))
          << (k == 0 ? "output" : "gradient of input " + std::to_string(k - 1)) << " element " << i;
  }
}

TEST(Fused, SwigluEqualsSiluTimesUp) {
  Rng rng(1);
  Tensor g = randn({7, 19}, rng, 1.0f, true), u = randn({7, 19}, rng, 1.0f, true);
  auto fused = run([&] { return ops::swiglu(g, u); }, {g, u}, 3);
  auto composed = run([&] { return ops::mul(ops::activation(g, ops::Act::Silu), u); }, {g, u}, 3);
  expect_close(fused, composed, 1e-6f);
}

TEST(Fused, LinearBiasEqualsMatmulPlusAdd) {
  Rng rng(2);
  Tensor x = randn({6, 11}, rng, 1.0f, true), w = randn({5, 11}, rng, 1.0f, true),
         b = randn({5}, rng, 1.0f, true);
  auto fused = run([&] { return ops::linear(x, w, b); }, {x, w, b}, 4);
  auto composed = run([&] { return ops::add(ops::matmul_nt(x, w), b); }, {x, w, b}, 4);
  expect_close(fused, composed, 1e-5f);
}

TEST(Fused, Conv1DLayoutEqualsTransposedLinear) {
  Rng rng(3);
  Tensor x = randn({4, 6}, rng, 1.0f, true), w = randn({6, 9}, rng, 1.0f, true);  // [in, out]
  Tensor wt = Tensor::empty({9, 6});
  for (int i = 0; i < 6; ++i)
    for (int j = 0; j < 9; ++j) wt.data()[j * 6 + i] = w.data()[i * 9 + j];
  wt.set_requires_grad(true);
  auto a = run([&] { return ops::linear(x, w, Tensor(), true); }, {x}, 5);
  auto b = run([&] { return ops::linear(x, wt, Tensor(), false); }, {x}, 5);
  expect_close(a, b, 1e-5f);
}

TEST(Fused, PackedAttentionEqualsSeparateQKV) {
  Rng rng(4);
  const int64_t B = 2, T = 7, Hq = 4, Hkv = 2, D = 5, W = (Hq + 2 * Hkv) * D;
  Tensor qkv = randn({B * T, W}, rng, 1.0f, true);
  auto cols = [&](int64_t from, int64_t n) {
    Tensor t = Tensor::empty({B * T, n});
    for (int64_t r = 0; r < B * T; ++r)
      for (int64_t c = 0; c < n; ++c) t.data()[r * n + c] = qkv.data()[r * W + from + c];
    t.set_requires_grad(true);
    return t;
  };
  Tensor q = cols(0, Hq * D), k = cols(Hq * D, Hkv * D), v = cols((Hq + Hkv) * D, Hkv * D);
  auto packed = run([&] { return ops::attention_packed(qkv, B, T, Hq, Hkv); }, {qkv}, 6);
  auto sep = run([&] { return ops::attention(q, k, v, B, T, Hq, Hkv); }, {q, k, v}, 6);
  // Compare outputs, then the packed gradient's column blocks with q, k, v gradients.
  expect_close({packed[0]}, {sep[0]}, 1e-6f);
  const std::vector<float>& g = packed[1];
  int64_t offs[3] = {0, Hq * D, (Hq + Hkv) * D}, widths[3] = {Hq * D, Hkv * D, Hkv * D};
  for (int part = 0; part < 3; ++part)
    for (int64_t r = 0; r < B * T; ++r)
      for (int64_t c = 0; c < widths[part]; ++c)
        ASSERT_NEAR(g[r * W + offs[part] + c], sep[1 + part][r * widths[part] + c], 1e-5f);
}

TEST(Fused, AttentionEqualsPrimitiveComposition) {
  // softmax(q kᵀ / √D + causal mask) v written out with loops in double.
  Rng rng(5);
  const int64_t T = 6, D = 4;
  Tensor q = randn({T, D}, rng), k = randn({T, D}, rng), v = randn({T, D}, rng);
  Tensor o = ops::attention(q, k, v, 1, T, 1, 1);
  for (int64_t t = 0; t < T; ++t) {
    std::vector<double> s(t + 1);
    double mx = -1e30, sum = 0;
    for (int64_t j = 0; j <= t; ++j) {
      double d = 0;
      for (int64_t i = 0; i < D; ++i) d += q.data()[t * D + i] * k.data()[j * D + i];
      s[j] = d / std::sqrt(static_cast<double>(D));
      mx = std::max(mx, s[j]);
    }
    for (auto& x : s) sum += (x = std::exp(x - mx));
    for (int64_t i = 0; i < D; ++i) {
      double ref = 0;
      for (int64_t j = 0; j <= t; ++j) ref += s[j] / sum * v.data()[j * D + i];
      EXPECT_NEAR(o.data()[t * D + i], ref, 1e-5);
    }
  }
}

}  // namespace
}  // namespace tessera
