// A router named on the command line or in a library record:
//   arrow[:top_k=K,temperature=T,mode=M]   Arrow (routing/arrow.h); PEFT's
//                                         defaults top_k 3, T 1; temperature
//                                         "sqrt" is mttl's √in
//   centroid[:top_k=K,mode=M]             mttl's avg_act (routing/routers.h);
//                                         top_k 0 = softmax over all
//   task                                  the oracle: each input's own expert
//   uniform[:mode=M]                      every expert at 1/E
//   base                                  no expert (the frozen base alone)
// M is merge-after (default, PEFT) or merge-before (mttl). A key a router
// does not take, a value out of range or a misspelled kind is an Error
// naming the spec and what was expected.
#pragma once

#include <cstdint>
#include <string>

#include "routing/router.h"

namespace tessera::routing {

enum class RouterKind { Arrow, Centroid, Task, Uniform, Base };
const NameTable<RouterKind>& router_kind_names();

struct RouterSpec {
  RouterKind kind = RouterKind::Arrow;
  int64_t top_k = 3;
  float temperature = 1.0f;
  bool sqrt_temperature = false;  // T = √in per module (mttl)
  Combine combine = Combine::MergeAfter;
  std::string text;  // as given
  // "arrow top_k=2 T=1 merge-after": a row label in tables.
  std::string label() const;
};
RouterSpec parse_router_spec(const std::string& spec);

}  // namespace tessera::routing
