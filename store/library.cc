#include "store/library.h"

#include "runtime/common/dtype.h"
#include "store/crc32c.h"

#include <openssl/evp.h>
#include <rocksdb/cache.h>
#include <rocksdb/db.h>
#include <rocksdb/options.h>
#include <rocksdb/table.h>
#include <rocksdb/write_batch.h>

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <filesystem>
#include <set>

namespace tessera::store {

namespace {

enum Cf { kDefault = 0, kRecords, kTensors, kNames, kIndex };
const char* const kCfNames[] = {"default", "records", "tensors", "names", "index"};

Status from_rocks(const rocksdb::Status& s, const std::string& what) {
  if (s.ok()) return Status::OK();
  if (s.IsNotFound()) return Status::NotFound(what + ": " + s.ToString());
  if (s.IsCorruption()) return Status::Corruption(what + ": " + s.ToString());
  if (s.IsInvalidArgument()) return Status::InvalidArgument(what + ": " + s.ToString());
  return Status::IOError(what + ": " + s.ToString());
}

std::string name_key(const std::string& name, int64_t version) {
  std::string k = name;
  k.push_back('\0');
  for (int i = 7; i >= 0; --i)
    k.push_back(static_cast<char>((static_cast<uint64_t>(version) >> (8 * i)) & 0xff));
  return k;
}

int64_t version_of(const rocksdb::Slice& key, size_t name_len) {
  uint64_t v = 0;
  for (size_t i = name_len + 1; i < key.size(); ++i)
    v = (v << 8) | static_cast<unsigned char>(key.data()[i]);
  return static_cast<int64_t>(v);
}

std::string index_key(const std::string& field, const std::string& value, const std::string& id) {
  std::string k = field;
  k.push_back('\0');
  k += value;
  k.push_back('\0');
  return k + id;
}

// The newest version of a name (whether deleted or not): "latest" '\0' name → id.
std::string latest_key(const std::string& name) {
  return "latest" + std::string(1, '\0') + name;
}

std::vector<std::string> index_keys(const AdapterRecord& r) {
  std::vector<std::string> out;
  for (const auto& t : r.tags()) out.push_back(index_key("tag", t, r.id()));
  if (!r.base().fingerprint().empty())
    out.push_back(index_key("base", r.base().fingerprint(), r.id()));
  if (!r.task().empty()) out.push_back(index_key("task", r.task(), r.id()));
  out.push_back(index_key("kind", r.kind(), r.id()));
  return out;
}

bool is_id(const std::string& s) {
  return s.size() == 64 && std::all_of(s.begin(), s.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

// The content id: kind, config and every tensor's name, dtype, shape and checksum.
std::string content_id(const AdapterRecord& r) {
  std::vector<const TensorRef*> ts;
  for (const auto& t : r.tensors()) ts.push_back(&t);
  std::sort(ts.begin(), ts.end(), [](auto a, auto b) { return a->name() < b->name(); });
  std::string h = r.kind();
  h.push_back('\0');
  h += r.config_json();
  for (const TensorRef* t : ts) {
    h.push_back('\0');
    h += t->name() + '\0' + t->dtype() + '\0';
    for (int64_t d : t->shape()) h += std::to_string(d) + ",";
    h += '\0' + t->sha256();
  }
  return sha256_hex(h);
}

void strip_inline(AdapterRecord* r) {
  for (TensorRef& t : *r->mutable_tensors()) t.clear_stored_inline();
}

}  // namespace

size_t DtypeSize(const std::string& d) {
  DType t;
  if (!parse_dtype(d, &t) || (t != DType::F32 && t != DType::F16 && t != DType::BF16)) return 0;
  return dtype_size(t);
}

Status CheckBase(const AdapterRecord& r, const std::string& base_fingerprint) {
  if (base_fingerprint.empty() || r.base().fingerprint().empty() ||
      r.base().fingerprint() == base_fingerprint)
    return Status::OK();
  return Status::FailedPrecondition("adapter " + r.name() + "@" + std::to_string(r.version()) +
                                    " was trained on base " + r.base().fingerprint().substr(0, 16) +
                                    (r.base().name().empty() ? "" : " (" + r.base().name() + ")") +
                                    ", not on base " + base_fingerprint.substr(0, 16) +
                                    " (force to load it anyway)");
}

namespace {

// RocksDB's info log, discarded: a read-only open writes nothing.
class NullLogger : public rocksdb::Logger {
 public:
  using rocksdb::Logger::Logv;
  void Logv(const char*, va_list) override {}
};

// The pid of another process holding RocksDB's write lock on `dir` (its
// LOCK file, an fcntl lock over the whole file), or 0. Reads only.
pid_t lock_holder(const std::string& dir) {
  int fd = ::open((dir + "/LOCK").c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  struct flock fl = {};
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  fl.l_start = 0;
  fl.l_len = 0;
  pid_t holder = 0;
  if (::fcntl(fd, F_GETLK, &fl) == 0 && fl.l_type != F_UNLCK) holder = fl.l_pid;
  ::close(fd);
  return holder;
}

Status held_elsewhere(const std::string& path, pid_t pid) {
  return Status::FailedPrecondition(
      "the adapter library '" + path + "' is open in another process" +
      (pid > 0 ? " (pid " + std::to_string(pid) + ", e.g. a tessera serve)" : "") +
      ", which holds it alone: stop that process, or reach the library through its server "
      "(tessera library --remote HOST:PORT ..., --library grpc://HOST:PORT)");
}

}  // namespace

Status Library::Open(const Options& options, const std::string& path,
                     std::unique_ptr<Library>* out) {
  if (path.empty()) return Status::InvalidArgument("library path is empty");
  namespace fs = std::filesystem;
  const bool create = options.create_if_missing && !options.read_only;
  if (!create) {
    // Checked here, touching nothing: RocksDB would create the folder and
    // write LOCK and LOG into it even to refuse.
    std::error_code ec;
    if (!fs::exists(path, ec))
      return Status::NotFound("no adapter library at '" + path + "': no such folder");
    if (!fs::is_directory(path, ec))
      return Status::NotFound("no adapter library at '" + path + "': it is a file, not a folder");
    if (!fs::exists(fs::path(path) / "CURRENT", ec))
      return Status::NotFound("no adapter library at '" + path +
                              "': the folder holds no RocksDB database (no CURRENT file); a "
                              "mistyped path?");
  }
  if (pid_t holder = lock_holder(path)) return held_elsewhere(path, holder);
  if (create) {
    // RocksDB makes only the last folder of the path; a new library under a
    // new run folder (runs/x/lib) needs its parents too.
    std::error_code ec;
    std::filesystem::create_directories(path, ec);
    if (ec)
      return Status::IOError("cannot create the adapter library folder '" + path +
                             "': " + ec.message());
  }
  rocksdb::DBOptions dbo;
  dbo.create_if_missing = create;
  dbo.create_missing_column_families = create;
  if (options.read_only) dbo.info_log = std::make_shared<NullLogger>();
  // The small column families (records, names, index) rarely fill a
  // memtable; without a cap the write-ahead log would be kept (holding every
  // tensor byte a second time) until they do. Past this size RocksDB flushes
  // them so the log can go.
  dbo.max_total_wal_size = 64u << 20;
  rocksdb::ColumnFamilyOptions plain;
  // One LRU cache for record blocks and tensor blobs: a served adapter is read
  // from memory, not from a blob file by a syscall per tensor.
  if (options.cache_bytes > 0) {
    auto cache = rocksdb::NewLRUCache(options.cache_bytes);
    rocksdb::BlockBasedTableOptions t;
    t.block_cache = cache;
    plain.table_factory.reset(rocksdb::NewBlockBasedTableFactory(t));
    plain.blob_cache = cache;
  }
  rocksdb::ColumnFamilyOptions blobs = plain;
  blobs.enable_blob_files = true;
  blobs.min_blob_size = options.blob_min_size;
  std::vector<rocksdb::ColumnFamilyDescriptor> cfs;
  for (int i = 0; i < 5; ++i) cfs.emplace_back(kCfNames[i], i == kTensors ? blobs : plain);
  std::unique_ptr<Library> lib(new Library());
  lib->options_ = options;
  lib->path_ = path;
  rocksdb::DB* db = nullptr;
  rocksdb::Status s = options.read_only
                          ? rocksdb::DB::OpenForReadOnly(dbo, path, cfs, &lib->cf_, &db)
                          : rocksdb::DB::Open(dbo, path, cfs, &lib->cf_, &db);
  if (!s.ok()) {
    // Taken between our look and RocksDB's (or by this very process).
    if (s.IsIOError() && s.ToString().find("lock") != std::string::npos)
      return held_elsewhere(path, lock_holder(path));
    if (s.IsInvalidArgument() && !create)
      return Status::NotFound("no adapter library at '" + path + "': " + s.ToString());
    return from_rocks(s, "opening the adapter library at '" + path + "'");
  }
  lib->db_.reset(db);
  Status si = lib->RebuildSignatures();
  if (!si.ok()) return si;
  *out = std::move(lib);
  return Status::OK();
}

Library::~Library() {
  if (db_) {
    for (auto* h : cf_) db_->DestroyColumnFamilyHandle(h);
    db_->Close();
  }
}

Status Library::ReadRecord(const std::string& id, AdapterRecord* r, const void* snapshot,
                           bool keep_inline) {
  rocksdb::ReadOptions ro;
  ro.snapshot = static_cast<const rocksdb::Snapshot*>(snapshot);
  std::string v;
  rocksdb::Status s = db_->Get(ro, cf_[kRecords], id, &v);
  if (s.IsNotFound()) return Status::NotFound("no adapter with id " + id);
  if (!s.ok()) return from_rocks(s, "reading record " + id);
  if (!r->ParseFromString(v)) return Status::Corruption("record " + id + " does not parse");
  if (r->id() != id) return Status::Corruption("record stored under " + id + " says id " + r->id());
  if (!keep_inline) strip_inline(r);
  return Status::OK();
}

Status Library::Resolve(const std::string& key, std::string* id, AdapterRecord* read) {
  if (key.empty())
    return Status::InvalidArgument("empty adapter key (an id, name, name@N or name@latest)");
  if (is_id(key)) {
    *id = key;
    return Status::OK();
  }
  const size_t at = key.rfind('@');
  const std::string name = key.substr(0, at);
  const std::string ver = at == std::string::npos ? "latest" : key.substr(at + 1);
  if (name.empty()) return Status::InvalidArgument("adapter key '" + key + "' has no name");
  if (ver != "latest") {
    int64_t v = 0;
    try {
      size_t pos = 0;
      v = std::stoll(ver, &pos);
      if (pos != ver.size() || v < 1) throw std::invalid_argument(ver);
    } catch (const std::logic_error&) {
      return Status::InvalidArgument("adapter key '" + key + "': version '" + ver +
                                     "' is not a positive integer or 'latest'");
    }
    std::string v_id;
    rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), cf_[kNames], name_key(name, v), &v_id);
    if (s.IsNotFound()) return Status::NotFound("no adapter named " + key);
    if (!s.ok()) return from_rocks(s, "reading name " + key);
    *id = v_id;
    return Status::OK();
  }
  // The newest version that is not deleted: Put keeps a pointer to the
  // newest version (one point lookup); when that one is deleted or
  // collected, walk the versions down.
  {
    std::string latest;
    {
      std::shared_lock<std::shared_mutex> lock(latest_mu_);
      auto it = latest_.find(name);
      if (it != latest_.end()) latest = it->second;
    }
    if (!latest.empty() ||
        db_->Get(rocksdb::ReadOptions(), cf_[kIndex], latest_key(name), &latest).ok()) {
      AdapterRecord r;
      Status s = ReadRecord(latest, &r, nullptr, /*keep_inline=*/true);
      if (s.ok() && !r.deleted()) {
        {
          std::unique_lock<std::shared_mutex> lock(latest_mu_);
          latest_[name] = r.id();
        }
        *id = r.id();
        if (read) *read = std::move(r);
        return Status::OK();
      }
      if (!s.ok() && !s.IsNotFound()) return s;
    }
  }
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), cf_[kNames]));
  const std::string prefix = name + std::string(1, '\0');
  for (it->SeekForPrev(name_key(name, INT64_MAX)); it->Valid() && it->key().starts_with(prefix);
       it->Prev()) {
    AdapterRecord r;
    Status s = ReadRecord(it->value().ToString(), &r, nullptr, /*keep_inline=*/true);
    if (s.IsNotFound()) continue;  // collected by Gc; its version number stays taken
    if (!s.ok()) return s;
    if (!r.deleted()) {
      *id = r.id();
      if (read) *read = std::move(r);
      return Status::OK();
    }
  }
  if (!it->status().ok()) return from_rocks(it->status(), "listing versions of " + name);
  return Status::NotFound("no adapter named " + name);
}

Status Library::Put(const AdapterRecord& in, const std::vector<TensorData>& tensors,
                    AdapterRecord* stored) {
  const std::string& name = in.name();
  if (name.empty() || name.find('@') != std::string::npos || name.find('\0') != std::string::npos)
    return Status::InvalidArgument("adapter name '" + name +
                                   "': expected a non-empty name without '@'");
  if (in.kind().empty()) return Status::InvalidArgument("adapter " + name + ": kind is empty");
  if (tensors.empty()) return Status::InvalidArgument("adapter " + name + ": no tensors");
  AdapterRecord r = in;
  r.clear_tensors();
  r.clear_id();
  r.set_deleted(false);
  std::set<std::string> seen;
  for (const TensorData& t : tensors) {
    if (t.name.empty() || !seen.insert(t.name).second)
      return Status::InvalidArgument("adapter " + name + ": tensor name '" + t.name +
                                     "' is empty or repeated");
    const size_t es = DtypeSize(t.dtype);
    if (es == 0)
      return Status::InvalidArgument("tensor " + t.name + ": dtype '" + t.dtype +
                                     "' (expected F32, F16 or BF16)");
    uint64_t numel = 1;
    for (int64_t d : t.shape) {
      if (d < 0) return Status::InvalidArgument("tensor " + t.name + ": negative dimension");
      numel *= static_cast<uint64_t>(d);
    }
    if (numel * es != t.bytes.size())
      return Status::InvalidArgument("tensor " + t.name + ": " + std::to_string(t.bytes.size()) +
                                     " bytes for " + std::to_string(numel) + " " + t.dtype +
                                     " elements");
    TensorRef* ref = r.add_tensors();
    ref->set_name(t.name);
    ref->set_dtype(t.dtype);
    for (int64_t d : t.shape) ref->add_shape(d);
    ref->set_bytes(t.bytes.size());
    ref->set_sha256(sha256_hex(t.bytes));
    ref->set_crc32c(crc32c(t.bytes.data(), t.bytes.size()));
    // A checksum the caller sent with the bytes (the lookup API's Put) must hold.
    for (const TensorRef& sent : in.tensors())
      if (sent.name() == t.name && !sent.sha256().empty() && sent.sha256() != ref->sha256())
        return Status::Corruption("tensor " + t.name + " of adapter " + name +
                                  ": its bytes hash to " + ref->sha256() + ", it was sent as " +
                                  sent.sha256());
  }
  r.set_id(content_id(r));
  {
    std::shared_lock<std::shared_mutex> lock(sig_mu_);
    std::set<std::string> names;
    for (const Signature& sg : r.signatures()) {
      if (sg.vector_size() == 0 || !names.insert(sg.name()).second)
        return Status::InvalidArgument("adapter " + name + ": signature '" + sg.name() +
                                       "' is empty or repeated");
      auto ix = sigs_.find(sg.name());
      if (ix != sigs_.end() && !ix->second.ids.empty() && ix->second.dim != sg.vector_size())
        return Status::InvalidArgument("adapter " + name + ": signature '" + sg.name() + "' has " +
                                       std::to_string(sg.vector_size()) +
                                       " dimensions, the library's have " +
                                       std::to_string(ix->second.dim));
    }
  }

  std::lock_guard<std::mutex> lock(write_mu_);
  AdapterRecord existing;
  Status es = ReadRecord(r.id(), &existing);
  if (es.ok() && !existing.deleted()) {
    // Ids are content hashes: one record per content.
    if (existing.name() != name)
      return Status::AlreadyExists("adapter " + name + ": the same content is stored as " +
                                   existing.name() + "@" + std::to_string(existing.version()) +
                                   " (" + existing.id() + ")");
    if (stored) *stored = existing;
    return Status::OK();
  }
  if (!es.ok() && !es.IsNotFound()) return es;
  // The next version of this name.
  int64_t version = 1;
  {
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), cf_[kNames]));
    it->SeekForPrev(name_key(name, INT64_MAX));
    if (it->Valid() && it->key().starts_with(name + std::string(1, '\0')))
      version = version_of(it->key(), name.size()) + 1;
    if (!it->status().ok()) return from_rocks(it->status(), "listing versions of " + name);
  }
  r.set_version(version);
  // Small tensors live inside the record: a small adapter is one read.
  uint64_t inlined = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const uint64_t n = tensors[i].bytes.size();
    if (n == 0 || n > options_.inline_max || inlined + n > 4 * options_.inline_max) continue;
    r.mutable_tensors(static_cast<int>(i))->set_stored_inline(tensors[i].bytes);
    inlined += n;
  }
  r.set_created_unix_ms(std::chrono::duration_cast<std::chrono::milliseconds>(
                            std::chrono::system_clock::now().time_since_epoch())
                            .count());
  rocksdb::WriteBatch batch;
  std::string value;
  if (!r.SerializeToString(&value)) return Status::InvalidArgument("record does not serialise");
  batch.Put(cf_[kRecords], r.id(), value);
  for (size_t i = 0; i < tensors.size(); ++i)
    if (r.tensors(static_cast<int>(i)).stored_inline().empty() && !tensors[i].bytes.empty())
      batch.Put(cf_[kTensors], r.id() + "/" + tensors[i].name, tensors[i].bytes);
  batch.Put(cf_[kNames], name_key(name, version), r.id());
  batch.Put(cf_[kIndex], latest_key(name), r.id());
  for (const std::string& k : index_keys(r)) batch.Put(cf_[kIndex], k, "");
  rocksdb::WriteOptions wo;
  wo.sync = options_.sync;
  Status s = from_rocks(db_->Write(wo, &batch), "writing adapter " + name);
  if (!s.ok()) return s;
  {
    std::unique_lock<std::shared_mutex> lock(latest_mu_);
    latest_[name] = r.id();
  }
  {
    std::unique_lock<std::shared_mutex> lock(sig_mu_);
    IndexSignatures(r);
  }
  if (stored) {
    *stored = r;
    strip_inline(stored);
  }
  return s;
}

Status Library::CheckTensors(const AdapterRecord& r, std::vector<TensorData>* out, bool full) {
  // RocksDB checks every block and blob it reads from a file against its
  // own checksum (values served from its cache were checked when read), so a
  // flipped byte on disk is Corruption here. Our CRC-32C over each value is
  // rechecked on every Get only with `paranoid_get` (it costs a pass over
  // every byte: ~40 µs per 256 KB on these cores); Verify and the remote
  // client (end to end, after the network) always check it.
  rocksdb::ReadOptions ro;
  ro.verify_checksums = true;
  const bool check_crc = full || options_.paranoid_get;
  for (const TensorRef& t : r.tensors()) {
    std::string v;
    rocksdb::Status s;
    if (t.bytes() > 0 && !t.stored_inline().empty())
      v = t.stored_inline();  // read with the record (and checked with its block)
    else if (t.bytes() > 0)
      s = db_->Get(ro, cf_[kTensors], r.id() + "/" + t.name(), &v);
    if (s.IsNotFound())
      return Status::Corruption("adapter " + r.name() + "@" + std::to_string(r.version()) + " (" +
                                r.id() + "): tensor " + t.name() + " is missing");
    if (s.IsCorruption())
      return Status::Corruption("adapter " + r.name() + "@" + std::to_string(r.version()) + " (" +
                                r.id() + "): tensor " + t.name() +
                                " is damaged on disk: " + s.ToString());
    if (!s.ok()) return from_rocks(s, "reading tensor " + t.name() + " of " + r.id());
    if (v.size() != t.bytes() || (check_crc && crc32c(v.data(), v.size()) != t.crc32c()) ||
        (full && sha256_hex(v) != t.sha256()))
      return Status::Corruption("adapter " + r.name() + "@" + std::to_string(r.version()) + " (" +
                                r.id() + "): tensor " + t.name() + " does not match its checksum");
    if (out) {
      TensorData d;
      d.name = t.name();
      d.dtype = t.dtype();
      d.shape.assign(t.shape().begin(), t.shape().end());
      d.bytes = std::move(v);
      out->push_back(std::move(d));
    }
  }
  return Status::OK();
}

Status Library::Get(const std::string& key, AdapterRecord* record,
                    std::vector<TensorData>* tensors) {
  std::string id;
  AdapterRecord r;
  Status s = Resolve(key, &id, &r);
  if (!s.ok()) return s;
  if (r.id().empty()) s = ReadRecord(id, &r, nullptr, /*keep_inline=*/true);  // not read yet
  if (!s.ok()) return s;
  if (r.deleted()) return Status::NotFound("adapter " + key + " was deleted");
  if (tensors) tensors->clear();
  s = CheckTensors(r, tensors, /*full=*/false);
  if (!s.ok()) return s;
  strip_inline(&r);
  *record = std::move(r);
  return Status::OK();
}

Status Library::List(const ListFilter& f, int limit, const std::string& token, ListPage* out) {
  if (limit < 1 || limit > 1000)
    return Status::InvalidArgument("list limit " + std::to_string(limit) + ": expected 1..1000");
  if (!token.empty() && !is_id(token))
    return Status::InvalidArgument("page token '" + token + "' is not one this library gave");
  out->records.clear();
  out->next_token.clear();
  const rocksdb::Snapshot* snap = db_->GetSnapshot();
  rocksdb::ReadOptions ro;
  ro.snapshot = snap;
  // The most selective index given, else every record, in id order either way.
  std::string prefix;
  if (!f.tags.empty())
    prefix = index_key("tag", f.tags[0], "");
  else if (!f.base_fingerprint.empty())
    prefix = index_key("base", f.base_fingerprint, "");
  else if (!f.task.empty())
    prefix = index_key("task", f.task, "");
  else if (!f.kind.empty())
    prefix = index_key("kind", f.kind, "");
  const bool indexed = !prefix.empty();
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(ro, cf_[indexed ? kIndex : kRecords]));
  Status st;
  for (it->Seek(prefix + token); it->Valid(); it->Next()) {
    if (indexed && !it->key().starts_with(prefix)) break;
    const std::string id = it->key().ToString().substr(prefix.size());
    if (id == token) continue;
    AdapterRecord r;
    if (indexed) {
      st = ReadRecord(id, &r, snap);
      if (st.IsNotFound()) continue;  // removed by Gc after the index was read
    } else if (!r.ParseFromString(it->value().ToString())) {
      st = Status::Corruption("record " + id + " does not parse");
    } else {
      strip_inline(&r);
    }
    if (!st.ok()) break;
    if (!Passes(r, f)) continue;
    if (static_cast<int>(out->records.size()) == limit) {
      out->next_token = out->records.back().id();
      break;
    }
    out->records.push_back(std::move(r));
  }
  if (st.ok() && !it->status().ok()) st = from_rocks(it->status(), "listing adapters");
  it.reset();
  db_->ReleaseSnapshot(snap);
  return st;
}

bool Library::Passes(const AdapterRecord& r, const ListFilter& f) const {
  if (r.deleted() && !f.include_deleted) return false;
  for (const std::string& t : f.tags)
    if (std::find(r.tags().begin(), r.tags().end(), t) == r.tags().end()) return false;
  if (!f.base_fingerprint.empty() && r.base().fingerprint() != f.base_fingerprint) return false;
  if (!f.kind.empty() && r.kind() != f.kind) return false;
  if (!f.task.empty() && r.task() != f.task) return false;
  return r.name().compare(0, f.name_prefix.size(), f.name_prefix) == 0;
}

void Library::IndexSignatures(const AdapterRecord& r) {
  if (r.deleted()) return;
  for (int i = 0; i < r.signatures_size(); ++i) {
    const Signature& sg = r.signatures(i);
    // The first signature is also indexed under "" (the default).
    for (const std::string& key :
         i == 0 ? std::vector<std::string>{"", sg.name()} : std::vector<std::string>{sg.name()}) {
      SigIndex& ix = sigs_[key];
      if (ix.ids.empty()) ix.dim = sg.vector_size();
      if (sg.vector_size() != ix.dim) continue;  // Put refuses this; an old record may differ
      double n2 = 0;
      for (float v : sg.vector()) n2 += static_cast<double>(v) * v;
      const float inv = n2 > 0 ? static_cast<float>(1.0 / std::sqrt(n2)) : 0.0f;
      ix.ids.push_back(r.id());
      for (float v : sg.vector()) ix.rows.push_back(v * inv);
    }
  }
}

void Library::UnindexSignatures(const std::string& id) {
  for (auto& [name, ix] : sigs_) {
    size_t keep = 0;
    for (size_t i = 0; i < ix.ids.size(); ++i) {
      if (ix.ids[i] == id) continue;
      if (keep != i) {
        ix.ids[keep] = ix.ids[i];
        std::copy_n(ix.rows.begin() + static_cast<int64_t>(i) * ix.dim, ix.dim,
                    ix.rows.begin() + static_cast<int64_t>(keep) * ix.dim);
      }
      ++keep;
    }
    ix.ids.resize(keep);
    ix.rows.resize(keep * static_cast<size_t>(ix.dim));
  }
}

Status Library::AddSignatures(const std::string& key, const std::vector<Signature>& signatures,
                              AdapterRecord* stored) {
  if (options_.read_only)
    return Status::FailedPrecondition("library opened read-only: cannot add signatures to " + key);
  std::string id;
  Status s = Resolve(key, &id);
  if (!s.ok()) return s;
  std::lock_guard<std::mutex> lock(write_mu_);
  AdapterRecord r;
  s = ReadRecord(id, &r, nullptr, /*keep_inline=*/true);  // written back whole
  if (!s.ok()) return s;
  if (r.deleted()) return Status::NotFound("adapter " + key + " is deleted");
  {
    std::shared_lock<std::shared_mutex> sl(sig_mu_);
    std::set<std::string> names;
    for (const Signature& sg : signatures) {
      if (sg.name().empty() || sg.vector_size() == 0 || !names.insert(sg.name()).second)
        return Status::InvalidArgument("adding signatures to " + key + ": signature '" + sg.name() +
                                       "' is unnamed, empty or repeated");
      auto ix = sigs_.find(sg.name());
      bool others = false;  // the index holds this name for other records
      if (ix != sigs_.end())
        for (const std::string& other : ix->second.ids) others = others || other != id;
      if (others && ix->second.dim != sg.vector_size())
        return Status::InvalidArgument("adding signatures to " + key + ": signature '" + sg.name() +
                                       "' has " + std::to_string(sg.vector_size()) +
                                       " dimensions, the library's have " +
                                       std::to_string(ix->second.dim));
    }
  }
  for (const Signature& sg : signatures) {
    Signature* slot = nullptr;
    for (Signature& have : *r.mutable_signatures())
      if (have.name() == sg.name()) slot = &have;
    if (!slot) slot = r.add_signatures();
    *slot = sg;
  }
  std::string v;
  r.SerializeToString(&v);
  rocksdb::WriteOptions wo;
  wo.sync = options_.sync;
  s = from_rocks(db_->Put(wo, cf_[kRecords], id, v), "adding signatures to " + key);
  if (!s.ok()) return s;
  {
    std::unique_lock<std::shared_mutex> ul(sig_mu_);
    UnindexSignatures(id);
    IndexSignatures(r);
  }
  if (stored) {
    *stored = std::move(r);  // as Get returns records: inline tensor values stripped
    strip_inline(stored);
  }
  return Status::OK();
}

Status Library::RebuildSignatures() {
  std::unique_lock<std::shared_mutex> lock(sig_mu_);
  sigs_.clear();
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), cf_[kRecords]));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    AdapterRecord r;
    if (!r.ParseFromString(it->value().ToString()))
      return Status::Corruption("record " + it->key().ToString() + " does not parse");
    IndexSignatures(r);
  }
  return from_rocks(it->status(), "reading signatures");
}

Status Library::Search(const std::string& signature, const std::vector<float>& query, int k,
                       const ListFilter& filter, std::vector<SearchHit>* out) {
  out->clear();
  if (k < 1 || k > 1000)
    return Status::InvalidArgument("search k " + std::to_string(k) + ": expected 1..1000");
  std::shared_lock<std::shared_mutex> lock(sig_mu_);
  auto found = sigs_.find(signature);
  if (found == sigs_.end() || found->second.ids.empty())
    return Status::NotFound(signature.empty()
                                ? std::string("the library holds no signatures to search")
                                : "no stored signature named '" + signature + "'");
  const SigIndex& ix = found->second;
  if (static_cast<int64_t>(query.size()) != ix.dim)
    return Status::InvalidArgument("query of dimension " + std::to_string(query.size()) +
                                   " for signatures of dimension " + std::to_string(ix.dim));
  double n2 = 0;
  for (float v : query) n2 += static_cast<double>(v) * v;
  const float inv = n2 > 0 ? static_cast<float>(1.0 / std::sqrt(n2)) : 0.0f;
  std::vector<float> q(query.size());
  for (size_t i = 0; i < q.size(); ++i) q[i] = query[i] * inv;
  const int64_t N = static_cast<int64_t>(ix.ids.size()), D = ix.dim;
  std::vector<float> score(static_cast<size_t>(N));
  const float* rows = ix.rows.data();
  const float* qp = q.data();
#pragma omp parallel for schedule(static) if (N * D > (1 << 16))
  for (int64_t i = 0; i < N; ++i) {
    const float* row = rows + i * D;
    float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
    for (int64_t d = 0; d < D; ++d) acc += row[d] * qp[d];
    score[i] = acc;
  }
  std::vector<int64_t> order(static_cast<size_t>(N));
  for (int64_t i = 0; i < N; ++i) order[i] = i;
  auto better = [&](int64_t a, int64_t b) {
    return score[a] != score[b] ? score[a] > score[b] : ix.ids[a] < ix.ids[b];
  };
  // Take the best in growing chunks until k pass the filter (usually one chunk).
  size_t done = 0;
  size_t chunk = static_cast<size_t>(k);
  const bool filtered = !filter.tags.empty() || !filter.base_fingerprint.empty() ||
                        !filter.kind.empty() || !filter.task.empty() || !filter.name_prefix.empty();
  while (static_cast<int>(out->size()) < k && done < order.size()) {
    const size_t upto = std::min(order.size(), done + chunk);
    std::partial_sort(order.begin() + done, order.begin() + upto, order.end(), better);
    for (size_t j = done; j < upto && static_cast<int>(out->size()) < k; ++j) {
      AdapterRecord r;
      Status s = ReadRecord(ix.ids[order[j]], &r);
      if (s.IsNotFound()) continue;
      if (!s.ok()) return s;
      if (r.deleted() || (filtered && !Passes(r, filter))) continue;
      out->push_back({r.id(), r.name(), r.version(), score[order[j]]});
    }
    done = upto;
    chunk *= 4;
  }
  return Status::OK();
}

Status Library::Delete(const std::string& key) {
  std::string id;
  Status s = Resolve(key, &id);
  if (!s.ok()) return s;
  std::lock_guard<std::mutex> lock(write_mu_);
  AdapterRecord r;
  s = ReadRecord(id, &r, nullptr, /*keep_inline=*/true);  // written back whole
  if (!s.ok()) return s;
  if (r.deleted()) return Status::NotFound("adapter " + key + " is already deleted");
  r.set_deleted(true);
  std::string v;
  r.SerializeToString(&v);
  rocksdb::WriteOptions wo;
  wo.sync = options_.sync;
  return from_rocks(db_->Put(wo, cf_[kRecords], id, v), "deleting " + key);
}

Status Library::Verify(int64_t* checked) {
  int64_t n = 0;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), cf_[kRecords]));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    AdapterRecord r;
    const std::string id = it->key().ToString();
    if (!r.ParseFromString(it->value().ToString()))
      return Status::Corruption("record " + id + " does not parse");
    if (r.id() != id || content_id(r) != id)
      return Status::Corruption("record " + id + " (" + r.name() +
                                "): its content does not hash to its id");
    Status s = CheckTensors(r, nullptr, /*full=*/true);
    if (!s.ok()) return s;
    ++n;
  }
  if (!it->status().ok()) return from_rocks(it->status(), "verifying");
  if (checked) *checked = n;
  return Status::OK();
}

Status Library::Gc(int64_t* removed) {
  std::lock_guard<std::mutex> lock(write_mu_);
  rocksdb::WriteBatch batch;
  int64_t n = 0;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), cf_[kRecords]));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    AdapterRecord r;
    if (!r.ParseFromString(it->value().ToString()))
      return Status::Corruption("record " + it->key().ToString() + " does not parse");
    if (!r.deleted()) continue;
    batch.Delete(cf_[kRecords], r.id());
    for (const TensorRef& t : r.tensors()) batch.Delete(cf_[kTensors], r.id() + "/" + t.name());
    for (const std::string& k : index_keys(r)) batch.Delete(cf_[kIndex], k);
    ++n;
  }
  if (!it->status().ok()) return from_rocks(it->status(), "collecting garbage");
  rocksdb::WriteOptions wo;
  wo.sync = options_.sync;
  Status s = from_rocks(db_->Write(wo, &batch), "collecting garbage");
  {
    std::unique_lock<std::shared_mutex> lock(latest_mu_);
    latest_.clear();
  }
  if (s.ok() && removed) *removed = n;
  if (s.ok() && n > 0) s = RebuildSignatures();
  return s;
}

Status Library::Stat(LibraryStats* out) {
  LibraryStats st;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), cf_[kRecords]));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    AdapterRecord r;
    if (!r.ParseFromArray(it->value().data(), static_cast<int>(it->value().size())))
      return Status::Corruption("record " + it->key().ToString() + " does not parse");
    if (r.deleted()) {
      ++st.deleted;
      continue;
    }
    ++st.records;
    st.signatures += r.signatures_size();
    for (const TensorRef& t : r.tensors()) st.tensor_bytes += t.bytes();
  }
  if (!it->status().ok()) return from_rocks(it->status(), "counting records");
  // Every file of the database: SST and blob files, and the write-ahead log
  // (where a small library that never flushed lives, e.g. read-only).
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(path_, ec))
    if (e.is_regular_file(ec) && e.path().filename().string().rfind("LOG", 0) != 0)
      st.disk_bytes += e.file_size(ec);  // (RocksDB's own info logs left out)
  *out = st;
  return Status::OK();
}

}  // namespace tessera::store
