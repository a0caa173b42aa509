// The rendezvous stores the Gloo backend meets through (internal to
// runtime/dist): Gloo's FileStore with its key check public, and a Store over
// MPI for Gloo started by mpirun (Debian's Gloo has no MPI support of its own).
// Redis is Gloo's own RedisStore.
#pragma once

#include <gloo/rendezvous/file_store.h>
#include <gloo/rendezvous/store.h>

#include <chrono>
#include <memory>
#include <string>

namespace tessera::dist {

// Gloo's FileStore, with its key check public. Its files outlive the job:
// the next job in the folder finds them.
class FileStore final : public gloo::rendezvous::FileStore {
 public:
  using gloo::rendezvous::FileStore::FileStore;
  bool has(const std::string& key) { return check({key}); }
};

// Rank 0 keeps the keys; see gloo_stores.cc. Initialises MPI.
std::unique_ptr<gloo::rendezvous::Store> make_mpi_store(std::chrono::milliseconds timeout);

}  // namespace tessera::dist
