// Every run's configuration (a RunConfig, proto/tessera/config.proto):
// defaults for the chosen model — the model, data, optimizer and dist
// defaults live here, below launch/ — the user's file in protobuf text
// format, then key=value overrides; finally every field is checked against
// the bounds declared in the .proto. Every mistake is a tessera::Error naming
// the input and the field.
#pragma once

#include <string>
#include <vector>

#include "tessera/config.pb.h"

namespace tessera::train {

// Defaults for model "mlp" (Fashion-MNIST MLP) or "decoder" (byte-level GPT-2 style LM).
RunConfig default_config(const std::string& model);
// Parses text format; `source` names the input in error messages.
RunConfig parse_config_text(const std::string& text, const std::string& source);
RunConfig load_config_file(const std::string& path);
// Applies "a.b.c=value" overrides (repeated fields take comma-separated lists).
void apply_overrides(RunConfig* cfg, const std::vector<std::string>& overrides);
// Checks bounds and choices of every field; throws Error naming the first bad one.
void validate_config(const RunConfig& cfg);
// Defaults for cfg.model, then the file's settings (repeated fields replace
// the defaults rather than append), then overrides, then validation.
// `user` (may be null) receives what the file and overrides set, apart from
// the defaults (launch/ checks it against a decoder.init_from folder).
RunConfig resolve_config(const std::string& path, const std::vector<std::string>& overrides,
                         const std::string& model_if_no_file = "", RunConfig* user = nullptr);
std::string to_text(const RunConfig& cfg);

}  // namespace tessera::train
