// The gates' auxiliary losses: transformers' own values and gradients
// (tests/fixtures/moe, scripts/gen_moe_loss_fixture.py), the value of the
// load-balancing convention, and finite differences.
#include "runtime/kernels/cpu/gate.h"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "runtime/common/error.h"
#include "runtime/common/rng.h"
#include "runtime/io/safetensors.h"

namespace tessera::kernels::cpu {
namespace {

TEST(MoeLosses, MatchTransformersMixtralAndSwitchLossesAndGradients) {
  for (const char* name : {"mixtral_top2", "mixtral_top2_masked"}) {
    SCOPED_TRACE(name);
    auto f = io::SafetensorsFile::open(std::string(TESSERA_SOURCE_DIR) + "/tests/fixtures/moe/" +
                                       name + ".safetensors");
    const Tensor z = f->load_f32("logits"), mask = f->load_f32("mask"), g = f->load_f32("grad"),
                 zg = f->load_f32("z_grad");
    const int64_t rows = z.size(0), E = z.size(1);
    const int64_t k = static_cast<int64_t>(f->load_f32("k").data()[0]);
    std::vector<float> grad(static_cast<size_t>(rows * E));
    const double loss = load_balancing_loss(z.data(), rows, E, k, mask.data(), grad.data());
    EXPECT_NEAR(loss, f->load_f32("loss").data()[0], 1e-6);
    for (int64_t i = 0; i < rows * E; ++i) EXPECT_NEAR(grad[i], g.data()[i], 1e-6) << i;
    const double zl = router_z_loss(z.data(), rows, E, grad.data());
    EXPECT_NEAR(zl, f->load_f32("z_loss").data()[0], 1e-5 * zl);
    for (int64_t i = 0; i < rows * E; ++i) EXPECT_NEAR(grad[i], zg.data()[i], 1e-6) << i;
  }
}

TEST(MoeLosses, UniformRoutingGivesExactlyK) {
  // Equal logits: p = 1/E everywhere; ties send every row's top 2 to experts
  // 0 and 1, so f is unbalanced but P is uniform: L = E · Σ f_e / E = k.
  const int64_t rows = 8, E = 4;
  std::vector<float> z(static_cast<size_t>(rows * E), 0.3f), grad(static_cast<size_t>(rows * E));
  EXPECT_NEAR(load_balancing_loss(z.data(), rows, E, 2, nullptr, grad.data()), 2.0, 1e-12);
  // Balanced assignment with near-uniform probabilities: row t prefers
  // experts t mod 4 and t+1 mod 4 by a hair.
  for (int64_t t = 0; t < rows; ++t) {
    z[t * E + t % E] += 1e-4f;
    z[t * E + (t + 1) % E] += 5e-5f;
  }
  EXPECT_NEAR(load_balancing_loss(z.data(), rows, E, 2, nullptr, nullptr), 2.0, 1e-4);
  // k is not a lower bound: p = (.34, .33, .33) and (0, .5, .5) at k = 1
  // count f = (.5, .5, 0), P = (.17, .415, .415): L = 3 (.085 + .2075) = .8775.
  const std::vector<float> below = {std::log(0.34f), std::log(0.33f), std::log(0.33f),
                                    -60.0f,          std::log(0.5f),  std::log(0.5f)};
  EXPECT_NEAR(load_balancing_loss(below.data(), 2, 3, 1, nullptr, nullptr), 0.8775, 1e-5);
}

TEST(MoeLosses, GradientsAgreeWithFiniteDifferences) {
  Rng rng(9);
  const int64_t rows = 7, E = 5, k = 2;
  std::vector<float> z(static_cast<size_t>(rows * E)), mask = {1, 1, 0, 1, 1, 1, 0};
  for (float& v : z) v = rng.normal(0.0f, 1.0f);
  std::vector<float> g(z.size()), gz(z.size());
  load_balancing_loss(z.data(), rows, E, k, mask.data(), g.data());
  router_z_loss(z.data(), rows, E, gz.data());
  const float h = 1e-3f;
  for (size_t i = 0; i < z.size(); ++i) {
    std::vector<float> zp = z, zm = z;
    zp[i] += h;
    zm[i] -= h;
    // The selection is held fixed for the difference (it is a constant in
    // the gradient); these steps are far smaller than any top-k margin here.
    const double d = (load_balancing_loss(zp.data(), rows, E, k, mask.data(), nullptr) -
                      load_balancing_loss(zm.data(), rows, E, k, mask.data(), nullptr)) /
                     (2 * h);
    EXPECT_NEAR(g[i], d, 2e-4) << i;
    const double dz =
        (router_z_loss(zp.data(), rows, E, nullptr) - router_z_loss(zm.data(), rows, E, nullptr)) /
        (2 * h);
    EXPECT_NEAR(gz[i], dz, 2e-3 * (1 + std::abs(dz))) << i;
  }
  EXPECT_EQ(load_balancing_loss(z.data(), 1, E, k, std::vector<float>{0}.data(), g.data()), 0.0);
  EXPECT_THROW(load_balancing_loss(z.data(), rows, E, 6, nullptr, nullptr), Error);
}

}  // namespace
}  // namespace tessera::kernels::cpu
