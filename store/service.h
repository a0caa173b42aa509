// The adapter library's lookup API over gRPC (proto/tessera/library_service.proto):
// `Server` serves a Library, `RemoteLibrary` is the client and speaks the same
// LibraryApi as the embedded store, so every caller (the CLI, the demo,
// later the router and the federated server) works local or remote alike.
//
// Security and limits, all enforced by the server:
//   - a bearer token (`authorization: Bearer <token>` metadata) on every
//     call, compared in constant time; UNAUTHENTICATED otherwise;
//   - optional TLS (server certificate and key, PEM);
//   - a per-message size limit (gRPC's RESOURCE_EXHAUSTED above it), a
//     per-adapter size limit on Put (RESOURCE_EXHAUSTED naming the sizes)
//     and a per-call time limit (calls running past it are cancelled, so a
//     stalled client cannot hold a server thread);
//   - every request field validated, INVALID_ARGUMENT naming the field; a
//     Put whose stream ends before every tensor byte arrived is refused and
//     stores nothing.
// Status codes travel both ways: NotFound ↔ NOT_FOUND, Corruption ↔
// DATA_LOSS, InvalidArgument ↔ INVALID_ARGUMENT, AlreadyExists ↔
// ALREADY_EXISTS, FailedPrecondition ↔ FAILED_PRECONDITION, ...
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

struct ClientOptions {
  std::string target;                      // host:port
  std::string token;                       // sent as a bearer token when not empty
  std::string tls_ca_file;                 // PEM roots: use TLS and trust these
  std::string tls_server_name;             // override the name checked in the certificate
  int64_t deadline_ms = 60000;             // per call
  uint32_t chunk_bytes = 1u << 20;         // tensor bytes per Put message
  uint64_t max_message_bytes = 64u << 20;  // largest answer message accepted
};

class RemoteLibrary : public LibraryApi {
 public:
  // Connects and checks the server answers Health (so a wrong address, token
  // or certificate fails here, with a message saying which).
  static Status Connect(const ClientOptions& options, std::unique_ptr<RemoteLibrary>* out);
  ~RemoteLibrary() override;
  Status Put(const AdapterRecord& record, const std::vector<TensorData>& tensors,
             AdapterRecord* stored) override;
  // Tensor bytes are checked against the record's CRC-32C on arrival.
  Status Get(const std::string& key, AdapterRecord* record,
             std::vector<TensorData>* tensors = nullptr) override;
  Status List(const ListFilter& filter, int limit, const std::string& page_token,
              ListPage* out) override;
  Status Delete(const std::string& key) override;
  Status Verify(int64_t* checked = nullptr) override;
  Status Search(const std::string& signature, const std::vector<float>& query, int k,
                const ListFilter& filter, std::vector<SearchHit>* out) override;
  Status Gc(int64_t* removed = nullptr) override;
  Status Stat(LibraryStats* out) override;
  Status Health();
  struct Impl;

 private:
  explicit RemoteLibrary(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// The token in `path` (surrounding whitespace dropped); a missing or empty
// file is InvalidArgument naming it.
Status ReadTokenFile(const std::string& path, std::string* token);

}  // namespace tessera::store
