// Process groups: every number that crosses a process goes through one
// `ProcessGroup`, so MPI and Gloo are interchangeable and the `local`
// backend makes single-process runs and tests exact.
//
// Collectives are called by every rank of the group with matching arguments
// (same op order, same counts, same tag); buffers are plain host memory.
// Every call takes CallOptions: a tag (calls with different tags do not
// match) and a timeout. A failed or timed-out call throws dist::Error naming
// the operation, this rank and, where the backend can tell, the peer.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "runtime/common/dtype.h"
#include "runtime/common/error.h"

namespace tessera::dist {

class Error : public tessera::Error {
 public:
  using tessera::Error::Error;
};

// Buffers' element types: tessera's one dtype vocabulary (common/dtype.h);
// collectives take F32, F64, I32, I64 and U8 (check_dtype refuses the rest).
using tessera::DType;
using tessera::dtype_name;
using tessera::dtype_size;
enum class ReduceOp { kSum, kMean, kMax, kMin };

const char* op_name(ReduceOp op);

struct CallOptions {
  uint32_t tag = 0;
  std::chrono::milliseconds timeout{std::chrono::minutes(5)};
};

class ProcessGroup {
 public:
  virtual ~ProcessGroup() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string backend() const = 0;  // "local", "gloo", "mpi"
  // Whether send/recv with different peers may run from several threads at
  // once (MPI only at MPI_THREAD_MULTIPLE).
  virtual bool concurrent_p2p() const { return true; }

  // In place: `data` (count elements) becomes the reduction over all ranks.
  // kMean divides the sum by the world size (floating types only).
  virtual void allreduce(void* data, size_t count, DType dtype, ReduceOp op,
                         const CallOptions& o = {}) = 0;
  // `bytes` of `data` on `root` copied to every rank's `data`.
  virtual void broadcast(void* data, size_t bytes, int root, const CallOptions& o = {}) = 0;
  // Rank r contributes counts[r] elements; `out` receives all of them in rank
  // order (sum of counts elements) on every rank.
  virtual void allgatherv(const void* in, void* out, const std::vector<size_t>& counts, DType dtype,
                          const CallOptions& o = {}) = 0;
  // `count` elements from every rank into root's `out` (size × count), rank order.
  virtual void gather(const void* in, void* out, size_t count, DType dtype, int root,
                      const CallOptions& o = {}) = 0;
  // Root's `in` (size × count elements): block r goes to rank r's `out`.
  virtual void scatter(const void* in, void* out, size_t count, DType dtype, int root,
                       const CallOptions& o = {}) = 0;
  // `in` (size × count elements) reduced over ranks; rank r keeps block r in `out`.
  virtual void reduce_scatter(const void* in, void* out, size_t count, DType dtype, ReduceOp op,
                              const CallOptions& o = {}) = 0;
  virtual void barrier(const CallOptions& o = {}) = 0;
  virtual void send(const void* data, size_t bytes, int dst, const CallOptions& o = {}) = 0;
  virtual void recv(void* data, size_t bytes, int src, const CallOptions& o = {}) = 0;

  // Sub-groups, as MPI_Comm_split: a collective call of every rank of this
  // group (in the same order as its other calls). Ranks passing the same
  // `color` >= 0 form one new group of the same backend, ranked by (`key`,
  // rank in this group); a rank passing kNoColor joins none and gets nullptr.
  // The new group's calls never match this group's (or another sub-group's),
  // and it may outlive this group. Error: color below kNoColor; a peer that
  // does not take part fails the call at `o.timeout` like any collective
  // (under MPI, whose calls cannot be cancelled, the watchdog ends the job).
  // (Federated rounds run a cohort of clients as one sub-group.)
  static constexpr int kNoColor = -1;
  virtual std::unique_ptr<ProcessGroup> split(int color, int key, const CallOptions& o = {}) = 0;

  // Equal contributions: every rank `count` elements.
  void allgather(const void* in, void* out, size_t count, DType dtype, const CallOptions& o = {}) {
    allgatherv(in, out, std::vector<size_t>(static_cast<size_t>(size()), count), dtype, o);
  }

 protected:
  // Shared argument checks: Error naming the call when a rank or size is off.
  void check_rank(int r, const char* what, const char* arg) const;
  // A dtype collectives take (Error naming the call and the dtype otherwise).
  void check_dtype(DType dtype, const char* what, const CallOptions& o) const;
  // kMean only on floating types (Error naming the call otherwise).
  void check_reduce(DType dtype, ReduceOp op, const char* what, const CallOptions& o) const;
  // After a sum for kMean: every element divided by the world size (one
  // rounding, the same in every backend).
  void finish_mean(void* data, size_t count, DType dtype, ReduceOp op) const;
  std::string where(const char* op, const CallOptions& o) const;

  // split()'s color rule: >= 0, or kNoColor (Error naming the call otherwise).
  void check_color(int color, const CallOptions& o) const;
  // The sub-group this rank joins in split(): every rank's (color, key)
  // gathered, members ordered by (key, parent rank). Error on a bad color.
  struct SplitPlan {
    int color = kNoColor;
    int rank = -1;             // in the sub-group (-1: kNoColor)
    std::vector<int> members;  // parent ranks, sub-group rank order
  };
  SplitPlan plan_split(int color, int key, const CallOptions& o);
};

// One process: every collective is a copy (or nothing).
std::unique_ptr<ProcessGroup> make_local();

// Gloo over TCP. `rendezvous`: "file:///shared/dir" (Gloo's FileStore; every
// rank must see the folder), "redis://host:port", or "mpi://" under mpirun
// (Gloo's Store interface implemented over MPI). `prefix` separates jobs
// (and groups) sharing one store; `interface_host` is the address peers
// reach this rank at ("" : this host's name). Connecting waits up to `timeout`.
struct GlooOptions {
  std::string rendezvous;
  std::string prefix = "tessera";
  std::string interface_host;
  std::chrono::milliseconds timeout{std::chrono::seconds(60)};
};
std::unique_ptr<ProcessGroup> make_gloo(int rank, int size, const GlooOptions& o);

// MPI_COMM_WORLD of the MPI library (Open MPI under `mpirun`); MPI is
// initialised on first use with MPI_THREAD_MULTIPLE requested and at least
// MPI_THREAD_SERIALIZED required, and finalised at exit.
std::unique_ptr<ProcessGroup> make_mpi();

// The group this process belongs to, from its environment: `backend` (or
// TESSERA_BACKEND) "mpi", "gloo" or "local"; when neither names one, mpi
// under mpirun (OMPI_COMM_WORLD_SIZE set), gloo when TESSERA_WORLD_SIZE is
// set (TESSERA_RANK, TESSERA_RENDEZVOUS = file:///dir | redis://host:port,
// TESSERA_HOST = this rank's address for its peers, TESSERA_JOB_ID = a
// name for this job's keys in a store that jobs share), local otherwise.
// TESSERA_BACKEND=gloo under mpirun meets over MPI unless TESSERA_RENDEZVOUS
// names a store.
std::unique_ptr<ProcessGroup> make_process_group(std::string backend = "");

}  // namespace tessera::dist
