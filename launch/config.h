// Loading a PretrainConfig: defaults for the chosen model, the user's file in
// protobuf text format, then key=value overrides; finally every field is
// checked against the bounds declared in proto/tessera/config.proto. Every
// mistake is a tessera::Error naming the input and the field.
#pragma once

#include <string>
#include <vector>

#include "adapters/lora.h"
#include "tessera/config.pb.h"

namespace tessera::launch {

// Defaults for model "mlp" (Fashion-MNIST MLP) or "decoder" (byte-level GPT-2 style LM).
PretrainConfig default_config(const std::string& model);
// Parses text format; `source` names the input in error messages.
PretrainConfig parse_config_text(const std::string& text, const std::string& source);
PretrainConfig load_config_file(const std::string& path);
// Applies "a.b.c=value" overrides (repeated fields take comma-separated lists).
void apply_overrides(PretrainConfig* cfg, const std::vector<std::string>& overrides);
// Checks bounds and choices of every field; throws Error naming the first bad one.
void validate_config(const PretrainConfig& cfg);
// Defaults for cfg.model, then the file's settings (repeated fields replace
// the defaults rather than append), then overrides, then validation.
PretrainConfig resolve_config(const std::string& path, const std::vector<std::string>& overrides,
                              const std::string& model_if_no_file = "");
std::string to_text(const PretrainConfig& cfg);

// An adapter on the command line: KIND[:key=value,...] with KIND one of lora,
// dora, vera, ia3, bottleneck. Keys: r (rank; the bottleneck width), alpha,
// rslora=true|false, dropout, targets=a|b|re:... (default all-linear; for a
// bottleneck its placement's sublayer outputs), placement=houlsby|pfeiffer,
// act=relu|gelu|gelu_tanh|silu (bottleneck), d_init (vera), feedforward=a|b
// (ia3: modules whose input is scaled), exact_grad=true|false (dora).
// Unknown keys and bad values name themselves.
struct AdapterArgs {
  adapters::AdapterSpec spec;
  std::vector<std::string> targets = {"all-linear"};
};
AdapterArgs parse_adapter_spec(const std::string& spec);

}  // namespace tessera::launch
