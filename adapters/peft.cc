#include "adapters/peft.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>
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

std::string list_keys(const std::vector<std::string>& keys, size_t n = 6) {
  std::string s;
  for (size_t i = 0; i < keys.size() && i < n; ++i) s += (i ? ", " : "") + keys[i];
  if (keys.size() > n) s += str(", ... (", keys.size(), " in all)");
  return s;
}

// The file's keys by the one rule (see PeftFolder): fills out.modules.
void index_keys(PeftFolder& out, const std::string& path) {
  static const std::regex factor(R"(^(.+)\.(lora_A|lora_B)(\.([^.]+))?\.weight$)");
  static const std::regex magnitude(R"(^(.+)\.lora_magnitude_vector(\.([^.]+)\.weight)?$)");
  const std::string pre = kPrefix;
  std::vector<std::string> all, bad;
  std::string why;
  std::set<std::string> names;  // adapter names the keys carry ("" for none)
  for (const auto& t : out.tensors->tensors()) {
    all.push_back(t.name);
    std::smatch m;
    if (t.name.rfind(pre, 0) != 0) {
      bad.push_back(t.name);
      why = str("every key starts with '", pre, "' in a PEFT folder");
      continue;
    }
    const std::string rest = t.name.substr(pre.size());
    if (rest.rfind(pre, 0) == 0) {
      bad.push_back(t.name);
      why = str("'", pre, "' appears twice (peft itself would load a zero adapter here)");
      continue;
    }
    if (rest.find("lora_embedding_") != std::string::npos) {
      bad.push_back(t.name);
      why = "LoRA on an embedding (lora_embedding_A/B) is not supported yet";
      continue;
    }
    static const std::regex base_layer(R"(^(.+)\.base_layer\.weight$)");
    if (std::regex_match(rest, m, base_layer)) {
      out.modules[m[1].str()].base_layer = &t;
      continue;
    }
    if (rest.find("modules_to_save") != std::string::npos ||
        rest.find(".lora_") == std::string::npos) {
      bad.push_back(t.name);
      why = "tensors beside LoRA's (modules_to_save, biases, a full weight) are not supported yet";
      continue;
    }
    PeftModuleTensors* mt = nullptr;
    if (std::regex_match(rest, m, factor)) {
      mt = &out.modules[m[1].str()];
      (m[2] == "lora_A" ? mt->A : mt->B) = &t;
      names.insert(m[4].str());
    } else if (std::regex_match(rest, m, magnitude)) {
      mt = &out.modules[m[1].str()];
      mt->magnitude = &t;
      names.insert(m[3].str());
    } else {
      bad.push_back(t.name);
      why = "expected <module>.lora_A.weight, .lora_B.weight or .lora_magnitude_vector";
    }
  }
  auto refuse = [&](const std::string& what) {
    throw Error(str("'", path, "': ", what, ".\n  keys found: ", list_keys(all), "\n  expected: ",
                    pre, "<module>.lora_A.weight, ", pre, "<module>.lora_B.weight",
                    out.dora ? str(", ", pre, "<module>.lora_magnitude_vector") : "",
                    " (the adapter name may follow lora_A/lora_B, as in lora_A.default.weight)"));
  };
  if (!bad.empty())
    refuse(str(bad.size(), " key(s) do not fit (", bad.front(), bad.size() > 1 ? ", ..." : "",
               "): ", why));
  if (names.size() > 1) {
    std::vector<std::string> v(names.begin(), names.end());
    for (auto& n : v)
      if (n.empty()) n = "(none)";
    refuse(str("the keys carry different adapter names: ", list_keys(v)));
  }
  if (out.modules.empty()) refuse("it holds no LoRA tensors");
  out.adapter_name = *names.begin();
  if (!out.adapter_name.empty())
    out.notes.push_back(str("the tensor keys carry the adapter name '", out.adapter_name,
                            "' (as a PeftModel's state_dict() has them); read as this adapter's"));
  for (const auto& [mod, mt] : out.modules) {
    if (!mt.A && !mt.B && mt.base_layer)
      refuse(str(mod, ".base_layer.weight is not beside a LoRA pair of its module"));
    if (!mt.A || !mt.B)
      refuse(
          str("module ", mod, " has lora_", mt.A ? "A" : "B", " but no lora_", mt.A ? "B" : "A"));
    if (out.dora && !mt.magnitude)
      refuse(str("use_dora is true but module ", mod, " has no lora_magnitude_vector"));
    if (!out.dora && mt.magnitude)
      refuse(str("module ", mod, " has a lora_magnitude_vector but use_dora is false"));
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
  const std::string weights = dir + "/adapter_model.safetensors";
  if (!fs::exists(weights)) {
    if (fs::exists(dir + "/adapter_model.bin"))
      throw Error(str("'", dir,
                      "' holds adapter_model.bin (pickled PyTorch weights), which tessera does not "
                      "read: re-save the adapter with save_pretrained(..., "
                      "safe_serialization=True), or convert the file with "
                      "safetensors.torch.save_file(torch.load(\"adapter_model.bin\"), "
                      "\"adapter_model.safetensors\", metadata={\"format\": \"pt\"})"));
    throw Error(str("'", dir, "' has adapter_config.json but no adapter_model.safetensors"));
  }
  out.tensors = io::SafetensorsFile::open(weights);
  auto fp = out.tensors->metadata().find("tessera.base_fingerprint");
  if (fp != out.tensors->metadata().end()) out.base_fingerprint = fp->second;
  index_keys(out, weights);
  return out;
}

std::vector<std::pair<std::string, LoraFactors>> PeftFolder::factors() const {
  if (dora)
    throw Error(str("'", tensors->source(),
                    "' is a DoRA adapter: its magnitude rescales the whole weight, so it cannot be "
                    "combined as LoRA factors (merge it into the base instead)"));
  std::vector<std::pair<std::string, LoraFactors>> out;
  for (const auto& [m, mt] : modules) {
    LoraConfig c = spec.for_module(m);
    LoraFactors f{tensors->load_f32(*mt.A), tensors->load_f32(*mt.B), c.scale()};
    if (f.A.ndim() != 2 || f.B.ndim() != 2 || f.A.size(0) != c.r || f.B.size(1) != c.r)
      throw Error(str("module ", m, ": lora_A ", shape_str(f.A.shape()), " / lora_B ",
                      shape_str(f.B.shape()), " disagree with rank ", c.r, " from the config"));
    out.push_back({m, f});
  }
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
  const std::string cpath = dir + "/adapter_config.json";
  const auto& f = folder.tensors;

  // PEFT's rule for target_modules: an entry that matches no module of the
  // model is skipped; only when none matches anything is it an error.
  std::vector<std::string> targets, dead;
  for (const std::string& t : folder.targets)
    (match_targets(linears, t).empty() ? dead : targets).push_back(t);
  if (targets.empty())
    throw Error(str("'", cpath, "': target_modules ", list_keys(folder.targets),
                    " match no module of this model (peft refuses this too: a wrong base model?)"));
  for (const std::string& t : dead)
    out.notes.push_back(str("target_modules entry '", t,
                            "' matches no module of this model; skipped, as peft skips it"));
  AdapterSpec aspec(spec);
  if (folder.dora) aspec.kind = Kind::Dora;
  auto set = std::make_unique<AdapterSet>(linears, base, targets, aspec, 0);
  std::set<std::string> used;
  for (size_t i = 0; i < set->modules().size(); ++i) {
    const std::string& m = set->modules()[i];
    const nn::Linear& lin = *set->linears()[i];
    // PEFT decides fan_in_fan_out per module from its type (Conv1D: true,
    // Linear: false, with a warning when the config says otherwise); the
    // saved factors are the same either way.
    if (lin.w_in_out() != folder.fan_in_fan_out)
      out.notes.push_back(str("fan_in_fan_out = ", folder.fan_in_fan_out ? "true" : "false",
                              " in the config, but ", m,
                              lin.w_in_out() ? " is a Conv1D ([in, out])" : " is a plain Linear",
                              ": its own layout is used, as peft does"));
    auto it = folder.modules.find(m);
    if (it == folder.modules.end()) {
      std::vector<std::string> have;
      for (const auto& kv : folder.modules) have.push_back(kv.first);
      throw Error(str("'", dir, "/adapter_model.safetensors' has no tensors for target module ", m,
                      " of this model; it holds modules ", list_keys(have)));
    }
    const Lora& l = *set->loras()[i];
    std::vector<std::pair<const io::TensorInfo*, Tensor>> parts = {{it->second.A, l.A()},
                                                                   {it->second.B, l.B()}};
    if (folder.dora) parts.push_back({it->second.magnitude, l.magnitude()});
    for (auto& [info, dst] : parts) {
      if (info->shape != dst.shape())
        throw Error(str("adapter tensor ", info->name, " is ", shape_str(info->shape),
                        " but module ", m, " (", lin.in_features(), " -> ", lin.out_features(),
                        ", r=", l.config().r, ") needs ", shape_str(dst.shape()),
                        " — wrong base model or rank_pattern?"));
      Tensor d = dst;
      d.copy_from(f->load_f32(*info));
    }
    if (const io::TensorInfo* bl = it->second.base_layer) {
      // peft loads it over the base's weight: the same adapter only when equal.
      const Tensor w = lin.weight();
      const Tensor saved = f->load_f32(*bl);  // both in the module's own layout
      double worst = -1.0;
      if (saved.shape() == w.shape()) {
        worst = 0.0;
        for (int64_t k = 0; k < w.numel(); ++k)
          worst = std::max(worst, std::fabs(double(saved.data()[k]) - double(w.data()[k])) /
                                      (1e-6 + std::fabs(double(w.data()[k]))));
      }
      if (worst < 0.0 || worst > 1e-3)
        throw Error(str(
            "'", dir, "': ", bl->name, " (", m,
            "'s own weight, which peft saves beside the factors and loads over the "
            "base's) ",
            worst < 0.0 ? str("is ", shape_str(bl->shape), ", the base's is ", shape_str(w.shape()))
                        : str("differs from this base's (max relative difference ", worst, ")"),
            ": a different base model, or a resized vocabulary"));
      out.notes.push_back(str(m, ".base_layer.weight (saved by peft) equals the base's weight"));
    }
    used.insert(m);
  }
  std::vector<std::string> extra;
  for (const auto& [name, mt] : folder.modules)
    if (!used.count(name)) extra.push_back(name);
  if (!extra.empty())
    throw Error(str("'", dir, "/adapter_model.safetensors' has tensors for ", list_keys(extra),
                    ", which target_modules ", list_keys(folder.targets),
                    " does not select on this model (a wrong base model?)"));
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
