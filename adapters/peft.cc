#include "adapters/peft.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>

#include "runtime/autograd/ops.h"
#include "runtime/autograd/tape.h"
#include "runtime/common/error.h"
#include "runtime/io/safetensors.h"

extern "C" void sgeqrf_(const int* m, const int* n, float* a, const int* lda, float* tau,
                        float* work, const int* lwork, int* info);
extern "C" void sorgqr_(const int* m, const int* n, const int* k, float* a, const int* lda,
                        const float* tau, float* work, const int* lwork, int* info);

namespace tessera::adapters {

using nlohmann::json;
using ojson = nlohmann::ordered_json;
namespace fs = std::filesystem;

namespace {

constexpr const char* kPrefix = "base_model.model.";

template <typename J>
bool neutral(const J& v) {
  return v.is_null() || (v.is_boolean() && !v.template get<bool>()) ||
         (v.is_object() && v.empty()) || (v.is_array() && v.empty());
}

// Fields that change what the adapter computes (or add tensors to it) and
// that tessera does not implement: refused unless neutral (null / false /
// empty). The table in docs/peft_lora_config.md lists every field.
const std::set<std::string> kRefusedUnlessNeutral = {"lora_bias",
                                                     "use_qalora",
                                                     "target_parameters",
                                                     "layer_replication",
                                                     "alora_invocation_tokens",
                                                     "trainable_token_indices",
                                                     "use_bdlora",
                                                     "velora_config",
                                                     "monteclora_config",
                                                     "arrow_config",
                                                     "kasa_config"};
// Training-time or bookkeeping fields with no effect on the adapted forward.
const std::set<std::string> kIgnored = {
    "lora_dropout", "inference_mode",    "task_type",      "revision",      "peft_version",
    "auto_mapping", "megatron_config",   "megatron_core",  "loftq_config",  "eva_config",
    "corda_config", "qalora_group_size", "lora_ga_config", "runtime_config"};
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
                                         "base_model_name_or_path",
                                         "init_lora_weights",
                                         "layers_to_transform",
                                         "layers_pattern",
                                         "exclude_modules",
                                         "modules_to_save",
                                         "ensure_weight_tying"};

template <typename T, typename J>
T field(const J& j, const char* key, const std::string& path) {
  try {
    return j.at(key).template get<T>();
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
    static const std::regex emb(R"(^(.+)\.lora_embedding_(A|B)(\.([^.]+))?$)");
    if (std::regex_match(rest, m, emb)) {
      PeftModuleTensors& e = out.modules[m[1].str()];
      e.embedding = true;
      (m[2] == "A" ? e.A : e.B) = &t;
      names.insert(m[4].str());
      continue;
    }
    static const std::regex base_layer(R"(^(.+)\.base_layer\.weight$)");
    if (std::regex_match(rest, m, base_layer)) {
      out.modules[m[1].str()].base_layer = &t;
      continue;
    }
    // A module of modules_to_save: its own parameters, under its own name
    // (peft's ModulesToSaveWrapper saves "<module>.<param>").
    static const std::regex param(R"(^(.+)\.([^.]+)$)");
    if (rest.find(".lora_") == std::string::npos && std::regex_match(rest, m, param)) {
      const std::string mod = m[1].str();
      bool saved = false;
      for (const auto& e : out.modules_to_save)
        saved = saved ||
                (mod.size() >= e.size() && mod.compare(mod.size() - e.size(), e.size(), e) == 0);
      if (saved) {
        out.saved_modules[mod][m[2].str()] = &t;
        continue;
      }
    }
    if (rest.find("modules_to_save") != std::string::npos ||
        rest.find(".lora_") == std::string::npos) {
      bad.push_back(t.name);
      why = out.ensure_weight_tying
                ? "a full weight no modules_to_save entry names (with ensure_weight_tying = true "
                  "peft saves the tied lm_head's copy too, which tessera does not support yet)"
                : "tensors beside LoRA's that no modules_to_save entry names (a bias, a full "
                  "weight, or a module of a whole block)";
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
  if (out.modules.empty() && out.saved_modules.empty()) refuse("it holds no LoRA tensors");
  out.adapter_name = names.empty() ? "" : *names.begin();
  if (!out.adapter_name.empty())
    out.notes.push_back(str("the tensor keys carry the adapter name '", out.adapter_name,
                            "' (as a PeftModel's state_dict() has them); read as this adapter's"));
  for (const auto& [mod, mt] : out.modules) {
    if (!mt.A && !mt.B && mt.base_layer)
      refuse(str(mod, ".base_layer.weight is not beside a LoRA pair of its module"));
    if (!mt.A || !mt.B)
      refuse(str("module ", mod, " has lora_", mt.embedding ? "embedding_" : "", mt.A ? "A" : "B",
                 " but no lora_", mt.embedding ? "embedding_" : "", mt.A ? "B" : "A"));
    if (mt.embedding && out.dora) refuse(str("DoRA on an embedding (", mod, ") is not supported"));
    if (out.dora && !mt.magnitude)
      refuse(str("use_dora is true but module ", mod, " has no lora_magnitude_vector"));
    if (!out.dora && mt.magnitude)
      refuse(str("module ", mod, " has a lora_magnitude_vector but use_dora is false"));
  }
}

// peft saves a module's own weight beside the factors of an lm_head or
// embedding target (<module>.base_layer.weight) and loads it over the base's:
// the same adapter only when it equals `expected` (the base's weight, after
// any correction peft itself applies at load). Returns the note to report.
std::string check_base_layer(const std::string& dir, const io::SafetensorsFile& f,
                             const io::TensorInfo& bl, const std::string& module,
                             const Tensor& expected) {
  const Tensor saved = f.load_f32(bl);  // both in the module's own layout
  double worst = -1.0;
  if (saved.shape() == expected.shape()) {
    worst = 0.0;
    for (int64_t k = 0; k < expected.numel(); ++k)
      worst = std::max(worst, std::fabs(double(saved.data()[k]) - double(expected.data()[k])) /
                                  (1e-3 + std::fabs(double(expected.data()[k]))));
  }
  if (worst < 0.0 || worst > 1e-3)
    throw Error(
        str("'", dir, "': ", bl.name, " (", module,
            "'s own weight, which peft saves beside the factors and loads over the "
            "base's) ",
            worst < 0.0
                ? str("is ", shape_str(bl.shape), ", the base's is ", shape_str(expected.shape()))
                : str("differs from this base's (max relative difference ", worst, ")"),
            ": a different base model, or a resized vocabulary"));
  return str(module, ".base_layer.weight (saved by peft) equals the base's weight");
}

// A config field that is a string or a list of strings (peft accepts both for
// target_modules, exclude_modules, layers_pattern): the string into *one, or
// into *list when one is null; the list's entries into *list.
template <typename J>
void string_or_list(const J& c, const char* key, const std::string& cpath, std::string* one,
                    std::vector<std::string>* list) {
  if (!c.contains(key) || c[key].is_null()) return;
  const auto& v = c[key];
  if (v.is_string()) {
    if (one)
      *one = v.template get<std::string>();
    else
      list->push_back(v.template get<std::string>());
    return;
  }
  if (!v.is_array())
    throw Error(str("'", cpath, "': ", key, " must be a string or a list of strings"));
  for (const auto& t : v) {
    if (!t.is_string()) throw Error(str("'", cpath, "': ", key, " entries must be strings"));
    list->push_back(t.template get<std::string>());
  }
}

// Reduced QR of a row-major [m, n] matrix as torch.linalg.qr computes it
// (LAPACK sgeqrf + sorgqr): Q [m, k], R [k, n], k = min(m, n).
void qr_reduced(const float* a, int64_t m64, int64_t n64, std::vector<float>* Q,
                std::vector<float>* R) {
  const int m = static_cast<int>(m64), n = static_cast<int>(n64), k = std::min(m, n);
  std::vector<float> cm(static_cast<size_t>(m) * n), tau(static_cast<size_t>(k));
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j) cm[static_cast<size_t>(j) * m + i] = a[i * n64 + j];
  int info = 0, lwork = -1;
  float wsize = 0;
  sgeqrf_(&m, &n, cm.data(), &m, tau.data(), &wsize, &lwork, &info);
  lwork = static_cast<int>(wsize) + 1;
  std::vector<float> work(static_cast<size_t>(lwork));
  sgeqrf_(&m, &n, cm.data(), &m, tau.data(), work.data(), &lwork, &info);
  if (info != 0) throw Error(str("qr: LAPACK sgeqrf failed (info ", info, ")"));
  R->assign(static_cast<size_t>(k) * n, 0.0f);
  for (int i = 0; i < k; ++i)
    for (int j = i; j < n; ++j)
      (*R)[static_cast<size_t>(i) * n + j] = cm[static_cast<size_t>(j) * m + i];
  lwork = -1;
  sorgqr_(&m, &k, &k, cm.data(), &m, tau.data(), &wsize, &lwork, &info);
  lwork = static_cast<int>(wsize) + 1;
  work.resize(static_cast<size_t>(lwork));
  sorgqr_(&m, &k, &k, cm.data(), &m, tau.data(), work.data(), &lwork, &info);
  if (info != 0) throw Error(str("qr: LAPACK sorgqr failed (info ", info, ")"));
  Q->assign(static_cast<size_t>(m) * k, 0.0f);
  for (int i = 0; i < m; ++i)
    for (int c = 0; c < k; ++c)
      (*Q)[static_cast<size_t>(i) * k + c] = cm[static_cast<size_t>(c) * m + i];
}

// The change peft's LoraLayer.pissa_init / olora_init makes to a module's
// base weight at load, as a rank-r pair in the [out, in] layout: s·B·A adds
// it. PiSSA: −(top-r SVD part of W), W taken [out, in]. OLoRA: −s·Q_r·R_r of
// the QR of the weight as stored (peft does not transpose a Conv1D weight:
// only a square one fits, and the pair is then transposed back).
LoraFactors init_correction(const std::string& init, const nn::Linear& lin, int64_t r, float s,
                            const std::string& cpath) {
  const int64_t in = lin.in_features(), out = lin.out_features();
  if (init == "pissa") {
    Tensor w = lin.conv1d() ? ops::transpose(lin.weight()) : lin.weight();
    autograd::NoGrad ng;
    LoraFactors top = svd_factor(w.clone(), r);  // B0·A0: the top-r part
    for (int64_t k = 0; k < top.B.numel(); ++k) top.B.data()[k] *= -1.0f / s;
    top.scale = s;
    return top;
  }
  if (lin.conv1d() && in != out)
    throw Error(str("'", cpath, "': init_lora_weights = \"olora\" on ", lin.name(),
                    ", a non-square Conv1D: peft's olora_init takes the QR of the weight as "
                    "stored ([in, out]), which does not fit the LoRA shapes there"));
  const int64_t rows = lin.conv1d() ? in : out, cols = lin.conv1d() ? out : in;
  std::vector<float> Q, R;
  qr_reduced(lin.weight().data(), rows, cols, &Q, &R);
  const int64_t k = std::min(rows, cols);
  if (r > k) throw Error(str("olora: rank ", r, " exceeds min(out, in) = ", k, " of ", lin.name()));
  LoraFactors f{Tensor::empty({r, in}), Tensor::empty({out, r}), s};
  if (!lin.conv1d()) {  // W [out, in] = Q R: A = R_r, B = −Q_r
    for (int64_t c = 0; c < r; ++c)
      for (int64_t j = 0; j < in; ++j) f.A.data()[c * in + j] = R[c * cols + j];
    for (int64_t o = 0; o < out; ++o)
      for (int64_t c = 0; c < r; ++c) f.B.data()[o * r + c] = -Q[o * k + c];
  } else {  // stored S [in, out] = Q R; in [out, in]: −s·R_rᵀ·Q_rᵀ: A = Q_rᵀ, B = −R_rᵀ
    for (int64_t c = 0; c < r; ++c)
      for (int64_t j = 0; j < in; ++j) f.A.data()[c * in + j] = Q[j * k + c];
    for (int64_t o = 0; o < out; ++o)
      for (int64_t c = 0; c < r; ++c) f.B.data()[o * r + c] = -R[c * cols + o];
  }
  return f;
}

}  // namespace

PeftFolder read_peft(const std::string& dir) {
  const std::string cpath = dir + "/adapter_config.json";
  std::ifstream in(cpath);
  if (!in) throw Error(str("'", dir, "' has no adapter_config.json: not a PEFT adapter folder"));
  // Ordered: rank_pattern / alpha_pattern resolve to their first matching
  // key in the order the file writes them, as peft's get_pattern_key does.
  ojson c;
  try {
    c = ojson::parse(in);
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
  spec.defaults.r = field<int64_t>(c, "r", cpath);
  spec.defaults.alpha = field<float>(c, "lora_alpha", cpath);
  spec.defaults.rslora =
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
  if (!c.contains("target_modules") || c["target_modules"].is_null())
    throw Error(str("'", cpath, "' lacks target_modules"));
  string_or_list(c, "target_modules", cpath, &out.target_regex, &out.target_list);
  if (!out.target_regex.empty())  // PEFT: a full-match regex, or "all-linear"
    targets.push_back(out.target_regex == "all-linear" ? out.target_regex
                                                       : "re:" + out.target_regex);
  targets.insert(targets.end(), out.target_list.begin(), out.target_list.end());
  string_or_list(c, "exclude_modules", cpath, &out.exclude_regex, &out.exclude_list);
  if (c.contains("layers_to_transform") && !c["layers_to_transform"].is_null()) {
    const auto& l = c["layers_to_transform"];
    if (l.is_number_integer()) {
      out.layers_to_transform.push_back(l.get<int64_t>());
    } else if (l.is_array()) {
      for (const auto& v : l) {
        if (!v.is_number_integer())
          throw Error(str("'", cpath, "': layers_to_transform entries must be integers"));
        out.layers_to_transform.push_back(v.get<int64_t>());
      }
    } else {
      throw Error(str("'", cpath, "': layers_to_transform must be an integer or a list of them"));
    }
  }
  string_or_list(c, "layers_pattern", cpath, nullptr, &out.layers_pattern);

  out.ensure_weight_tying = c.contains("ensure_weight_tying") &&
                            c["ensure_weight_tying"].is_boolean() &&
                            c["ensure_weight_tying"].template get<bool>();
  if (c.contains("modules_to_save") && !c["modules_to_save"].is_null()) {
    if (!c["modules_to_save"].is_array())
      throw Error(str("'", cpath, "': modules_to_save must be a list of module names"));
    for (const auto& m : c["modules_to_save"]) {
      if (!m.is_string())
        throw Error(str("'", cpath, "': modules_to_save entries must be strings"));
      out.modules_to_save.push_back(m.get<std::string>());
    }
  }
  if (c.contains("init_lora_weights") && c["init_lora_weights"].is_string()) {
    // peft's LoraLayer.update_layer: these change the base weight when the
    // adapter is created, so loading the saved A/B alone is not the adapter.
    const std::string v = c["init_lora_weights"].get<std::string>();
    if (v == "pissa" || v == "olora") {
      out.base_changing_init = v;
    } else if (v.rfind("pissa_niter_", 0) == 0 || v == "corda" || v == "loftq") {
      throw Error(str(
          "'", cpath, "': init_lora_weights = \"", v, "\" changes the base weights when peft ",
          v == "loftq"   ? "loads it (quantisation residuals)"
          : v == "corda" ? "loads it, from activation statistics this folder lacks"
                         : "loads it, by a randomised SVD that cannot be repeated",
          ": tessera cannot reproduce that. Convert it with peft first: "
          "model.save_pretrained(out, path_initial_model_for_weight_conversion=INITIAL_ADAPTER) "
          "writes an adapter for the original base"));
    } else if (v != "gaussian" && v != "eva" && v != "orthogonal" && v != "lora_ga" &&
               v != "mica") {
      throw Error(str("'", cpath, "': init_lora_weights = \"", v,
                      "\" is not a value tessera knows (true, false, gaussian, eva, orthogonal, "
                      "lora_ga and mica leave the base alone; pissa and olora are converted)"));
    }
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

bool PeftFolder::selects(const std::string& key, bool linear) const {
  auto ends_with = [&](const std::string& t) {
    return key == t ||
           (key.size() > t.size() && key.compare(key.size() - t.size(), t.size(), t) == 0 &&
            key[key.size() - t.size() - 1] == '.');
  };
  auto full = [&](const std::string& re) {
    try {
      return std::regex_match(key, std::regex(re));
    } catch (const std::regex_error& e) {
      throw Error(str("PEFT pattern '", re, "' is not a valid regular expression: ", e.what()));
    }
  };
  if (!exclude_regex.empty() && full(exclude_regex)) return false;
  // peft never puts a LoRA on a module of modules_to_save.
  for (const auto& m : modules_to_save)
    if (full("(^|.*\\.)" + m + "($|\\..*)")) return false;
  for (const auto& e : exclude_list)
    if (ends_with(e)) return false;
  if (!target_regex.empty())
    return target_regex == "all-linear" ? linear && key != "lm_head" && key != "classifier"
                                        : full(target_regex);
  for (const auto& t : target_list)
    if (key == t) return true;  // named exactly: layers_to_transform does not apply
  bool found = false;
  for (const auto& t : target_list) found = found || ends_with(t);
  if (!found || layers_to_transform.empty()) return found;
  // The layer index: the first numbered segment (lazily matched), after a
  // layers_pattern when given.
  std::smatch m;
  bool got = false;
  if (layers_pattern.empty()) {
    got = std::regex_search(key, m, std::regex(R"(^.*?\.[^.]*\.(\d+)\.)"));
  } else {
    for (const auto& p : layers_pattern)
      if ((got = std::regex_search(key, m, std::regex("^(?:|.*?\\.)" + p + R"(\.(\d+)\.)")))) break;
  }
  if (!got) return false;
  const int64_t idx = std::stoll(m[1].str());
  return std::find(layers_to_transform.begin(), layers_to_transform.end(), idx) !=
         layers_to_transform.end();
}

std::vector<std::pair<std::string, LoraFactors>> PeftFolder::factors() const {
  if (dora)
    throw Error(str("'", tensors->source(),
                    "' is a DoRA adapter: its magnitude rescales the whole weight, so it cannot be "
                    "combined as LoRA factors (merge it into the base instead)"));
  if (!saved_modules.empty())
    throw Error(str("'", tensors->source(), "' replaces ", saved_modules.begin()->first,
                    " by a saved copy (modules_to_save): merging combines LoRAs of Linear "
                    "modules only, and the factors alone are not the adapter; use it whole "
                    "(eval --adapter, import-peft --base, export-peft)"));
  if (!base_changing_init.empty())
    throw Error(str("'", tensors->source(), "': init_lora_weights = \"", base_changing_init,
                    "\" makes peft change the base weights at load, so the factors alone are not "
                    "the adapter: give the base (tessera merge --base BASE, or import-peft "
                    "FOLDER --base BASE), which converts it exactly"));
  std::vector<std::pair<std::string, LoraFactors>> out;
  for (const auto& [m, mt] : modules) {
    if (mt.embedding)
      throw Error(str("'", tensors->source(), "' has a LoRA on the embedding ", m,
                      ": merging combines LoRAs of Linear modules only; use the adapter whole "
                      "(eval --adapter, import-peft --base, export-peft)"));
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
                       nn::ParameterSet& base, std::vector<nn::Embedding*> embeddings) {
  PeftFolder folder = read_peft(dir);
  PeftImport out;
  out.base_model = folder.base_model;
  out.base_fingerprint = folder.base_fingerprint;
  out.notes = folder.notes;
  const LoraSpec& spec = folder.spec;
  const std::string cpath = dir + "/adapter_config.json";
  const auto& f = folder.tensors;

  // PEFT's targeting, module by module (PeftFolder::selects). A list entry
  // that matches no module is skipped, as peft skips it; only when nothing
  // is targeted is it an error.
  std::vector<std::string> chosen, chosen_emb;
  for (nn::Linear* l : linears)
    if (folder.selects(l->name())) chosen.push_back(l->name());
  for (nn::Embedding* e : embeddings)
    if (folder.selects(e->name(), /*linear=*/false)) chosen_emb.push_back(e->name());
  // ensure_weight_tying: on a tied model peft ties lm_head to the embedding's
  // copy or LoRA, which tessera does not (its tied lm_head keeps the base
  // table, as peft does without the flag).
  if (folder.ensure_weight_tying) {
    bool tied = false;
    for (nn::Embedding* e : embeddings) tied = tied || e->tied();
    bool involved = !folder.saved_modules.empty() || !chosen_emb.empty();
    for (const auto& m : chosen) involved = involved || m == "lm_head";
    if (tied && involved)
      throw Error(str("'", cpath,
                      "': ensure_weight_tying = true on a model with tied embeddings: peft ties "
                      "lm_head to the embedding's adapter or copy, which tessera does not "
                      "support yet"));
  }
  if (chosen.empty() && chosen_emb.empty())
    throw Error(str("'", cpath, "': target_modules ", list_keys(folder.targets),
                    " match no module of this model",
                    folder.layers_to_transform.empty() ? "" : " within layers_to_transform",
                    " (peft refuses this too: a wrong base model?)"));
  for (const std::string& t : folder.target_list) {
    std::vector<std::string> names;
    for (nn::Linear* l : linears) names.push_back(l->name());
    for (nn::Embedding* e : embeddings) names.push_back(e->name());
    bool any = false;
    for (const std::string& n : names)
      any = any || n == t ||
            (n.size() > t.size() && n.compare(n.size() - t.size(), t.size(), t) == 0 &&
             n[n.size() - t.size() - 1] == '.');
    if (!any)
      out.notes.push_back(str("target_modules entry '", t,
                              "' matches no module of this model; skipped, as peft skips it"));
  }
  // rank_pattern / alpha_pattern keys that match no targeted module (peft warns too).
  auto note_unmatched = [&](const char* field, const std::vector<std::string>& keys) {
    for (const auto& k : keys) {
      bool any = false;
      for (const auto* names : {&chosen, &chosen_emb})
        for (const auto& m : *names) any = any || peft_pattern_matches(k, m);
      if (!any) out.notes.push_back(str(field, " key '", k, "' matches no targeted module"));
    }
  };
  std::vector<std::string> rank_keys, alpha_keys;
  for (const auto& kv : spec.rank_pattern) rank_keys.push_back(kv.first);
  for (const auto& kv : spec.alpha_pattern) alpha_keys.push_back(kv.first);
  note_unmatched("rank_pattern", rank_keys);
  note_unmatched("alpha_pattern", alpha_keys);
  // PiSSA / OLoRA: each module's LoRA doubles in rank, its second half the
  // correction peft applies to the base at load; the scale stays the module's.
  LoraSpec set_spec = spec;
  const bool convert = !folder.base_changing_init.empty();
  if (convert) {
    std::vector<std::pair<std::string, int64_t>> ranks;
    std::vector<std::pair<std::string, float>> alphas;
    for (const auto& m : chosen) {
      const LoraConfig c = spec.for_module(m);
      const float two_r = static_cast<float>(2 * c.r);
      ranks.push_back({regex_escape(m), 2 * c.r});
      alphas.push_back({regex_escape(m), c.scale() * (c.rslora ? std::sqrt(two_r) : two_r)});
    }
    set_spec.rank_pattern.insert(set_spec.rank_pattern.begin(), ranks.begin(), ranks.end());
    set_spec.alpha_pattern.insert(set_spec.alpha_pattern.begin(), alphas.begin(), alphas.end());
    out.notes.push_back(str("init_lora_weights = \"", folder.base_changing_init,
                            "\": peft changes the base weights at load; imported as peft's own "
                            "conversion does it, a LoRA of twice the rank on the unchanged base"));
  }
  AdapterSpec aspec(set_spec);
  if (folder.dora) aspec.kind = Kind::Dora;
  if (convert && folder.dora)
    throw Error(str("'", cpath, "': init_lora_weights = \"", folder.base_changing_init,
                    "\" with use_dora is not supported"));
  auto set = std::make_unique<AdapterSet>(linears, base, chosen, aspec, 0);
  std::set<std::string> used;
  for (size_t i = 0; i < set->modules().size(); ++i) {
    const std::string& m = set->modules()[i];
    const nn::Linear& lin = *set->linears()[i];
    // PEFT decides fan_in_fan_out per module from its type (Conv1D: true,
    // Linear: false, with a warning when the config says otherwise); the
    // saved factors are the same either way.
    if (lin.conv1d() != folder.fan_in_fan_out)
      out.notes.push_back(str("fan_in_fan_out = ", folder.fan_in_fan_out ? "true" : "false",
                              " in the config, but ", m,
                              lin.conv1d() ? " is a Conv1D ([in, out])" : " is a plain Linear",
                              ": its own layout is used, as peft does"));
    auto it = folder.modules.find(m);
    if (it == folder.modules.end() || it->second.embedding) {
      std::vector<std::string> have;
      for (const auto& kv : folder.modules) have.push_back(kv.first);
      throw Error(str("'", dir, "/adapter_model.safetensors' has no tensors for target module ", m,
                      " of this model; it holds modules ", list_keys(have)));
    }
    const Lora& l = *set->loras()[i];
    const LoraConfig saved_cfg = spec.for_module(m);
    const int64_t r = saved_cfg.r, in = lin.in_features(), outf = lin.out_features();
    const Shape a_shape{r, in}, b_shape{outf, r};
    auto load = [&](const io::TensorInfo* info, const Shape& want) {
      if (info->shape != want)
        throw Error(str("adapter tensor ", info->name, " is ", shape_str(info->shape),
                        " but module ", m, " (", in, " -> ", outf, ", r=", r, ") needs ",
                        shape_str(want), " — wrong base model or rank_pattern?"));
      return f->load_f32(*info);
    };
    const Tensor A = load(it->second.A, a_shape), B = load(it->second.B, b_shape);
    // The correction as a rank-r pair (zero when there is none).
    LoraFactors corr{Tensor::zeros(a_shape), Tensor::zeros(b_shape), saved_cfg.scale()};
    if (convert)
      corr = init_correction(folder.base_changing_init, lin, r, saved_cfg.scale(), cpath);
    // A' = [A; A_c] ([r' , in]), B' = [B | B_c] ([out, r']).
    const int64_t rr = l.A().size(0);
    Tensor la = l.A(), lb = l.B();
    for (int64_t c = 0; c < rr; ++c)
      for (int64_t k = 0; k < in; ++k)
        la.data()[c * in + k] = c < r ? A.data()[c * in + k] : corr.A.data()[(c - r) * in + k];
    for (int64_t o = 0; o < outf; ++o)
      for (int64_t c = 0; c < rr; ++c)
        lb.data()[o * rr + c] = c < r ? B.data()[o * r + c] : corr.B.data()[o * r + (c - r)];
    if (folder.dora) {
      Tensor mag = l.magnitude();
      mag.copy_from(load(it->second.magnitude, mag.shape()));
    }
    if (const io::TensorInfo* bl = it->second.base_layer) {
      Tensor w = lin.weight().clone();
      if (convert) {  // the correction peft itself applies at load
        Tensor d = corr.delta(lin.conv1d());
        for (int64_t k = 0; k < w.numel(); ++k) w.data()[k] += d.data()[k];
      }
      out.notes.push_back(check_base_layer(dir, *f, *bl, m, w));
    }
    used.insert(m);
  }
  // LoRA on embeddings (peft's lora.Embedding).
  if (!chosen_emb.empty()) {
    if (convert || folder.dora)
      throw Error(str(
          "'", cpath, "': ",
          convert ? "init_lora_weights = " + folder.base_changing_init : std::string("use_dora"),
          " with an embedding target (", chosen_emb.front(), ") is not supported"));
    set->add_embeddings(embeddings, chosen_emb);
    for (size_t i = 0; i < chosen_emb.size(); ++i) {
      const std::string& m = chosen_emb[i];
      auto it = folder.modules.find(m);
      if (it == folder.modules.end() || !it->second.embedding)
        throw Error(str("'", dir, "/adapter_model.safetensors' has no lora_embedding_A/B for the ",
                        "targeted embedding ", m));
      const EmbeddingLora& l = *set->embedding_loras()[i];
      for (auto [info, dst] : {std::pair{it->second.A, l.A()}, std::pair{it->second.B, l.B()}}) {
        if (info->shape != dst.shape())
          throw Error(str("adapter tensor ", info->name, " is ", shape_str(info->shape),
                          " but embedding ", m, " (", set->embeddings()[i]->num_embeddings(), " x ",
                          set->embeddings()[i]->embedding_dim(), ", r=", l.config().r, ") needs ",
                          shape_str(dst.shape()), " — wrong base model or rank_pattern?"));
        Tensor d = dst;
        d.copy_from(f->load_f32(*info));
      }
      if (it->second.base_layer)
        out.notes.push_back(
            check_base_layer(dir, *f, *it->second.base_layer, m, set->embeddings()[i]->weight()));
      used.insert(m);
    }
  }
  // modules_to_save: each saved module replaced by its saved copy.
  if (!folder.saved_modules.empty()) {
    std::vector<std::string> names;
    for (const auto& [m, params] : folder.saved_modules) names.push_back(m);
    set->add_copies(linears, embeddings, names);
    for (const auto& [m, params] : folder.saved_modules) {
      for (const auto& [pname, info] : params) {
        Tensor* dst = set->params().find(m + ".modules_to_save." + pname);
        if (!dst)
          throw Error(str("'", dir, "': ", info->name, ": module ", m, " has no parameter '", pname,
                          "' in this model"));
        if (info->shape != dst->shape())
          throw Error(str("'", dir, "': ", info->name, " is ", shape_str(info->shape),
                          " but this model's ", m, ".", pname, " is ", shape_str(dst->shape()),
                          " (a resized vocabulary, or another base model?)"));
        dst->copy_from(f->load_f32(*info));
      }
      for (const auto& p : set->params().all())
        if (p.name.rfind(m + ".modules_to_save.", 0) == 0 &&
            !params.count(p.name.substr(m.size() + 17)))
          throw Error(str("'", dir, "': modules_to_save module ", m, " lacks its ",
                          p.name.substr(m.size() + 17), " in the folder"));
    }
    out.notes.push_back(str("modules_to_save: ", list_keys(names),
                            " replaced by the folder's copies, as peft does"));
  }
  std::vector<std::string> extra;
  for (const auto& [name, mt] : folder.modules)
    if (!used.count(name)) extra.push_back(name);
  for (const auto& name : extra)
    if (folder.modules.at(name).embedding && embeddings.empty())
      throw Error(str("'", dir, "' has a LoRA on the embedding ", name,
                      ", and no embeddings were given to adapt (this path reads Linear modules "
                      "only)"));
  bool has_lm_head = false;
  for (nn::Linear* l : linears) has_lm_head = has_lm_head || l->name() == "lm_head";
  if (!has_lm_head && std::find(extra.begin(), extra.end(), "lm_head") != extra.end())
    throw Error(str("'", dir,
                    "' has a LoRA on lm_head, and this model ties lm_head to its input "
                    "embeddings (tie_word_embeddings): LoRA on a tied lm_head is not supported "
                    "yet"));
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
                const std::vector<Tensor>& magnitudes, const std::string& base_fingerprint,
                const std::vector<std::pair<std::string, LoraFactors>>& embeddings,
                const std::vector<std::pair<std::string, Tensor>>& saved,
                const std::vector<std::string>& modules_to_save) {
  if (!magnitudes.empty() && magnitudes.size() != modules.size())
    throw Error("write_peft: one DoRA magnitude per module expected");
  if (modules.empty() && embeddings.empty()) throw Error("write_peft: no LoRA modules");
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw Error(str("cannot create '", dir, "': ", ec.message()));
  const int64_t r0 = (modules.empty() ? embeddings : modules).front().second.rank();
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
  for (const auto& [name, t] : saved) e.push_back(io::WriteEntry::f32(kPrefix + name, t));
  for (const auto& [m, f] : embeddings) {
    const std::string key = regex_escape(m);
    if (f.rank() != r0) rank[key] = f.rank();
    alpha[key] = f.scale * static_cast<float>(f.rank());
    targets.push_back(m);
    e.push_back(io::WriteEntry::f32(kPrefix + m + ".lora_embedding_A", f.A));
    e.push_back(io::WriteEntry::f32(kPrefix + m + ".lora_embedding_B", f.B));
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
            {"modules_to_save", modules_to_save.empty() ? json(nullptr) : json(modules_to_save)},
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
    conv1d = conv1d || set.linears()[i]->conv1d();
  }
  std::vector<std::pair<std::string, Tensor>> saved;
  for (const auto& p : set.params().all()) {
    const size_t at = p.name.find(".modules_to_save.");
    if (at != std::string::npos)
      saved.push_back({p.name.substr(0, at) + "." + p.name.substr(at + 17), p.tensor});
  }
  std::vector<std::pair<std::string, LoraFactors>> embs;
  for (size_t i = 0; i < set.embedding_loras().size(); ++i) {
    const EmbeddingLora& l = *set.embedding_loras()[i];
    embs.push_back({set.embedding_modules()[i], LoraFactors{l.A(), l.B(), l.scale()}});
  }
  write_peft(dir, modules, conv1d, base_model, magnitudes, base_fingerprint, embs, saved,
             set.copied_modules());
}

}  // namespace tessera::adapters
