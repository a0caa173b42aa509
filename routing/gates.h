// Learned gates over LoRA experts, trained with the base frozen:
//  - sparse mixtures of LoRA experts (MixLoRA, Li et al. 2024; LLaVA-MoLE,
//    Chen et al. 2024) in Mixtral's convention: logits z = W_g x, p =
//    softmax(z), the top k, their weights renormalised over the k
//    (ops::top_k_gate); at k = 1 the Switch form (the output scaled by p_e*)
//    or straight-through, since a renormalised single weight is always 1 and
//    would give the gate no task gradient;
//  - MoLE (Wu, Huang and Wei, ICLR 2024): a gate per layer over frozen,
//    already trained library experts with its gating-balance loss. Where we
//    differ: MoLE's gate reads the normalised concatenation of every expert's
//    output (all E experts computed per token); ours reads the module input,
//    like the other gates, so only the k selected experts are computed;
//  - auxiliary-loss-free balancing (Wang et al. 2024, "Auxiliary-Loss-Free
//    Load Balancing Strategy for Mixture-of-Experts"; DeepSeek-V3): a
//    per-expert bias b added to the logits for selection only, after each
//    step b_e += u · sign(mean load − load_e).
// The auxiliary losses (Mixtral load balancing, router z-loss, MoLE gating
// balance) are taken over the logits of every gate of the step, stacked, as
// transformers does across layers, and enter training through
// Trainer::add_loss_term.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "routing/router.h"
#include "runtime/common/rng.h"
#include "runtime/nn/layers.h"
#include "runtime/nn/parameters.h"

namespace tessera::train {
class Trainer;
}

namespace tessera::routing {

// Which slots share one routing decision: a gate per adapted module; per
// block (one decision for all of a block's adapted projections, as
// LLaVA-MoLE routes an MLP); or one global gate for the whole model. A
// shared gate decides once per forward, from the input of whichever of its
// modules is called first (any order: Llama calls gate_proj and up_proj as
// two arguments of one function); the others reuse that decision. The
// gate's width is its first module's input (in model order); a module of
// another input width never decides. A slot called again starts the next
// forward's decision.
//
// The slots keep per-call state (the gate's decision, logits, load counts,
// RNG): a model carrying them runs one forward at a time.
enum class Granularity { Module, Block, Global };
const NameTable<Granularity>& granularity_names();  // "module" | "block" | "global"
const NameTable<ops::GateWeights>&
gate_weights_names();  // "renormalized" | "switch" | "straight-through"

struct GateOptions {
  int64_t top_k = 2;
  ops::GateWeights weights = ops::GateWeights::Renormalized;
  // Switch's jitter: while training, the gate's input is multiplied by
  // U(1 − jitter, 1 + jitter) noise (the experts see the clean input).
  float jitter = 0.0f;
  // Auxiliary-loss-free balancing: the bias step u (0: off; DeepSeek-V3
  // uses 0.001).
  float bias_update_rate = 0.0f;
  Combine combine = Combine::MergeAfter;
  // Coefficients of the auxiliary losses (0: not added): Mixtral's
  // router_aux_loss_coef (0.01 in Mixtral / MixLoRA), the z-loss (0.001 in
  // ST-MoE), MoLE's gating balance.
  float balance = 0.0f, z_loss = 0.0f, gating_balance = 0.0f;
  Granularity granularity = Granularity::Module;
};
// Error naming the option: top_k < 1; renormalized weights at top_k = 1
// (the gate would never learn: use switch or straight-through); a negative
// coefficient, jitter outside [0, 1) or a negative bias rate.
void check_gate_options(const GateOptions& o);

// One gate: W_g [E, in] (torch.nn.Linear(in, E, bias=False)'s default
// initialisation U(±1/√in), as Mixtral's gate) registered in `ps` as
// "<name>.weight", and its selection bias [E] as "<name>.bias" (frozen: the
// optimizer never steps it; update_bias does; saved with the router).
class LearnedGate {
 public:
  LearnedGate(nn::ParameterSet& ps, const std::string& name, int64_t in, int64_t E,
              const GateOptions& o, uint64_t seed);
  // Routes rows x [N, in]. While a tape records (training) it applies the
  // jitter, keeps the logits for the auxiliary losses and counts each
  // expert's selections for the bias.
  const ops::Gate& route(const Tensor& x);
  const ops::Gate& latest() const { return latest_; }
  // The decision for `slot`'s call on x: a new one (route(x)) when none is
  // current, when this slot already used the current one (a new forward),
  // or when x has another number of rows; else the current one. Error: a
  // new decision is needed and x is not of the gate's width.
  const ops::Gate& decision_for(const void* slot, const Tensor& x);
  int64_t experts() const { return E_; }
  int64_t in_features() const { return in_; }
  const std::string& name() const { return name_; }
  // The logits recorded since the last call (then forgotten).
  std::vector<Tensor> take_logits();
  // b_e += u · sign(mean load − load_e) over the selections counted since
  // the last update (none: unchanged), then forgets them. Single process:
  // under data parallelism each rank's bias would follow its own loads.
  void update_bias();
  std::vector<float> bias() const { return bias_.to_vector(); }

 private:
  std::string name_;
  int64_t in_, E_;
  GateOptions o_;
  Tensor weight_, bias_;
  std::vector<int64_t> load_;
  std::vector<Tensor> logits_;
  ops::Gate latest_;
  std::vector<const void*> used_;  // slots that used latest_
  Rng rng_;
};

// The slot on one module's Linear: the experts' mixture under a learned gate
// (LearnedGate::decision_for), through the weighted gather (routing/router.h's
// combine modes).
class GatedLora : public nn::LinearAdapter {
 public:
  GatedLora(ExpertStack experts, std::shared_ptr<LearnedGate> gate, Combine combine);
  Tensor forward(const Tensor& x, const Tensor& base_out, const nn::Linear&) override {
    return apply(x, base_out, false);
  }
  Tensor forward_owned(const Tensor& x, const Tensor& base_out, const nn::Linear&) override {
    return apply(x, base_out, true);
  }
  const ExpertStack& experts() const { return experts_; }
  const LearnedGate& gate() const { return *gate_; }
  // Whether this slot's input may start a decision (its width is the gate's).
  bool decides() const { return experts_.A.size(2) == gate_->in_features(); }
  // The last call's routing (telemetry).
  TopK last() const;

 private:
  Tensor apply(const Tensor& x, const Tensor& base_out, bool in_place);
  ExpertStack experts_;
  std::shared_ptr<LearnedGate> gate_;
  Combine combine_;
  ops::Gate used_;
};

// E fresh LoRA experts of rank r for one Linear, trained with their gate
// (MixLoRA): lora_A [E, r, in] ~ U(±1/√in) (PEFT's kaiming_uniform(a=√5)),
// lora_B [E, out, r] zero, registered in `ps` as "<name>.lora_A" and
// "<name>.lora_B"; scale α/r.
ExpertStack fresh_experts(nn::ParameterSet& ps, const std::string& name, int64_t E, int64_t r,
                          float alpha, int64_t in, int64_t out, Rng& rng);

// A learned mixture on a model: for every Linear named in `experts` (by
// Linear::name()), a GatedLora slot; gates by o.granularity, registered in
// `ps` as "<module or block>.gate.weight" / ".gate.bias". Error (before any
// slot is attached): a name no Linear has, an expert stack whose in/out
// differ from its Linear's, stacks of different sizes under one gate, bad
// options. Not copyable or movable: the trainer's terms and hook hold it.
class Mixture {
 public:
  Mixture(const std::vector<nn::Linear*>& linears, std::map<std::string, ExpertStack> experts,
          const GateOptions& o, nn::ParameterSet& ps, uint64_t seed);
  Mixture(const Mixture&) = delete;
  Mixture& operator=(const Mixture&) = delete;
  // Adds the auxiliary losses whose coefficient is not zero as loss terms
  // ("balance", "z_loss", "gating_balance"; all over the step's stacked
  // logits) and a step hook (the bias update; forgetting the step's
  // logits). The Mixture must outlive the trainer's use of them
  // (Trainer::clear_loss_terms and clear_step_hooks release them).
  void add_to(train::Trainer& trainer);
  // The slots in model order, with their module names.
  const std::vector<std::pair<std::string, std::shared_ptr<GatedLora>>>& slots() const {
    return slots_;
  }
  const std::vector<std::shared_ptr<LearnedGate>>& gates() const { return gates_; }
  const GateOptions& options() const { return o_; }

 private:
  GateOptions o_;
  std::vector<std::pair<std::string, std::shared_ptr<GatedLora>>> slots_;
  std::vector<std::shared_ptr<LearnedGate>> gates_;
  std::vector<Tensor> step_logits_;  // taken once per step, shared by the terms
  int64_t taken_for_ = -1;
  const std::vector<Tensor>& logits_of_step(int64_t step);
};

}  // namespace tessera::routing
