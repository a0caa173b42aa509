// Helpers shared by tessera's tests: random tensors, finite-difference
// gradient checks, temporary folders.
#pragma once

#include <gtest/gtest.h>

#include <unistd.h>
#include <cmath>
#include <cstring>

#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "runtime/autograd/ops.h"
#include "runtime/autograd/tape.h"
#include "runtime/common/error.h"
#include "runtime/common/rng.h"
#include "runtime/io/safetensors.h"
#include "runtime/nn/models.h"
#include "runtime/tensor/tensor.h"

namespace tessera::testing {

// The values of an I32 tensor of a fixture file (token ids, targets).
inline std::vector<int32_t> i32_values(const io::SafetensorsFile& f, const std::string& name) {
  const io::TensorInfo* t = f.find(name);
  if (!t || t->dtype != io::DType::I32) {
    ADD_FAILURE() << f.source() << " has no I32 tensor " << name;
    return {};
  }
  std::vector<int32_t> v(static_cast<size_t>((t->end - t->begin) / 4));
  std::memcpy(v.data(), f.bytes(*t), v.size() * 4);
  return v;
}

inline Tensor randn(const Shape& s, Rng& rng, float std = 1.0f, bool grad = false) {
  Tensor t = Tensor::empty(s);
  for (int64_t i = 0; i < t.numel(); ++i) t.data()[i] = rng.normal(0.0f, std);
  t.set_requires_grad(grad);
  return t;
}

inline Tensor uniform(const Shape& s, Rng& rng, float lo, float hi, bool grad = false) {
  Tensor t = Tensor::empty(s);
  for (int64_t i = 0; i < t.numel(); ++i) t.data()[i] = rng.uniform(lo, hi);
  t.set_requires_grad(grad);
  return t;
}

// Checks d(sum(f(inputs) * R))/d(input) for every input that requires a
// gradient against central finite differences (step h), per element:
// |analytic - numeric| <= atol + rtol * max(|analytic|, |numeric|).
inline void expect_gradients_match(const std::function<Tensor()>& f, std::vector<Tensor> inputs,
                                   float h = 1e-2f, float rtol = 2e-2f, float atol = 2e-3f,
                                   uint64_t seed = 7) {
  Tensor probe = f();
  Rng rng(seed);
  std::vector<double> R(static_cast<size_t>(probe.numel()));
  for (auto& r : R) r = rng.uniform(-1.0f, 1.0f);
  auto objective = [&]() {
    Tensor out = f();
    double s = 0.0;
    for (int64_t i = 0; i < out.numel(); ++i) s += R[i] * out.data()[i];
    return s;
  };
  for (auto& x : inputs) x.clear_grad();
  {
    autograd::Tape tape;
    Tensor out = f();
    ASSERT_TRUE(out.requires_grad()) << "output records no gradient";
    Tensor w = Tensor::empty(out.shape());
    for (int64_t i = 0; i < out.numel(); ++i) w.data()[i] = static_cast<float>(R[i]);
    tape.backward(ops::sum(ops::mul(out, w)));
  }
  for (size_t k = 0; k < inputs.size(); ++k) {
    Tensor& x = inputs[k];
    if (!x.requires_grad()) continue;
    Tensor g = x.grad();
    ASSERT_TRUE(g.defined()) << "input " << k << " got no gradient";
    std::vector<float> analytic = g.to_vector();
    float* p = x.data();
    int bad = 0;
    for (int64_t i = 0; i < x.numel(); ++i) {
      const float orig = p[i];
      p[i] = orig + h;
      double fp = objective();
      p[i] = orig - h;
      double fm = objective();
      p[i] = orig;
      double numeric = (fp - fm) / (2.0 * h);
      double a = analytic[i];
      double tol = atol + rtol * std::max(std::fabs(a), std::fabs(numeric));
      if (std::fabs(a - numeric) > tol && bad++ < 5)
        ADD_FAILURE() << "input " << k << " element " << i << ": analytic " << a << " vs numeric "
                      << numeric;
    }
    EXPECT_EQ(bad, 0) << "input " << k << ": " << bad << " of " << x.numel() << " elements differ";
  }
}

// max |a - b| / max |b|: a scale-aware error over a whole tensor.
inline double rel_err(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 1e-12;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    num = std::max(num, static_cast<double>(std::fabs(a[i] - b[i])));
    den = std::max(den, static_cast<double>(std::fabs(b[i])));
  }
  return a.size() == b.size() ? num / den : 1e30;
}

inline std::string temp_dir(const std::string& name) {
  auto p = std::filesystem::temp_directory_path() /
           ("tessera_test_" + name + "_" + std::to_string(::getpid()));
  std::filesystem::remove_all(p);
  std::filesystem::create_directories(p);
  return p.string();
}

// A decoder small enough for finite differences: vocab 30, 2 layers, 2 heads.
// Tied embeddings for GPT-2, an lm_head for Llama.
inline nn::DecoderSpec tiny_decoder(nn::Flavor f, int64_t d_model = 12, int64_t n_ctx = 6) {
  nn::DecoderSpec s;
  s.flavor = f;
  s.vocab_size = 30;
  s.n_ctx = n_ctx;
  s.d_model = d_model;
  s.n_layer = 2;
  s.n_head = 2;
  s.tie_embeddings = f == nn::Flavor::Gpt2;
  return s;
}

// The message of the tessera::Error `f` throws, or "" when it throws none.
inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

inline std::string source_dir() {
  return TESSERA_SOURCE_DIR;
}

}  // namespace tessera::testing
