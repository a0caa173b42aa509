// launch/ reads configs through runtime/train/config.h (defaults, files,
// overrides, validation); these names keep the commands' spelling.
#pragma once

#include "adapters/spec.h"
#include "runtime/train/config.h"

namespace tessera::launch {

using train::apply_overrides;
using train::default_config;
using train::load_config_file;
using train::parse_config_text;
using train::to_text;
using train::validate_config;

// train::resolve_config, then the architecture a decoder.init_from folder
// fixes (launch/base.h complete_architecture: contradicting settings refused).
RunConfig resolve_config(const std::string& path, const std::vector<std::string>& overrides,
                         const std::string& model_if_no_file = "");

}  // namespace tessera::launch
