// PEFT interchange for LoRA and DoRA: adapter_config.json + adapter_model.safetensors
// with base_model.model.<module>.lora_A.weight [r, in] / .lora_B.weight [out, r]
// (DoRA: also .lora_magnitude_vector [out]),
// exactly as the `peft` library writes and reads them.
//
// Import validates the config (fields tessera implements are honoured; fields
// that would change the adapter and are not implemented are refused; unknown
// fields are reported in `notes`, never silently dropped) and refuses an
// adapter whose modules or shapes do not fit the base.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "adapters/lora.h"
#include "adapters/merge.h"

namespace tessera::io {
class SafetensorsFile;
struct TensorInfo;
}  // namespace tessera::io

namespace tessera::adapters {

struct PeftImport {
  std::unique_ptr<AdapterSet> set;
  std::string base_model;          // base_model_name_or_path, as recorded
  std::string base_fingerprint;    // tessera's, when tessera wrote the folder
  std::vector<std::string> notes;  // unknown or ignored fields
};

// One module's tensors in a PEFT folder (magnitude: DoRA only).
struct PeftModuleTensors {
  const io::TensorInfo* A = nullptr;
  const io::TensorInfo* B = nullptr;
  const io::TensorInfo* magnitude = nullptr;
  // The module's own weight, which peft saves beside the factors of an
  // lm_head or embedding target (save_embedding_layers): checked equal to
  // the base's on import, since peft would load it over the base's.
  const io::TensorInfo* base_layer = nullptr;
  // LoRA on an embedding: A/B are lora_embedding_A [r, num] / lora_embedding_B [dim, r].
  bool embedding = false;
};

// A PEFT LoRA folder read and validated without a model.
//
// Tensor keys, one rule on every path (import, eval, merge, library): PEFT's
// `base_model.model.<module>.lora_A.weight` / `.lora_B.weight` /
// `.lora_magnitude_vector`, or the same with the adapter name kept
// (`.lora_A.default.weight`, `.lora_magnitude_vector.default.weight`, as a
// PeftModel's own state_dict() has them; every key must carry the same
// name), `<module>.lora_embedding_A` / `_B` (LoRA on an embedding), and
// `<module>.base_layer.weight` (see PeftModuleTensors). Anything else — no prefix, the prefix twice
// (peft loads such a folder as a zero adapter, with only a warning), an embedding's
// lora_embedding_A/B, keys of modules_to_save — is refused, the message
// listing the keys found.
struct PeftFolder {
  LoraSpec spec;
  std::vector<std::string> targets;  // as tessera target patterns
  bool fan_in_fan_out = false;
  bool dora = false;  // use_dora: each module also has lora_magnitude_vector
  std::string base_model;
  // The base's fingerprint, when tessera wrote the folder: kept in the
  // safetensors header's metadata (free-form; PEFT ignores it).
  std::string base_fingerprint;
  std::vector<std::string> notes;
  std::shared_ptr<io::SafetensorsFile> tensors;
  std::map<std::string, PeftModuleTensors> modules;  // module name → its tensors
  std::string adapter_name;                          // the name the keys carry, "" when none

  // PEFT's targeting (peft.tuners.tuners_utils.check_target_module_exists):
  // target_modules as a list (a module is targeted when its name equals an
  // entry or ends with "." + entry) or a string (a full-match regex;
  // "all-linear": every Linear but the output layer); exclude_modules the
  // same way; with a list, layers_to_transform keeps the modules whose first
  // numbered segment (after layers_pattern, when given) is one of them.
  std::string target_regex;               // target_modules as a string
  std::vector<std::string> target_list;   // target_modules as a list
  std::string exclude_regex;              // exclude_modules as a string
  std::vector<std::string> exclude_list;  // exclude_modules as a list
  std::vector<int64_t> layers_to_transform;
  std::vector<std::string> layers_pattern;
  // modules_to_save: the entries (a module is saved when its name ends with
  // one, as peft's _set_trainable), and the saved tensors by module and
  // parameter ("lm_head" → {"weight": ...}). Such modules take no LoRA.
  std::vector<std::string> modules_to_save;
  std::map<std::string, std::map<std::string, const io::TensorInfo*>> saved_modules;
  // `linear`: the module is a Linear (all-linear selects nothing else).
  bool selects(const std::string& module, bool linear = true) const;
  // ensure_weight_tying: peft ties a tied lm_head to the embedding's adapter.
  bool ensure_weight_tying = false;

  // init_lora_weights that change the base at load: "pissa" (peft subtracts
  // the top-r SVD part of W) or "olora" (W − s·Q_r·R_r of W's QR); "" for
  // the values that leave the base alone. Imported exactly as peft's own
  // path_initial_model_for_weight_conversion converts them: a LoRA of rank
  // 2r whose second half is that correction.
  std::string base_changing_init;
  // Module name → its LoRA factors and scale, checked against the config's ranks.
  std::vector<std::pair<std::string, LoraFactors>> factors() const;
};
PeftFolder read_peft(const std::string& dir);
// Writes per-module factors as a PEFT folder (per-module rank and alpha patterns
// keep each module's rank and scale exact).
// `embeddings`: LoRA on embedding tables (A [r, num], B [dim, r]), written
// as <module>.lora_embedding_A / _B; `saved`: modules_to_save copies as
// "<module>.<param>" tensors, the modules listed in `modules_to_save`.
void write_peft(const std::string& dir,
                const std::vector<std::pair<std::string, LoraFactors>>& modules,
                bool fan_in_fan_out, const std::string& base_model,
                const std::vector<Tensor>& magnitudes = {},
                const std::string& base_fingerprint = "",
                const std::vector<std::pair<std::string, LoraFactors>>& embeddings = {},
                const std::vector<std::pair<std::string, Tensor>>& saved = {},
                const std::vector<std::string>& modules_to_save = {});

// `embeddings`: the model's embedding tables, for a folder with LoRA on them.
PeftImport import_peft(const std::string& dir, std::vector<nn::Linear*> linears,
                       nn::ParameterSet& base, std::vector<nn::Embedding*> embeddings = {});
void export_peft(const AdapterSet& set, const std::string& dir, const std::string& base_model,
                 const std::string& base_fingerprint = "");

}  // namespace tessera::adapters
