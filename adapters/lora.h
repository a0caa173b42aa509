// LoRA adapters on the frozen base: y = W·x + b + s · B·(A·x), A [r, in]
// (Kaiming-uniform), B [out, r] (zeros), s = α/r, or α/√r with rsLoRA.
//
// An AdapterSet attaches one named LoRA to every Linear of a model whose
// module name matches a pattern (glob, "re:<regex>", or "all-linear", which
// like PEFT leaves out the output layer), owns the adapter parameters in its
// own ParameterSet (so an optimizer sees only them), and can detach, merge
// into the base weights and unmerge.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "runtime/common/rng.h"
#include "runtime/nn/layers.h"
#include "runtime/nn/parameters.h"

namespace tessera::adapters {

struct LoraConfig {
  int64_t r = 8;
  float alpha = 16.0f;
  bool rslora = false;  // s = α/√r instead of α/r
  float scale() const;
};

// Per-module overrides as PEFT writes them: a key matches a module when the
// regex (.*\.)?(key)$ matches its whole name.
struct LoraSpec {
  LoraConfig base;
  std::vector<std::pair<std::string, int64_t>> rank_pattern;
  std::vector<std::pair<std::string, float>> alpha_pattern;
  LoraSpec() = default;
  LoraSpec(const LoraConfig& c) : base(c) {}  // NOLINT: a plain config is a spec
  LoraConfig for_module(const std::string& name) const;
};
bool peft_pattern_matches(const std::string& key, const std::string& module);

class Lora : public nn::LinearAdapter {
 public:
  // Registers "<module>.lora_A.weight" [r, in] and "<module>.lora_B.weight" [out, r] in `ps`.
  Lora(const nn::Linear& base, const LoraConfig& cfg, nn::ParameterSet& ps, Rng& rng);
  Tensor forward(const Tensor& x, const Tensor& base_out, const nn::Linear& base) override;

  const LoraConfig& config() const { return cfg_; }
  const Tensor& A() const { return a_; }
  const Tensor& B() const { return b_; }
  float scale() const { return scale_; }
  // s·B·A laid out like the base weight ([out, in], or [in, out] for Conv1D).
  Tensor delta_weight(const nn::Linear& base) const;
  bool merged() const { return merged_; }
  void set_merged(bool m) { merged_ = m; }

 private:
  LoraConfig cfg_;
  Tensor a_, b_;
  float scale_;
  bool merged_ = false;
};

class AdapterSet {
 public:
  // Attaches a LoRA to every Linear in `linears` whose name matches one of
  // `targets`; throws Error listing near names when a target matches nothing.
  // The base parameters are frozen (`base` is the model's ParameterSet).
  AdapterSet(std::vector<nn::Linear*> linears, nn::ParameterSet& base,
             const std::vector<std::string>& targets, const LoraSpec& spec, uint64_t seed);
  ~AdapterSet();
  AdapterSet(const AdapterSet&) = delete;
  AdapterSet& operator=(const AdapterSet&) = delete;

  nn::ParameterSet& params() { return params_; }
  const std::vector<std::string>& modules() const { return names_; }
  const std::vector<std::shared_ptr<Lora>>& loras() const { return loras_; }
  const std::vector<nn::Linear*>& linears() const { return linears_; }
  const LoraSpec& spec() const { return spec_; }
  const std::vector<std::string>& targets() const { return targets_; }
  // Adds s·B·A into every base weight; the adapters then stand aside in forward.
  void merge();
  // Subtracts it again (W back within fp32 rounding).
  void unmerge();
  // Empties every slot this set filled (unmerging first); the base output is
  // then bit-identical to the model's before attach.
  void detach();

 private:
  void shift_base(bool merge);  // W ± s·B·A for every adapter not yet in that state
  std::vector<nn::Linear*> linears_;
  std::vector<std::shared_ptr<Lora>> loras_;
  std::vector<std::string> names_;
  nn::ParameterSet params_;
  LoraSpec spec_;
  std::vector<std::string> targets_;
  bool attached_ = true;
};

// Module names of `linears` selected by one target pattern.
std::vector<std::string> match_targets(const std::vector<nn::Linear*>& linears,
                                       const std::string& target);

}  // namespace tessera::adapters
