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
#include <unistd.h>

#include <cstring>
#include <filesystem>

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
      base_store_ = std::make_unique<gloo::rendezvous::FileStore>(dir);
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
      try {
        base_store_ = std::make_unique<gloo::rendezvous::RedisStore>(hp.substr(0, colon), port);
      } catch (const std::exception& e) {
        throw Error(str("gloo rendezvous '", r, "': ", e.what()));
      }
    } else {
      throw Error(
          str("gloo rendezvous '", r, "': expected file:///shared/folder or redis://host:port"));
    }
    store_ = std::make_unique<gloo::rendezvous::PrefixStore>(o.prefix, *base_store_);
    gloo::transport::tcp::attr attr;
    attr.hostname = o.interface_host;
    if (attr.hostname.empty()) {
      char host[256] = {0};
      gethostname(host, sizeof host - 1);
      attr.hostname = host;
    }
    try {
      device_ = gloo::transport::tcp::CreateDevice(attr);
      auto ctx = std::make_shared<gloo::rendezvous::Context>(rank, size);
      ctx->setTimeout(o.timeout);
      ctx->connectFullMesh(*store_, device_);
      ctx_ = ctx;
    } catch (const std::exception& e) {
      throw Error(str("gloo: rank ", rank, " of ", size, " could not connect through '", r,
                      "' within ", o.timeout.count(), " ms: ", e.what()));
    }
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return "gloo"; }

  void allreduce(void* data, size_t count, DType dtype, ReduceOp op,
                 const CallOptions& o) override {
    const bool floating = dtype == DType::kF32 || dtype == DType::kF64;
    if (op == ReduceOp::kMean && !floating)
      throw Error(where("allreduce", o) + ": mean needs a floating type, not " + dtype_name(dtype));
    if (count == 0 || size_ == 1) return;
    guarded("allreduce", o, [&] {
      with_type(dtype, [&](auto t) {
        using T = decltype(t);
        gloo::AllreduceOptions opts(ctx_);
        opts.setOutput(static_cast<T*>(data), count);
        opts.setReduceFunction(reduce_fn<T>(op));
        opts.setTag(o.tag);
        opts.setTimeout(o.timeout);
        gloo::allreduce(opts);
        if (op == ReduceOp::kMean) {
          if constexpr (std::is_floating_point_v<T>) {
            T* p = static_cast<T*>(data);
            const T inv = T(1) / static_cast<T>(size_);
            for (size_t i = 0; i < count; ++i) p[i] *= inv;
          }
        }
      });
    });
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
      throw Error(where(op, o) + " failed: " + e.what());
    }
  }

  int rank_, size_;
  std::unique_ptr<gloo::rendezvous::Store> base_store_, store_;
  std::shared_ptr<gloo::transport::Device> device_;
  std::shared_ptr<gloo::Context> ctx_;
};

}  // namespace

std::unique_ptr<ProcessGroup> make_gloo(int rank, int size, const GlooOptions& o) {
  return std::make_unique<GlooGroup>(rank, size, o);
}

}  // namespace tessera::dist
