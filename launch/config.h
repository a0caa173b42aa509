// Loading a PretrainConfig: defaults for the chosen model, the user's file in
// protobuf text format, then key=value overrides; finally every field is
// checked against the bounds declared in proto/tessera/config.proto. Every
// mistake is a tessera::Error naming the input and the field.
#pragma once

#include <string>
#include <vector>

#include "adapters/spec.h"
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

}  // namespace tessera::launch
