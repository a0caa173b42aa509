// Mixed-adapter batches: E LoRA experts of one module stacked into one bank,
// A [E, r, in] and B [E, out, r], and a batch whose row group i uses expert
// ids[i] (-1: the base alone). One gather kernel serves the whole batch — the
// rows of each expert are gathered into contiguous blocks and each block runs
// two small GEMMs against its own A and B (the SGMV idea of Punica and S-LoRA)
// — instead of a loop of masked adapter passes. Unlike PEFT's mixed batches
// (inference only) the kernel has a backward: each row's gradient reaches only
// its own expert, so many experts train in one pass over the frozen base.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "adapters/lora.h"
#include "adapters/merge.h"

namespace tessera::adapters {

// base_out + s_e · B_e·(A_e·x) for every row of x [N, in] whose group's expert
// e = ids[row / (N / ids.size())] is >= 0; rows of expert -1 get base_out.
// ids.size() must divide N (one id per example of T tokens: N = examples · T).
// Gradients reach x, base_out, A and B.
Tensor lora_gather(const Tensor& x, const Tensor& base_out, const Tensor& A, const Tensor& B,
                   const std::vector<int32_t>& ids, const std::vector<float>& scales);

// The expert of each row group, shared by every bank of a BankSet.
struct Routing {
  std::vector<int32_t> ids;
};

class LoraBank : public Adapter {
 public:
  // Registers "<module>.lora_A.bank" [E, r, in] (Kaiming-uniform per expert)
  // and "<module>.lora_B.bank" [E, out, r] (zeros).
  LoraBank(const nn::Linear& base, int64_t experts, const LoraConfig& cfg, nn::ParameterSet& ps,
           Rng& rng, std::shared_ptr<const Routing> routing);
  Tensor forward(const Tensor& x, const Tensor& base_out, const nn::Linear& base) override;
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
