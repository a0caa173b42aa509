// Trained routers as one value: what `tessera train-router` trains and a
// library record of kind "router" holds (proto/tessera/router.proto).
//   mole:top_k=K,balance=C,...     a learned gate per module (or block, or
//                                  global) over frozen library experts
//                                  (MoLE-style; routing/gates.h)
//   mixlora:experts=E,r=R,alpha=A,top_k=K,balance=C,...
//                                  fresh LoRA experts trained with their gate
//                                  (MixLoRA, Mixtral convention)
//   poly:skills=S,splits=Q,r=R,scale=1/r|alpha/r,alpha=A,logits_lr=F
//                                  Poly / MHR (routing/poly.h) over the tasks
// Gate keys: top_k, weights (renormalized|switch|straight-through),
// granularity (module|block|global), mode (merge-after|merge-before),
// jitter, bias_rate (auxiliary-loss-free balancing), balance, z_loss,
// gating_balance. Defaults: top_k 2, renormalized (switch at top_k 1),
// module, merge-after, balance 0.01 (Mixtral's router_aux_loss_coef).
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "adapters/merge.h"
#include "routing/gates.h"
#include "routing/poly.h"
#include "tessera/router.pb.h"

namespace tessera::train {
class Trainer;
}

namespace tessera::routing {

// The config a --router spec describes (kind and options; experts, modules
// and tasks are the caller's). Error naming the spec: an unknown kind or
// key, a value out of range (every option validated as the objects will).
RouterConfig parse_router_config(const std::string& spec);
// config_json of a record, and back (protobuf's JSON mapping); Error naming
// `source` for malformed JSON or a config that fails validation.
std::string router_config_json(const RouterConfig& c);
RouterConfig parse_router_config_json(const std::string& json, const std::string& source);

GateOptions gate_options(const RouterConfig& c);
PolyOptions poly_options(const RouterConfig& c);

// A router on a model: its slots on the Linears named by c.modules, its
// parameters registered in `ps` (gates "<module>.gate.weight", MixLoRA
// experts "<module>.lora_A/lora_B", Poly "<module>.poly_lora_A/poly_lora_B/
// module_logits"). `experts` (mole): per module, the library experts'
// factors in c.experts' order. Error naming what does not fit.
class TrainedRouter {
 public:
  TrainedRouter(const RouterConfig& c, const std::vector<nn::Linear*>& linears,
                const std::map<std::string, std::vector<adapters::LoraFactors>>& experts,
                nn::ParameterSet& ps, uint64_t seed);
  const RouterConfig& config() const { return c_; }
  // Poly: the task of every row group (index into c.tasks; −1: unknown).
  void set_tasks(const std::vector<int32_t>& tasks);
  // The auxiliary losses and step hooks (gates), the logits' learning rate (Poly).
  void add_to(train::Trainer& t, nn::ParameterSet& ps);
  Mixture* mixture() { return mixture_.get(); }
  PolyModel* poly() { return poly_.get(); }

 private:
  RouterConfig c_;
  std::unique_ptr<Mixture> mixture_;
  std::unique_ptr<PolyModel> poly_;
};

}  // namespace tessera::routing
