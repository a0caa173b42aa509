// The base fingerprint: what tells two bases apart, so that an adapter is
// never applied to weights it was not trained on. SHA-256 (hex) over every
// parameter tensor's (name, shape, F32 bytes), in name order.
#pragma once

#include <string>

#include "runtime/nn/parameters.h"

namespace tessera::io {

// SHA-256 of `data` as 64 lowercase hex digits.
std::string sha256_hex(const std::string& data);

// The fingerprint of parameters already loaded (a Hugging Face folder's model,
// so that a command holding it does not read the folder twice).
std::string params_fingerprint(const nn::ParameterSet& params);

// The fingerprint of a base on disk: a tessera checkpoint (its model tensors
// as stored, optimizer state left out) or a Hugging Face folder (its
// parameters as loaded: F16/BF16 widened to F32, names as tessera's, so the
// folder tessera exports from a checkpoint has that checkpoint's fingerprint).
// Throws Error naming the path when it cannot be read.
std::string base_fingerprint(const std::string& path);

}  // namespace tessera::io
