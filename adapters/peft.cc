#include "adapters/peft.h"

#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "runtime/common/error.h"
#include "runtime/io/safetensors.h"

namespace tessera::adapters {

using nlohmann::json;
namespace fs = std::filesystem;

namespace {

constexpr const char* kPrefix = "base_model.model.";

bool neutral(const json& v) {
  return v.is_null() || (v.is_boolean() && !v.get<bool>()) || (v.is_object() && v.empty()) ||
         (v.is_array() && v.empty());
}

// Fields that change what the adapter computes and that tessera does not
// implement: refused unless neutral (null / false / empty).
const std::set<std::string> kRefusedUnlessNeutral = {"modules_to_save",   "layers_to_transform",
                                                     "layers_pattern",    "exclude_modules",
                                                     "lora_bias",         "use_qalora",
                                                     "target_parameters", "trainable_token_indices",
                                                     "layer_replication", "alora_invocation_tokens",
                                                     "use_bdlora"};
// Training-time or bookkeeping fields with no effect on the adapted forward.
const std::set<std::string> kIgnored = {
    "lora_dropout", "inference_mode", "init_lora_weights", "task_type",           "revision",
    "peft_version", "auto_mapping",   "megatron_config",   "megatron_core",       "loftq_config",
    "eva_config",   "corda_config",   "qalora_group_size", "ensure_weight_tying", "arrow_config",
    "kasa_config",  "lora_ga_config", "monteclora_config", "velora_config"};
const std::set<std::string> kHonoured = {"peft_type",
                                         "r",
                                         "use_dora",
                                         "lora_alpha",
                                         "target_modules",
                                         "use_rslora",
                                         "rank_pattern",
                                         "alpha_pattern",
                                         "fan_in_fan_out",
                                         "bias",
                                         "base_model_name_or_path"};

template <typename T>
T field(const json& j, const char* key, const std::string& path) {
  try {
    return j.at(key).get<T>();
  } catch (const json::exception&) {
    throw Error(str("'", path, "': field '", key, "' is missing or has the wrong type"));
  }
}

}  // namespace

PeftFolder read_peft(const std::string& dir) {
  const std::string cpath = dir + "/adapter_config.json";
  std::ifstream in(cpath);
  if (!in) throw Error(str("'", dir, "' has no adapter_config.json: not a PEFT adapter folder"));
  json c;
  try {
    c = json::parse(in);
  } catch (const json::exception& e) {
    throw Error(str("'", cpath, "' is not valid JSON: ", e.what()));
  }
  if (!c.is_object()) throw Error(str("'", cpath, "' is not a JSON object"));
  PeftFolder out;
  const std::string type = field<std::string>(c, "peft_type", cpath);
  if (type != "LORA")
    throw Error(str("'", cpath, "': peft_type '", type, "' is not supported here (expected LORA)"));
  for (auto it = c.begin(); it != c.end(); ++it) {
    const std::string& k = it.key();
    if (kRefusedUnlessNeutral.count(k)) {
      if (!neutral(it.value()))
        throw Error(str("'", cpath, "': field '", k, "' = ", it.value().dump(),
                        " is not supported by tessera's LoRA import"));
    } else if (kIgnored.count(k)) {
      if (k == "lora_dropout" && it.value().is_number() && it.value().get<double>() != 0.0)
        out.notes.push_back(
            str("lora_dropout ", it.value().dump(), " applies to training only; ignored"));
    } else if (!kHonoured.count(k)) {
      out.notes.push_back(str("unknown field '", k, "' = ", it.value().dump(), " ignored"));
    }
  }
  if (c.contains("bias") && c["bias"] != "none")
    throw Error(
        str("'", cpath, "': bias = ", c["bias"].dump(), " is not supported (expected \"none\")"));

  LoraSpec& spec = out.spec;
  spec.base.r = field<int64_t>(c, "r", cpath);
  spec.base.alpha = field<float>(c, "lora_alpha", cpath);
  spec.base.rslora =
      c.contains("use_rslora") && !c["use_rslora"].is_null() && field<bool>(c, "use_rslora", cpath);
  for (const char* key : {"rank_pattern", "alpha_pattern"}) {
    if (!c.contains(key) || c[key].is_null()) continue;
    if (!c[key].is_object()) throw Error(str("'", cpath, "': ", key, " must be an object"));
    for (auto it = c[key].begin(); it != c[key].end(); ++it) {
      if (!it.value().is_number())
        throw Error(str("'", cpath, "': ", key, " value for '", it.key(), "' is not a number"));
      if (std::string(key) == "rank_pattern")
        spec.rank_pattern.push_back({it.key(), it.value().get<int64_t>()});
      else
        spec.alpha_pattern.push_back({it.key(), it.value().get<float>()});
    }
  }
  std::vector<std::string>& targets = out.targets;
  if (!c.contains("target_modules")) throw Error(str("'", cpath, "' lacks target_modules"));
  if (c["target_modules"].is_string()) {
    targets.push_back("re:" + c["target_modules"].get<std::string>());  // PEFT: a full-match regex
  } else if (c["target_modules"].is_array()) {
    for (const json& t : c["target_modules"]) {
      if (!t.is_string()) throw Error(str("'", cpath, "': target_modules entries must be strings"));
      targets.push_back(t.get<std::string>());
    }
  } else {
    throw Error(str("'", cpath, "': target_modules must be a list of names or a regex string"));
  }
  if (c.contains("base_model_name_or_path") && c["base_model_name_or_path"].is_string())
    out.base_model = c["base_model_name_or_path"].get<std::string>();

  out.dora = c.contains("use_dora") && c["use_dora"].is_boolean() && c["use_dora"].get<bool>();
  out.fan_in_fan_out = c.contains("fan_in_fan_out") && c["fan_in_fan_out"].is_boolean() &&
                       c["fan_in_fan_out"].get<bool>();
  out.tensors = io::SafetensorsFile::open(dir + "/adapter_model.safetensors");
  auto fp = out.tensors->metadata().find("tessera.base_fingerprint");
  if (fp != out.tensors->metadata().end()) out.base_fingerprint = fp->second;
  return out;
}

std::vector<std::pair<std::string, LoraFactors>> PeftFolder::factors() const {
  if (dora)
    throw Error(str("'", tensors->source(),
                    "' is a DoRA adapter: its magnitude rescales the whole weight, so it cannot be "
                    "combined as LoRA factors (merge it into the base instead)"));
  std::vector<std::pair<std::string, LoraFactors>> out;
  const std::string pre = kPrefix, suf = ".lora_A.weight";
  for (const auto& t : tensors->tensors()) {
    if (t.name.size() <= pre.size() + suf.size() || t.name.rfind(pre, 0) != 0 ||
        t.name.compare(t.name.size() - suf.size(), suf.size(), suf) != 0)
      continue;
    const std::string m = t.name.substr(pre.size(), t.name.size() - pre.size() - suf.size());
    const io::TensorInfo* b = tensors->find(pre + m + ".lora_B.weight");
    if (!b) throw Error(str("'", tensors->source(), "' has lora_A but no lora_B for ", m));
    LoraConfig c = spec.for_module(m);
    LoraFactors f{tensors->load_f32(t), tensors->load_f32(*b), c.scale()};
    if (f.A.ndim() != 2 || f.B.ndim() != 2 || f.A.size(0) != c.r || f.B.size(1) != c.r)
      throw Error(str("module ", m, ": lora_A ", shape_str(f.A.shape()), " / lora_B ",
                      shape_str(f.B.shape()), " disagree with rank ", c.r, " from the config"));
    out.push_back({m, f});
  }
  if (out.empty()) throw Error(str("'", tensors->source(), "' holds no LoRA tensors"));
  return out;
}

PeftImport import_peft(const std::string& dir, std::vector<nn::Linear*> linears,
                       nn::ParameterSet& base) {
  PeftFolder folder = read_peft(dir);
  PeftImport out;
  out.base_model = folder.base_model;
  out.base_fingerprint = folder.base_fingerprint;
  out.notes = folder.notes;
  const LoraSpec& spec = folder.spec;
  const std::vector<std::string>& targets = folder.targets;
  const std::string cpath = dir + "/adapter_config.json";
  const auto& f = folder.tensors;

  std::map<std::string, const io::TensorInfo*> file;
  for (const auto& t : f->tensors()) file[t.name] = &t;
  // PEFT writes each target module's A and B; the set must be exactly those.
  AdapterSpec aspec(spec);
  if (folder.dora) aspec.kind = Kind::Dora;
  auto set = std::make_unique<AdapterSet>(linears, base, targets, aspec, 0);
  const bool fan_in_fan_out = folder.fan_in_fan_out;
  std::set<std::string> used;
  for (size_t i = 0; i < set->modules().size(); ++i) {
    const std::string& m = set->modules()[i];
    const nn::Linear& lin = *set->linears()[i];
    if (lin.w_in_out() != fan_in_fan_out)
      throw Error(str(
          "'", cpath, "': fan_in_fan_out = ", fan_in_fan_out ? "true" : "false", " but module ", m,
          lin.w_in_out() ? " stores its weight [in, out] (Conv1D)" : " is a plain Linear [out, in]",
          " — is this adapter for another base model?"));
    std::vector<std::string> parts = {"lora_A.weight", "lora_B.weight"};
    if (folder.dora) parts.push_back("lora_magnitude_vector");
    for (const std::string& ab : parts) {
      const std::string key = std::string(kPrefix) + m + "." + ab;
      auto it = file.find(key);
      if (it == file.end())
        throw Error(
            str("'", dir, "/adapter_model.safetensors' lacks ", key, " for target module ", m));
      const Lora& l = *set->loras()[i];
      Tensor dst = ab == "lora_A.weight" ? l.A() : ab == "lora_B.weight" ? l.B() : l.magnitude();
      if (it->second->shape != dst.shape())
        throw Error(str("adapter tensor ", key, " is ", shape_str(it->second->shape),
                        " but module ", m, " (", lin.in_features(), " -> ", lin.out_features(),
                        ", r=", set->loras()[i]->config().r, ") needs ", shape_str(dst.shape()),
                        " — wrong base model or rank_pattern?"));
      dst.copy_from(f->load_f32(*it->second));
      used.insert(key);
    }
  }
  for (const auto& [name, info] : file)
    if (!used.count(name))
      throw Error(str("adapter tensor '", name, "' belongs to no target module of this model",
                      " (wrong base model, or a field tessera does not implement?)"));
  out.set = std::move(set);
  return out;
}

void write_peft(const std::string& dir,
                const std::vector<std::pair<std::string, LoraFactors>>& modules,
                bool fan_in_fan_out, const std::string& base_model,
                const std::vector<Tensor>& magnitudes, const std::string& base_fingerprint) {
  if (!magnitudes.empty() && magnitudes.size() != modules.size())
    throw Error("write_peft: one DoRA magnitude per module expected");
  if (modules.empty()) throw Error("write_peft: no modules");
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw Error(str("cannot create '", dir, "': ", ec.message()));
  const int64_t r0 = modules.front().second.rank();
  json rank = json::object(), alpha = json::object(), targets = json::array();
  std::vector<io::WriteEntry> e;
  for (size_t i = 0; i < modules.size(); ++i) {
    const auto& [m, f] = modules[i];
    const std::string key = regex_escape(m);  // exact module, as a PEFT pattern
    if (f.rank() != r0) rank[key] = f.rank();
    alpha[key] = f.scale * static_cast<float>(f.rank());  // s = α/r
    targets.push_back(m);
    e.push_back(io::WriteEntry::f32(kPrefix + m + ".lora_A.weight", f.A));
    e.push_back(io::WriteEntry::f32(kPrefix + m + ".lora_B.weight", f.B));
    if (!magnitudes.empty())
      e.push_back(io::WriteEntry::f32(kPrefix + m + ".lora_magnitude_vector", magnitudes[i]));
  }
  json c = {{"peft_type", "LORA"},
            {"r", r0},
            {"lora_alpha", static_cast<float>(r0)},
            {"use_rslora", false},
            {"use_dora", !magnitudes.empty()},
            {"target_modules", targets},
            {"rank_pattern", rank},
            {"alpha_pattern", alpha},
            {"fan_in_fan_out", fan_in_fan_out},
            {"bias", "none"},
            {"lora_dropout", 0.0},
            {"modules_to_save", nullptr},
            {"init_lora_weights", true},
            {"inference_mode", true},
            {"task_type", nullptr},
            {"base_model_name_or_path", base_model}};
  std::string text = c.dump(2) + "\n";
  io::write_file_atomic(dir + "/adapter_config.json", text.data(), text.size());
  std::map<std::string, std::string> meta = {{"format", "pt"}};
  if (!base_fingerprint.empty()) meta["tessera.base_fingerprint"] = base_fingerprint;
  io::save_safetensors(dir + "/adapter_model.safetensors", e, meta);
}

void export_peft(const AdapterSet& set, const std::string& dir, const std::string& base_model,
                 const std::string& base_fingerprint) {
  if (set.kind() != Kind::Lora && set.kind() != Kind::Dora)
    throw Error(str("PEFT export: a ", kind_name(set.kind()),
                    " adapter has no PEFT LoRA form; save it in tessera's adapter format"));
  std::vector<std::pair<std::string, LoraFactors>> modules;
  std::vector<Tensor> magnitudes;
  bool conv1d = false;
  for (size_t i = 0; i < set.modules().size(); ++i) {
    const Lora& l = *set.loras()[i];
    modules.push_back({set.modules()[i], LoraFactors{l.A(), l.B(), l.scale()}});
    if (set.kind() == Kind::Dora) magnitudes.push_back(l.magnitude());
    conv1d = conv1d || set.linears()[i]->w_in_out();
  }
  write_peft(dir, modules, conv1d, base_model, magnitudes, base_fingerprint);
}

}  // namespace tessera::adapters
