// Telling a dead peer from a live one (internal to runtime/dist): each Gloo
// rank runs a tiny TCP listener whose only job is to be there; when a
// collective fails, a rank connects to each peer's listener to tell the ranks
// that are gone (connection refused or no answer) from those alive.
#pragma once

#include <atomic>
#include <string>
#include <thread>

namespace tessera::dist {

// A TCP connection to host:port within `ms`: 1 made, 0 refused or timed out,
// -1 the name does not resolve.
int try_connect(const std::string& host, const std::string& port, int ms);

class Liveness {
 public:
  // Listens on `host`, any free port; address() is "" when it could not.
  explicit Liveness(const std::string& host);
  ~Liveness();
  Liveness(const Liveness&) = delete;
  Liveness& operator=(const Liveness&) = delete;
  const std::string& address() const { return address_; }  // "host port"; "" if none

  // Whether something listens at `address` ("host port"), within `ms`; an
  // unknown or unresolvable address counts as alive (nobody is accused).
  static bool Alive(const std::string& address, int ms);

 private:
  int fd_ = -1;
  std::string address_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace tessera::dist
