// The lookup API's client: RemoteLibrary speaks the same LibraryApi as the
// embedded store, so every caller works local or remote alike.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "store/library.h"

namespace tessera::store {

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
  Status AddSignatures(const std::string& key, const std::vector<Signature>& signatures,
                       AdapterRecord* stored) override;
  Status Health();
  struct Impl;

 private:
  explicit RemoteLibrary(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tessera::store
