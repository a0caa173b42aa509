// A library's LoRA experts as routers need them: factors per module, the
// signatures stored with each, and the identity (name@version, content id,
// task) a router record pins.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "adapters/merge.h"
#include "routing/trained.h"
#include "runtime/nn/layers.h"
#include "runtime/nn/parameters.h"

namespace tessera {
class AdapterRecord;
}
namespace tessera::store {
class LibraryApi;
}
namespace tessera::train {
class Trainer;
}

namespace tessera::launch {

struct LibraryExpert {
  std::string name;  // name@version
  std::string id, task;
  std::map<std::string, adapters::LoraFactors> factors;
  std::map<std::string, std::vector<float>> signatures;
};

// Every version of every LoRA expert recorded for the base (fingerprint),
// through every page of the library's listing.
std::vector<AdapterRecord> list_lora_records(store::LibraryApi& lib,
                                             const std::string& fingerprint);
// One expert by key (id, name, name@N); Error naming it when it is missing
// or not a LoRA.
LibraryExpert read_library_expert(store::LibraryApi& lib, const std::string& key);
// The named experts (each checked against the base's fingerprint) or, with
// no names, the newest version of every LoRA expert recorded for the base.
// Error naming the library when there are none. With `load` false only
// their identity (name, id, task) is read: factors and signatures stay in
// the library (library-scale routing fetches the candidates it retrieves).
std::vector<LibraryExpert> read_library_experts(store::LibraryApi& lib,
                                                const std::string& fingerprint,
                                                const std::vector<std::string>& names,
                                                const std::string& library, const std::string& base,
                                                bool load = true);
// The Linears every expert adapts, in model order. Error when they share none.
std::vector<nn::Linear*> shared_modules(const std::vector<nn::Linear*>& linears,
                                        const std::vector<LibraryExpert>& experts);

// A router record (kind "router") on a Trainer's model: every expert it
// pins fetched by content id (Error naming the expert when the library no
// longer holds it), its slots attached, its tensors loaded (each required, by
// name and shape). `tasks`: the workload's tasks in task-id order
// (workload_tasks), which Poly's ids follow (a task it never saw: the skill
// average). Error when the record is not a router or was trained on another
// base (`fingerprint`). The trainer's row hook points into the result: keep
// it alive while the trainer runs.
struct LibraryRouter {
  std::string name;  // name@version
  RouterConfig config;
  nn::ParameterSet params;
  std::unique_ptr<routing::TrainedRouter> router;
};
std::unique_ptr<LibraryRouter> load_library_router(store::LibraryApi& lib, const std::string& key,
                                                   train::Trainer& t,
                                                   const std::string& fingerprint,
                                                   const std::vector<std::string>& tasks);
// The task ids of a Poly router for a workload's tasks: each data task's
// index in the router's tasks, or -1 (unknown: the skill average).
std::vector<int32_t> router_task_ids(const RouterConfig& c, const std::vector<std::string>& tasks);

}  // namespace tessera::launch
