#include "runtime/io/hf.h"

#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "runtime/common/error.h"
#include "runtime/common/file.h"
#include "runtime/common/rng.h"
#include "runtime/io/safetensors.h"

namespace tessera::io {

using nlohmann::json;
namespace fs = std::filesystem;

namespace {

json read_json(const std::string& path) {
  const std::string text = read_file(path);
  try {
    return json::parse(text);
  } catch (const json::exception& e) {
    throw Error(str("'", path, "' is not valid JSON: ", e.what()));
  }
}

template <typename T>
T get_field(const json& j, const std::string& key, const std::string& path, T fallback,
            bool required) {
  if (!j.contains(key) || j[key].is_null()) {
    if (required) throw Error(str("'", path, "' lacks required field '", key, "'"));
    return fallback;
  }
  try {
    return j[key].get<T>();
  } catch (const json::exception&) {
    throw Error(
        str("'", path, "': field '", key, "' has the wrong type (", j[key].type_name(), ")"));
  }
}

// Names a GPT-2 checkpoint may use: saved from GPT2LMHeadModel ("transformer.h.0...")
// or from the bare GPT2Model ("h.0...", as on the hub).
std::string canonical_gpt2(const std::string& n) {
  if (n.rfind("transformer.", 0) == 0 || n.rfind("lm_head.", 0) == 0) return n;
  return "transformer." + n;
}

bool ignorable_buffer(const std::string& n) {
  // Causal-mask buffers older transformers versions saved with GPT-2, and rotary caches.
  auto ends = [&](const char* s) {
    std::string t(s);
    return n.size() >= t.size() && n.compare(n.size() - t.size(), t.size(), t) == 0;
  };
  return ends(".attn.bias") || ends(".attn.masked_bias") || ends("rotary_emb.inv_freq");
}

}  // namespace

namespace {

// RoPE settings of a llama-family config: transformers >= 5 nests them in
// rope_parameters (rope_type, rope_theta, factor, ...); older files have
// rope_theta and a rope_scaling object ("type" or "rope_type").
void read_rope(const json& j, const std::string& path, nn::DecoderSpec& s) {
  s.rope_theta = get_field<float>(j, "rope_theta", path, 10000.0f, false);
  const json* rp = nullptr;
  std::string where;
  if (j.contains("rope_parameters") && j["rope_parameters"].is_object()) {
    rp = &j["rope_parameters"];
    where = path + " rope_parameters";
  } else if (j.contains("rope_scaling") && j["rope_scaling"].is_object()) {
    rp = &j["rope_scaling"];
    where = path + " rope_scaling";
  } else if (j.contains("rope_scaling") && !j["rope_scaling"].is_null()) {
    throw Error(str("'", path, "': rope_scaling must be an object or null"));
  }
  // partial_rotary_factor: Phi-3's attention rotates the first int(D·f) dims.
  float partial = get_field<float>(j, "partial_rotary_factor", path, 1.0f, false);
  if (rp) partial = get_field<float>(*rp, "partial_rotary_factor", where, partial, false);
  if (partial != 1.0f && s.flavor != nn::Flavor::Phi3)
    throw Error(str("'", path, "': partial_rotary_factor = ", partial, " is not supported for ",
                    nn::flavor_name(s.flavor), " (phi3 has it)"));
  s.partial_rotary_factor = partial;
  if (!rp) return;
  s.rope_theta = get_field<float>(*rp, "rope_theta", where, s.rope_theta, false);
  std::string type = get_field<std::string>(*rp, "rope_type", where, "", false);
  if (type.empty()) type = get_field<std::string>(*rp, "type", where, "default", false);
  if (type != "default" && type != "linear" && type != "llama3")
    throw Error(str("'", path, "': rope_type '", type,
                    "' is not supported (default, linear and llama3 are; dynamic, yarn and "
                    "longrope are not yet)"));

  s.rope_scaling.type = type;
  if (type == "default") return;
  s.rope_scaling.factor = get_field<float>(*rp, "factor", where, 0.0f, true);
  if (type == "llama3") {
    s.rope_scaling.low_freq_factor = get_field<float>(*rp, "low_freq_factor", where, 0.0f, true);
    s.rope_scaling.high_freq_factor = get_field<float>(*rp, "high_freq_factor", where, 0.0f, true);
    s.rope_scaling.original_max_position_embeddings =
        get_field<int64_t>(*rp, "original_max_position_embeddings", where,
                           get_field<int64_t>(j, "max_position_embeddings", path, 0, false), false);
  }
}

// Keys that change the forward and that tessera does not implement: refused
// when set to anything but their neutral value, naming the key.
void refuse_set(const json& j, const std::string& path, const char* key, const json& neutral,
                const char* what) {
  if (j.contains(key) && !j[key].is_null() && j[key] != neutral)
    throw Error(str("'", path, "': ", key, " = ", j[key].dump(), " is not supported (", what, ")"));
}

}  // namespace

nn::DecoderSpec read_hf_config(const std::string& dir) {
  const std::string path = dir + "/config.json";
  json j = read_json(path);
  if (!j.is_object()) throw Error(str("'", path, "' is not a JSON object"));
  std::string type = get_field<std::string>(j, "model_type", path, "", true);
  nn::DecoderSpec s;
  try {
    s.flavor = nn::flavor_of(type);
  } catch (const Error& e) {
    throw Error(str("'", path, "': ", e.what()));
  }
  if (type == "gpt2") {
    s.vocab_size = get_field<int64_t>(j, "vocab_size", path, 0, true);
    s.n_ctx = get_field<int64_t>(j, "n_positions", path, 1024, false);
    s.d_model = get_field<int64_t>(j, "n_embd", path, 0, true);
    s.n_layer = get_field<int64_t>(j, "n_layer", path, 0, true);
    s.n_head = get_field<int64_t>(j, "n_head", path, 0, true);
    s.n_kv_head = s.n_head;
    s.d_ff = get_field<int64_t>(j, "n_inner", path, 0, false);
    s.norm_eps = get_field<float>(j, "layer_norm_epsilon", path, 1e-5f, false);
    s.tie_embeddings = get_field<bool>(j, "tie_word_embeddings", path, true, false);
    s.scale_attn_weights = get_field<bool>(j, "scale_attn_weights", path, true, false);
    s.scale_attn_by_inverse_layer_idx =
        get_field<bool>(j, "scale_attn_by_inverse_layer_idx", path, false, false);
    std::string act = get_field<std::string>(j, "activation_function", path, "gelu_new", false);
    if (act != "gelu_new" && act != "gelu_pytorch_tanh")
      throw Error(str("'", path, "': activation_function '", act,
                      "' is not supported (tessera's GPT-2 uses gelu_new)"));
  } else {
    s.vocab_size = get_field<int64_t>(j, "vocab_size", path, 0, true);
    s.n_ctx = get_field<int64_t>(j, "max_position_embeddings", path, 2048, false);
    s.d_model = get_field<int64_t>(j, "hidden_size", path, 0, true);
    s.n_layer = get_field<int64_t>(j, "num_hidden_layers", path, 0, true);
    s.n_head = get_field<int64_t>(j, "num_attention_heads", path, 0, true);
    s.n_kv_head = get_field<int64_t>(j, "num_key_value_heads", path, s.n_head, false);
    s.d_ff = get_field<int64_t>(j, "intermediate_size", path, 0, true);
    s.norm_eps = get_field<float>(j, "rms_norm_eps", path, 1e-6f, false);
    // head_dim: Gemma's class default is 256, Qwen3's 128; others derive it.
    const int64_t head_default = s.flavor == nn::Flavor::Gemma   ? 256
                                 : s.flavor == nn::Flavor::Qwen3 ? 128
                                                                 : 0;
    s.d_head = get_field<int64_t>(j, "head_dim", path, head_default, false);
    if (s.d_head * s.n_head == s.d_model) s.d_head = 0;  // the default, said explicitly
    read_rope(j, path, s);
    // Defaults as each family's configuration_<family>.py.
    const bool tied_default = s.flavor == nn::Flavor::Gemma;
    s.tie_embeddings = get_field<bool>(j, "tie_word_embeddings", path, tied_default, false);
    if (s.flavor == nn::Flavor::Llama || s.flavor == nn::Flavor::Qwen3 ||
        s.flavor == nn::Flavor::Gemma) {
      s.attention_bias = get_field<bool>(j, "attention_bias", path, false, false);
    } else {
      refuse_set(j, path, "attention_bias", false, "not a setting of this family");
    }
    if (s.flavor == nn::Flavor::Llama)
      s.mlp_bias = get_field<bool>(j, "mlp_bias", path, false, false);
    else
      refuse_set(j, path, "mlp_bias", false, "not a setting of this family");
    // Sliding windows: Mistral and Phi-3 on every layer; Qwen2/3 from layer
    // max_window_layers on, and only with use_sliding_window.
    if (s.flavor == nn::Flavor::Mistral || s.flavor == nn::Flavor::Phi3) {
      // MistralConfig's default is 4096 (null: none); Phi3Config's None.
      const bool absent = !j.contains("sliding_window");
      s.sliding_window = absent && s.flavor == nn::Flavor::Mistral
                             ? 4096
                             : get_field<int64_t>(j, "sliding_window", path, 0, false);
    } else if (s.flavor == nn::Flavor::Qwen2 || s.flavor == nn::Flavor::Qwen3) {
      if (get_field<bool>(j, "use_sliding_window", path, false, false)) {
        s.sliding_window = get_field<int64_t>(j, "sliding_window", path, 4096, false);
        s.max_window_layers = get_field<int64_t>(j, "max_window_layers", path, 28, false);
      }
    } else {
      refuse_set(j, path, "sliding_window", nullptr, "not a setting of this family");
    }
    if (j.contains("layer_types") && j["layer_types"].is_array()) {
      // transformers >= 5 spells the per-layer choice out: it must agree.
      const json& lt = j["layer_types"];
      for (size_t l = 0; l < lt.size(); ++l) {
        const bool sliding = lt[l] == "sliding_attention";
        const bool ours = s.sliding_window > 0 && static_cast<int64_t>(l) >= s.max_window_layers;
        if (!lt[l].is_string() || (lt[l] != "full_attention" && !sliding) || sliding != ours)
          throw Error(str("'", path, "': layer_types[", l, "] = ", lt[l].dump(),
                          " is not supported here (tessera follows sliding_window, "
                          "use_sliding_window and max_window_layers)"));
      }
    }
    const char* want_act = s.flavor == nn::Flavor::Gemma ? "gelu_pytorch_tanh" : "silu";
    std::string act = get_field<std::string>(j, "hidden_act", path, want_act, false);
    // GemmaConfig.__post_init__: the legacy "gelu" of the official releases
    // means the tanh approximation; gelu_new is that approximation too.
    if (s.flavor == nn::Flavor::Gemma && (act == "gelu" || act == "gelu_new"))
      act = "gelu_pytorch_tanh";
    if (act != want_act)
      throw Error(str("'", path, "': hidden_act '", act, "' is not supported (", type, " uses ",
                      want_act, ")"));
    refuse_set(j, path, "use_bidirectional_attention", false, "a decoder is causal");
    refuse_set(j, path, "pretraining_tp", 1, "tensor-parallel slicing changes the sums");
  }
  try {
    s.validate();
  } catch (const Error& e) {
    throw Error(str("'", path, "': ", e.what()));
  }
  return s;
}

void load_into(nn::ParameterSet& params, const std::vector<std::shared_ptr<SafetensorsFile>>& files,
               const std::string& what) {
  std::set<std::string> loaded;
  std::vector<std::string> unexpected, misshaped;
  for (const auto& f : files) {
    for (const TensorInfo& t : f->tensors()) {
      Tensor* dst = params.find(t.name);
      if (!dst) {
        if (!ignorable_buffer(t.name)) unexpected.push_back(t.name);
        continue;
      }
      if (dst->shape() != t.shape) {
        misshaped.push_back(
            str(t.name, " is ", shape_str(t.shape), ", model expects ", shape_str(dst->shape())));
        continue;
      }
      if (params.is_alias(t.name) && loaded.count(params.aliases().at(t.name))) continue;
      Tensor src = f->load_f32(t);
      dst->copy_from(src);
      loaded.insert(params.is_alias(t.name) ? params.aliases().at(t.name) : t.name);
    }
  }
  std::vector<std::string> missing;
  for (const auto& p : params.all())
    if (!loaded.count(p.name)) missing.push_back(p.name);
  auto list = [](const std::vector<std::string>& v) {
    std::string s;
    for (size_t i = 0; i < v.size() && i < 8; ++i) s += (i ? ", " : "") + v[i];
    if (v.size() > 8) s += str(", ... (", v.size(), " in all)");
    return s;
  };
  std::string err;
  if (!misshaped.empty()) err += "\n  wrong shape: " + list(misshaped);
  if (!missing.empty()) err += "\n  missing: " + list(missing);
  if (!unexpected.empty()) err += "\n  unexpected: " + list(unexpected);
  if (!err.empty())
    throw Error(str(what, " does not fit the model (wrong base model or architecture?):", err));
}

void load_hf_weights(const std::string& dir, nn::Decoder& model) {
  std::vector<std::shared_ptr<SafetensorsFile>> files;
  const std::string single = dir + "/model.safetensors";
  const std::string index = dir + "/model.safetensors.index.json";
  if (fs::exists(single)) {
    files.push_back(SafetensorsFile::open(single));
  } else if (fs::exists(index)) {
    json j = read_json(index);
    if (!j.contains("weight_map") || !j["weight_map"].is_object())
      throw Error(str("'", index, "' has no weight_map object"));
    std::set<std::string> shards;
    for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
      if (!it.value().is_string())
        throw Error(str("'", index, "': weight_map values must be file names"));
      std::string shard = it.value().get<std::string>();
      if (shard.find('/') != std::string::npos || shard.find("..") != std::string::npos)
        throw Error(str("'", index, "': shard name '", shard, "' must be a plain file name"));
      shards.insert(shard);
    }
    for (const auto& s : shards) files.push_back(SafetensorsFile::open(dir + "/" + s));
  } else {
    throw Error(str("'", dir, "' has neither model.safetensors nor model.safetensors.index.json",
                    " (PyTorch .bin checkpoints are not read; save with safe_serialization=True)"));
  }
  // GPT-2 files may omit the "transformer." prefix: re-register names on the fly.
  if (model.spec().flavor == nn::Flavor::Gpt2) {
    std::vector<std::shared_ptr<SafetensorsFile>> renamed;
    for (auto& f : files) {
      bool needs = false;
      for (const auto& t : f->tensors())
        if (canonical_gpt2(t.name) != t.name) needs = true;
      if (!needs) {
        renamed.push_back(f);
        continue;
      }
      std::vector<WriteEntry> entries;
      for (const auto& t : f->tensors())
        entries.push_back({canonical_gpt2(t.name), t.dtype, t.shape, f->bytes(t), t.end - t.begin});
      renamed.push_back(SafetensorsFile::parse(serialize_safetensors(entries, {}), f->source()));
    }
    files = renamed;
  }
  load_into(model.params(), files, str("checkpoint '", dir, "'"));
}

std::unique_ptr<nn::Decoder> load_hf_decoder(const std::string& dir) {
  nn::DecoderSpec spec = read_hf_config(dir);
  Rng rng(0);
  auto model = std::make_unique<nn::Decoder>(spec, rng);
  load_hf_weights(dir, *model);
  return model;
}

void save_hf_decoder(const std::string& dir, const nn::Decoder& model) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw Error(str("cannot create '", dir, "': ", ec.message()));
  const nn::DecoderSpec& s = model.spec();
  json c;
  if (s.flavor == nn::Flavor::Gpt2) {
    c = {{"model_type", "gpt2"},
         {"architectures", {"GPT2LMHeadModel"}},
         {"vocab_size", s.vocab_size},
         {"n_positions", s.n_ctx},
         {"n_ctx", s.n_ctx},
         {"n_embd", s.d_model},
         {"n_layer", s.n_layer},
         {"n_head", s.n_head},
         {"n_inner", s.ff()},
         {"layer_norm_epsilon", s.norm_eps},
         {"activation_function", "gelu_new"},
         {"tie_word_embeddings", s.tie_embeddings},
         {"scale_attn_weights", s.scale_attn_weights},
         {"scale_attn_by_inverse_layer_idx", s.scale_attn_by_inverse_layer_idx},
         {"resid_pdrop", 0.0},
         {"embd_pdrop", 0.0},
         {"attn_pdrop", 0.0},
         {"bos_token_id", 0},
         {"eos_token_id", 0}};
  } else {
    static const std::map<nn::Flavor, const char*> arch = {
        {nn::Flavor::Llama, "LlamaForCausalLM"}, {nn::Flavor::Mistral, "MistralForCausalLM"},
        {nn::Flavor::Qwen2, "Qwen2ForCausalLM"}, {nn::Flavor::Qwen3, "Qwen3ForCausalLM"},
        {nn::Flavor::Phi3, "Phi3ForCausalLM"},   {nn::Flavor::Gemma, "GemmaForCausalLM"}};
    json rope = {{"rope_type", s.rope_scaling.type}, {"rope_theta", s.rope_theta}};
    if (s.rope_scaling.type != "default") rope["factor"] = s.rope_scaling.factor;
    if (s.flavor == nn::Flavor::Phi3) rope["partial_rotary_factor"] = s.partial_rotary_factor;
    if (s.rope_scaling.type == "llama3") {
      rope["low_freq_factor"] = s.rope_scaling.low_freq_factor;
      rope["high_freq_factor"] = s.rope_scaling.high_freq_factor;
      rope["original_max_position_embeddings"] = s.rope_scaling.original_max_position_embeddings;
    }
    c = {{"model_type", nn::flavor_name(s.flavor)},
         {"architectures", {arch.at(s.flavor)}},
         {"vocab_size", s.vocab_size},
         {"max_position_embeddings", s.n_ctx},
         {"hidden_size", s.d_model},
         {"intermediate_size", s.ff()},
         {"num_hidden_layers", s.n_layer},
         {"num_attention_heads", s.n_head},
         {"num_key_value_heads", s.kv_heads()},
         {"head_dim", s.head_dim()},
         {"rms_norm_eps", s.norm_eps},
         {"rope_theta", s.rope_theta},
         {"rope_parameters", rope},
         {"hidden_act", s.gemma() ? "gelu_pytorch_tanh" : "silu"},
         {"tie_word_embeddings", s.tie_embeddings},
         {"torch_dtype", "float32"}};
    if (s.flavor == nn::Flavor::Llama || s.flavor == nn::Flavor::Qwen3 || s.gemma())
      c["attention_bias"] = s.attention_bias;
    if (s.flavor == nn::Flavor::Llama) c["mlp_bias"] = s.mlp_bias;
    if (s.flavor == nn::Flavor::Mistral || s.flavor == nn::Flavor::Phi3)
      c["sliding_window"] = s.sliding_window > 0 ? json(s.sliding_window) : json(nullptr);
    if (s.flavor == nn::Flavor::Qwen2 || s.flavor == nn::Flavor::Qwen3) {
      c["use_sliding_window"] = s.sliding_window > 0;
      c["sliding_window"] = s.sliding_window > 0 ? json(s.sliding_window) : json(nullptr);
      c["max_window_layers"] = s.max_window_layers;
    }
    if (s.flavor == nn::Flavor::Phi3) c["pad_token_id"] = nullptr;
  }
  std::string cj = c.dump(2) + "\n";
  write_file_atomic(dir + "/config.json", cj.data(), cj.size());
  std::vector<WriteEntry> entries;
  for (const auto& p : model.params().all()) entries.push_back(WriteEntry::f32(p.name, p.tensor));
  save_safetensors(dir + "/model.safetensors", entries, {{"format", "pt"}});
}

}  // namespace tessera::io
