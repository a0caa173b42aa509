// Mixed-adapter batches: E LoRA experts of one module stacked into one bank,
// A [E, r, in] and B [E, out, r], and a batch whose row group i uses expert
// ids[i] (-1: the base alone), or k weighted experts per row group. The banks
// hold the parameters and the routing; the work is the runtime's weighted
// gather kernel (ops::lora_gather, runtime/kernels/cpu/lora.h), which has a
// backward: each row's gradient reaches only its own experts, so many experts
// train in one pass over the frozen base.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "adapters/lora.h"
#include "adapters/merge.h"
#include "runtime/autograd/ops.h"

namespace tessera::adapters {

// The expert of each row group, shared by every bank of a BankSet.
// ids [M·k]: k experts per row group (-1: empty); weights [M, k] (undefined:
// all 1) and how the experts of one row combine.
struct Routing {
  std::vector<int32_t> ids;
  int64_t k = 1;
  Tensor weights;
  ops::LoraMix mix = ops::LoraMix::Output;
};

class LoraBank : public Adapter {
 public:
  // Registers "<module>.lora_A.bank" [E, r, in] (Kaiming-uniform per expert)
  // and "<module>.lora_B.bank" [E, out, r] (zeros).
  LoraBank(const nn::Linear& base, int64_t experts, const LoraConfig& cfg, nn::ParameterSet& ps,
           Rng& rng, std::shared_ptr<const Routing> routing);
  Tensor forward(const Tensor& x, const Tensor& base_out, const nn::Linear& base) override {
    return apply(x, base_out, base, false);
  }
  Tensor forward_owned(const Tensor& x, const Tensor& base_out, const nn::Linear& base) override {
    return apply(x, base_out, base, true);
  }
  Kind kind() const override { return Kind::Lora; }
  // A mixed batch has no single merged weight.
  void shift_base(nn::Linear& base, bool merge) override;

  int64_t experts() const { return A_.size(0); }
  int64_t rank() const { return A_.size(1); }
  const Tensor& A() const { return A_; }
  const Tensor& B() const { return B_; }
  std::vector<float>& scales() { return scales_; }
  const std::vector<float>& scales() const { return scales_; }

 private:
  Tensor apply(const Tensor& x, const Tensor& base_out, const nn::Linear& base, bool in_place);
  Tensor A_, B_;
  std::vector<float> scales_;
  std::shared_ptr<const Routing> routing_;
};

class BankSet {
 public:
  // Attaches a bank of `experts` LoRAs (each of the spec's rank and scale) to
  // every Linear matching `targets`; the base is frozen. Until route() is
  // called every row uses the base alone.
  BankSet(std::vector<nn::Linear*> linears, nn::ParameterSet& base,
          const std::vector<std::string>& targets, int64_t experts, const LoraSpec& spec,
          uint64_t seed);
  ~BankSet();
  BankSet(const BankSet&) = delete;
  BankSet& operator=(const BankSet&) = delete;

  // The expert of each row group (one id per example); each id in [-1, experts).
  void route(std::vector<int32_t> ids);
  // k weighted experts per row group: ids [M·k] (-1: an empty slot), weights
  // [M, k] (undefined: all 1; a tensor that requires a gradient gets one).
  void route(std::vector<int32_t> ids, int64_t k, Tensor weights,
             ops::LoraMix mix = ops::LoraMix::Output);
  int64_t experts() const { return experts_; }
  nn::ParameterSet& params() { return params_; }
  const std::vector<std::string>& modules() const { return names_; }
  const std::vector<std::shared_ptr<LoraBank>>& banks() const { return banks_; }

  // Expert e's factors per module (its slice of every bank, with its scale).
  std::vector<std::pair<std::string, LoraFactors>> expert(int64_t e) const;
  // Loads a LoRA into slot e; ranks up to the bank's rank (smaller ones are
  // zero-padded, which is exact); its scale is kept per expert.
  void load_expert(int64_t e, const std::vector<std::pair<std::string, LoraFactors>>& factors);
  void detach();

 private:
  std::vector<nn::Linear*> linears_;
  std::vector<std::shared_ptr<LoraBank>> banks_;
  std::vector<std::string> names_;
  nn::ParameterSet params_;
  std::shared_ptr<Routing> routing_;
  int64_t experts_;
  bool attached_ = true;
};

}  // namespace tessera::adapters
