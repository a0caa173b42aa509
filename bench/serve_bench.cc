// The lookup API under load (issue 4): `Get` of 256 KB adapters (and of 4 KB
// records) over loopback gRPC from N concurrent clients, each with its own
// connection, against a `tessera serve`-equivalent server in a child process
// (bearer token on, like production): p50 / p99 latency, requests/s, MB/s.
// The baseline, in the same run: the same N threads calling the embedded
// Library::Get on the same folder, and the same server over the adapters held
// in memory (what gRPC alone costs). JSON lines.
//
//   build/bench/serve_bench [--clients 8] [--seconds 3] [--adapters 64]
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <map>
#include <mutex>
#include <thread>

#include <CLI/CLI.hpp>

#include "bench/common.h"
#include "runtime/common/rng.h"
#include "store/library.h"
#include "store/service.h"

using namespace tessera;
namespace fs = std::filesystem;

namespace {

using Clock = std::chrono::steady_clock;
const std::string kToken = "serve-bench-token";

// An adapter of `bytes` as LoRA-shaped F32 tensors (pairs of A [8, n] and B [n, 8]).
std::vector<store::TensorData> adapter(int seed, size_t bytes) {
  const int pairs = bytes >= (64 << 10) ? 4 : 1;
  const int64_t n = static_cast<int64_t>(bytes / (pairs * 2 * 8 * 4));
  std::vector<store::TensorData> ts;
  Rng rng(static_cast<uint64_t>(seed) + 11);
  for (int m = 0; m < pairs; ++m)
    for (const char* ab : {"lora_A", "lora_B"}) {
      store::TensorData t;
      t.name = "layers." + std::to_string(m) + "." + ab + ".weight";
      t.shape = ab[5] == 'A' ? std::vector<int64_t>{8, n} : std::vector<int64_t>{n, 8};
      std::vector<float> v(static_cast<size_t>(8 * n));
      for (float& x : v) x = rng.normal();
      t.bytes.assign(reinterpret_cast<const char*>(v.data()), v.size() * 4);
      ts.push_back(std::move(t));
    }
  return ts;
}

// The transport alone: the same server over adapters held in memory (the
// store's Get replaced by a copy), so the run shows what gRPC itself costs.
class MemoryLibrary : public store::LibraryApi {
 public:
  std::map<std::string, std::pair<AdapterRecord, std::vector<store::TensorData>>> items;
  store::Status Put(const AdapterRecord&, const std::vector<store::TensorData>&,
                    AdapterRecord*) override {
    return store::Status::InvalidArgument("read-only");
  }
  store::Status Get(const std::string& key, AdapterRecord* r,
                    std::vector<store::TensorData>* ts) override {
    auto it = items.find(key);
    if (it == items.end()) return store::Status::NotFound(key);
    *r = it->second.first;
    if (ts) *ts = it->second.second;
    return store::Status::OK();
  }
  store::Status List(const store::ListFilter&, int, const std::string&, store::ListPage*) override {
    return store::Status::OK();
  }
  store::Status Delete(const std::string&) override { return store::Status::OK(); }
  store::Status Verify(int64_t*) override { return store::Status::OK(); }
  store::Status Search(const std::string&, const std::vector<float>&, int, const store::ListFilter&,
                       std::vector<store::SearchHit>*) override {
    return store::Status::OK();
  }
  store::Status Gc(int64_t*) override { return store::Status::OK(); }
  store::Status Stat(store::LibraryStats*) override { return store::Status::OK(); }
  store::Status AddSignatures(const std::string&, const std::vector<Signature>&,
                              AdapterRecord*) override {
    return store::Status::InvalidArgument("read-only");
  }
};

struct Load {
  std::vector<double> lat_ms;
  double seconds = 0;
  int64_t errors = 0;
  std::string first_error;
};

// `clients` threads calling `get(thread, key)` for `seconds` after a warm-up.
template <typename MakeGet>
Load run_load(int clients, double seconds, int keys, MakeGet make_get) {
  std::vector<std::vector<double>> lat(clients);
  std::atomic<int64_t> errors{0};
  std::string first_error;
  std::mutex mu;
  std::atomic<bool> go{false}, stop{false};
  std::vector<std::thread> th;
  for (int c = 0; c < clients; ++c)
    th.emplace_back([&, c] {
      auto get = make_get(c);
      Rng rng(static_cast<uint64_t>(c) + 1);
      const auto warm_end = Clock::now() + std::chrono::milliseconds(300);
      // Warm-up: failures show in the measured loop that follows.
      while (Clock::now() < warm_end) (void)get(static_cast<int>(rng.next_u64() % keys));
      while (!go) std::this_thread::yield();
      while (!stop) {
        const int k = static_cast<int>(rng.next_u64() % keys);
        const auto t0 = Clock::now();
        store::Status s = get(k);
        lat[c].push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
        if (!s.ok()) {
          ++errors;
          std::lock_guard<std::mutex> l(mu);
          if (first_error.empty()) first_error = s.ToString();
        }
      }
    });
  std::this_thread::sleep_for(std::chrono::milliseconds(400));
  const auto t0 = Clock::now();
  go = true;
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  stop = true;
  for (auto& t : th) t.join();
  Load out;
  out.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  for (auto& l : lat) out.lat_ms.insert(out.lat_ms.end(), l.begin(), l.end());
  out.errors = errors;
  out.first_error = first_error;
  return out;
}

double pct(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size())))];
}

void emit(const std::string& impl, size_t bytes, int clients, const Load& l) {
  const double n = static_cast<double>(l.lat_ms.size());
  bench::json j = {{"bench", "serve"},
                   {"impl", impl},
                   {"op", "get"},
                   {"value_bytes", bytes},
                   {"clients", clients},
                   {"requests", l.lat_ms.size()},
                   {"req_per_s", n / l.seconds},
                   {"mb_per_s", n * static_cast<double>(bytes) / l.seconds / 1e6},
                   {"p50_ms", pct(l.lat_ms, 0.50)},
                   {"p99_ms", pct(l.lat_ms, 0.99)},
                   {"p999_ms", pct(l.lat_ms, 0.999)},
                   {"errors", l.errors}};
  if (!l.first_error.empty()) j["first_error"] = l.first_error;
  bench::emit(j);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"gRPC lookup API: Get latency under concurrent clients, vs the embedded store"};
  int clients = 8, adapters = 64;
  double seconds = 3;
  bool skip_baseline = false;
  app.add_flag("--skip-baseline", skip_baseline, "Only the gRPC runs (for profiling)");
  app.add_option("--clients", clients)->capture_default_str();
  app.add_option("--seconds", seconds, "Measured time per configuration")->capture_default_str();
  app.add_option("--adapters", adapters, "Adapters per size (keys drawn at random)")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  const fs::path dir = fs::temp_directory_path() / ("serve_bench_" + std::to_string(getpid()));
  const std::vector<size_t> sizes = {size_t(256) << 10, size_t(4) << 10};
  auto key = [](size_t bytes, int k) {
    return "a" + std::to_string(bytes) + "_" + std::to_string(k);
  };
  // Fill the library, then the baseline: the embedded store from N threads.
  {
    std::unique_ptr<store::Library> lib;
    store::Options o;
    o.sync = false;
    store::Status s = store::Library::Open(o, dir.string(), &lib);
    if (!s.ok()) return std::fprintf(stderr, "%s\n", s.ToString().c_str()), 1;
    for (size_t bytes : sizes)
      for (int k = 0; k < adapters; ++k) {
        AdapterRecord r;
        r.set_name(key(bytes, k));
        r.set_kind("lora");
        s = lib->Put(r, adapter(k + static_cast<int>(bytes), bytes), nullptr);
        if (!s.ok()) return std::fprintf(stderr, "%s\n", s.ToString().c_str()), 1;
      }
    for (size_t bytes : skip_baseline ? std::vector<size_t>{} : sizes)
      for (int n : {1, clients})
        emit("embedded_library", bytes, n, run_load(n, seconds, adapters, [&](int) {
               return [&, bytes](int k) {
                 AdapterRecord r;
                 std::vector<store::TensorData> ts;
                 return lib->Get(key(bytes, k), &r, &ts);
               };
             }));
  }
  // The server in a child process (forked before this process touches gRPC).
  int to_parent[2], to_child[2];
  if (pipe(to_parent) != 0 || pipe(to_child) != 0) return 1;
  const pid_t pid = fork();
  if (pid == 0) {
    close(to_parent[0]);
    close(to_child[1]);
    std::unique_ptr<store::Library> lib;
    if (!store::Library::Open(store::Options(), dir.string(), &lib).ok()) _exit(1);
    MemoryLibrary mem;
    for (size_t bytes : sizes)
      for (int k = 0; k < adapters; ++k) {
        auto& item = mem.items[key(bytes, k)];
        if (!lib->Get(key(bytes, k), &item.first, &item.second).ok()) _exit(1);
      }
    store::ServerOptions so;
    so.token = kToken;
    std::unique_ptr<store::Server> server, mem_server;
    store::Status s = store::Server::Start(lib.get(), so, &server);
    if (s.ok()) s = store::Server::Start(&mem, so, &mem_server);
    int ports[2] = {s.ok() ? server->port() : 0, s.ok() ? mem_server->port() : 0};
    if (write(to_parent[1], ports, sizeof ports) != sizeof ports) _exit(1);
    char c;
    while (read(to_child[0], &c, 1) > 0) {
    }
    server->Shutdown(1000);
    mem_server->Shutdown(1000);
    _exit(0);
  }
  close(to_parent[1]);
  close(to_child[0]);
  int ports[2] = {0, 0};
  if (read(to_parent[0], ports, sizeof ports) != sizeof ports || ports[0] == 0) {
    std::fprintf(stderr, "the server did not start\n");
    return 1;
  }
  for (size_t bytes : sizes)
    for (int n : {1, clients})
      for (int which : {0, 1}) {
        const int port = ports[which];
        std::vector<std::unique_ptr<store::RemoteLibrary>> conns(n);
        for (auto& c : conns) {
          store::ClientOptions co;
          co.target = "127.0.0.1:" + std::to_string(port);
          co.token = kToken;
          store::Status s = store::RemoteLibrary::Connect(co, &c);
          if (!s.ok()) return std::fprintf(stderr, "%s\n", s.ToString().c_str()), 1;
        }
        emit(which == 0 ? "grpc_library" : "grpc_memory", bytes, n,
             run_load(n, seconds, adapters, [&](int c) {
               return [&, c, bytes](int k) {
                 AdapterRecord r;
                 std::vector<store::TensorData> ts;
                 return conns[c]->Get(key(bytes, k), &r, &ts);
               };
             }));
      }
  close(to_child[1]);
  int status = 0;
  waitpid(pid, &status, 0);
  fs::remove_all(dir);
  return 0;
}
