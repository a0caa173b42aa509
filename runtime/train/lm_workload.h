// The language-model workload: a decoder (any family runtime/nn builds, or a
// Hugging Face folder through decoder.init_from) over token windows of a
// corpus (data.kind text: bytes; tokens: a model's own ids), next-token
// cross-entropy, evaluated on a held-out split in bits per token.
#pragma once

#include "runtime/nn/models.h"
#include "runtime/train/workload.h"

namespace tessera::train {

// The decoder a config describes, and back: every field that changes the
// forward. set_decoder_config writes them all (n_kv_head and d_ff resolved),
// leaving init_from as it is.
nn::DecoderSpec decoder_spec(const DecoderConfig& d);
void set_decoder_config(const nn::DecoderSpec& s, DecoderConfig* d);

std::unique_ptr<Workload> make_lm_workload(const RunConfig& cfg, Rng& rng);

}  // namespace tessera::train
