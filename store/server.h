// The lookup API's server: serves a LibraryApi over gRPC
// (proto/tessera/library_service.proto). What it enforces — token, TLS,
// message, adapter and call limits, validation of every field — is listed in
// store/service.h.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "store/library.h"

namespace tessera::store {

struct ServerOptions {
  std::string listen = "127.0.0.1:0";       // host:port; port 0 picks a free one
  std::string token;                        // empty: no authentication (loopback only)
  std::string tls_cert_file, tls_key_file;  // both or neither: PEM
  uint64_t max_message_bytes = 8u << 20;    // one gRPC message, either direction
  uint64_t max_adapter_bytes = 4ull << 30;  // the tensor bytes of one Put
  int64_t max_call_ms = 120000;             // a call running longer is cancelled
  uint32_t chunk_bytes = 4u << 20;          // tensor bytes per Get message by default
  int max_threads = 64;                     // gRPC's sync server threads
};

class Server {
 public:
  // Serves `library` (not owned; it must outlive the server).
  static Status Start(LibraryApi* library, const ServerOptions& options,
                      std::unique_ptr<Server>* out);
  ~Server();  // shuts down
  int port() const;
  // Stops accepting calls and waits for running ones (cancelled after `grace_ms`).
  void Shutdown(int64_t grace_ms = 2000);
  struct Impl;

 private:
  explicit Server(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// The token in `path` (surrounding whitespace dropped); a missing or empty
// file is InvalidArgument naming it.
Status ReadTokenFile(const std::string& path, std::string* token);

}  // namespace tessera::store
