// An adapter as a user writes it on the command line, with each kind's
// defaults (r 8 / α 16 for LoRA and DoRA, VeRA's rank 64, the bottleneck's
// width 16 and Houlsby placement) — the one place the shorthand is parsed,
// for every command that takes --adapter.
#pragma once

#include <string>
#include <vector>

#include "adapters/lora.h"

namespace tessera::adapters {

// An adapter on the command line: KIND[:key=value,...] with KIND one of lora,
// dora, vera, ia3, bottleneck. Keys: r (rank; the bottleneck width), alpha,
// rslora=true|false, dropout, targets=a|b|re:... (default all-linear; for a
// bottleneck its placement's sublayer outputs), placement=houlsby|pfeiffer,
// act=relu|gelu|gelu_tanh|silu (bottleneck), d_init (vera), feedforward=a|b
// (ia3: modules whose input is scaled), exact_grad=true|false (dora).
// Unknown keys and bad values name themselves.
struct AdapterArgs {
  AdapterSpec spec;
  std::vector<std::string> targets = {"all-linear"};
};
AdapterArgs parse_adapter_spec(const std::string& spec);

}  // namespace tessera::adapters
