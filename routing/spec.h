// A router named on the command line or in a library record:
//   arrow[:top_k=K,temperature=T,mode=M,candidates=N,retrieve=S]
//                                         Arrow (routing/arrow.h); PEFT's
//                                         defaults top_k 3, T 1; temperature
//                                         "sqrt" is mttl's √in
//   centroid[:top_k=K,mode=M,candidates=N,retrieve=S]
//                                         mttl's avg_act (routing/routers.h);
//                                         top_k 0 = softmax over all
// candidates=N routes among the N experts a per-batch signature search
// retrieves (retrieve=centroid|arrow, routing/retrieval.h) instead of all;
// context=prefix scores each token by its sequence's mean module input so
// far (routers.h prefix_mean; a decoder's tokens) instead of its own.
//   r2t2[:top_k=K,neighbours=N,alpha=A,bandwidth=H,reference=R,mode=M]
//                                         test-time re-routing (routing/r2t2.h)
//                                         of the centroid router's routing by
//                                         kernel regression over a reference
//                                         set; top_k 1 by default
//   task                                  the oracle: each input's own expert
//   uniform[:mode=M]                      every expert at 1/E
//   base                                  no expert (the frozen base alone)
// M is merge-after (default, PEFT) or merge-before (mttl). A key a router
// does not take, a value out of range or a misspelled kind is an Error
// naming the spec and what was expected.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "routing/router.h"

namespace tessera::routing {

enum class RouterKind { Arrow, Centroid, Task, Uniform, Base, R2T2 };
const NameTable<RouterKind>& router_kind_names();

struct RouterSpec {
  RouterKind kind = RouterKind::Arrow;
  int64_t top_k = 3;
  float temperature = 1.0f;
  bool sqrt_temperature = false;  // T = √in per module (mttl)
  Combine combine = Combine::MergeAfter;
  // Library-scale (routing/retrieval.h), arrow and centroid only: per batch,
  // retrieve this many candidates by the store's signature search and route
  // among them (0: route among every expert). `retrieve`: the signature
  // kind searched, "centroid" or "arrow" (default: the router's own kind).
  int64_t candidates = 0;
  std::string retrieve;
  // Arrow and centroid: score each token by the running mean of its
  // sequence's module inputs so far (routers.h prefix_mean) instead of the
  // token's own ("prefix"), or by its own ("token", the default).
  bool prefix = false;
  // r2t2 (routing/r2t2.h, kernel regression over the centroid router's
  // dense routing): neighbours k, alpha, bandwidth h, and the reference rows
  // taken per expert's task from its training split.
  int64_t neighbours = 5;
  float alpha = 0.5f, bandwidth = 0.0f;
  int64_t reference = 256;
  std::string text;  // as given
  // "arrow top_k=2 T=1 merge-after": a row label in tables.
  std::string label() const;
  // " of N by centroid" for a retrieval router, "" otherwise.
  std::string retrieval_label() const;
};
RouterSpec parse_router_spec(const std::string& spec);

// The pieces every "kind:key=value,..." spec (routers, trained routers,
// --cluster) is read with. `what` names the input in errors ("router 'SPEC'").
// The key=value options after the first ':' (none without one), in order.
// Error: an item that is not key=value.
std::vector<std::pair<std::string, std::string>> spec_options(const std::string& spec,
                                                              const std::string& what);
// `value` as a finite number in [lo, hi] (a whole one when `whole`). Error
// naming what, key and value otherwise (trailing text, NaN and inf included).
double spec_number(const std::string& what, const std::string& key, const std::string& value,
                   double lo, double hi, bool whole);

}  // namespace tessera::routing
