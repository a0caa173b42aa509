// Polytropon ("Poly", Ponti et al. 2023) and multi-head routing (MHR, Caccia
// et al. 2023) exactly as PEFT's PolyModel (peft/tuners/poly, poly_type
// "poly"): each adapted module holds an inventory of S LoRA skills and, per
// task, logits Z [tasks, splits·skills] (init U(−1e-3, 1e-3)). For each
// example of a batch, weights per split over the skills are
//   training:   ẑ ~ RelaxedBernoulli(τ = 1, logits = Z[task]) (rsample, one
//               sample per example)
//   evaluation: ẑ = σ(Z[task])
//   w[split, s] = ẑ[split, s] / (Σ_s' ẑ[split, s'] + 1e-12)
// and the task's adapter is mixed split by split: lora_A [r, in] split along
// in, lora_B [out, r] along out (MHR's heads; splits = 1 is Poly). The
// module adds scale · B_task A_task x, scale 1/r (PEFT) or α/r (mttl).
//
// Layouts: ours lora_A [S, r, in] and lora_B [S, out, r]; PEFT's
// poly_lora_A [splits, S, in/splits, r] and poly_lora_B [splits, S, r,
// out/splits] hold the same numbers (scripts/gen_poly_fixture.py maps one to
// the other).
//
// Where we differ from PEFT, deliberately: a task id of −1 (a task the router
// never saw) routes to the skill average, w = 1/S (MHR-μ's adapter), where
// PEFT refuses; tasks are given per row group (example), as PEFT's task_ids.
// MHR-z is Poly with the skills frozen (freeze_skills); MHR-μ is the skill
// average as one LoRA to fine-tune (poly_average).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "adapters/merge.h"
#include "runtime/common/names.h"
#include "runtime/common/rng.h"
#include "runtime/nn/layers.h"
#include "runtime/nn/parameters.h"

namespace tessera::routing {

enum class PolyScale { InverseRank, AlphaOverRank };
const NameTable<PolyScale>& poly_scale_names();  // "1/r" (PEFT) | "alpha/r" (mttl)

struct PolyOptions {
  int64_t tasks = 1, skills = 8, splits = 1, r = 8;
  float alpha = 16.0f;  // with alpha/r only
  PolyScale scale = PolyScale::InverseRank;
  float temperature = 1.0f;  // of the RelaxedBernoulli
};
// Error naming the option: a count below 1, temperature or alpha <= 0.
void check_poly_options(const PolyOptions& o);

class PolyLora : public nn::LinearAdapter {
 public:
  // Registers "<name>.poly_lora_A" [S, r, in] (per skill and split
  // kaiming_uniform(a=√5): U(±1/√(in/splits)), as PEFT), "<name>.poly_lora_B"
  // [S, out, r] (zero, PEFT's init_weights=True) and "<name>.module_logits"
  // [tasks, splits·skills] in `ps`. Error: splits not dividing in or out.
  PolyLora(nn::ParameterSet& ps, const std::string& name, int64_t in, int64_t out,
           const PolyOptions& o, uint64_t seed);
  // The task of each row group for the next forwards (M groups: M must
  // divide the rows; −1: the skill average). Error: an id outside [−1, tasks).
  void set_tasks(std::vector<int32_t> tasks);
  Tensor forward(const Tensor& x, const Tensor& base_out, const nn::Linear&) override {
    return apply(x, base_out, false);
  }
  Tensor forward_owned(const Tensor& x, const Tensor& base_out, const nn::Linear&) override {
    return apply(x, base_out, true);
  }
  const Tensor& lora_A() const { return A_; }
  const Tensor& lora_B() const { return B_; }
  const Tensor& module_logits() const { return Z_; }
  float scale() const { return scale_; }
  const PolyOptions& options() const { return o_; }
  // The routing weights [tasks, splits, skills] of the given tasks as
  // evaluation computes them (σ, normalised).
  Tensor eval_weights(const std::vector<int32_t>& tasks) const;

 private:
  Tensor apply(const Tensor& x, const Tensor& base_out, bool in_place);
  std::string name_;
  PolyOptions o_;
  Tensor A_, B_, Z_;
  float scale_;
  std::vector<int32_t> tasks_;
  Rng rng_;
};

// MHR-μ: the skill average as one LoRA (A = mean_s A_s, B = mean_s B_s, the
// module's scale), to fine-tune on a new task.
adapters::LoraFactors poly_average(const PolyLora& p);

// Poly on every Linear whose name is in `modules` (error naming a missing
// one), parameters registered in `ps` under the module's name.
class PolyModel {
 public:
  PolyModel(const std::vector<nn::Linear*>& linears, const std::vector<std::string>& modules,
            const PolyOptions& o, nn::ParameterSet& ps, uint64_t seed);
  void set_tasks(const std::vector<int32_t>& tasks);
  // MHR-z: train only the routing logits (the skills frozen).
  static void freeze_skills(nn::ParameterSet& ps);
  // The logits' own learning rate, as a multiple of the run's.
  static void set_logits_lr_scale(nn::ParameterSet& ps, float scale);
  const std::vector<std::pair<std::string, std::shared_ptr<PolyLora>>>& slots() const {
    return slots_;
  }

 private:
  std::vector<std::pair<std::string, std::shared_ptr<PolyLora>>> slots_;
};

}  // namespace tessera::routing
