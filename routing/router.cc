#include "routing/router.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "runtime/common/error.h"
#include "runtime/kernels/cpu/matmul.h"

namespace tessera::routing {

const NameTable<Combine>& combine_names() {
  static const NameTable<Combine> t = {{Combine::MergeAfter, "merge-after"},
                                       {Combine::MergeBefore, "merge-before"}};
  return t;
}

ExpertStack stack_experts(const std::vector<adapters::LoraFactors>& experts) {
  if (experts.empty()) throw Error("stack_experts: no experts to route among");
  const int64_t in = experts[0].A.size(1), out = experts[0].B.size(0);
  int64_t r = 0;
  for (size_t e = 0; e < experts.size(); ++e) {
    const auto& f = experts[e];
    if (f.A.size(1) != in || f.B.size(0) != out || f.B.size(1) != f.A.size(0))
      throw Error(str("stack_experts: expert ", e, " has lora_A [", f.A.size(0), ", ", f.A.size(1),
                      "] and lora_B [", f.B.size(0), ", ", f.B.size(1), "]; expert 0 maps ", in,
                      " -> ", out));
    r = std::max(r, f.rank());
  }
  const int64_t E = static_cast<int64_t>(experts.size());
  ExpertStack s;
  s.A = Tensor::zeros({E, r, in});
  s.B = Tensor::zeros({E, out, r});
  for (int64_t e = 0; e < E; ++e) {
    const auto& f = experts[static_cast<size_t>(e)];
    const int64_t re = f.rank();
    std::copy(f.A.data(), f.A.data() + re * in, s.A.data() + e * r * in);
    for (int64_t o = 0; o < out; ++o)
      std::copy(f.B.data() + o * re, f.B.data() + (o + 1) * re, s.B.data() + (e * out + o) * r);
    s.scales.push_back(f.scale);
  }
  return s;
}

std::vector<float> table_scores(const Tensor& x, const Tensor& table, float scale,
                                const char* what) {
  if (x.ndim() != 2 || table.ndim() != 2 || table.size(1) != x.size(1))
    throw Error(str(what, ": inputs of width ", x.ndim() == 2 ? x.size(1) : -1,
                    " against a table of width ", table.ndim() == 2 ? table.size(1) : -1,
                    " (expected [tokens, in] and [experts, in])"));
  const int64_t N = x.size(0), in = x.size(1), E = table.size(0);
  std::vector<float> scores(static_cast<size_t>(N * E));
  if (N > 0 && E > 0)
    kernels::cpu::gemm(false, true, N, E, in, scale, x.data(), in, table.data(), in, 0.0f,
                       scores.data(), E);
  return scores;
}

void top_k_order(const float* s, int64_t E, int64_t k, std::vector<int32_t>* order) {
  order->resize(static_cast<size_t>(E));
  std::iota(order->begin(), order->end(), 0);
  std::partial_sort(order->begin(), order->begin() + k, order->end(),
                    [s](int32_t a, int32_t b) { return s[a] > s[b] || (s[a] == s[b] && a < b); });
}

TopK top_k_softmax(const std::vector<float>& scores, int64_t M, int64_t E, int64_t k,
                   float temperature) {
  if (k < 1 || k > E)
    throw Error(str("router top_k = ", k, ": expected 1 to the number of experts (", E, ")"));
  if (!(temperature > 0))
    throw Error(str("router temperature = ", temperature, ": expected a value above 0"));
  if (static_cast<int64_t>(scores.size()) != M * E)
    throw Error(str("top_k_softmax: ", scores.size(), " scores for ", M, " rows of ", E));
  TopK t;
  t.k = k;
  t.ids.resize(static_cast<size_t>(M * k));
  t.weights.resize(static_cast<size_t>(M * k));
  std::vector<int32_t> order;
  for (int64_t m = 0; m < M; ++m) {
    const float* s = scores.data() + m * E;
    top_k_order(s, E, k, &order);
    // Softmax over the k kept, as PEFT's masked softmax (−inf elsewhere).
    const double top = s[order[0]] / static_cast<double>(temperature);
    double sum = 0;
    for (int64_t j = 0; j < k; ++j) sum += std::exp(s[order[j]] / double(temperature) - top);
    for (int64_t j = 0; j < k; ++j) {
      t.ids[m * k + j] = order[j];
      t.weights[m * k + j] =
          static_cast<float>(std::exp(s[order[j]] / double(temperature) - top) / sum);
    }
  }
  return t;
}

RoutedLora::RoutedLora(ExpertStack experts, RouteFn route, Combine combine)
    : experts_(std::move(experts)), route_(std::move(route)), combine_(combine) {}

RoutedLora::RoutedLora(BankRouteFn route, Combine combine)
    : bank_route_(std::move(route)), combine_(combine) {}

Tensor RoutedLora::apply(const Tensor& x, const Tensor& base_out, bool in_place) {
  const ExpertStack* bank = &experts_;
  if (bank_route_) {
    Routed r = bank_route_(x);
    TESSERA_CHECK(r.bank != nullptr);
    last_ = std::move(r.topk);
    bank = r.bank;
  } else {
    last_ = route_(x);
  }
  const int64_t M = last_.k > 0 ? static_cast<int64_t>(last_.ids.size()) / last_.k : 0;
  const Tensor w = Tensor::from_vector(last_.weights, {M, last_.k});
  return ops::lora_gather(
      x, base_out, bank->A, bank->B, last_.ids, last_.k, w, bank->scales,
      combine_ == Combine::MergeAfter ? ops::LoraMix::Output : ops::LoraMix::Parameter, in_place);
}

}  // namespace tessera::routing
