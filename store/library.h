// The adapter library: an embedded RocksDB store of adapter records
// (proto/tessera/library.proto) and their tensor bytes, in the RocksDB style —
// every recoverable failure is a Status, nothing throws across this API.
//
// Layout (column families):
//   records   id → AdapterRecord
//   tensors   id '/' tensor name → raw bytes (RocksDB blob files above
//             Options::blob_min_size, so large values stay out of the LSM);
//             tensors up to Options::inline_max live inside their record
//   names     name '\0' version (8 bytes, big-endian) → id
//   index     field '\0' value '\0' id → "" for tag, base, task and kind;
//             "latest" '\0' name → the id of the name's newest version
// One WriteBatch per logical write: a record, its tensors, its name version
// and its index entries are all there or none is. Writes are synced by
// default. Ids are the SHA-256 of the kind, config and every tensor (name,
// dtype, shape, bytes); tensor values carry their own SHA-256 and CRC-32C:
// Get checks sizes and RocksDB's checksums of what it reads from disk (and
// the CRC-32C with Options::paranoid_get), Verify the CRC-32C, the SHA-256
// and the id (a mismatch is Corruption naming record and tensor).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "runtime/io/fingerprint.h"
#include "store/status.h"
#include "tessera/library.pb.h"

namespace rocksdb {
class DB;
class ColumnFamilyHandle;
}  // namespace rocksdb

namespace tessera::store {

struct Options {
  // false: a path that holds no library is NotFound, and nothing is created
  // or written there (checked before RocksDB runs, which would make the
  // folder and write LOCK and LOG into it even to fail).
  bool create_if_missing = true;
  // Opens without the write lock and writes nothing to the folder (no LOG,
  // no OPTIONS, no new MANIFEST): for commands that only read. Put, Delete
  // and Gc fail. Implies create_if_missing = false.
  bool read_only = false;
  bool sync = true;                   // fsync the WAL on every write (crash safety)
  uint64_t blob_min_size = 4096;      // tensor values at least this large go to blob files
  uint64_t cache_bytes = 256u << 20;  // LRU cache of record blocks and tensor blobs (0: none)
  // Recheck each tensor's CRC-32C on every Get, on top of RocksDB's checksums
  // of what it reads from disk (which catch damage to the files).
  bool paranoid_get = false;
  // Tensors up to this size (and up to 4× it per record) are stored inside
  // their record rather than under their own key: one read for small adapters.
  uint64_t inline_max = 16u << 10;
};

// A tensor to store: its bytes exactly as given (little-endian F32 for "F32").
struct TensorData {
  std::string name;
  std::string dtype = "F32";
  std::vector<int64_t> shape;
  std::string bytes;
};

struct ListFilter {
  std::vector<std::string> tags;  // every one must be present
  std::string base_fingerprint, kind, task, name_prefix;
  bool include_deleted = false;
};

struct SearchHit {
  std::string id, name;
  int64_t version = 0;
  float score = 0;  // cosine similarity
};

struct ListPage {
  std::vector<AdapterRecord> records;
  std::string next_token;  // empty: no more
};

struct LibraryStats {
  int64_t records = 0, deleted = 0;
  int64_t signatures = 0;     // signature vectors over live records
  uint64_t tensor_bytes = 0;  // over live records
  uint64_t disk_bytes = 0;    // the database's files (SST, blobs, WAL, manifest; not LOG)
};

// What callers of a library use, embedded (Library) or through the lookup
// API (RemoteLibrary, store/service.h): the same calls, the same Status codes.
class LibraryApi {
 public:
  virtual ~LibraryApi() = default;
  // Stores `record` (its id, version, tensors and creation time are filled
  // in here) with `tensors`; a SHA-256 given in `record.tensors` for a
  // tensor of that name must match its bytes (Corruption otherwise). The
  // same content stored again under the same name is not a new version: the
  // existing record is returned; under another name it is AlreadyExists
  // naming the record that holds it. `stored` may be null.
  virtual Status Put(const AdapterRecord& record, const std::vector<TensorData>& tensors,
                     AdapterRecord* stored) = 0;
  // `key`: an id, "name" (latest), "name@latest" or "name@N"; NotFound
  // naming it otherwise. Tensors are checked against their checksums
  // (Corruption naming record and tensor); `tensors` may be null (record only).
  virtual Status Get(const std::string& key, AdapterRecord* record,
                     std::vector<TensorData>* tensors = nullptr) = 0;
  // Records in id order matching `filter`, at most `limit` (1..1000), from
  // a consistent snapshot; pass the returned token back for the next page.
  virtual Status List(const ListFilter& filter, int limit, const std::string& page_token,
                      ListPage* out) = 0;
  // Soft delete: Get no longer finds it, Gc removes it.
  virtual Status Delete(const std::string& key) = 0;
  // Recomputes every checksum and id; Corruption names the first bad record
  // and tensor, `checked` counts the records read.
  virtual Status Verify(int64_t* checked = nullptr) = 0;
  // The k records whose signature `signature` (the record's first when
  // empty) is most cosine-similar to `query`, best first, among those
  // passing `filter` (signatures: vectors stored with each record).
  virtual Status Search(const std::string& signature, const std::vector<float>& query, int k,
                        const ListFilter& filter, std::vector<SearchHit>* out) = 0;
  // Removes soft-deleted records with their tensors and index entries
  // (their name versions stay taken: a version number never names two
  // adapters); `removed` counts them.
  virtual Status Gc(int64_t* removed = nullptr) = 0;
  // Counts live and deleted records and their bytes.
  virtual Status Stat(LibraryStats* out) = 0;
  // Adds `signatures` to the stored adapter `key` (a name it already has is
  // replaced; the record's id, which hashes its content, does not change).
  // Each must be non-empty, named once, and of the dimension the library's
  // signatures of that name have (InvalidArgument naming it); a deleted or
  // unknown adapter is NotFound. `stored` (may be null) receives the record.
  virtual Status AddSignatures(const std::string& key, const std::vector<Signature>& signatures,
                               AdapterRecord* stored) = 0;
};

// Refuses `r` for a base whose fingerprint is `base_fingerprint` (empty: no
// check) when the record names another one: FailedPrecondition naming both.
Status CheckBase(const AdapterRecord& r, const std::string& base_fingerprint);

class Library : public LibraryApi {
 public:
  static Status Open(const Options& options, const std::string& path,
                     std::unique_ptr<Library>* out);
  ~Library();
  Library(const Library&) = delete;
  Library& operator=(const Library&) = delete;

  // LibraryApi, embedded. What differs from the interface's contract:
  Status Put(const AdapterRecord& record, const std::vector<TensorData>& tensors,
             AdapterRecord* stored) override;
  Status Get(const std::string& key, AdapterRecord* record,
             std::vector<TensorData>* tensors = nullptr) override;
  Status List(const ListFilter& filter, int limit, const std::string& page_token,
              ListPage* out) override;
  Status Delete(const std::string& key) override;
  Status Verify(int64_t* checked = nullptr) override;
  // Exact: every stored signature is scored (SIMD, in memory).
  Status Search(const std::string& signature, const std::vector<float>& query, int k,
                const ListFilter& filter, std::vector<SearchHit>* out) override;
  Status Gc(int64_t* removed = nullptr) override;
  // Reads every record.
  Status Stat(LibraryStats* out) override;
  Status AddSignatures(const std::string& key, const std::vector<Signature>& signatures,
                       AdapterRecord* stored) override;

 private:
  Library() = default;
  // The id a key names; `read` receives the record when finding it meant reading it.
  Status Resolve(const std::string& key, std::string* id, AdapterRecord* read = nullptr);
  // With `keep_inline`, tensor values stored inside the record stay in it.
  Status ReadRecord(const std::string& id, AdapterRecord* r, const void* snapshot = nullptr,
                    bool keep_inline = false);
  // Size and CRC-32C of every tensor; with `full` also its SHA-256.
  Status CheckTensors(const AdapterRecord& r, std::vector<TensorData>* out, bool full);

  // Unit-norm signatures per signature name, rows in insertion order.
  struct SigIndex {
    int64_t dim = 0;
    std::vector<std::string> ids;
    std::vector<float> rows;  // ids.size() × dim
  };
  void IndexSignatures(const AdapterRecord& r);   // caller holds sig_mu_ exclusively
  void UnindexSignatures(const std::string& id);  // the same
  Status RebuildSignatures();
  bool Passes(const AdapterRecord& r, const ListFilter& f) const;

  std::unique_ptr<rocksdb::DB> db_;
  std::map<std::string, SigIndex> sigs_;
  std::shared_mutex sig_mu_;
  std::vector<rocksdb::ColumnFamilyHandle*> cf_;  // default, records, tensors, names, index
  Options options_;
  std::string path_;
  std::mutex write_mu_;  // version assignment
  // name → id of its newest version (a cache of the `latest` pointers).
  std::unordered_map<std::string, std::string> latest_;
  std::shared_mutex latest_mu_;
};

// Bytes per element of a dtype the store keeps (names from common/dtype.h:
// "F32" 4, "F16"/"BF16" 2), 0 for any other.
size_t DtypeSize(const std::string& dtype);

// SHA-256 hex of `data` (OpenSSL).
using io::sha256_hex;  // runtime/io/fingerprint.h

}  // namespace tessera::store
