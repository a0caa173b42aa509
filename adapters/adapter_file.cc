#include "adapters/adapter_file.h"

#include "adapters/peft.h"

#include <filesystem>

#include "adapters/kinds.h"
#include "adapters/spec.h"
#include "runtime/common/error.h"
#include "runtime/io/safetensors.h"
#include "runtime/nn/models.h"

namespace tessera::adapters {

using kernels::cpu::Act;

namespace {
constexpr const char* kMetaKey = "tessera.adapter";

struct Loaded {
  AdapterFile info;
  std::shared_ptr<io::SafetensorsFile> file;
};

// The metadata's JSON, read and validated through the AdapterConfig message.
AdapterFile parse_metadata(const std::string& text, const std::string& path) {
  return adapter_from_config(parse_config_json(text, path), path);
}

// An adapter from its safetensors image (a mapped file or bytes).
Loaded from_image(std::shared_ptr<io::SafetensorsFile> file, const std::string& path) {
  Loaded l;
  l.file = std::move(file);
  auto it = l.file->metadata().find(kMetaKey);
  if (it == l.file->metadata().end())
    throw Error(str("'", path, "' is a safetensors file without '", kMetaKey,
                    "' metadata: not a tessera adapter (a PEFT folder? use import-peft)"));
  l.info = parse_metadata(it->second, path);
  l.info.image = l.file;
  return l;
}

Loaded open(const std::string& path) {
  if (!std::filesystem::is_regular_file(path))
    throw Error(str("adapter file '", path, "' does not exist"));
  return from_image(io::SafetensorsFile::open(path), path);
}

// The image's tensors, opening the file again only for a value built by hand.
std::shared_ptr<const io::SafetensorsFile> image_of(const AdapterFile& a) {
  return a.image ? a.image : io::SafetensorsFile::open(a.path);
}
}  // namespace

AdapterFile read_adapter_metadata(const std::string& json, const std::string& source) {
  return parse_metadata(json, source);
}

const char* act_name(Act a) {
  return nn::act_names().name(a);
}

Act parse_act(const std::string& s) {
  return nn::act_names().parse(s, "activation");
}

namespace {
// The metadata's JSON, written from the AdapterConfig message.
std::string spec_json(const AdapterSpec& s, const std::vector<std::string>& targets,
                      const std::vector<std::string>& modules, const std::vector<bool>& conv1d,
                      const std::string& base_model, const std::string& fingerprint,
                      const std::vector<std::string>& embedding_modules = {},
                      const std::vector<std::string>& copied_modules = {}) {
  AdapterFile a;
  a.spec = s;
  a.targets = targets;
  a.modules = modules;
  a.conv1d = conv1d;
  a.base_model = base_model;
  a.base_fingerprint = fingerprint;
  a.embedding_modules = embedding_modules;
  a.modules_to_save = copied_modules;
  return config_json(adapter_config(a));
}

std::map<std::string, std::string> file_metadata(const std::string& meta) {
  return {{kMetaKey, meta}, {"format", "pt"}};
}

void write(const std::string& path, const std::vector<io::WriteEntry>& e, const std::string& meta) {
  std::filesystem::path parent = std::filesystem::path(path).parent_path();
  if (!parent.empty()) std::filesystem::create_directories(parent);
  io::save_safetensors(path, e, file_metadata(meta));
}

// The entries and metadata of a plain LoRA given as factors: each module's
// own rank and scale, as rank/alpha patterns on its exact name.
std::string lora_factors_json(const std::vector<std::pair<std::string, LoraFactors>>& modules,
                              const std::vector<bool>& conv1d, const std::string& base_model,
                              const std::string& base_fingerprint, std::vector<io::WriteEntry>* e) {
  if (modules.empty() || conv1d.size() != modules.size())
    throw Error(
        str("save_lora_factors: ", modules.size(), " modules, ", conv1d.size(), " layout flags"));
  AdapterSpec s(Kind::Lora, LoraConfig{modules.front().second.rank(), 1.0f, false});
  std::vector<std::string> targets, names;
  for (const auto& [m, f] : modules) {
    s.lora.rank_pattern.push_back({regex_escape(m), f.rank()});
    s.lora.alpha_pattern.push_back({regex_escape(m), f.scale * static_cast<float>(f.rank())});
    targets.push_back("re:" + regex_escape(m));
    names.push_back(m);
    e->push_back(io::WriteEntry::f32(m + ".lora_A.weight", f.A));
    e->push_back(io::WriteEntry::f32(m + ".lora_B.weight", f.B));
  }
  return spec_json(s, targets, names, conv1d, base_model, base_fingerprint);
}

}  // namespace

void save_adapter(const AdapterSet& set, const std::string& path, const std::string& base_model,
                  const std::string& base_fingerprint) {
  std::vector<bool> conv;
  for (const nn::Linear* l : set.linears()) conv.push_back(l->conv1d());
  std::vector<io::WriteEntry> e;
  for (const auto& p : set.params().all()) e.push_back(io::WriteEntry::f32(p.name, p.tensor));
  write(path, e,
        spec_json(set.spec(), set.targets(), set.modules(), conv, base_model, base_fingerprint,
                  set.embedding_modules(), set.copied_modules()));
}

void save_lora_factors(const std::string& path,
                       const std::vector<std::pair<std::string, LoraFactors>>& modules,
                       const std::vector<bool>& conv1d, const std::string& base_model,
                       const std::string& base_fingerprint) {
  std::vector<io::WriteEntry> e;
  const std::string meta = lora_factors_json(modules, conv1d, base_model, base_fingerprint, &e);
  write(path, e, meta);
}

AdapterFile lora_factors_adapter(const std::vector<std::pair<std::string, LoraFactors>>& modules,
                                 const std::vector<bool>& conv1d, const std::string& base_model,
                                 const std::string& base_fingerprint) {
  std::vector<io::WriteEntry> e;
  const std::string meta = lora_factors_json(modules, conv1d, base_model, base_fingerprint, &e);
  return read_adapter_bytes(io::serialize_safetensors(e, file_metadata(meta)), "merged LoRA");
}

AdapterFile read_adapter(const std::string& path) {
  Loaded l = open(path);
  return l.info;
}

AdapterFile read_adapter_bytes(std::vector<uint8_t> bytes, const std::string& source) {
  return from_image(io::SafetensorsFile::parse(std::move(bytes), source), source).info;
}

std::vector<uint8_t> adapter_bytes(const AdapterFile& a) {
  const auto f = image_of(a);
  std::vector<io::WriteEntry> e;
  for (const auto& t : f->tensors())
    e.push_back({t.name, t.dtype, t.shape, f->bytes(t), static_cast<size_t>(t.end - t.begin)});
  return io::serialize_safetensors(e, f->metadata());
}

Tensor AdapterFile::tensor(const std::string& name) const {
  auto f = image_of(*this);
  if (!f->find(name)) throw Error(str("adapter file '", path, "' lacks tensor ", name));
  return f->load_f32(name);
}

std::vector<std::pair<std::string, LoraFactors>> AdapterFile::factors() const {
  if (spec.kind != Kind::Lora && spec.kind != Kind::Dora)
    throw Error(str("adapter file '", path, "' holds a ", kind_name(spec.kind),
                    " adapter, which has no LoRA factors"));
  if (!modules_to_save.empty())
    throw Error(str("adapter file '", path, "' replaces ", modules_to_save.front(),
                    " by a copy (modules_to_save): merging combines LoRAs of Linear modules "
                    "only; use the adapter whole (eval --adapter, export-peft)"));
  if (!embedding_modules.empty())
    throw Error(str("adapter file '", path, "' has a LoRA on the embedding ",
                    embedding_modules.front(), ": these methods combine LoRAs of Linear modules"));
  return linear_factors();
}

std::vector<std::pair<std::string, LoraFactors>> AdapterFile::linear_factors() const {
  auto f = image_of(*this);
  std::vector<std::pair<std::string, LoraFactors>> out;
  for (const std::string& m : modules) {
    for (const char* ab : {".lora_A.weight", ".lora_B.weight"})
      if (!f->find(m + ab)) throw Error(str("adapter file '", path, "' lacks tensor ", m, ab));
    LoraFactors lf{f->load_f32(m + ".lora_A.weight"), f->load_f32(m + ".lora_B.weight"),
                   spec.lora.for_module(m).scale()};
    out.push_back({m, lf});
  }
  return out;
}

std::vector<Tensor> AdapterFile::magnitudes() const {
  std::vector<Tensor> out;
  if (spec.kind != Kind::Dora) return out;
  for (const std::string& m : modules) out.push_back(tensor(m + ".lora_magnitude_vector"));
  return out;
}

std::unique_ptr<AdapterSet> load_adapter(const std::string& path, std::vector<nn::Linear*> linears,
                                         nn::ParameterSet& base, std::string* base_model,
                                         std::vector<nn::Embedding*> embeddings) {
  Loaded l = open(path);
  const AdapterFile& a = l.info;
  auto set = std::make_unique<AdapterSet>(
      linears, base, a.modules.empty() ? std::vector<std::string>{} : a.targets, a.spec, 0);
  if (!a.embedding_modules.empty()) {
    if (embeddings.empty())
      throw Error(str("adapter file '", path, "' has a LoRA on the embedding ",
                      a.embedding_modules.front(), ", and this model has no embeddings to adapt"));
    set->add_embeddings(embeddings, a.embedding_modules);
  }
  if (!a.modules_to_save.empty()) set->add_copies(linears, embeddings, a.modules_to_save);
  if (set->modules() != a.modules)
    throw Error(str("adapter file '", path, "' was trained on ", a.modules.size(),
                    " modules, but its targets select ", set->modules().size(), " on this base",
                    set->modules().empty() ? "" : " (first: " + set->modules().front() + ")",
                    " — is it for another base model?"));
  size_t used = 0;
  for (auto& p : set->params().all()) {
    const io::TensorInfo* t = l.file->find(p.name);
    if (!t)
      throw Error(str("adapter file '", path, "' lacks tensor ", p.name, " — is it for another ",
                      "base model?"));
    if (t->shape != p.tensor.shape())
      throw Error(str("adapter tensor ", p.name, " in '", path, "' is ", shape_str(t->shape),
                      " but this base needs ", shape_str(p.tensor.shape()),
                      " — is it for another base model?"));
    p.tensor.copy_from(l.file->load_f32(*t));
    ++used;
  }
  if (used != l.file->tensors().size())
    throw Error(str("adapter file '", path, "' holds ", l.file->tensors().size(),
                    " tensors, but the adapter has ", used, " — extra tensors would be lost"));
  if (base_model) *base_model = a.base_model;
  return set;
}

void adapter_file_to_peft(const std::string& file, const std::string& dir) {
  adapter_to_peft(read_adapter(file), dir);
}

void adapter_to_peft(const AdapterFile& f, const std::string& dir) {
  const std::string& file = f.path;
  if (f.spec.kind != Kind::Lora && f.spec.kind != Kind::Dora)
    throw Error(str("'", file, "' is a ", kind_name(f.spec.kind),
                    " adapter; PEFT's LoRA format holds only lora and dora"));
  // peft sets fan_in_fan_out per module from its layout (Conv1D or Linear),
  // so one flag serves an adapter that has both, as export_peft writes it.
  const bool conv1d = std::find(f.conv1d.begin(), f.conv1d.end(), true) != f.conv1d.end();
  std::vector<std::pair<std::string, LoraFactors>> embs;
  for (const std::string& m : f.embedding_modules)
    embs.push_back(
        {m, LoraFactors{f.tensor(m + ".lora_embedding_A"), f.tensor(m + ".lora_embedding_B"),
                        f.spec.lora.for_module(m).scale()}});
  std::vector<std::pair<std::string, Tensor>> saved;
  {
    auto file_tensors = image_of(f);
    for (const auto& t : file_tensors->tensors()) {
      const size_t at = t.name.find(".modules_to_save.");
      if (at != std::string::npos)
        saved.push_back(
            {t.name.substr(0, at) + "." + t.name.substr(at + 17), file_tensors->load_f32(t)});
    }
  }
  write_peft(dir, f.linear_factors(), conv1d, f.base_model, f.magnitudes(), f.base_fingerprint,
             embs, saved, f.modules_to_save);
}

void peft_to_adapter_file(const std::string& dir, const std::string& file) {
  const std::vector<uint8_t> bytes = adapter_bytes(peft_to_adapter(dir));
  std::filesystem::path parent = std::filesystem::path(file).parent_path();
  if (!parent.empty()) std::filesystem::create_directories(parent);
  io::write_file_atomic(file, bytes.data(), bytes.size());
}

AdapterFile peft_to_adapter(const std::string& dir) {
  PeftFolder p = read_peft(dir);
  if (p.dora)
    throw Error(str("'", dir,
                    "' is a DoRA adapter: its magnitudes are checked against a base; import it "
                    "with the base (tessera library import-peft --base CKPT)"));
  auto factors = p.factors();
  AdapterFile a = lora_factors_adapter(factors, std::vector<bool>(factors.size(), p.fan_in_fan_out),
                                       p.base_model, p.base_fingerprint);
  a.path = "PEFT folder '" + dir + "'";
  return a;
}

}  // namespace tessera::adapters
