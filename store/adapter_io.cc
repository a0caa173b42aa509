#include "store/adapter_io.h"

#include "adapters/adapter_file.h"
#include "runtime/common/error.h"
#include "runtime/io/safetensors.h"

namespace tessera::store {

namespace {

// Runs `body`, turning a tessera::Error (a user's bad file) into InvalidArgument.
template <typename F>
Status guarded(const std::string& what, F&& body) {
  try {
    return body();
  } catch (const Error& e) {
    return Status::InvalidArgument(what + ": " + e.what());
  } catch (const std::exception& e) {
    return Status::IOError(what + ": " + e.what());
  }
}

// A record and its tensors (as Get returns them) as the adapter file's bytes.
Status file_bytes(const AdapterRecord& r, const std::vector<TensorData>& ts,
                  std::vector<uint8_t>* out) {
  std::vector<io::WriteEntry> e;
  for (const auto& t : ts) {
    io::DType d;
    if (!io::parse_dtype(t.dtype, &d))
      return Status::Corruption("adapter " + r.name() + ": tensor " + t.name + " has dtype " +
                                t.dtype);
    e.push_back({t.name, d, t.shape, t.bytes.data(), t.bytes.size()});
  }
  *out = io::serialize_safetensors(e, {{"tessera.adapter", r.config_json()}, {"format", "pt"}});
  return Status::OK();
}

}  // namespace

Status PutAdapterFile(LibraryApi& lib, const std::string& file, AdapterRecord record,
                      AdapterRecord* stored, const SignatureFn& signatures) {
  adapters::AdapterFile info;
  Status s = guarded("adapter file '" + file + "'", [&]() -> Status {
    info = adapters::read_adapter(file);  // validates the file
    return Status::OK();
  });
  if (!s.ok()) return s;
  return PutAdapter(lib, info, std::move(record), stored, signatures);
}

Status PutAdapter(LibraryApi& lib, const adapters::AdapterFile& info, AdapterRecord record,
                  AdapterRecord* stored, const SignatureFn& signatures) {
  return guarded("adapter '" + info.path + "'", [&]() -> Status {
    if (!info.image) return Status::InvalidArgument("adapter '" + info.path + "' holds no tensors");
    const io::SafetensorsFile* f = info.image.get();
    record.set_kind(adapters::kind_name(info.spec.kind));
    record.set_config_json(f->metadata().at("tessera.adapter"));
    record.clear_target_modules();
    for (const auto& m : info.modules) record.add_target_modules(m);
    for (const auto& m : info.embedding_modules) record.add_target_modules(m);
    for (const auto& m : info.modules_to_save) record.add_target_modules(m);
    if (record.base().name().empty()) record.mutable_base()->set_name(info.base_model);
    if (record.base().fingerprint().empty())
      record.mutable_base()->set_fingerprint(info.base_fingerprint);
    // Signatures the record already carries (centroids recorded while
    // training, say) stay; the function's are added under the other names.
    if (signatures)
      for (const auto& [name, vec] : signatures(info)) {
        bool have = false;
        for (const Signature& s : record.signatures()) have = have || s.name() == name;
        if (have) continue;
        Signature* sg = record.add_signatures();
        sg->set_name(name);
        for (float x : vec) sg->add_vector(x);
      }
    std::vector<TensorData> ts;
    for (const auto& t : f->tensors()) {
      TensorData d;
      d.name = t.name;
      d.dtype = io::dtype_name(t.dtype);
      d.shape = t.shape;
      d.bytes.assign(reinterpret_cast<const char*>(f->bytes(t)), t.end - t.begin);
      ts.push_back(std::move(d));
    }
    return lib.Put(record, ts, stored);
  });
}

Status WriteAdapterFile(const AdapterRecord& r, const std::vector<TensorData>& ts,
                        const std::string& file) {
  return guarded("writing '" + file + "'", [&]() -> Status {
    std::vector<uint8_t> bytes;
    Status s = file_bytes(r, ts, &bytes);
    if (s.ok()) io::write_file_atomic(file, bytes.data(), bytes.size());
    return s;
  });
}

Status GetAdapter(LibraryApi& lib, const std::string& key, adapters::AdapterFile* adapter,
                  AdapterRecord* record) {
  AdapterRecord r;
  std::vector<TensorData> ts;
  Status s = lib.Get(key, &r, &ts);
  if (!s.ok()) return s;
  s = guarded("adapter " + key, [&]() -> Status {
    std::vector<uint8_t> bytes;
    Status fs = file_bytes(r, ts, &bytes);
    if (fs.ok())
      *adapter = adapters::read_adapter_bytes(
          std::move(bytes), "library adapter " + r.name() + "@" + std::to_string(r.version()));
    return fs;
  });
  if (s.ok() && record) *record = std::move(r);
  return s;
}

Status GetAdapterFile(LibraryApi& lib, const std::string& key, const std::string& file,
                      AdapterRecord* record) {
  AdapterRecord r;
  std::vector<TensorData> ts;
  Status s = lib.Get(key, &r, &ts);
  if (s.ok()) s = WriteAdapterFile(r, ts, file);
  if (s.ok() && record) *record = std::move(r);
  return s;
}

Status ExportPeft(LibraryApi& lib, const std::string& key, const std::string& dir) {
  adapters::AdapterFile a;
  Status s = GetAdapter(lib, key, &a);
  if (!s.ok()) return s;
  return guarded("adapter " + key, [&]() -> Status {
    adapters::adapter_to_peft(a, dir);
    return Status::OK();
  });
}

Status ImportPeft(LibraryApi& lib, const std::string& dir, AdapterRecord record,
                  AdapterRecord* stored, const SignatureFn& signatures) {
  adapters::AdapterFile a;
  Status s = guarded("PEFT folder '" + dir + "'", [&]() -> Status {
    a = adapters::peft_to_adapter(dir);
    return Status::OK();
  });
  if (!s.ok()) return s;
  return PutAdapter(lib, a, std::move(record), stored, signatures);
}

}  // namespace tessera::store
