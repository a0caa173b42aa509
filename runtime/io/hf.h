// Hugging Face checkpoint folders: config.json + model.safetensors (or a
// sharded model.safetensors.index.json), GPT-2 and Llama architectures, with
// F32/F16/BF16 weights. Loading refuses missing, unexpected or mis-shaped
// tensors with a message naming them; saving writes a folder that
// transformers' from_pretrained() loads.
#pragma once

#include <memory>
#include <string>

#include "runtime/nn/models.h"

namespace tessera::io {

// Reads config.json into a DecoderSpec (model_type gpt2, llama, mistral,
// qwen2, qwen3, phi3 or gemma; nn::flavor_names()).
nn::DecoderSpec read_hf_config(const std::string& dir);
std::unique_ptr<nn::Decoder> load_hf_decoder(const std::string& dir);
// Copies tensors named as in `model` from the folder's safetensors into it.
void load_hf_weights(const std::string& dir, nn::Decoder& model);
void save_hf_decoder(const std::string& dir, const nn::Decoder& model);

// Strict name/shape load of the tensors of `files` (a model.safetensors or
// its shards) into `params`, by name; `what` names the source in messages.
// Lists every missing / unexpected / mis-shaped name.
class SafetensorsFile;
void load_into(nn::ParameterSet& params, const std::vector<std::shared_ptr<SafetensorsFile>>& files,
               const std::string& what);

}  // namespace tessera::io
