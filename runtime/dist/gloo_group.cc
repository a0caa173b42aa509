// The Gloo backend: Gloo's TCP transport and its own collective algorithms.
// Ranks meet through a rendezvous store (gloo_stores.h: a shared folder,
// Redis, or MPI under mpirun); sub-groups from split() meet through the
// parent group itself (gloo_stores.h: SplitStore). A failed call names the peers that are
// gone (liveness.h).
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
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <map>
#include <thread>

#include "runtime/dist/gloo_stores.h"
#include "runtime/dist/liveness.h"
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
    case DType::F32:
      return f(float{});
    case DType::F64:
      return f(double{});
    case DType::I32:
      return f(int32_t{});
    case DType::I64:
      return f(int64_t{});
    case DType::U8:
      return f(uint8_t{});
    default:  // refused by check_dtype before any call gets here
      throw Error(str("gloo: dtype ", dtype_name(d), " is not one collectives take"));
  }
}

class GlooGroup final : public ProcessGroup {
 public:
  // A sub-group (split()): meets through `store` on the parent's device;
  // `alive` holds the members' liveness addresses in sub-group rank order.
  GlooGroup(int rank, int size, std::shared_ptr<gloo::transport::Device> device,
            std::shared_ptr<Liveness> liveness, std::vector<std::string> alive,
            gloo::rendezvous::Store& store, std::chrono::milliseconds timeout)
      : rank_(rank),
        size_(size),
        device_(std::move(device)),
        liveness_(std::move(liveness)),
        alive_address_(std::move(alive)) {
    auto ctx = std::make_shared<gloo::rendezvous::Context>(rank, size);
    ctx->setTimeout(timeout);
    ctx->connectFullMesh(store, device_);
    ctx_ = ctx;
  }

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
      base_store_ = make_mpi_store(o.timeout);
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
      liveness_ = std::make_shared<Liveness>(attr.hostname);
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
    check_dtype(dtype, "allgatherv", o);
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
    check_dtype(dtype, "gather", o);
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
    check_dtype(dtype, "scatter", o);
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

  std::unique_ptr<ProcessGroup> split(int color, int key, const CallOptions& o) override {
    const SplitPlan plan = plan_split(color, key, o);
    SplitStore store(*this, color, o);
    std::unique_ptr<ProcessGroup> sub;
    guarded("split", o, [&] {
      if (plan.rank >= 0) {
        std::vector<std::string> alive;
        for (int r : plan.members) alive.push_back(alive_address_.at(static_cast<size_t>(r)));
        sub = std::make_unique<GlooGroup>(plan.rank, static_cast<int>(plan.members.size()), device_,
                                          liveness_, std::move(alive), store, o.timeout);
      } else {  // the meeting of a group of one, only for its rounds
        GlooGroup(0, 1, device_, liveness_, {alive_address_.at(static_cast<size_t>(rank_))}, store,
                  o.timeout);
      }
    });
    return sub;
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
  std::shared_ptr<Liveness> liveness_;      // shared with sub-groups
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
