// The adapter spec's one home. Its schema is the AdapterConfig message
// (proto/tessera/adapter.proto); here: the command-line shorthand with each
// kind's defaults (r 8 / α 16 for LoRA and DoRA, VeRA's rank 64, the
// bottleneck's width 16 and Houlsby placement) — the one place it is parsed,
// for every command that takes --adapter — and the conversions between the
// message, its JSON form (an adapter file's metadata, a library record's
// config_json) and the AdapterFile value.
#pragma once

#include <string>
#include <vector>

#include "adapters/adapter_file.h"
#include "adapters/lora.h"
#include "tessera/adapter.pb.h"

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

// The version of the JSON form this tessera writes and reads.
constexpr int kAdapterConfigFormat = 1;

// An adapter's spec, modules and base as the message (tensors aside).
AdapterConfig adapter_config(const AdapterFile& adapter);
// The message as an AdapterFile without tensors, validated: a known format,
// kind and activation, at least one adapted module, one conv1d flag per
// module. Error naming `source` and the field otherwise.
AdapterFile adapter_from_config(const AdapterConfig& config, const std::string& source);
// The JSON form (adapter.proto says why it is not the proto3 mapping), and
// back; parsing checks every field's presence and type, naming `source` and
// the field. embedding_modules, modules_to_save and base_fingerprint may be
// absent (files written before them).
std::string config_json(const AdapterConfig& config);
AdapterConfig parse_config_json(const std::string& json, const std::string& source);

}  // namespace tessera::adapters
