// Shared by the store's tests: small tensors and records, and damage done to
// a library folder underneath it.
#pragma once

#include <gtest/gtest.h>
#include <rocksdb/db.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "store/library.h"

namespace tessera::store {

inline TensorData f32(const std::string& name, std::vector<int64_t> shape, float seed) {
  TensorData t;
  t.name = name;
  t.shape = shape;
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  std::vector<float> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[i] = seed + 0.001f * static_cast<float>(i);
  t.bytes.assign(reinterpret_cast<const char*>(v.data()), v.size() * 4);
  return t;
}

inline AdapterRecord rec(const std::string& name, const std::string& kind = "lora",
                         std::vector<std::string> tags = {}, const std::string& task = "") {
  AdapterRecord r;
  r.set_name(name);
  r.set_kind(kind);
  r.set_config_json(R"({"kind":")" + kind + R"(","r":8})");
  r.add_target_modules("layers.0");
  r.mutable_base()->set_name("mlp");
  r.mutable_base()->set_fingerprint(std::string(64, 'a'));
  for (auto& t : tags) r.add_tags(t);
  r.set_task(task);
  return r;
}

// The closed library at `dir` opened as plain RocksDB (its column families).
struct RawLibrary {
  rocksdb::DB* db = nullptr;
  std::vector<rocksdb::ColumnFamilyHandle*> cf;  // default, records, tensors, names, index
  explicit RawLibrary(const std::string& dir) {
    std::vector<rocksdb::ColumnFamilyDescriptor> cfs;
    for (const char* n : {"default", "records", "tensors", "names", "index"})
      cfs.emplace_back(n, rocksdb::ColumnFamilyOptions());
    cfs[2].options.enable_blob_files = true;
    EXPECT_TRUE(rocksdb::DB::Open(rocksdb::DBOptions(), dir, cfs, &cf, &db).ok()) << dir;
  }
  ~RawLibrary() {
    for (auto* x : cf) db->DestroyColumnFamilyHandle(x);
    delete db;
  }
};

// Flips one byte of a stored tensor value (key "id/tensor") in the closed
// library at `dir`, going around the library to RocksDB itself.
inline void flip_stored_byte(const std::string& dir, const std::string& key, size_t at) {
  RawLibrary raw(dir);
  ASSERT_NE(raw.db, nullptr);
  std::string v;
  ASSERT_TRUE(raw.db->Get(rocksdb::ReadOptions(), raw.cf[2], key, &v).ok());
  ASSERT_LT(at, v.size());
  v[at] ^= 0x01;
  ASSERT_TRUE(raw.db->Put(rocksdb::WriteOptions(), raw.cf[2], key, v).ok());
}

// Flushes every column family of the closed library at `dir` (tensor values
// move from the write-ahead log into blob files), then flips the byte in the
// middle of the largest blob file: damage on disk, underneath RocksDB.
inline void flip_byte_on_disk(const std::string& dir) {
  {
    RawLibrary raw(dir);
    ASSERT_NE(raw.db, nullptr);
    ASSERT_TRUE(raw.db->Flush(rocksdb::FlushOptions(), raw.cf).ok());
  }
  std::string blob;
  uintmax_t size = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir))
    if (e.path().extension() == ".blob" && e.file_size() > size) {
      blob = e.path().string();
      size = e.file_size();
    }
  ASSERT_FALSE(blob.empty()) << "no blob file in " << dir;
  std::fstream f(blob, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(static_cast<std::streamoff>(size / 2));
  char c = 0;
  f.read(&c, 1);
  c ^= 0x01;
  f.seekp(static_cast<std::streamoff>(size / 2));
  f.write(&c, 1);
}

}  // namespace tessera::store
