// PEFT interchange for LoRA: adapter_config.json + adapter_model.safetensors
// with base_model.model.<module>.lora_A.weight [r, in] / .lora_B.weight [out, r],
// exactly as the `peft` library writes and reads them.
//
// Import validates the config (fields tessera implements are honoured; fields
// that would change the adapter and are not implemented are refused; unknown
// fields are reported in `notes`, never silently dropped) and refuses an
// adapter whose modules or shapes do not fit the base.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "adapters/lora.h"

namespace tessera::adapters {

struct PeftImport {
  std::unique_ptr<AdapterSet> set;
  std::string base_model;          // base_model_name_or_path, as recorded
  std::vector<std::string> notes;  // unknown or ignored fields
};

PeftImport import_peft(const std::string& dir, std::vector<nn::Linear*> linears,
                       nn::ParameterSet& base);
void export_peft(const AdapterSet& set, const std::string& dir, const std::string& base_model);

}  // namespace tessera::adapters
