// The op contract (runtime/autograd/ADDING_AN_OP.md): every op notes every
// tensor it reads (autograd::note_inputs), so that gradient readiness — what
// lets a gradient bucket leave for the allreduce while backward still runs —
// never declares a gradient final before the op has added its share.
//
// For each op and each of its differentiable inputs x: loss = Σ R ⊙ op(...)
// + ½ Σ x, with the second term recorded after the op. Backward runs the
// later term first; if the op had not noted x, x's first use would be that
// term and x would be declared ready before the op's backward ran. The
// gradient seen at the moment x is declared ready must equal the final one.
#include <gtest/gtest.h>

#include <fstream>
#include <functional>
#include <regex>
#include <set>
#include <sstream>
#include <string>

#include "runtime/autograd/ops.h"
#include "runtime/autograd/tape.h"
#include "runtime/kernels/cpu/attention.h"
#include "tests/testing.h"

namespace tessera::ops {
namespace {

using testing::randn;

struct OpCase {
  std::string name;
  std::vector<Tensor> inputs;  // all require a gradient
  std::function<Tensor(const std::vector<Tensor>&)> op;
};

std::vector<OpCase> every_op() {
  Rng rng(3);
  auto r = [&](const Shape& s) { return randn(s, rng, 0.5f, true); };
  const int64_t B = 2, T = 3, H = 2, D = 4;
  Tensor cos = Tensor::empty({T, D / 2}), sin = Tensor::empty({T, D / 2});
  kernels::cpu::rope_tables(cos.data(), sin.data(), T, D, 10000.0f);
  std::vector<OpCase> c;
  c.push_back(
      {"linear", {r({4, 3}), r({5, 3}), r({5})}, [](auto& v) { return linear(v[0], v[1], v[2]); }});
  c.push_back({"matmul_nt", {r({4, 3}), r({5, 3})}, [](auto& v) { return matmul_nt(v[0], v[1]); }});
  c.push_back({"add", {r({4, 3}), r({4, 3})}, [](auto& v) { return add(v[0], v[1]); }});
  c.push_back({"add broadcast", {r({4, 3}), r({3})}, [](auto& v) { return add(v[0], v[1]); }});
  c.push_back({"mul", {r({4, 3}), r({4, 3})}, [](auto& v) { return mul(v[0], v[1]); }});
  c.push_back({"mul broadcast", {r({4, 3}), r({3})}, [](auto& v) { return mul(v[0], v[1]); }});
  c.push_back({"div", {r({4, 3}), testing::uniform({4, 3}, rng, 1.0f, 2.0f, true)}, [](auto& v) {
                 return div(v[0], v[1]);
               }});
  c.push_back({"row_norm", {r({4, 3})}, [](auto& v) { return row_norm(v[0]); }});
  c.push_back({"transpose", {r({4, 3})}, [](auto& v) { return transpose(v[0]); }});
  c.push_back({"slice_rows", {r({4, 3})}, [](auto& v) { return slice_rows(v[0], 1, 3); }});
  c.push_back(
      {"concat_rows", {r({2, 3}), r({1, 3}), r({3, 3})}, [](auto& v) { return concat_rows(v); }});
  c.push_back({"scale", {r({4, 3})}, [](auto& v) { return scale(v[0], 1.5f); }});
  c.push_back({"sum", {r({4, 3})}, [](auto& v) { return sum(v[0]); }});
  c.push_back({"activation", {r({4, 3})}, [](auto& v) { return activation(v[0], Act::Gelu); }});
  c.push_back({"swiglu", {r({4, 3}), r({4, 3})}, [](auto& v) { return swiglu(v[0], v[1]); }});
  c.push_back({"layernorm", {r({4, 3}), r({3}), r({3})}, [](auto& v) {
                 return layernorm(v[0], v[1], v[2], 1e-5f);
               }});
  c.push_back({"rmsnorm", {r({4, 3}), r({3})}, [](auto& v) { return rmsnorm(v[0], v[1], 1e-5f); }});
  c.push_back({"reshape", {r({4, 3})}, [](auto& v) { return reshape(v[0], {2, 6}); }});
  c.push_back({"embedding", {r({5, 3})}, [](auto& v) { return embedding({4, 0, 4, 2}, v[0]); }});
  c.push_back({"attention", {r({B * T, H * D}), r({B * T, D}), r({B * T, D})}, [=](auto& v) {
                 return attention(v[0], v[1], v[2], B, T, H, 1);
               }});
  c.push_back({"attention_packed", {r({B * T, (H + 2) * D})}, [=](auto& v) {
                 return attention_packed(v[0], B, T, H, 1);
               }});
  c.push_back({"slice_cols", {r({4, 5})}, [](auto& v) { return slice_cols(v[0], 1, 4); }});
  c.push_back(
      {"rope", {r({B * T, H * D})}, [=](auto& v) { return rope(v[0], cos, sin, B, T, H); }});
  c.push_back({"cross_entropy", {r({4, 5})}, [](auto& v) {
                 return cross_entropy(v[0], {1, -1, 4, 0});
               }});
  c.push_back({"dropout", {r({4, 3})}, [](auto& v) {
                 Rng mask(1);
                 return dropout(v[0], 0.5f, mask);
               }});
  c.push_back(
      {"lora_gather", {r({4, 3}), r({4, 2}), r({2, 2, 3}), r({2, 2, 2}), r({4, 2})}, [](auto& v) {
         return lora_gather(v[0], v[1], v[2], v[3], {0, 1, 1, -1, 0, 0, 1, 0}, 2, v[4],
                            {1.0f, 0.5f});
       }});
  c.push_back({"lora_gather parameter mixing",
               {r({4, 3}), r({4, 2}), r({2, 2, 3}), r({2, 2, 2}), r({4, 2})},
               [](auto& v) {
                 return lora_gather(v[0], v[1], v[2], v[3], {0, 1, 1, -1, 0, 0, 1, 0}, 2, v[4],
                                    {1.0f, 0.5f}, LoraMix::Parameter);
               }});
  c.push_back({"top_k_gate", {r({5, 4})}, [](auto& v) {
                 return top_k_gate(v[0], 2, GateWeights::Renormalized).weights;
               }});
  c.push_back({"load_balancing_loss", {r({5, 4})}, [](auto& v) {
                 return load_balancing_loss(v[0], 2, {1, 1, 0, 1, 1});
               }});
  c.push_back({"router_z_loss", {r({5, 4})}, [](auto& v) { return router_z_loss(v[0]); }});
  c.push_back(
      {"gating_balance_loss", {r({5, 4})}, [](auto& v) { return gating_balance_loss(v[0]); }});
  c.push_back(
      {"poly_weights", {r({3, 6})}, [](auto& v) { return poly_weights(v[0], 3, Tensor(), 1.0f); }});
  c.push_back({"poly_mix", {r({2, 2, 3}), r({3, 4, 6})}, [](auto& v) {
                 return poly_mix(v[0], v[1], true);
               }});
  c.push_back({"poly_lora",
               {r({4, 6}), r({4, 4}), r({3, 2, 6}), r({3, 4, 2}), r({2, 2, 3})},
               [](auto& v) { return poly_lora(v[0], v[1], v[2], v[3], v[4], 0.5f); }});
  return c;
}

// Every op ops.h declares is in every_op(): a new op without a case fails here.
TEST(OpContract, EveryDeclaredOpHasACase) {
  std::ifstream f(testing::source_dir() + "/runtime/autograd/ops.h");
  std::stringstream ss;
  ss << f.rdbuf();
  const std::string h = ss.str();
  std::set<std::string> cased;
  for (const OpCase& c : every_op()) cased.insert(c.name.substr(0, c.name.find(' ')));
  const std::regex decl(R"(\n(?:Tensor|Gate) ([a-z_]+)\()");
  int declared = 0;
  for (std::sregex_iterator it(h.begin(), h.end(), decl), end; it != end; ++it, ++declared)
    EXPECT_TRUE(cased.count((*it)[1])) << "op " << (*it)[1] << " has no case in every_op()";
  EXPECT_GT(declared, 20);
}

TEST(OpContract, EveryOpNotesEveryInputBeforeItsGradientIsDeclaredFinal) {
  for (OpCase& c : every_op()) {
    for (size_t k = 0; k < c.inputs.size(); ++k) {
      SCOPED_TRACE(::testing::Message() << c.name << ", input " << k);
      for (Tensor& t : c.inputs) t.clear_grad();
      const Tensor& x = c.inputs[k];
      std::vector<float> at_ready;
      bool fired = false;
      {
        autograd::Tape tape;
        tape.watch({&x}, [&](size_t) {
          fired = true;
          if (x.grad().defined()) at_ready = x.grad().to_vector();
        });
        Tensor y = c.op(c.inputs);
        Rng rr(9);
        Tensor R = randn(y.shape(), rr);
        Tensor later = sum(scale(x, 0.5f));  // recorded after the op
        tape.backward(add(sum(mul(y, R)), later));
      }
      ASSERT_TRUE(fired);
      ASSERT_TRUE(x.grad().defined());
      EXPECT_EQ(at_ready, x.grad().to_vector())
          << "declared final before the op added its share: the op does not note this input";
    }
  }
}

}  // namespace
}  // namespace tessera::ops
