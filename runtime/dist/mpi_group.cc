// The MPI backend: Open MPI (or any MPI-3 library), rank and size from
// MPI_COMM_WORLD, or from a sub-communicator of it (split()). Collectives are MPI's own blocking
// ones (its tuned algorithms; the non-blocking ones measured half as fast here). MPI cannot cancel
// a collective, so a watchdog enforces each call's timeout: a call still running at its deadline
// prints an error naming the operation and rank and aborts the job (MPI_Abort), so a hung peer
// never hangs it. (A peer that dies is noticed sooner: mpirun ends the job naming its rank.) Each
// tag gets its own duplicate of the group's communicator (the world's, or a sub-group's from
// split(): MPI_Comm_split) for collectives, so calls with different tags never match each other;
// send/recv use one point-to-point communicator (made with the group) with the tag as MPI's message
// tag, since two ranks alone cannot create a communicator.
#include <mpi.h>

#include <climits>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#include <thread>

#include "runtime/dist/process_group.h"

namespace tessera::dist {

namespace {

MPI_Datatype mpi_type(DType d) {
  switch (d) {
    case DType::F32:
      return MPI_FLOAT;
    case DType::F64:
      return MPI_DOUBLE;
    case DType::I32:
      return MPI_INT32_T;
    case DType::I64:
      return MPI_INT64_T;
    case DType::U8:
      return MPI_UINT8_T;
    default:  // refused by check_dtype before any call gets here
      throw Error(str("mpi: dtype ", dtype_name(d), " is not one collectives take"));
  }
  return MPI_BYTE;
}

MPI_Op mpi_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
    case ReduceOp::kMean:
      return MPI_SUM;
    case ReduceOp::kMax:
      return MPI_MAX;
    case ReduceOp::kMin:
      return MPI_MIN;
  }
  return MPI_SUM;
}

// MPI is initialised once per process (with the thread level tessera needs:
// gradient buckets are reduced from a communication thread) and finalised
// at exit unless someone else initialised it.
struct MpiRuntime {
  bool owned = false;
  int level = 0;
  // Below MPI_THREAD_MULTIPLE, one MPI call at a time in the whole process
  // (every group, its sub-groups and their communicators share it).
  std::mutex serial;
  MpiRuntime() {
    int inited = 0;
    MPI_Initialized(&inited);
    if (inited) {
      MPI_Query_thread(&level);
    } else {
      MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &level);
      owned = true;
    }
    if (level < MPI_THREAD_SERIALIZED)
      throw Error(str("mpi: the MPI library grants thread level ", level,
                      "; tessera needs MPI_THREAD_SERIALIZED (", MPI_THREAD_SERIALIZED,
                      ") or better"));
  }
  ~MpiRuntime() {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (owned && !finalized) MPI_Finalize();
  }
};

MpiRuntime& runtime() {
  static MpiRuntime rt;
  return rt;
}

class MpiGroup final : public ProcessGroup {
 public:
  // `base`: MPI_COMM_WORLD, or a communicator from MPI_Comm_split that this
  // group then owns and frees.
  explicit MpiGroup(MPI_Comm base = MPI_COMM_WORLD) : base_(base) {
    multiple_ = runtime().level >= MPI_THREAD_MULTIPLE;
    std::unique_lock<std::mutex> one_call = serialize();
    MPI_Comm_rank(base_, &rank_);
    MPI_Comm_size(base_, &size_);
    // Errors come back as codes, not as an abort of the whole job.
    MPI_Comm_set_errhandler(base_, MPI_ERRORS_RETURN);
    MPI_Comm_dup(base_, &p2p_);
    MPI_Comm_set_errhandler(p2p_, MPI_ERRORS_RETURN);
    // The tag bound is an attribute of the world (split communicators need
    // not carry it).
    MPI_Comm_get_attr(MPI_COMM_WORLD, MPI_TAG_UB, &tag_ub_, &has_tag_ub_);
  }
  ~MpiGroup() override {
    std::unique_lock<std::mutex> one_call = serialize();
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) {
      for (auto& [tag, c] : comms_) MPI_Comm_free(&c);
      MPI_Comm_free(&p2p_);
      if (base_ != MPI_COMM_WORLD) MPI_Comm_free(&base_);
    }
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return "mpi"; }
  bool concurrent_p2p() const override { return multiple_; }

  void allreduce(void* data, size_t count, DType dtype, ReduceOp op,
                 const CallOptions& o) override {
    check_reduce(dtype, op, "allreduce", o);
    if (count == 0) return;
    const int n = count_of(count, "allreduce", o);
    run("allreduce", o, [&](MPI_Comm c) {
      return MPI_Allreduce(MPI_IN_PLACE, data, n, mpi_type(dtype), mpi_op(op), c);
    });
    finish_mean(data, count, dtype, op);
  }

  void broadcast(void* data, size_t bytes, int root, const CallOptions& o) override {
    check_rank(root, "broadcast", "root");
    if (bytes == 0) return;
    const int n = count_of(bytes, "broadcast", o);
    run("broadcast", o, [&](MPI_Comm c) { return MPI_Bcast(data, n, MPI_BYTE, root, c); });
  }

  void allgatherv(const void* in, void* out, const std::vector<size_t>& counts, DType dtype,
                  const CallOptions& o) override {
    check_dtype(dtype, "allgatherv", o);
    if (counts.size() != static_cast<size_t>(size_))
      throw Error(where("allgatherv", o) + ": " + std::to_string(counts.size()) +
                  " counts for a world of " + std::to_string(size_));
    std::vector<int> cnt(counts.size()), disp(counts.size());
    size_t at = 0;
    for (size_t r = 0; r < counts.size(); ++r) {
      cnt[r] = count_of(counts[r], "allgatherv", o);
      disp[r] = count_of(at, "allgatherv", o);
      at += counts[r];
    }
    if (at == 0) return;
    run("allgatherv", o, [&](MPI_Comm c) {
      return MPI_Allgatherv(in, cnt[rank_], mpi_type(dtype), out, cnt.data(), disp.data(),
                            mpi_type(dtype), c);
    });
  }

  void gather(const void* in, void* out, size_t count, DType dtype, int root,
              const CallOptions& o) override {
    check_dtype(dtype, "gather", o);
    check_rank(root, "gather", "root");
    if (count == 0) return;
    const int n = count_of(count * static_cast<size_t>(size_), "gather", o) / size_;
    run("gather", o, [&](MPI_Comm c) {
      return MPI_Gather(in, n, mpi_type(dtype), out, n, mpi_type(dtype), root, c);
    });
  }

  void scatter(const void* in, void* out, size_t count, DType dtype, int root,
               const CallOptions& o) override {
    check_dtype(dtype, "scatter", o);
    check_rank(root, "scatter", "root");
    if (count == 0) return;
    const int n = count_of(count * static_cast<size_t>(size_), "scatter", o) / size_;
    run("scatter", o, [&](MPI_Comm c) {
      return MPI_Scatter(in, n, mpi_type(dtype), out, n, mpi_type(dtype), root, c);
    });
  }

  void reduce_scatter(const void* in, void* out, size_t count, DType dtype, ReduceOp op,
                      const CallOptions& o) override {
    check_reduce(dtype, op, "reduce_scatter", o);
    if (count == 0) return;
    const int n = count_of(count * static_cast<size_t>(size_), "reduce_scatter", o) / size_;
    run("reduce_scatter", o, [&](MPI_Comm c) {
      return MPI_Reduce_scatter_block(in, out, n, mpi_type(dtype), mpi_op(op), c);
    });
    finish_mean(out, count, dtype, op);
  }

  void barrier(const CallOptions& o) override {
    run("barrier", o, [&](MPI_Comm c) { return MPI_Barrier(c); });
  }

  void send(const void* data, size_t bytes, int dst, const CallOptions& o) override {
    check_rank(dst, "send", "destination");
    if (dst == rank_) throw Error(where("send", o) + ": to itself");
    const int n = count_of(bytes, "send", o);
    const int t = p2p_tag(o, "send");
    run("send", o, [&](MPI_Comm) { return MPI_Send(data, n, MPI_BYTE, dst, t, p2p_); });
  }

  void recv(void* data, size_t bytes, int src, const CallOptions& o) override {
    check_rank(src, "recv", "source");
    if (src == rank_) throw Error(where("recv", o) + ": from itself");
    const int n = count_of(bytes, "recv", o);
    const int t = p2p_tag(o, "recv");
    int got = n;
    run("recv", o, [&](MPI_Comm) {
      MPI_Status st;
      const int rc = MPI_Recv(data, n, MPI_BYTE, src, t, p2p_, &st);
      if (rc == MPI_SUCCESS) MPI_Get_count(&st, MPI_BYTE, &got);
      return rc;
    });
    if (got != n)
      throw Error(where("recv", o) + ": rank " + std::to_string(src) + " sent " +
                  std::to_string(got) + " bytes, " + std::to_string(n) + " expected");
  }

  // MPI's own split, on the tag's communicator (the color is checked first
  // by the same rule as every backend's).
  std::unique_ptr<ProcessGroup> split(int color, int key, const CallOptions& o) override {
    check_color(color, o);
    MPI_Comm sub = MPI_COMM_NULL;
    run("split", o, [&](MPI_Comm c) {
      return MPI_Comm_split(c, color == kNoColor ? MPI_UNDEFINED : color, key, &sub);
    });
    if (sub == MPI_COMM_NULL) return nullptr;
    return std::make_unique<MpiGroup>(sub);
  }

 private:
  int count_of(size_t n, const char* op, const CallOptions& o) const {
    if (n > static_cast<size_t>(INT_MAX))
      throw Error(where(op, o) + ": " + std::to_string(n) +
                  " elements exceed MPI's int count; split the buffer");
    return static_cast<int>(n);
  }

  // A tag as MPI's message tag (MPI guarantees at least 32767).
  int p2p_tag(const CallOptions& o, const char* op) const {
    const int ub = has_tag_ub_ ? *tag_ub_ : 32767;
    if (o.tag > static_cast<uint32_t>(ub))
      throw Error(where(op, o) + ": tag " + std::to_string(o.tag) + " is above MPI's limit " +
                  std::to_string(ub));
    return static_cast<int>(o.tag);
  }

  // Below MPI_THREAD_MULTIPLE: the process-wide lock that makes MPI calls
  // one at a time (MPI_THREAD_SERIALIZED), across groups; else nothing.
  std::unique_lock<std::mutex> serialize() const {
    return multiple_ ? std::unique_lock<std::mutex>()
                     : std::unique_lock<std::mutex>(runtime().serial);
  }

  // The communicator of a tag (created on first use; every rank creates
  // them in the same order since they make the same calls).
  MPI_Comm comm(uint32_t tag) {
    auto it = comms_.find(tag);
    if (it != comms_.end()) return it->second;
    std::unique_lock<std::mutex> one_call = serialize();
    MPI_Comm c;
    if (MPI_Comm_dup(base_, &c) != MPI_SUCCESS)
      throw Error(str("mpi: could not create the communicator of tag ", tag));
    MPI_Comm_set_errhandler(c, MPI_ERRORS_RETURN);
    comms_[tag] = c;
    return c;
  }

  // Starts a non-blocking call and polls it to completion or the deadline.
  template <typename Call>
  void run(const char* op, const CallOptions& o, Call&& call) {
    MPI_Comm c;
    {
      std::lock_guard<std::mutex> lock(mu_);
      c = comm(o.tag);
    }
    const uint64_t id = watch_.Start(where(op, o), o.timeout);
    int rc;
    {
      std::unique_lock<std::mutex> one_call = serialize();
      rc = call(c);
    }
    watch_.Stop(id);
    if (rc != MPI_SUCCESS) throw Error(where(op, o) + " failed: " + error_string(rc));
  }

  // Aborts the job when a call outlives its timeout (MPI cannot cancel it).
  class Watchdog {
   public:
    Watchdog() : thread_([this] { Loop(); }) {}
    ~Watchdog() {
      {
        std::lock_guard<std::mutex> l(mu_);
        stop_ = true;
      }
      cv_.notify_all();
      thread_.join();
    }
    uint64_t Start(std::string what, std::chrono::milliseconds timeout) {
      std::lock_guard<std::mutex> l(mu_);
      const uint64_t id = next_++;
      calls_[id] = {std::move(what), std::chrono::steady_clock::now() + timeout, timeout};
      // No notify: waking this thread on every call cost ~70 us a call (a
      // context switch beside MPI's busy polling); it looks every kTick.
      return id;
    }
    void Stop(uint64_t id) {
      std::lock_guard<std::mutex> l(mu_);
      calls_.erase(id);
    }

   private:
    static constexpr std::chrono::milliseconds kTick{100};  // a timeout fires at most this late
    struct Call {
      std::string what;
      std::chrono::steady_clock::time_point deadline;
      std::chrono::milliseconds timeout;
    };
    void Loop() {
      std::unique_lock<std::mutex> l(mu_);
      while (!stop_) {
        auto next = std::chrono::steady_clock::now() + kTick;
        for (const auto& [id, c] : calls_) next = std::min(next, c.deadline);
        cv_.wait_until(l, next);
        const auto now = std::chrono::steady_clock::now();
        for (const auto& [id, c] : calls_)
          if (now >= c.deadline) {
            std::fprintf(stderr,
                         "\ntessera: error: %s: no answer from every peer within %lld ms (a "
                         "peer died or hangs); aborting the job\n",
                         c.what.c_str(), static_cast<long long>(c.timeout.count()));
            std::fflush(stderr);
            MPI_Abort(MPI_COMM_WORLD, 1);
          }
      }
    }
    std::mutex mu_;
    std::condition_variable cv_;
    std::map<uint64_t, Call> calls_;
    uint64_t next_ = 0;
    bool stop_ = false;
    std::thread thread_;
  };

  static std::string error_string(int rc) {
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, msg, &len);
    return std::string(msg, static_cast<size_t>(len));
  }

  MPI_Comm base_;
  int rank_ = 0, size_ = 1;
  std::map<uint32_t, MPI_Comm> comms_;
  MPI_Comm p2p_ = MPI_COMM_NULL;
  int* tag_ub_ = nullptr;
  int has_tag_ub_ = 0;
  std::mutex mu_;
  bool multiple_ = false;
  Watchdog watch_;
};

}  // namespace

std::unique_ptr<ProcessGroup> make_mpi() {
  return std::make_unique<MpiGroup>();
}

}  // namespace tessera::dist
