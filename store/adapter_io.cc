#include "store/adapter_io.h"

#include <unistd.h>

#include <atomic>
#include <filesystem>

#include "adapters/adapter_file.h"
#include "runtime/common/error.h"
#include "runtime/io/safetensors.h"

namespace tessera::store {

namespace fs = std::filesystem;

namespace {

// A scratch adapter file, removed when it goes out of scope.
class Scratch {
 public:
  explicit Scratch(const std::string& what) {
    static std::atomic<int> n{0};
    path_ = (fs::temp_directory_path() / ("tessera_" + what + "_" + std::to_string(::getpid()) +
                                          "_" + std::to_string(n++) + ".safetensors"))
                .string();
  }
  ~Scratch() {
    std::error_code ec;
    fs::remove(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

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

}  // namespace

Status PutAdapterFile(LibraryApi& lib, const std::string& file, AdapterRecord record,
                      AdapterRecord* stored, const SignatureFn& signatures) {
  return guarded("adapter file '" + file + "'", [&]() -> Status {
    adapters::AdapterFile info = adapters::read_adapter(file);  // validates the file
    auto f = io::SafetensorsFile::open(file);
    record.set_kind(adapters::kind_name(info.spec.kind));
    record.set_config_json(f->metadata().at("tessera.adapter"));
    record.clear_target_modules();
    for (const auto& m : info.modules) record.add_target_modules(m);
    for (const auto& m : info.embedding_modules) record.add_target_modules(m);
    for (const auto& m : info.modules_to_save) record.add_target_modules(m);
    if (record.base().name().empty()) record.mutable_base()->set_name(info.base_model);
    if (record.base().fingerprint().empty())
      record.mutable_base()->set_fingerprint(info.base_fingerprint);
    if (record.signatures_size() == 0 && signatures)
      for (const auto& [name, vec] : signatures(info)) {
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
    std::vector<io::WriteEntry> e;
    for (const auto& t : ts) {
      io::DType d;
      if (!io::parse_dtype(t.dtype, &d))
        return Status::Corruption("adapter " + r.name() + ": tensor " + t.name + " has dtype " +
                                  t.dtype);
      e.push_back({t.name, d, t.shape, t.bytes.data(), t.bytes.size()});
    }
    io::save_safetensors(file, e, {{"tessera.adapter", r.config_json()}, {"format", "pt"}});
    return Status::OK();
  });
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
  Scratch tmp("export");
  Status s = GetAdapterFile(lib, key, tmp.path());
  if (!s.ok()) return s;
  return guarded("adapter " + key, [&]() -> Status {
    adapters::adapter_file_to_peft(tmp.path(), dir);
    return Status::OK();
  });
}

Status ImportPeft(LibraryApi& lib, const std::string& dir, AdapterRecord record,
                  AdapterRecord* stored, const SignatureFn& signatures) {
  Scratch tmp("import");
  Status s = guarded("PEFT folder '" + dir + "'", [&]() -> Status {
    adapters::peft_to_adapter_file(dir, tmp.path());
    return Status::OK();
  });
  if (!s.ok()) return s;
  return PutAdapterFile(lib, tmp.path(), std::move(record), stored, signatures);
}

}  // namespace tessera::store
