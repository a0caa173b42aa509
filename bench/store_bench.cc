// The adapter library against raw RocksDB (issue 4): Put and Get of 256 KB
// adapters and of 4 KB records — ops/s and MB/s of store::Library next to a
// plain RocksDB database with the same options (synced writes, blob files for
// values >= 4 KB, the same LRU cache of blocks and blobs) doing the same puts
// and gets, in this program — gets once cold (first read of each value after
// the puts settled) and then warm (3 more passes); exact Search
// over N signatures of dimension D (p50/p99 latency); library size on disk vs
// the sum of tensor bytes. JSON lines.
//
//   build/bench/store_bench [--count 400] [--signatures 100000] [--dim 256]
#include <rocksdb/cache.h>
#include <rocksdb/db.h>
#include <rocksdb/options.h>
#include <rocksdb/table.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <thread>

#include <CLI/CLI.hpp>

#include "bench/common.h"
#include "runtime/common/rng.h"
#include "store/library.h"

using namespace tessera;
namespace fs = std::filesystem;

namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::string payload(int i, size_t bytes) {
  std::string s(bytes, '\0');
  Rng rng(static_cast<uint64_t>(i) + 1);
  for (size_t b = 0; b + 8 <= bytes; b += 8) {
    const uint64_t v = rng.next_u64();
    std::memcpy(&s[b], &v, 8);
  }
  return s;
}

// Lets background flushes of the puts finish before reads are timed (both
// stores alike), so a get does not race a flush for the 2 cores.
void settle() {
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
}

uint64_t dir_bytes(const fs::path& p) {
  uint64_t n = 0;
  for (const auto& e : fs::recursive_directory_iterator(p))
    if (e.is_regular_file()) n += e.file_size();
  return n;
}

void emit_rate(const std::string& impl, const std::string& op, size_t bytes, int count,
               double secs) {
  bench::emit({{"bench", "store"},
               {"impl", impl},
               {"op", op},
               {"value_bytes", bytes},
               {"count", count},
               {"ops_per_s", count / secs},
               {"mb_per_s", static_cast<double>(bytes) * count / secs / 1e6}});
}

// prefix + i (built by appending: GCC 12's -Wrestrict misfires on "a" + to_string(i)
// once inlined into a lambda).
std::string key(const char* prefix, int i) {
  std::string k = prefix;
  k += std::to_string(i);
  return k;
}

// After the puts settle: every value read once ("get_cold"), then 3 more passes ("get").
template <typename Get>
void time_gets(const std::string& impl, size_t bytes, int count, Get get) {
  settle();
  for (const char* op : {"get_cold", "get"}) {
    const double t0 = now_s();
    const int passes = op[3] == '_' ? 1 : 3;
    for (int p = 0; p < passes; ++p)
      for (int i = 0; i < count; ++i) get(i);
    emit_rate(impl, op, bytes, count * passes, now_s() - t0);
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Adapter library vs raw RocksDB; exact signature search"};
  int count = 400, signatures = 100000, dim = 256, queries = 50;
  app.add_option("--count", count, "Puts and gets per size")->capture_default_str();
  app.add_option("--signatures", signatures)->capture_default_str();
  app.add_option("--dim", dim)->capture_default_str();
  app.add_option("--queries", queries)->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  const fs::path root = fs::temp_directory_path() / ("store_bench_" + std::to_string(getpid()));
  try {
    fs::create_directories(root);
    for (size_t bytes : {size_t(256 * 1024), size_t(4096)}) {
      std::vector<std::string> values;
      for (int i = 0; i < count; ++i) values.push_back(payload(i, bytes));
      // Raw RocksDB: one column family with blob files, synced puts.
      {
        const fs::path p = root / ("raw_" + std::to_string(bytes));
        rocksdb::Options o;
        o.create_if_missing = true;
        o.enable_blob_files = true;
        o.min_blob_size = 4096;
        // The library's cache: one LRU for blocks and blobs, the same size.
        auto cache = rocksdb::NewLRUCache(store::Options().cache_bytes);
        rocksdb::BlockBasedTableOptions t;
        t.block_cache = cache;
        o.table_factory.reset(rocksdb::NewBlockBasedTableFactory(t));
        o.blob_cache = cache;
        rocksdb::DB* db = nullptr;
        if (!rocksdb::DB::Open(o, p.string(), &db).ok()) throw std::runtime_error("raw open");
        rocksdb::WriteOptions wo;
        wo.sync = true;
        double t0 = now_s();
        for (int i = 0; i < count; ++i) db->Put(wo, "k" + std::to_string(i), values[i]);
        emit_rate("raw_rocksdb", "put", bytes, count, now_s() - t0);
        time_gets("raw_rocksdb", bytes, count, [&](int i) {
          std::string v;  // a value the caller keeps, as the library's Get gives
          db->Get(rocksdb::ReadOptions(), key("k", i), &v);
        });
        delete db;
      }
      // The library: a record + one tensor of the same bytes per adapter.
      {
        const fs::path p = root / ("lib_" + std::to_string(bytes));
        std::unique_ptr<store::Library> lib;
        store::Status s = store::Library::Open(store::Options(), p.string(), &lib);
        if (!s.ok()) throw std::runtime_error(s.ToString());
        double t0 = now_s();
        for (int i = 0; i < count; ++i) {
          AdapterRecord r;
          r.set_name("a" + std::to_string(i));
          r.set_kind("lora");
          store::TensorData t{"w", "F32", {static_cast<int64_t>(bytes / 4)}, values[i]};
          s = lib->Put(r, {t}, nullptr);
          if (!s.ok()) throw std::runtime_error(s.ToString());
        }
        emit_rate("tessera_library", "put", bytes, count, now_s() - t0);
        time_gets("tessera_library", bytes, count, [&](int i) {
          AdapterRecord r;
          std::vector<store::TensorData> ts;
          s = lib->Get(key("a", i), &r, &ts);
          if (!s.ok()) throw std::runtime_error(s.ToString());
        });
        lib.reset();
        bench::emit(
            {{"bench", "store"},
             {"figure", "size_on_disk"},
             {"value_bytes", bytes},
             {"tensor_bytes", static_cast<double>(bytes) * count},
             {"disk_bytes", dir_bytes(p)},
             {"ratio", static_cast<double>(dir_bytes(p)) / (static_cast<double>(bytes) * count)}});
      }
    }
    // Search over `signatures` records (tiny tensors; writes unsynced to fill fast).
    {
      const fs::path p = root / "search";
      store::Options o;
      o.sync = false;
      std::unique_ptr<store::Library> lib;
      store::Status s = store::Library::Open(o, p.string(), &lib);
      if (!s.ok()) throw std::runtime_error(s.ToString());
      Rng rng(7);
      double t0 = now_s();
      for (int i = 0; i < signatures; ++i) {
        AdapterRecord r;
        r.set_name("s" + std::to_string(i));
        r.set_kind("lora");
        Signature* sg = r.add_signatures();
        sg->set_name("mean");
        for (int d = 0; d < dim; ++d) sg->add_vector(rng.normal(0.0f, 1.0f));
        std::string b(4, '\0');
        std::memcpy(&b[0], &i, 4);
        s = lib->Put(r, {store::TensorData{"w", "F32", {1}, b}}, nullptr);
        if (!s.ok()) throw std::runtime_error(s.ToString());
      }
      const double fill = now_s() - t0;
      settle();  // the fill's flushes and compactions, off the cores before timing
      std::vector<double> ms;
      for (int q = 0; q < queries; ++q) {
        std::vector<float> v(static_cast<size_t>(dim));
        for (float& x : v) x = rng.normal(0.0f, 1.0f);
        std::vector<store::SearchHit> hits;
        const double a = now_s();
        s = lib->Search("", v, 10, {}, &hits);
        ms.push_back((now_s() - a) * 1e3);
        if (!s.ok() || hits.size() != 10) throw std::runtime_error("search: " + s.ToString());
      }
      std::sort(ms.begin(), ms.end());
      bench::emit({{"bench", "store"},
                   {"op", "search"},
                   {"signatures", signatures},
                   {"dim", dim},
                   {"k", 10},
                   {"fill_seconds", fill},
                   {"p50_ms", ms[ms.size() / 2]},
                   {"p99_ms", ms[std::min(ms.size() - 1, ms.size() * 99 / 100)]}});
    }
    fs::remove_all(root);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "store_bench: %s\n", e.what());
    fs::remove_all(root);
    return 2;
  }
  return 0;
}
