// Routers over a library of LoRA experts: the pieces every router shares.
//
// Notation for one adapted module: expert e has A_e [r_e, in], B_e [out, r_e]
// and scale s_e; x [N, in] holds the module inputs of N rows (tokens, or the
// tokens of examples). A router picks, per row group, k experts and their
// weights (TopK); a RoutedLora slot on the module's Linear adds the mixture
// to the frozen base output through the weighted gather kernel
// (runtime/kernels/cpu/lora.h) — the GEMMs of the routed rows only, never a
// loop over all E experts — in one of two combine modes:
//   merge-after  (PEFT):  y = Wx + Σ_{e∈S} w_e s_e B_e A_e x
//   merge-before (mttl):  z = Σ_j w_j A_{e_j} x,  y = Wx + Σ_j w_j s_{e_j} B_{e_j} z
// (mttl's form s (Σ w B)(Σ w A) x when every scale is the same; computed
// without materialising the mixed matrices). With one expert per row the two
// are the same: y = Wx + s B A x.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "adapters/merge.h"
#include "runtime/autograd/ops.h"
#include "runtime/common/names.h"
#include "runtime/nn/layers.h"

namespace tessera::routing {

enum class Combine { MergeAfter, MergeBefore };
// "merge-after" | "merge-before"; parse errors list both.
const NameTable<Combine>& combine_names();

// The experts of one module as one bank for the gather kernel: A [E, r, in]
// and B [E, out, r] with r the largest rank, each expert zero-padded to it
// (padded rows of A and columns of B are zero, so an expert's own product
// B_e A_e is unchanged: exact), and each expert's own scale (α_e/r_e, or
// α_e/√r_e with rsLoRA, as its factors carry it). Experts of different rank
// or α work together; PEFT and mttl refuse or mis-scale this.
// Error: no experts, or experts whose in/out differ (naming the expert).
struct ExpertStack {
  Tensor A, B;
  std::vector<float> scales;
  int64_t experts() const { return static_cast<int64_t>(scales.size()); }
};
ExpertStack stack_experts(const std::vector<adapters::LoraFactors>& experts);

// k experts per row group: ids [M·k] (−1: an empty slot) and weights [M, k].
struct TopK {
  int64_t k = 0;
  std::vector<int32_t> ids;
  std::vector<float> weights;
};

// scale · x·tᵀ for inputs x [N, in] and a table t [E, in] (prototypes,
// centroids): scores [N, E], one GEMM. Error naming `what` when either is not
// a matrix or their widths differ.
std::vector<float> table_scores(const Tensor& x, const Tensor& table, float scale,
                                const char* what);

// The k largest of each row of scores [M, E] (ties: the lower expert id
// first), with weights softmax(score / temperature) over those k only.
// Error: k < 1, k > E, temperature <= 0.
TopK top_k_softmax(const std::vector<float>& scores, int64_t M, int64_t E, int64_t k,
                   float temperature);

// The k largest of one row s [E] into order[0..k) (order is resized to E):
// larger first, ties to the lower expert id — the selection every top-k
// router here shares.
void top_k_order(const float* s, int64_t E, int64_t k, std::vector<int32_t>* order);

// The slot on one module's Linear: `route` turns the call's inputs x [N, in]
// into a TopK with M dividing N (M = N: per token); the experts' mixture is
// added to the base output. Routing weights carry no gradient here (a
// learned gate passes its own through the kernel's weights input later).
class RoutedLora : public nn::LinearAdapter {
 public:
  using RouteFn = std::function<TopK(const Tensor& x)>;
  RoutedLora(ExpertStack experts, RouteFn route, Combine combine);
  // A slot whose bank changes from call to call (library-scale routing,
  // routing/retrieval.h): `route` returns the TopK and the bank its ids
  // index, which must stay valid until the next call.
  struct Routed {
    TopK topk;
    const ExpertStack* bank = nullptr;
  };
  using BankRouteFn = std::function<Routed(const Tensor& x)>;
  RoutedLora(BankRouteFn route, Combine combine);
  Tensor forward(const Tensor& x, const Tensor& base_out, const nn::Linear&) override {
    return apply(x, base_out, false);
  }
  Tensor forward_owned(const Tensor& x, const Tensor& base_out, const nn::Linear&) override {
    return apply(x, base_out, true);
  }
  const ExpertStack& experts() const { return experts_; }
  Combine combine() const { return combine_; }
  // The last call's routing (telemetry: load, entropy, accuracy).
  const TopK& last() const { return last_; }

 private:
  Tensor apply(const Tensor& x, const Tensor& base_out, bool in_place);
  ExpertStack experts_;
  RouteFn route_;
  BankRouteFn bank_route_;
  Combine combine_;
  TopK last_;
};

}  // namespace tessera::routing
