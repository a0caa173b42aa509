// CUDA kernels against the CPU kernels (normalised error), through the same
// ops and dispatch point. Skips cleanly when no GPU is present.
#include <gtest/gtest.h>

#include "runtime/autograd/ops.h"
#include "runtime/autograd/tape.h"
#include "runtime/common/error.h"
#include "runtime/kernels/cuda/device.h"
#include "tests/testing.h"

namespace tessera {
namespace {

using testing::randn;

#define REQUIRE_GPU()                                                               \
  do {                                                                              \
    if (!cuda::available()) GTEST_SKIP() << "no CUDA device: " << cuda::describe(); \
  } while (0)

double nmse(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 1e-20;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (a[i] - b[i]) * (a[i] - b[i]);
    den += b[i] * b[i];
  }
  return num / den;
}

TEST(Cuda, DeviceQueriesNeverCrash) {
  // Holds with or without a GPU and with or without nvcc at build time.
  std::string d = cuda::describe();
  EXPECT_FALSE(d.empty());
  if (!cuda::available()) {
    EXPECT_THROW(Tensor::empty({4}, Device::CUDA), Error);
  }
}

TEST(Cuda, LinearForwardBackwardMatchesCpu) {
  REQUIRE_GPU();
  Rng rng(1);
  for (bool conv1d : {false, true}) {
    Tensor x = randn({37, 29}, rng, 1.0f, true),
           w = randn(conv1d ? Shape{29, 53} : Shape{53, 29}, rng, 0.3f, true),
           b = randn({53}, rng, 0.3f, true);
    Tensor xg = x.to(Device::CUDA).set_requires_grad(true),
           wg = w.to(Device::CUDA).set_requires_grad(true),
           bg = b.to(Device::CUDA).set_requires_grad(true);
    Tensor dy = randn({37, 53}, rng);
    Tensor y, yg;
    {
      autograd::Tape tape;
      y = ops::linear(x, w, b, conv1d);
      tape.backward(y, dy);
    }
    {
      autograd::Tape tape;
      yg = ops::linear(xg, wg, bg, conv1d);
      tape.backward(yg, dy.to(Device::CUDA));
    }
    EXPECT_LT(nmse(xg.grad().to_vector(), x.grad().to_vector()), 1e-10);
    EXPECT_LT(nmse(wg.grad().to_vector(), w.grad().to_vector()), 1e-10);
    EXPECT_LT(nmse(bg.grad().to_vector(), b.grad().to_vector()), 1e-10);
    EXPECT_LT(nmse(yg.to_vector(), y.to_vector()), 1e-10);
  }
}

TEST(Cuda, ElementwiseKernelsMatchCpu) {
  REQUIRE_GPU();
  Rng rng(2);
  Tensor a = randn({1001}, rng, 2.0f), b = randn({1001}, rng);
  Tensor ag = a.to(Device::CUDA), bg = b.to(Device::CUDA);
  for (auto act : {ops::Act::Gelu, ops::Act::GeluTanh, ops::Act::Relu, ops::Act::Silu})
    EXPECT_LT(nmse(ops::activation(ag, act).to_vector(), ops::activation(a, act).to_vector()),
              1e-10);
  EXPECT_LT(nmse(ops::swiglu(ag, bg).to_vector(), ops::swiglu(a, b).to_vector()), 1e-10);
  EXPECT_LT(nmse(ops::add(ag, bg).to_vector(), ops::add(a, b).to_vector()), 1e-12);
  EXPECT_LT(nmse(ops::mul(ag, bg).to_vector(), ops::mul(a, b).to_vector()), 1e-12);
  // An op without a CUDA kernel refuses clearly instead of reading device memory on the host.
  EXPECT_THROW(
      ops::layernorm(ag.view({7, 143}), Tensor::full({143}, 1.0f, Device::CUDA), Tensor(), 1e-5f),
      Error);
}

}  // namespace
}  // namespace tessera
