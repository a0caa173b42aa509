// tessera's own adapter file: one safetensors file holding every tensor of an
// AdapterSet (trainable and frozen, e.g. VeRA's shared projections) under its
// module-qualified name, and in the metadata "tessera.adapter" everything
// needed to rebuild the set on a base: the AdapterConfig message
// (proto/tessera/adapter.proto, which shows its JSON form; adapters/spec.h
// converts it).
//
// base_fingerprint (SHA-256 of the base's model tensors, when the trainer knew
// it) lets a loader refuse an adapter meant for another base.
//
// It expresses every adapter kind (PEFT's folder expresses LoRA and DoRA).
// Loading validates the metadata field by field and refuses a base whose
// modules or shapes do not fit, naming the tensor.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "adapters/lora.h"
#include "adapters/merge.h"
#include "runtime/io/safetensors.h"

namespace tessera::adapters {

// An adapter as a value: what the file says, read without a model, and its
// tensors (`image`: the file mapped, or its bytes in memory). It converts to
// and from the file's bytes, a PEFT folder and (store/adapter_io.h) a
// library record without scratch files.
struct AdapterFile {
  AdapterSpec spec;
  std::vector<std::string> targets, modules;
  std::vector<std::string> embedding_modules;  // LoRA on embeddings (EmbeddingLora)
  std::vector<std::string> modules_to_save;    // modules replaced by copies (LinearCopy, TableCopy)
  std::vector<bool> conv1d;                    // per module: the base weight is [in, out]
  std::string base_model;
  std::string base_fingerprint;  // "" when unknown
  std::string path;              // the file, or what the bytes came from (in messages)
  std::shared_ptr<const io::SafetensorsFile> image;
  // LoRA kinds: per-module factors (for PEFT export and merging without a base).
  std::vector<std::pair<std::string, LoraFactors>> factors() const;
  std::vector<Tensor> magnitudes() const;  // DoRA
  Tensor tensor(const std::string& name) const;
  // The Linear modules' factors, embeddings left aside (factors() refuses a
  // file that has them: merging combines Linear LoRAs).
  std::vector<std::pair<std::string, LoraFactors>> linear_factors() const;
};

void save_adapter(const AdapterSet& set, const std::string& path, const std::string& base_model,
                  const std::string& base_fingerprint = "");
// A plain LoRA given as per-module factors (an expert of a bank, a merge
// result), written in the same format; conv1d per module as in AdapterFile.
void save_lora_factors(const std::string& path,
                       const std::vector<std::pair<std::string, LoraFactors>>& modules,
                       const std::vector<bool>& conv1d, const std::string& base_model,
                       const std::string& base_fingerprint = "");
AdapterFile read_adapter(const std::string& path);
// The same from the file's bytes in memory; `source` names them in messages.
AdapterFile read_adapter_bytes(std::vector<uint8_t> bytes, const std::string& source);
// The adapter file's bytes (its tensors and metadata exactly as held).
std::vector<uint8_t> adapter_bytes(const AdapterFile& adapter);
// A plain LoRA given as per-module factors, as a value (save_lora_factors
// writes the same bytes to a file).
AdapterFile lora_factors_adapter(const std::vector<std::pair<std::string, LoraFactors>>& modules,
                                 const std::vector<bool>& conv1d, const std::string& base_model,
                                 const std::string& base_fingerprint = "");
// The same from the metadata JSON alone (a library record's config_json,
// which is the file's metadata); `source` names it in messages. Tensors are
// not there: factors() and the like need the file.
AdapterFile read_adapter_metadata(const std::string& json, const std::string& source);

// tessera's adapter file (lora or dora) as a PEFT folder, base fingerprint
// kept; other kinds are refused naming the file. A file with Conv1D and
// Linear modules writes fan_in_fan_out = true: peft decides it per module
// from the layer's type, and the saved factors do not depend on it.
void adapter_file_to_peft(const std::string& file, const std::string& dir);
void adapter_to_peft(const AdapterFile& adapter, const std::string& dir);
// A PEFT LoRA folder as tessera's adapter file, without a base (checked for
// consistency of config and tensors only; DoRA folders need a base: use
// import_peft with the model). Without a base each module's layout is not
// known: every module records the folder's fan_in_fan_out (the layout flags
// only decide the flag a later PEFT export writes).
void peft_to_adapter_file(const std::string& dir, const std::string& file);
AdapterFile peft_to_adapter(const std::string& dir);
// Rebuilds the set on `linears` (base frozen) and loads its tensors.
// `embeddings`: the model's tables, for a file with LoRA on embeddings.
std::unique_ptr<AdapterSet> load_adapter(const std::string& path, std::vector<nn::Linear*> linears,
                                         nn::ParameterSet& base, std::string* base_model = nullptr,
                                         std::vector<nn::Embedding*> embeddings = {});

const char* act_name(kernels::cpu::Act a);
kernels::cpu::Act parse_act(const std::string& s);  // throws Error listing the choices

}  // namespace tessera::adapters
