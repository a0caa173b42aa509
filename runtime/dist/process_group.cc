#include "runtime/dist/process_group.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>

namespace tessera::dist {

const char* op_name(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return "sum";
    case ReduceOp::kMean:
      return "mean";
    case ReduceOp::kMax:
      return "max";
    case ReduceOp::kMin:
      return "min";
  }
  return "?";
}

void ProcessGroup::check_rank(int r, const char* what, const char* arg) const {
  if (r < 0 || r >= size())
    throw Error(
        str(backend(), " ", what, ": ", arg, " ", r, " is not a rank of a world of ", size()));
}

void ProcessGroup::check_dtype(DType dtype, const char* what, const CallOptions& o) const {
  if (dtype != DType::F32 && dtype != DType::F64 && dtype != DType::I32 && dtype != DType::I64 &&
      dtype != DType::U8)
    throw Error(where(what, o) + ": dtype " + dtype_name(dtype) +
                " (expected one of F32, F64, I32, I64 or U8)");
}

void ProcessGroup::check_reduce(DType dtype, ReduceOp op, const char* what,
                                const CallOptions& o) const {
  check_dtype(dtype, what, o);
  if (op == ReduceOp::kMean && dtype != DType::F32 && dtype != DType::F64)
    throw Error(where(what, o) + ": mean needs a floating type, not " + dtype_name(dtype));
}

void ProcessGroup::finish_mean(void* data, size_t count, DType dtype, ReduceOp op) const {
  if (op != ReduceOp::kMean) return;
  if (dtype == DType::F32) {
    float* p = static_cast<float*>(data);
    for (size_t i = 0; i < count; ++i) p[i] /= static_cast<float>(size());
  } else if (dtype == DType::F64) {
    double* p = static_cast<double*>(data);
    for (size_t i = 0; i < count; ++i) p[i] /= static_cast<double>(size());
  }
}

void ProcessGroup::check_color(int color, const CallOptions& o) const {
  if (color < kNoColor)
    throw Error(where("split", o) + ": color " + std::to_string(color) +
                " (expected a color >= 0, or kNoColor = -1 to join no sub-group)");
}

ProcessGroup::SplitPlan ProcessGroup::plan_split(int color, int key, const CallOptions& o) {
  check_color(color, o);
  const int W = size();
  std::vector<int64_t> mine = {color, key}, all(2 * static_cast<size_t>(W));
  allgather(mine.data(), all.data(), 2, DType::I64, o);
  SplitPlan p;
  p.color = color;
  if (color == kNoColor) return p;
  for (int r = 0; r < W; ++r)
    if (all[2 * r] == color) p.members.push_back(r);
  std::stable_sort(p.members.begin(), p.members.end(),
                   [&](int a, int b) { return all[2 * a + 1] < all[2 * b + 1]; });
  for (size_t i = 0; i < p.members.size(); ++i)
    if (p.members[i] == rank()) p.rank = static_cast<int>(i);
  return p;
}

std::string ProcessGroup::where(const char* op, const CallOptions& o) const {
  return str(backend(), " ", op, " (tag ", o.tag, ", rank ", rank(), " of ", size(), ")");
}

namespace {

class LocalGroup final : public ProcessGroup {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string backend() const override { return "local"; }
  void allreduce(void*, size_t, DType dtype, ReduceOp op, const CallOptions& o) override {
    check_reduce(dtype, op, "allreduce", o);
  }
  void broadcast(void*, size_t, int root, const CallOptions&) override {
    check_rank(root, "broadcast", "root");
  }
  void allgatherv(const void* in, void* out, const std::vector<size_t>& counts, DType dtype,
                  const CallOptions& o) override {
    check_dtype(dtype, "allgatherv", o);
    if (counts.size() != 1)
      throw Error(where("allgatherv", o) + ": " + std::to_string(counts.size()) +
                  " counts for a world of 1");
    copy(in, out, counts[0] * dtype_size(dtype));
  }
  void gather(const void* in, void* out, size_t count, DType dtype, int root,
              const CallOptions& o) override {
    check_dtype(dtype, "gather", o);
    check_rank(root, "gather", "root");
    copy(in, out, count * dtype_size(dtype));
  }
  void scatter(const void* in, void* out, size_t count, DType dtype, int root,
               const CallOptions& o) override {
    check_dtype(dtype, "scatter", o);
    check_rank(root, "scatter", "root");
    copy(in, out, count * dtype_size(dtype));
  }
  void reduce_scatter(const void* in, void* out, size_t count, DType dtype, ReduceOp op,
                      const CallOptions& o) override {
    allreduce(nullptr, 0, dtype, op, o);  // argument checks
    copy(in, out, count * dtype_size(dtype));
  }
  void barrier(const CallOptions&) override {}
  void send(const void*, size_t, int dst, const CallOptions& o) override {
    check_rank(dst, "send", "destination");
    throw Error(where("send", o) + ": a world of one has no peer to send to");
  }
  void recv(void*, size_t, int src, const CallOptions& o) override {
    check_rank(src, "recv", "source");
    throw Error(where("recv", o) + ": a world of one has no peer to receive from");
  }
  std::unique_ptr<ProcessGroup> split(int color, int key, const CallOptions& o) override {
    if (plan_split(color, key, o).rank < 0) return nullptr;
    return std::make_unique<LocalGroup>();
  }

 private:
  static void copy(const void* in, void* out, size_t bytes) {
    if (bytes > 0 && in != out) std::memmove(out, in, bytes);
  }
};

}  // namespace

std::unique_ptr<ProcessGroup> make_local() {
  return std::make_unique<LocalGroup>();
}

namespace {
std::string env(const char* name) {
  const char* v = std::getenv(name);
  return v ? std::string(v) : std::string();
}

int env_int(const char* name) {
  const std::string v = env(name);
  try {
    size_t pos = 0;
    const int x = std::stoi(v, &pos);
    if (pos == v.size()) return x;
  } catch (const std::exception&) {
  }
  throw Error(str(name, "='", v, "': expected an integer"));
}
}  // namespace

std::unique_ptr<ProcessGroup> make_process_group(std::string backend) {
  if (backend.empty()) backend = env("TESSERA_BACKEND");
  if (backend.empty())
    backend = !env("OMPI_COMM_WORLD_SIZE").empty() ? "mpi"
              : !env("TESSERA_WORLD_SIZE").empty() ? "gloo"
                                                   : "local";
  if (backend == "local") return make_local();
  if (backend == "mpi") return make_mpi();
  if (backend == "gloo") {
    GlooOptions o;
    o.rendezvous = env("TESSERA_RENDEZVOUS");
    o.interface_host = env("TESSERA_HOST");
    // A job id of the user's own keeps jobs sharing one store apart.
    if (!env("TESSERA_JOB_ID").empty()) o.prefix = "tessera/" + env("TESSERA_JOB_ID");
    if (o.rendezvous.empty() && !env("OMPI_COMM_WORLD_SIZE").empty()) {
      // Launched by mpirun: rank and size from Open MPI, rendezvous over MPI.
      o.rendezvous = "mpi://";
      return make_gloo(env_int("OMPI_COMM_WORLD_RANK"), env_int("OMPI_COMM_WORLD_SIZE"), o);
    }
    if (o.rendezvous.empty())
      throw Error(
          "gloo: TESSERA_RENDEZVOUS names where ranks meet (file:///shared/dir or "
          "redis://host:port)");
    // By hand: TESSERA_WORLD_SIZE/RANK; under mpirun: Open MPI's.
    const bool by_hand = !env("TESSERA_WORLD_SIZE").empty();
    const int size = env_int(by_hand ? "TESSERA_WORLD_SIZE" : "OMPI_COMM_WORLD_SIZE"),
              rank = env_int(by_hand ? "TESSERA_RANK" : "OMPI_COMM_WORLD_RANK");
    return make_gloo(rank, size, o);
  }
  throw Error(str("process group backend '", backend, "': expected local, gloo or mpi"));
}

}  // namespace tessera::dist
