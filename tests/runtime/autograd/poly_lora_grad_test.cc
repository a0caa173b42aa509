// ops::poly_lora, the Poly/MHR LoRA mixed inside its GEMMs: equal to forming
// each row group's adapter with poly_mix and applying it with lora_gather,
// and every gradient (x, both skill banks, the weights; base_out's is dy)
// against central finite differences, with several rows per group and
// several splits.
#include <gtest/gtest.h>

#include <numeric>

#include "runtime/autograd/ops.h"
#include "runtime/autograd/tape.h"
#include "runtime/common/error.h"
#include "tests/testing.h"

namespace tessera {
namespace {

using testing::expect_gradients_match;
using testing::randn;

// Weights [M, q, S] on the simplex per split, as poly_weights gives them.
Tensor simplex_weights(int64_t M, int64_t q, int64_t S, Rng& rng) {
  Tensor w = Tensor::empty({M, q, S});
  for (int64_t i = 0; i < M * q; ++i) {
    double sum = 0;
    for (int64_t s = 0; s < S; ++s) sum += (w.data()[i * S + s] = 0.1f + rng.uniform());
    for (int64_t s = 0; s < S; ++s) w.data()[i * S + s] /= static_cast<float>(sum);
  }
  return w;
}

TEST(PolyLora, EqualsMixingEachGroupsAdapterThenApplyingIt) {
  Rng rng(3);
  for (const auto& [M, g, q] :
       {std::tuple<int64_t, int64_t, int64_t>{5, 1, 2}, {2, 3, 1}, {3, 2, 4}}) {
    const int64_t S = 3, r = 4, in = 8, out = 12, N = M * g;
    const Tensor x = randn({N, in}, rng), base = randn({N, out}, rng);
    const Tensor A = randn({S, r, in}, rng, 0.5f), B = randn({S, out, r}, rng, 0.5f);
    const Tensor w = simplex_weights(M, q, S, rng);
    const std::vector<float> got = ops::poly_lora(x, base, A, B, w, 0.7f).to_vector();
    std::vector<int32_t> ids(static_cast<size_t>(M));
    std::iota(ids.begin(), ids.end(), 0);
    const std::vector<float> want =
        ops::lora_gather(x, base, ops::poly_mix(w, A, true), ops::poly_mix(w, B, false), ids, 1,
                         Tensor(), std::vector<float>(static_cast<size_t>(M), 0.7f))
            .to_vector();
    EXPECT_LT(testing::rel_err(got, want), 1e-5) << "M " << M << " g " << g << " q " << q;
  }
}

TEST(PolyLora, GradientsMatchFiniteDifferences) {
  Rng rng(5);
  const int64_t M = 3, g = 2, q = 2, S = 3, r = 2, in = 6, out = 4, N = M * g;
  Tensor x = randn({N, in}, rng, 1.0f, true), base = randn({N, out}, rng, 1.0f, true);
  Tensor A = randn({S, r, in}, rng, 0.5f, true), B = randn({S, out, r}, rng, 0.5f, true);
  Tensor w = simplex_weights(M, q, S, rng);
  w.set_requires_grad(true);
  expect_gradients_match([&] { return ops::poly_lora(x, base, A, B, w, 1.3f); }, {x, base, A, B, w},
                         1e-2f, 2e-2f, 2e-3f);
}

// Large enough for every OpenMP branch of the kernels: forward and every
// gradient equal those of the poly_mix + lora_gather path.
TEST(PolyLora, LargeBatchesMatchTheMixedAdapterPathWithGradients) {
  Rng rng(9);
  const int64_t M = 160, g = 2, q = 4, S = 8, r = 8, in = 32, out = 32, N = M * g;
  Tensor x = randn({N, in}, rng, 1.0f, true), base = randn({N, out}, rng, 1.0f, true);
  Tensor A = randn({S, r, in}, rng, 0.3f, true), B = randn({S, out, r}, rng, 0.3f, true);
  Tensor w = simplex_weights(M, q, S, rng);
  w.set_requires_grad(true);
  const Tensor R = randn({N, out}, rng);
  std::vector<int32_t> ids(static_cast<size_t>(M));
  std::iota(ids.begin(), ids.end(), 0);
  auto grads = [&](bool fused) {
    for (Tensor* t : {&x, &base, &A, &B, &w}) t->clear_grad();
    std::vector<std::vector<float>> out_g;
    autograd::Tape tape;
    const Tensor y = fused ? ops::poly_lora(x, base, A, B, w, 0.5f)
                           : ops::lora_gather(x, base, ops::poly_mix(w, A, true),
                                              ops::poly_mix(w, B, false), ids, 1, Tensor(),
                                              std::vector<float>(static_cast<size_t>(M), 0.5f));
    out_g.push_back(y.to_vector());
    tape.backward(ops::sum(ops::mul(y, R)));
    for (Tensor* t : {&x, &base, &A, &B, &w}) out_g.push_back(t->grad().to_vector());
    return out_g;
  };
  const auto fused = grads(true), mixed = grads(false);
  const char* names[] = {"y", "dx", "dbase", "dA", "dB", "dweights"};
  for (size_t i = 0; i < fused.size(); ++i)
    EXPECT_LT(testing::rel_err(fused[i], mixed[i]), 1e-5) << names[i];
}

TEST(PolyLora, RefusesShapesThatDoNotFit) {
  Rng rng(1);
  const Tensor x = randn({4, 6}, rng), base = randn({4, 4}, rng);
  const Tensor A = randn({3, 2, 6}, rng), B = randn({3, 4, 2}, rng);
  EXPECT_THROW(ops::poly_lora(x, base, A, B, Tensor::zeros({3, 1, 3}), 1.0f), Error);  // 3 ∤ 4
  EXPECT_THROW(ops::poly_lora(x, base, A, B, Tensor::zeros({2, 4, 3}), 1.0f), Error);  // 4 ∤ 6
  EXPECT_THROW(ops::poly_lora(x, base, A, B, Tensor::zeros({2, 1, 2}), 1.0f), Error);  // S
  EXPECT_THROW(ops::poly_lora(x, randn({4, 5}, rng), A, B, Tensor::zeros({2, 1, 3}), 1.0f), Error);
}

}  // namespace
}  // namespace tessera
