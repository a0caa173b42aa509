// The rendezvous stores the Gloo backend meets through (internal to
// runtime/dist): Gloo's FileStore with its key check public, a Store over
// MPI for Gloo started by mpirun (Debian's Gloo has no MPI support of its
// own), and a Store over a parent group for sub-groups (split()). Redis is
// Gloo's own RedisStore.
#pragma once

#include <gloo/rendezvous/file_store.h>
#include <gloo/rendezvous/store.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "runtime/dist/process_group.h"

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

// The rendezvous of a sub-group made by split(), held by the parent group.
// Gloo's connectFullMesh meets in rounds: each rank sets one key (its host
// name, then its pair addresses) and reads the other members' keys of that
// round. Here every set is one allgatherv over the parent, so after it each
// rank holds its own sub-group's keys of the round and the reads are local.
// Every parent rank must join every round: a rank of no sub-group runs the
// same meeting for a group of one (which sets the same keys), keeping its
// own keys to itself. Each round carries its number, so ranks out of step
// (a Gloo whose key count depended on the group) fail naming the round.
// No store outlives the meeting; nothing touches disk.
class SplitStore final : public gloo::rendezvous::Store {
 public:
  SplitStore(ProcessGroup& parent, int color, const CallOptions& o)
      : parent_(parent), color_(color), o_(o) {}
  // One round: this rank's key, and then every member's key of the round here.
  void set(const std::string& key, const std::vector<char>& data) override;
  std::vector<char> get(const std::string& key) override;
  void wait(const std::vector<std::string>& keys) override;
  void wait(const std::vector<std::string>& keys, const std::chrono::milliseconds&) override {
    wait(keys);
  }

 private:
  ProcessGroup& parent_;
  int color_;
  CallOptions o_;
  int32_t rounds_ = 0;
  std::map<std::string, std::vector<char>> keys_;
};

}  // namespace tessera::dist
