#include "launch/experts.h"

#include "adapters/adapter_file.h"
#include "launch/commands.h"
#include "runtime/common/error.h"
#include "store/adapter_io.h"
#include "store/library.h"
#include "tessera/library.pb.h"

namespace tessera::launch {

std::vector<AdapterRecord> list_lora_records(store::LibraryApi& lib,
                                             const std::string& fingerprint) {
  store::ListFilter f;
  f.base_fingerprint = fingerprint;
  f.kind = "lora";
  std::vector<AdapterRecord> out;
  std::string token;
  do {
    store::ListPage page;
    check_store(lib.List(f, 1000, token, &page), "listing the library's experts");
    for (AdapterRecord& r : page.records) out.push_back(std::move(r));
    token = page.next_token;
  } while (!token.empty());
  return out;
}

LibraryExpert read_library_expert(store::LibraryApi& lib, const std::string& key) {
  adapters::AdapterFile file;
  AdapterRecord rec;
  check_store(store::GetAdapter(lib, key, &file, &rec), str("reading expert '", key, "'"));
  LibraryExpert e;
  e.name = rec.name() + "@" + std::to_string(rec.version());
  e.id = rec.id();
  e.task = rec.task();
  if (file.spec.kind != adapters::Kind::Lora)
    throw Error(str("expert ", e.name, " is ", adapters::kind_name(file.spec.kind),
                    ": routing mixes LoRA experts"));
  for (auto& [m, f] : file.linear_factors()) e.factors[m] = f;
  for (const Signature& s : rec.signatures())
    e.signatures[s.name()] = std::vector<float>(s.vector().begin(), s.vector().end());
  return e;
}

std::vector<LibraryExpert> read_library_experts(store::LibraryApi& lib,
                                                const std::string& fingerprint,
                                                const std::vector<std::string>& names,
                                                const std::string& library, const std::string& base,
                                                bool load) {
  std::vector<LibraryExpert> out;
  auto read = [&](const AdapterRecord& rec) {
    if (load) return read_library_expert(lib, rec.id());
    LibraryExpert e;
    e.name = rec.name() + "@" + std::to_string(rec.version());
    e.id = rec.id();
    e.task = rec.task();
    return e;
  };
  if (!names.empty()) {
    for (const std::string& name : names) {
      AdapterRecord rec;
      check_store(lib.Get(name, &rec), str("expert '", name, "'"));
      check_store(store::CheckBase(rec, fingerprint), str("expert '", name, "'"));
      out.push_back(read(rec));
    }
    return out;
  }
  std::map<std::string, AdapterRecord> newest;  // the newest version of each name
  for (const AdapterRecord& r : list_lora_records(lib, fingerprint)) {
    auto it = newest.find(r.name());
    if (it == newest.end() || it->second.version() < r.version()) newest[r.name()] = r;
  }
  for (const auto& [name, r] : newest) out.push_back(read(r));
  if (out.empty())
    throw Error(str("library ", library, " holds no LoRA experts for the base ", base,
                    " (fingerprint ", fingerprint.substr(0, 16),
                    "…): build some with tessera build-library --base ", base, " --library ",
                    library, " --tasks 'TASK;TASK'"));
  return out;
}

std::vector<nn::Linear*> shared_modules(const std::vector<nn::Linear*>& linears,
                                        const std::vector<LibraryExpert>& experts) {
  std::vector<nn::Linear*> out;
  for (nn::Linear* l : linears) {
    bool everyone = true;
    for (const LibraryExpert& e : experts) everyone = everyone && e.factors.count(l->name());
    if (everyone) out.push_back(l);
  }
  if (out.empty())
    throw Error(
        "the experts share no adapted module of this base (their target modules differ, "
        "or they were trained on another architecture)");
  return out;
}

}  // namespace tessera::launch
