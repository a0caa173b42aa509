// The Gloo backend: Gloo's TCP transport, rendezvous through its FileStore
// (a shared folder) or RedisStore, Gloo's own collective algorithms.
#include <gloo/allgatherv.h>
#include <gloo/allreduce.h>
#include <gloo/barrier.h>
#include <gloo/broadcast.h>
#include <gloo/gather.h>
#include <gloo/math.h>
#include <gloo/rendezvous/context.h>
#include <gloo/rendezvous/file_store.h>
#include <gloo/rendezvous/prefix_store.h>
#include <gloo/rendezvous/redis_store.h>
#include <gloo/scatter.h>
#include <gloo/transport/tcp/device.h>
#include <mpi.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <map>
#include <thread>

#include "runtime/dist/process_group.h"

namespace tessera::dist {

namespace {

using ReduceFn = void (*)(void*, const void*, const void*, size_t);

template <typename T>
ReduceFn reduce_fn(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
    case ReduceOp::kMean:
      return &gloo::sum<T>;
    case ReduceOp::kMax:
      return &gloo::max<T>;
    case ReduceOp::kMin:
      return &gloo::min<T>;
  }
  return nullptr;
}

// Calls f(T{}) with T the C++ type of `d`.
template <typename F>
void with_type(DType d, F&& f) {
  switch (d) {
    case DType::kF32:
      return f(float{});
    case DType::kF64:
      return f(double{});
    case DType::kI32:
      return f(int32_t{});
    case DType::kI64:
      return f(int64_t{});
    case DType::kU8:
      return f(uint8_t{});
  }
}

// Gloo's rendezvous Store over MPI, for Gloo launched by mpirun (Debian's
// Gloo is built without its own MPI support): rank 0 keeps the keys in a
// service thread; every rank's set/get/wait is a request to it on a
// communicator of its own. A get or wait is answered once the key is set, or
// fails at the timeout naming the key. The store lives only while Gloo
// connects; each rank says goodbye and rank 0's service ends when all have.
class MpiStore final : public gloo::rendezvous::Store {
 public:
  explicit MpiStore(std::chrono::milliseconds timeout)
      : mpi_(make_mpi()), timeout_(timeout) {  // make_mpi initialises MPI
    MPI_Comm_dup(MPI_COMM_WORLD, &comm_);
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
    if (rank_ == 0) service_ = std::thread([this] { Serve(); });
  }
  ~MpiStore() override {
    try {
      Request(kBye, "", {});
    } catch (const std::exception&) {
    }
    if (service_.joinable()) service_.join();
    MPI_Comm_free(&comm_);
  }
  void set(const std::string& key, const std::vector<char>& data) override {
    Request(kSet, key, data);
  }
  std::vector<char> get(const std::string& key) override { return Request(kGet, key, {}); }
  void wait(const std::vector<std::string>& keys) override {
    for (const auto& k : keys) Request(kWait, k, {});
  }
  void wait(const std::vector<std::string>& keys, const std::chrono::milliseconds&) override {
    wait(keys);
  }

 private:
  enum Op : char { kSet = 'S', kGet = 'G', kWait = 'W', kBye = 'B' };
  static constexpr int kAsk = 1, kAnswer = 2;

  // Sends one request to rank 0 and waits for its answer (polled, so the
  // timeout holds even when rank 0 is gone).
  std::vector<char> Request(Op op, const std::string& key, const std::vector<char>& data) {
    std::string msg(1, static_cast<char>(op));
    const uint32_t kl = static_cast<uint32_t>(key.size());
    msg.append(reinterpret_cast<const char*>(&kl), 4).append(key).append(data.data(), data.size());
    MPI_Request sreq;
    MPI_Isend(msg.data(), static_cast<int>(msg.size()), MPI_BYTE, 0, kAsk, comm_, &sreq);
    const auto deadline = std::chrono::steady_clock::now() + timeout_;
    Poll(&sreq, deadline, key);
    // The answer: its size first (probe), then the bytes.
    MPI_Status st;
    for (int flag = 0;;) {
      MPI_Iprobe(0, kAnswer, comm_, &flag, &st);
      if (flag) break;
      if (std::chrono::steady_clock::now() > deadline)
        throw Error(str("gloo rendezvous over MPI: no answer for key '", key,
                        "' from rank 0 within ", timeout_.count(), " ms"));
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    int n = 0;
    MPI_Get_count(&st, MPI_BYTE, &n);
    std::vector<char> out(static_cast<size_t>(n));
    MPI_Recv(out.data(), n, MPI_BYTE, 0, kAnswer, comm_, MPI_STATUS_IGNORE);
    return out;
  }

  void Poll(MPI_Request* req, std::chrono::steady_clock::time_point deadline,
            const std::string& key) {
    for (int done = 0;;) {
      MPI_Test(req, &done, MPI_STATUS_IGNORE);
      if (done) return;
      if (std::chrono::steady_clock::now() > deadline)
        throw Error(str("gloo rendezvous over MPI: rank 0 did not take the request for key '", key,
                        "' within ", timeout_.count(), " ms"));
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  }

  // Rank 0's service: answers set/get/wait until every rank said goodbye (or
  // the timeout passed since the last request).
  void Serve() {
    std::map<std::string, std::vector<char>> kv;
    std::vector<std::pair<int, std::string>> waiting;  // (rank, key) of unanswered get/wait
    std::vector<std::pair<int, Op>> waiting_op;
    std::vector<std::unique_ptr<std::vector<char>>> sent;
    std::vector<MPI_Request> sends;
    int byes = 0;
    auto last = std::chrono::steady_clock::now();
    auto answer = [&](int to, std::vector<char> bytes) {
      sent.push_back(std::make_unique<std::vector<char>>(std::move(bytes)));
      MPI_Request r;
      MPI_Isend(sent.back()->data(), static_cast<int>(sent.back()->size()), MPI_BYTE, to, kAnswer,
                comm_, &r);
      sends.push_back(r);
    };
    while (byes < size_ && std::chrono::steady_clock::now() - last < timeout_) {
      int flag = 0;
      MPI_Status st;
      MPI_Iprobe(MPI_ANY_SOURCE, kAsk, comm_, &flag, &st);
      if (!flag) {
        std::this_thread::sleep_for(std::chrono::microseconds(200));
        continue;
      }
      last = std::chrono::steady_clock::now();
      int n = 0;
      MPI_Get_count(&st, MPI_BYTE, &n);
      std::vector<char> msg(static_cast<size_t>(n));
      MPI_Recv(msg.data(), n, MPI_BYTE, st.MPI_SOURCE, kAsk, comm_, MPI_STATUS_IGNORE);
      if (n < 5) continue;  // not a request of ours
      const Op op = static_cast<Op>(msg[0]);
      uint32_t kl = 0;
      std::memcpy(&kl, msg.data() + 1, 4);
      if (5 + static_cast<size_t>(kl) > msg.size()) continue;
      const std::string key(msg.data() + 5, kl);
      if (op == kSet) {
        kv[key].assign(msg.begin() + 5 + kl, msg.end());
        answer(st.MPI_SOURCE, {});
        for (size_t i = 0; i < waiting.size();) {
          if (waiting[i].second == key) {
            answer(waiting[i].first, waiting_op[i].second == kGet ? kv[key] : std::vector<char>{});
            waiting.erase(waiting.begin() + static_cast<long>(i));
            waiting_op.erase(waiting_op.begin() + static_cast<long>(i));
          } else {
            ++i;
          }
        }
      } else if (op == kGet || op == kWait) {
        auto it = kv.find(key);
        if (it != kv.end()) {
          answer(st.MPI_SOURCE, op == kGet ? it->second : std::vector<char>{});
        } else {
          waiting.emplace_back(st.MPI_SOURCE, key);
          waiting_op.emplace_back(st.MPI_SOURCE, op);
        }
      } else if (op == kBye) {
        ++byes;
        answer(st.MPI_SOURCE, {});
      }
    }
    MPI_Waitall(static_cast<int>(sends.size()), sends.data(), MPI_STATUSES_IGNORE);
  }

  std::unique_ptr<ProcessGroup> mpi_;
  std::chrono::milliseconds timeout_;
  MPI_Comm comm_;
  int rank_ = 0, size_ = 1;
  std::thread service_;
};

// A TCP connection to host:port within `ms`: 1 made, 0 refused or timed out,
// -1 the name does not resolve.
int try_connect(const std::string& host, const std::string& port, int ms) {
  addrinfo hints{}, *res = nullptr;
  hints.ai_socktype = SOCK_STREAM;
  if (getaddrinfo(host.c_str(), port.c_str(), &hints, &res) != 0 || !res) return -1;
  const int fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  bool made = false;
  if (fd >= 0) {
    const int rc = connect(fd, res->ai_addr, res->ai_addrlen);
    if (rc == 0) {
      made = true;
    } else if (errno == EINPROGRESS) {
      pollfd p{fd, POLLOUT, 0};
      if (poll(&p, 1, ms) > 0) {
        int err = 0;
        socklen_t l = sizeof err;
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &l);
        made = err == 0;
      }
    }
    close(fd);
  }
  freeaddrinfo(res);
  return made ? 1 : 0;
}

// A tiny TCP listener per rank whose only job is to be there: when a
// collective fails, a rank connects to each peer's listener to tell the
// ranks that are gone (connection refused or no answer) from those alive.
class Liveness {
 public:
  explicit Liveness(const std::string& host) {
    addrinfo hints{}, *res = nullptr;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    if (getaddrinfo(host.c_str(), "0", &hints, &res) != 0 || !res) return;
    fd_ = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd_ >= 0 && (bind(fd_, res->ai_addr, res->ai_addrlen) != 0 || listen(fd_, 64) != 0)) {
      close(fd_);
      fd_ = -1;
    }
    freeaddrinfo(res);
    if (fd_ < 0) return;
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    getsockname(fd_, reinterpret_cast<sockaddr*>(&ss), &len);
    const int port =
        ntohs(ss.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port
                                       : reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
    address_ = host + " " + std::to_string(port);
    thread_ = std::thread([this] {
      while (!stop_) {
        pollfd p{fd_, POLLIN, 0};
        if (poll(&p, 1, 100) > 0) {
          const int c = accept(fd_, nullptr, nullptr);
          if (c >= 0) close(c);
        }
      }
    });
  }
  ~Liveness() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
    if (fd_ >= 0) close(fd_);
  }
  const std::string& address() const { return address_; }  // "host port"; "" if none

  // Whether something listens at `address` ("host port"), within `ms`.
  static bool Alive(const std::string& address, int ms) {
    const auto sp = address.rfind(' ');
    if (sp == std::string::npos) return true;  // unknown: do not accuse it
    // Unresolvable: unknown too.
    return try_connect(address.substr(0, sp), address.substr(sp + 1), ms) != 0;
  }

 private:
  int fd_ = -1;
  std::string address_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

// Gloo's FileStore, with its key check public. Its files outlive the job:
// the next job in the folder finds them.
class FileStore final : public gloo::rendezvous::FileStore {
 public:
  using gloo::rendezvous::FileStore::FileStore;
  bool has(const std::string& key) { return check({key}); }
};

class GlooGroup final : public ProcessGroup {
 public:
  GlooGroup(int rank, int size, const GlooOptions& o) : rank_(rank), size_(size) {
    if (size < 1) throw Error(str("gloo: world size ", size, " (expected at least 1)"));
    if (rank < 0 || rank >= size) throw Error(str("gloo: rank ", rank, " of a world of ", size));
    const std::string& r = o.rendezvous;
    if (r.rfind("file://", 0) == 0) {
      const std::string dir = r.substr(7);
      std::error_code ec;
      std::filesystem::create_directories(dir, ec);
      if (ec || !std::filesystem::is_directory(dir))
        throw Error(str("gloo rendezvous '", r, "': cannot use folder '", dir, "'"));
      auto fstore = std::make_unique<FileStore>(dir);
      refuse_stale(*fstore, dir, o.prefix, size, r);
      base_store_ = std::move(fstore);
    } else if (r.rfind("redis://", 0) == 0) {
      const std::string hp = r.substr(8);
      const auto colon = hp.rfind(':');
      int port = 6379;
      if (colon != std::string::npos) {
        try {
          port = std::stoi(hp.substr(colon + 1));
        } catch (const std::exception&) {
          throw Error(str("gloo rendezvous '", r, "': expected redis://HOST:PORT"));
        }
      }
      // Checked first: Gloo's RedisStore throws without freeing its hiredis
      // context when the server is not there, and says less.
      const int reach = try_connect(hp.substr(0, colon), std::to_string(port),
                                    static_cast<int>(std::min<int64_t>(o.timeout.count(), 10000)));
      if (reach != 1)
        throw Error(str("gloo rendezvous '", r, "': ",
                        reach < 0 ? "the host name does not resolve"
                                  : "no Redis server answers there (redis-server running?)"));
      try {
        base_store_ = std::make_unique<gloo::rendezvous::RedisStore>(hp.substr(0, colon), port);
      } catch (const std::exception& e) {
        throw Error(str("gloo rendezvous '", r, "': ", e.what()));
      }
    } else if (r == "mpi://") {
      base_store_ = std::make_unique<MpiStore>(o.timeout);
    } else {
      throw Error(str("gloo rendezvous '", r,
                      "': expected file:///shared/folder, redis://host:port or mpi:// (under "
                      "mpirun)"));
    }
    store_ = std::make_unique<gloo::rendezvous::PrefixStore>(o.prefix, *base_store_);
    gloo::transport::tcp::attr attr;
    attr.hostname = o.interface_host;
    if (attr.hostname.empty()) {
      char host[256] = {0};
      gethostname(host, sizeof host - 1);
      attr.hostname = host;
    }
    const auto t0 = std::chrono::steady_clock::now();
    try {
      device_ = gloo::transport::tcp::CreateDevice(attr);
      liveness_ = std::make_unique<Liveness>(attr.hostname);
      const std::string me = liveness_->address();
      store_->set("alive/" + std::to_string(rank), std::vector<char>(me.begin(), me.end()));
      auto ctx = std::make_shared<gloo::rendezvous::Context>(rank, size);
      ctx->setTimeout(o.timeout);
      ctx->connectFullMesh(*store_, device_);
      ctx_ = ctx;
      for (int r = 0; r < size; ++r) {
        const std::vector<char> a = store_->get("alive/" + std::to_string(r));
        alive_address_.emplace_back(a.begin(), a.end());
      }
      // A file store's files would make the next job in the folder fail:
      // once every rank has read every entry (the barrier), each removes
      // the files it wrote, so a successful meeting leaves the folder empty.
      if (auto* fstore = dynamic_cast<FileStore*>(base_store_.get())) {
        gloo::BarrierOptions bo(ctx_);
        bo.setTimeout(o.timeout);
        gloo::barrier(bo);
        for (const std::string& f : fstore->getAllKeyFilePaths()) {
          std::error_code ec;
          std::filesystem::remove(f, ec);
        }
      }
      // The store is only for meeting; an MPI store ends its service here.
      store_.reset();
      base_store_.reset();
    } catch (const std::exception& e) {
      // Say how long it took: an error at once is not a timeout.
      const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                          std::chrono::steady_clock::now() - t0)
                          .count();
      const std::string what = e.what();
      throw Error(str("gloo: rank ", rank, " of ", size, " could not connect through '", r,
                      "' (failed after ", ms, " ms; the limit is ", o.timeout.count(),
                      " ms): ", what,
                      what.find("already exists") != std::string::npos
                          ? " — the rendezvous store holds another job's entries: give each job "
                            "an empty folder (or its own TESSERA_JOB_ID)"
                          : ""));
    }
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return "gloo"; }

  // A reused rendezvous folder: every key is set once per job, so a rank's
  // liveness entry whose process no longer answers is an earlier job's.
  // Gloo would fail on the first key it finds taken ("File already exists")
  // once the mesh is half made; this says so at once and names the folder.
  static void refuse_stale(FileStore& fs, const std::string& dir, const std::string& prefix,
                           int size, const std::string& r) {
    std::vector<int> stale;
    for (int q = 0; q < size; ++q) {
      const std::string key = prefix + "/alive/" + std::to_string(q);
      if (!fs.has(key)) continue;
      const std::vector<char> a = fs.get(key);
      if (!Liveness::Alive(std::string(a.begin(), a.end()), 1000)) stale.push_back(q);
    }
    if (stale.empty()) return;
    std::string ranks;
    for (int q : stale) ranks += (ranks.empty() ? "" : ", ") + std::to_string(q);
    throw Error(str("gloo rendezvous '", r, "': the folder holds an earlier job's files (rank ",
                    ranks,
                    " of it no longer runs). Gloo's FileStore keeps its files after a "
                    "job: empty the folder before reusing it (rm -f ",
                    dir,
                    "/*, on every rank's view of it), give each job a new folder, or set "
                    "TESSERA_JOB_ID to a new value for each job"));
  }

  void allreduce(void* data, size_t count, DType dtype, ReduceOp op,
                 const CallOptions& o) override {
    check_reduce(dtype, op, "allreduce", o);
    if (count == 0 || size_ == 1) return;  // (a mean over one rank is the value)
    guarded("allreduce", o, [&] {
      with_type(dtype, [&](auto t) {
        using T = decltype(t);
        gloo::AllreduceOptions opts(ctx_);
        opts.setOutput(static_cast<T*>(data), count);
        opts.setReduceFunction(reduce_fn<T>(op));
        opts.setTag(o.tag);
        opts.setTimeout(o.timeout);
        gloo::allreduce(opts);
      });
    });
    finish_mean(data, count, dtype, op);
  }

  void broadcast(void* data, size_t bytes, int root, const CallOptions& o) override {
    check_rank(root, "broadcast", "root");
    if (bytes == 0 || size_ == 1) return;
    guarded("broadcast", o, [&] {
      gloo::BroadcastOptions opts(ctx_);
      opts.setOutput(static_cast<uint8_t*>(data), bytes);
      opts.setRoot(root);
      opts.setTag(o.tag);
      opts.setTimeout(o.timeout);
      gloo::broadcast(opts);
    });
  }

  void allgatherv(const void* in, void* out, const std::vector<size_t>& counts, DType dtype,
                  const CallOptions& o) override {
    if (counts.size() != static_cast<size_t>(size_))
      throw Error(where("allgatherv", o) + ": " + std::to_string(counts.size()) +
                  " counts for a world of " + std::to_string(size_));
    size_t total = 0;
    for (size_t c : counts) total += c;
    const size_t es = dtype_size(dtype);
    if (size_ == 1) {
      if (total > 0 && in != out) std::memmove(out, in, total * es);
      return;
    }
    if (total == 0) return;
    guarded("allgatherv", o, [&] {
      // In place: this rank's block goes where the output holds it, and
      // Gloo (given no input) sends it from there.
      size_t mine = 0;
      for (int r = 0; r < rank_; ++r) mine += counts[r];
      if (counts[rank_] > 0)
        std::memmove(static_cast<char*>(out) + mine * es, in, counts[rank_] * es);
      with_type(dtype, [&](auto t) {
        using T = decltype(t);
        gloo::AllgathervOptions opts(ctx_);
        opts.setOutput(static_cast<T*>(out), counts);
        opts.setTag(o.tag);
        opts.setTimeout(o.timeout);
        gloo::allgatherv(opts);
      });
    });
  }

  void gather(const void* in, void* out, size_t count, DType dtype, int root,
              const CallOptions& o) override {
    check_rank(root, "gather", "root");
    const size_t es = dtype_size(dtype);
    if (size_ == 1 || count == 0) {
      if (count > 0 && in != out) std::memmove(out, in, count * es);
      return;
    }
    guarded("gather", o, [&] {
      gloo::GatherOptions opts(ctx_);
      opts.setInput(static_cast<uint8_t*>(const_cast<void*>(in)), count * es);
      if (rank_ == root) opts.setOutput(static_cast<uint8_t*>(out), count * es * size_);
      opts.setRoot(root);
      opts.setTag(o.tag);
      opts.setTimeout(o.timeout);
      gloo::gather(opts);
    });
  }

  void scatter(const void* in, void* out, size_t count, DType dtype, int root,
               const CallOptions& o) override {
    check_rank(root, "scatter", "root");
    const size_t es = dtype_size(dtype);
    if (size_ == 1 || count == 0) {
      if (count > 0 && in != out) std::memmove(out, in, count * es);
      return;
    }
    guarded("scatter", o, [&] {
      gloo::ScatterOptions opts(ctx_);
      std::vector<uint8_t*> blocks;
      if (rank_ == root) {
        for (int r = 0; r < size_; ++r)
          blocks.push_back(static_cast<uint8_t*>(const_cast<void*>(in)) + r * count * es);
        opts.setInputs(blocks, count * es);
      }
      opts.setOutput(static_cast<uint8_t*>(out), count * es);
      opts.setRoot(root);
      opts.setTag(o.tag);
      opts.setTimeout(o.timeout);
      gloo::scatter(opts);
    });
  }

  // Gloo has no reduce-scatter in its options API: an allreduce of a copy,
  // keeping this rank's block (twice the traffic of a ring reduce-scatter).
  void reduce_scatter(const void* in, void* out, size_t count, DType dtype, ReduceOp op,
                      const CallOptions& o) override {
    const size_t es = dtype_size(dtype);
    std::vector<char> all(static_cast<const char*>(in),
                          static_cast<const char*>(in) + count * es * size_);
    allreduce(all.data(), count * size_, dtype, op, o);
    if (count > 0) std::memcpy(out, all.data() + rank_ * count * es, count * es);
  }

  void barrier(const CallOptions& o) override {
    if (size_ == 1) return;
    guarded("barrier", o, [&] {
      gloo::BarrierOptions opts(ctx_);
      opts.setTag(o.tag);
      opts.setTimeout(o.timeout);
      gloo::barrier(opts);
    });
  }

  void send(const void* data, size_t bytes, int dst, const CallOptions& o) override {
    check_rank(dst, "send", "destination");
    if (dst == rank_) throw Error(where("send", o) + ": to itself");
    guarded("send", o, [&] {
      auto buf = ctx_->createUnboundBuffer(const_cast<void*>(data), bytes);
      buf->send(dst, o.tag);
      if (!buf->waitSend(o.timeout)) throw Error(str("to rank ", dst, ": aborted"));
    });
  }

  void recv(void* data, size_t bytes, int src, const CallOptions& o) override {
    check_rank(src, "recv", "source");
    if (src == rank_) throw Error(where("recv", o) + ": from itself");
    guarded("recv", o, [&] {
      auto buf = ctx_->createUnboundBuffer(data, bytes);
      buf->recv(src, o.tag);
      if (!buf->waitRecv(o.timeout)) throw Error(str("from rank ", src, ": aborted"));
    });
  }

 private:
  template <typename F>
  void guarded(const char* op, const CallOptions& o, F&& f) {
    try {
      f();
    } catch (const Error& e) {
      throw Error(where(op, o) + ": " + e.what());
    } catch (const std::exception& e) {
      throw Error(where(op, o) + " failed" + Culprit() + ": " + e.what());
    }
  }

  // " (rank 1 is gone)" / " (ranks 0, 1 are gone)": the peers whose
  // liveness listener no longer answers when a call fails.
  std::string Culprit() const {
    std::vector<int> gone;
    // A killed process's sockets close as it is torn down, maybe a moment
    // after the connection that failed: look a few times.
    for (int attempt = 0; attempt < 5 && gone.empty(); ++attempt) {
      if (attempt > 0) std::this_thread::sleep_for(std::chrono::milliseconds(100));
      for (int r = 0; r < size_; ++r)
        if (r != rank_ && r < static_cast<int>(alive_address_.size()) &&
            !Liveness::Alive(alive_address_[r], 300))
          gone.push_back(r);
    }
    if (gone.empty()) return "";
    std::string s = gone.size() == 1 ? " (rank " : " (ranks ";
    for (size_t i = 0; i < gone.size(); ++i) s += (i ? ", " : "") + std::to_string(gone[i]);
    return s + (gone.size() == 1 ? " is gone)" : " are gone)");
  }

  int rank_, size_;
  std::unique_ptr<gloo::rendezvous::Store> base_store_, store_;
  std::shared_ptr<gloo::transport::Device> device_;
  std::shared_ptr<gloo::Context> ctx_;
  std::unique_ptr<Liveness> liveness_;
  std::vector<std::string> alive_address_;  // rank → its liveness listener ("host port")
};

}  // namespace

std::unique_ptr<ProcessGroup> make_gloo(int rank, int size, const GlooOptions& o) {
  // A write to a peer that died must be an error (EPIPE, then a named
  // dist::Error), not SIGPIPE ending this rank silently.
  signal(SIGPIPE, SIG_IGN);
  return std::make_unique<GlooGroup>(rank, size, o);
}

}  // namespace tessera::dist
