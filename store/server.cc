#include "store/server.h"

#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <grpcpp/grpcpp.h>
#include <openssl/crypto.h>

#include <cerrno>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <map>
#include <thread>

#include "store/crc32c.h"
#include "store/wire.h"
#include "tessera/library_service.grpc.pb.h"

namespace tessera::store {

using namespace wire;  // NOLINT: the server speaks the wire helpers throughout
using Clock = std::chrono::steady_clock;

// ---------------------------------------------------------------- server

namespace {

// Cancels calls that run past the server's per-call limit (a stalled Put
// stream or a client that stops reading a Get would otherwise hold a thread).
class CallWatch {
 public:
  explicit CallWatch(int64_t limit_ms) : limit_(limit_ms), thread_([this] { Loop(); }) {}
  ~CallWatch() {
    {
      std::lock_guard<std::mutex> l(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  class Guard {
   public:
    Guard(CallWatch* w, grpc::ServerContextBase* c) : w_(w), c_(c) {
      std::lock_guard<std::mutex> l(w_->mu_);
      w_->calls_[c_] = Clock::now() + std::chrono::milliseconds(w_->limit_);
    }
    ~Guard() {
      std::lock_guard<std::mutex> l(w_->mu_);
      w_->calls_.erase(c_);
    }

   private:
    CallWatch* w_;
    grpc::ServerContextBase* c_;
  };

 private:
  void Loop() {
    std::unique_lock<std::mutex> l(mu_);
    while (!stop_) {
      cv_.wait_for(l, std::chrono::milliseconds(50));
      const auto now = Clock::now();
      for (auto& [ctx, deadline] : calls_)
        if (now > deadline) {
          ctx->TryCancel();
          deadline = Clock::time_point::max();  // once
        }
    }
  }
  const int64_t limit_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<grpc::ServerContextBase*, Clock::time_point> calls_;
  bool stop_ = false;
  std::thread thread_;
};

// A Get's answer, one message at a time: the record first, then the tensor
// bytes in pieces, at most `chunk` bytes per message (a whole tensor that
// fits is moved into its message, not copied).
class GetStream {
 public:
  GetStream(AdapterRecord record, std::vector<TensorData> ts, uint64_t chunk)
      : record_(std::move(record)), ts_(std::move(ts)), chunk_(chunk) {}
  bool Next(GetChunk* msg) {
    msg->Clear();
    if (first_) {
      *msg->mutable_record() = std::move(record_);
      first_ = false;
    } else if (i_ >= ts_.size()) {
      return false;
    }
    uint64_t room = chunk_;
    while (i_ < ts_.size()) {
      std::string& b = ts_[i_].bytes;
      const uint64_t size = b.size(), n = std::min<uint64_t>(room, size - off_);
      if (n == 0 && size > 0) break;  // this message is full
      TensorPiece* p = msg->add_pieces();
      p->set_tensor(static_cast<uint32_t>(i_));
      p->set_offset(off_);
      if (off_ == 0 && n == size)
        p->set_data(std::move(b));
      else
        p->set_data(b.data() + off_, n);
      room -= n;
      off_ += n;
      if (off_ < size) break;  // the rest of this tensor goes in the next message
      ++i_;
      off_ = 0;
    }
    return true;
  }

 private:
  AdapterRecord record_;
  std::vector<TensorData> ts_;
  uint64_t chunk_;
  bool first_ = true;
  size_t i_ = 0;
  uint64_t off_ = 0;
};

class Service;

// Get on gRPC's callback API: the answer is written from gRPC's own threads,
// without a thread of ours blocking per call.
class GetReactor : public grpc::ServerWriteReactor<GetChunk> {
 public:
  GetReactor(Service* svc, grpc::CallbackServerContext* ctx, const GetRequest* req);
  void OnWriteDone(bool ok) override {
    if (!ok) return Finish(grpc::Status(grpc::StatusCode::CANCELLED, "client went away"));
    Next();
  }
  void OnDone() override { delete this; }

 private:
  void Next() {
    if (!stream_ || !stream_->Next(&msg_)) return Finish(grpc::Status::OK);
    StartWrite(&msg_);
  }
  std::unique_ptr<GetStream> stream_;
  std::unique_ptr<CallWatch::Guard> guard_;
  GetChunk msg_;
};

class Service final : public LibraryService::WithCallbackMethod_Get<LibraryService::Service> {
 public:
  Service(LibraryApi* lib, const ServerOptions& o)
      : lib_(lib), o_(o), watch_(o.max_call_ms), started_(Clock::now()) {}

  grpc::ServerWriteReactor<GetChunk>* Get(grpc::CallbackServerContext* ctx,
                                          const GetRequest* req) override {
    return new GetReactor(this, ctx, req);
  }

  // Authenticates and validates a Get and reads the adapter: its answer stream.
  grpc::Status PrepareGet(grpc::CallbackServerContext* ctx, const GetRequest* req,
                          std::unique_ptr<GetStream>* out,
                          std::unique_ptr<CallWatch::Guard>* guard) {
    grpc::Status auth = Authorize(ctx);
    if (!auth.ok()) return auth;
    *guard = std::make_unique<CallWatch::Guard>(&watch_, ctx);
    try {
      if (req->key().empty() || req->key().size() > 1024)
        return invalid("key", "expected an id, name, name@latest or name@N (1..1024 characters)");
      uint64_t chunk = req->chunk_bytes() ? req->chunk_bytes() : o_.chunk_bytes;
      if (chunk < 4096 || chunk + 65536 > o_.max_message_bytes)
        return invalid("chunk_bytes", std::to_string(req->chunk_bytes()) +
                                          ", expected 0 or 4096.." +
                                          std::to_string(o_.max_message_bytes - 65536));
      const std::string& fp = req->base_fingerprint();
      if (!fp.empty() &&
          (fp.size() != 64 || fp.find_first_not_of("0123456789abcdef") != std::string::npos))
        return invalid(
            "base_fingerprint",
            "expected a base's fingerprint: 64 lowercase hex digits (SHA-256), or empty");
      AdapterRecord r;
      std::vector<TensorData> ts;
      // The record first: an adapter of another base is refused before its
      // tensors are read, as the proto promises (unless forced).
      Status s = lib_->Get(req->key(), &r, nullptr);
      if (s.ok() && !req->force()) s = CheckBase(r, fp);
      if (s.ok() && !req->record_only()) s = lib_->Get(r.id(), &r, &ts);
      if (!s.ok()) return to_grpc(s);
      *out = std::make_unique<GetStream>(std::move(r), std::move(ts), chunk);
      return grpc::Status::OK;
    } catch (const std::exception& e) {
      return grpc::Status(grpc::StatusCode::INTERNAL, std::string("server error: ") + e.what());
    }
  }

  grpc::Status Put(grpc::ServerContext* ctx, grpc::ServerReader<PutChunk>* r,
                   PutResponse* resp) override {
    return Call(ctx, [&]() -> grpc::Status {
      PutChunk msg;
      if (!r->Read(&msg))
        return invalid("record", "the Put stream is empty; its first message carries the record");
      if (!msg.has_record())
        return invalid("record", "missing from the Put stream's first message");
      AdapterRecord rec = std::move(*msg.mutable_record());
      if (rec.name().empty() || rec.name().size() > 256)
        return invalid("record.name", "expected 1..256 characters");
      if (rec.tensors_size() == 0 || rec.tensors_size() > 100000)
        return invalid("record.tensors", "expected 1..100000 tensor headers");
      uint64_t total = 0;
      for (int i = 0; i < rec.tensors_size(); ++i) {
        const std::string why = check_header(rec.tensors(i), uint64_t(1) << 62);
        if (!why.empty())
          return invalid(
              "record.tensors[" + std::to_string(i) + "]." + why.substr(0, why.find(':')),
              why.substr(why.find(':') + 2));
        total += rec.tensors(i).bytes();
        if (total > o_.max_adapter_bytes)
          return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                              "record.tensors: the adapter's tensors exceed the server's limit "
                              "of " +
                                  std::to_string(o_.max_adapter_bytes) + " bytes");
      }
      std::vector<std::string> bufs(rec.tensors_size());
      std::vector<uint64_t> have(rec.tensors_size(), 0), want(rec.tensors_size());
      for (int i = 0; i < rec.tensors_size(); ++i) want[i] = rec.tensors(i).bytes();
      for (size_t m = 0;; ++m) {
        if (m > 0 && msg.has_record())
          return invalid("record", "only the first message of a Put carries it (message " +
                                       std::to_string(m) + " does too)");
        for (int j = 0; j < msg.pieces_size(); ++j) {
          const std::string why = place(msg.mutable_pieces(j), want, &bufs, &have);
          if (!why.empty())
            return invalid("pieces[" + std::to_string(j) + "]." + why.substr(0, why.find(':')),
                           why.substr(why.find(':') + 2) + " (message " + std::to_string(m) + ")");
        }
        msg.Clear();
        if (!r->Read(&msg)) break;
      }
      if (ctx->IsCancelled())
        return grpc::Status(grpc::StatusCode::CANCELLED, "the Put was cancelled; nothing stored");
      for (int i = 0; i < rec.tensors_size(); ++i)
        if (have[i] != want[i])
          return invalid("pieces", "the Put stream ended early: tensor " + rec.tensors(i).name() +
                                       " has " + std::to_string(have[i]) + " of its " +
                                       std::to_string(want[i]) + " bytes; nothing was stored");
      std::vector<TensorData> ts(rec.tensors_size());
      for (int i = 0; i < rec.tensors_size(); ++i) {
        const TensorRef& t = rec.tensors(i);
        ts[i].name = t.name();
        ts[i].dtype = t.dtype();
        ts[i].shape.assign(t.shape().begin(), t.shape().end());
        ts[i].bytes = std::move(bufs[i]);
      }
      return to_grpc(lib_->Put(rec, ts, resp->mutable_record()));
    });
  }

  grpc::Status List(grpc::ServerContext* ctx, const ListRequest* req, ListResponse* resp) override {
    return Call(ctx, [&]() -> grpc::Status {
      const int limit = req->limit() == 0 ? 100 : req->limit();
      if (limit < 1 || limit > 1000)
        return invalid("limit", std::to_string(req->limit()) + ", expected 0 (100) or 1..1000");
      const ListFilter f = filter_of(*req);
      ListPage page;
      Status s = lib_->List(f, limit, req->page_token(), &page);
      if (s.IsInvalidArgument()) return invalid("page_token", s.message());
      if (!s.ok()) return to_grpc(s);
      for (auto& rec : page.records) *resp->add_records() = std::move(rec);
      resp->set_next_page_token(page.next_token);
      return grpc::Status::OK;
    });
  }

  grpc::Status Search(grpc::ServerContext* ctx, const SearchRequest* req,
                      SearchResponse* resp) override {
    return Call(ctx, [&]() -> grpc::Status {
      if (req->vector_size() == 0 || req->vector_size() > 65536)
        return invalid("vector", "expected 1..65536 values");
      for (int i = 0; i < req->vector_size(); ++i)
        if (!std::isfinite(req->vector(i)))
          return invalid("vector[" + std::to_string(i) + "]", "not a finite number");
      if (req->k() < 1 || req->k() > 1000)
        return invalid("k", std::to_string(req->k()) + ", expected 1..1000");
      const ListFilter f = filter_of(*req);
      std::vector<SearchHit> hits;
      const std::vector<float> q(req->vector().begin(), req->vector().end());
      Status s = lib_->Search(req->signature(), q, req->k(), f, &hits);
      if (s.IsInvalidArgument()) return invalid("vector", s.message());
      if (!s.ok()) return to_grpc(s);
      for (const auto& h : hits) {
        tessera::SearchHit* o = resp->add_hits();
        o->set_id(h.id);
        o->set_name(h.name);
        o->set_version(h.version);
        o->set_score(h.score);
      }
      return grpc::Status::OK;
    });
  }

  grpc::Status Delete(grpc::ServerContext* ctx, const DeleteRequest* req,
                      DeleteResponse*) override {
    return Call(ctx, [&]() -> grpc::Status {
      if (req->key().empty() || req->key().size() > 1024)
        return invalid("key", "expected an id, name, name@latest or name@N");
      return to_grpc(lib_->Delete(req->key()));
    });
  }

  grpc::Status AddSignatures(grpc::ServerContext* ctx, const AddSignaturesRequest* req,
                             AddSignaturesResponse* resp) override {
    return Call(ctx, [&]() -> grpc::Status {
      if (req->key().empty() || req->key().size() > 1024)
        return invalid("key", "expected an id, name, name@latest or name@N");
      if (req->signatures_size() == 0 || req->signatures_size() > 4096)
        return invalid("signatures", "expected 1..4096 signatures");
      for (const Signature& sg : req->signatures())
        if (sg.name().empty() || sg.name().size() > 1024)
          return invalid("signatures.name", "expected 1..1024 characters");
      const std::vector<Signature> sigs(req->signatures().begin(), req->signatures().end());
      return to_grpc(lib_->AddSignatures(req->key(), sigs, resp->mutable_record()));
    });
  }

  grpc::Status Stat(grpc::ServerContext* ctx, const StatRequest*, StatResponse* resp) override {
    return Call(ctx, [&]() -> grpc::Status {
      LibraryStats st;
      Status s = lib_->Stat(&st);
      if (!s.ok()) return to_grpc(s);
      resp->set_records(st.records);
      resp->set_deleted(st.deleted);
      resp->set_tensor_bytes(st.tensor_bytes);
      resp->set_disk_bytes(st.disk_bytes);
      resp->set_signatures(st.signatures);
#ifdef TESSERA_VERSION
      resp->set_server_version(TESSERA_VERSION);
#endif
      resp->set_uptime_ms(
          std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - started_).count());
      return grpc::Status::OK;
    });
  }

  grpc::Status Health(grpc::ServerContext* ctx, const HealthRequest*,
                      HealthResponse* resp) override {
    return Call(ctx, [&]() -> grpc::Status {
      resp->set_state(HealthResponse::SERVING);
      resp->set_max_message_bytes(o_.max_message_bytes);
      resp->set_max_adapter_bytes(o_.max_adapter_bytes);
      return grpc::Status::OK;
    });
  }

  grpc::Status Verify(grpc::ServerContext* ctx, const VerifyRequest*,
                      VerifyResponse* resp) override {
    return Call(ctx, [&]() -> grpc::Status {
      int64_t n = 0;
      Status s = lib_->Verify(&n);
      resp->set_checked(n);
      return to_grpc(s);
    });
  }

  grpc::Status Gc(grpc::ServerContext* ctx, const GcRequest*, GcResponse* resp) override {
    return Call(ctx, [&]() -> grpc::Status {
      int64_t n = 0;
      Status s = lib_->Gc(&n);
      resp->set_removed(n);
      return to_grpc(s);
    });
  }

 private:
  // Authenticates, watches the call's time, and turns anything thrown into
  // INTERNAL so that no request can take the server down.
  template <typename F>
  grpc::Status Call(grpc::ServerContext* ctx, F&& body) {
    grpc::Status auth = Authorize(ctx);
    if (!auth.ok()) return auth;
    CallWatch::Guard g(&watch_, ctx);
    try {
      return body();
    } catch (const std::exception& e) {
      return grpc::Status(grpc::StatusCode::INTERNAL, std::string("server error: ") + e.what());
    }
  }

  grpc::Status Authorize(grpc::ServerContextBase* ctx) {
    if (!o_.token.empty()) {
      const auto& md = ctx->client_metadata();
      auto it = md.find("authorization");
      if (it == md.end())
        return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                            "this library needs a bearer token (authorization metadata)");
      const std::string got(it->second.data(), it->second.size());
      const std::string want = "Bearer " + o_.token;
      if (got.size() != want.size() || CRYPTO_memcmp(got.data(), want.data(), got.size()) != 0)
        return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "wrong bearer token");
    }
    return grpc::Status::OK;
  }

  LibraryApi* lib_;
  ServerOptions o_;
  CallWatch watch_;
  Clock::time_point started_;
};

GetReactor::GetReactor(Service* svc, grpc::CallbackServerContext* ctx, const GetRequest* req) {
  grpc::Status st = svc->PrepareGet(ctx, req, &stream_, &guard_);
  if (!st.ok()) {
    Finish(st);
    return;
  }
  Next();
}

// Whether HOST:PORT (a nonzero port) is bound by another socket already:
// checked before gRPC tries, which would log its own multi-line error first.
// A probe, not a reservation: gRPC's own bind below stays the authority.
bool address_in_use(const std::string& listen) {
  const size_t colon = listen.rfind(':');
  std::string host = listen.substr(0, colon);
  const std::string port = listen.substr(colon + 1);
  if (port == "0" || listen.rfind("unix:", 0) == 0) return false;
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']')
    host = host.substr(1, host.size() - 2);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  addrinfo* res = nullptr;
  if (getaddrinfo(host.empty() ? nullptr : host.c_str(), port.c_str(), &hints, &res) != 0)
    return false;  // gRPC reports what it cannot resolve
  bool in_use = false;
  for (addrinfo* a = res; a && !in_use; a = a->ai_next) {
    const int fd = socket(a->ai_family, a->ai_socktype, a->ai_protocol);
    if (fd < 0) continue;
    const int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);  // TIME_WAIT is not "in use"
    in_use = bind(fd, a->ai_addr, a->ai_addrlen) != 0 && errno == EADDRINUSE;
    close(fd);
  }
  freeaddrinfo(res);
  return in_use;
}

bool is_loopback(const std::string& listen) {
  return listen.rfind("127.", 0) == 0 || listen.rfind("localhost:", 0) == 0 ||
         listen.rfind("[::1]:", 0) == 0 || listen.rfind("unix:", 0) == 0;
}

}  // namespace

struct Server::Impl {
  std::unique_ptr<Service> service;
  std::unique_ptr<grpc::Server> server;
  int port = 0;
  bool down = false;
};

Server::Server(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Server::~Server() {
  Shutdown(0);
}
int Server::port() const {
  return impl_->port;
}

void Server::Shutdown(int64_t grace_ms) {
  if (impl_->down) return;
  impl_->down = true;
  impl_->server->Shutdown(std::chrono::system_clock::now() + std::chrono::milliseconds(grace_ms));
  impl_->server->Wait();
}

Status Server::Start(LibraryApi* library, const ServerOptions& o, std::unique_ptr<Server>* out) {
  if (!library) return Status::InvalidArgument("serve: no library");
  if (o.listen.empty() || o.listen.find(':') == std::string::npos)
    return Status::InvalidArgument("listen address '" + o.listen + "': expected HOST:PORT");
  if (o.listen.rfind("unix:", 0) != 0) {
    // The port: a whole number 0..65535 (0: any free port). gRPC would serve
    // an out-of-range one on a random port without a word.
    const std::string port = o.listen.substr(o.listen.rfind(':') + 1);
    const bool digits = !port.empty() && port.size() <= 5 &&
                        port.find_first_not_of("0123456789") == std::string::npos;
    if (!digits || std::stoul(port) > 65535)
      return Status::InvalidArgument("listen address '" + o.listen + "': the port '" + port +
                                     "' is not a number from 0 to 65535 (0: any free port)");
  }
  if (o.token.empty() && !is_loopback(o.listen))
    return Status::InvalidArgument("listen address '" + o.listen +
                                   "' is not loopback: serving beyond this machine needs a "
                                   "bearer token (--token-file)");
  if (o.tls_cert_file.empty() != o.tls_key_file.empty())
    return Status::InvalidArgument("TLS needs both a certificate and a key (PEM files)");
  if (o.max_message_bytes < (1u << 16) || o.max_message_bytes > (1ull << 30))
    return Status::InvalidArgument("max message size: expected 64 KiB..1 GiB");
  if (o.chunk_bytes < 4096 || o.chunk_bytes + 65536 > o.max_message_bytes)
    return Status::InvalidArgument("chunk size: expected 4 KiB..(max message size - 64 KiB)");
  if (o.max_call_ms < 1) return Status::InvalidArgument("max call time: expected > 0 ms");
  std::shared_ptr<grpc::ServerCredentials> creds = grpc::InsecureServerCredentials();
  if (!o.tls_cert_file.empty()) {
    grpc::SslServerCredentialsOptions ssl;
    grpc::SslServerCredentialsOptions::PemKeyCertPair pair;
    if (!read_file(o.tls_key_file, &pair.private_key) || pair.private_key.empty())
      return Status::InvalidArgument("TLS key '" + o.tls_key_file + "': cannot read it");
    if (!read_file(o.tls_cert_file, &pair.cert_chain) || pair.cert_chain.empty())
      return Status::InvalidArgument("TLS certificate '" + o.tls_cert_file + "': cannot read it");
    if (pair.cert_chain.find("-----BEGIN CERTIFICATE-----") == std::string::npos)
      return Status::InvalidArgument("TLS certificate '" + o.tls_cert_file + "': not PEM");
    if (pair.private_key.find("PRIVATE KEY-----") == std::string::npos)
      return Status::InvalidArgument("TLS key '" + o.tls_key_file + "': not a PEM private key");
    ssl.pem_key_cert_pairs.push_back(pair);
    creds = grpc::SslServerCredentials(ssl);
  }
  if (address_in_use(o.listen))
    return Status::IOError("cannot listen on '" + o.listen +
                           "': the address is in use (another server on that port?)");
  auto impl = std::make_unique<Impl>();
  impl->service = std::make_unique<Service>(library, o);
  grpc::ServerBuilder b;
  b.AddListeningPort(o.listen, creds, &impl->port);
  // One server per address: without this gRPC sets SO_REUSEPORT, and a
  // second `serve` on a port in use starts anyway, the kernel splitting
  // connections between two libraries.
  b.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  b.RegisterService(impl->service.get());
  b.SetMaxReceiveMessageSize(static_cast<int>(o.max_message_bytes));
  b.SetMaxSendMessageSize(static_cast<int>(o.max_message_bytes));
  grpc::ResourceQuota quota("tessera-serve");
  quota.SetMaxThreads(o.max_threads);
  b.SetResourceQuota(quota);
  // Adapters are large messages: big HTTP/2 frames and a window that holds
  // a whole answer, instead of 16 KiB frames and slow-start window probing.
  b.AddChannelArgument(GRPC_ARG_HTTP2_MAX_FRAME_SIZE, 1 << 20);
  b.AddChannelArgument(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 8 << 20);
  // Notice clients that vanished without closing their connection.
  b.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, 60000);
  b.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 20000);
  impl->server = b.BuildAndStart();
  if (!impl->server || impl->port == 0)
    return Status::IOError("cannot listen on '" + o.listen +
                           "': the address is in use (another server on that port?) or is not "
                           "an address of this machine");
  out->reset(new Server(std::move(impl)));
  return Status::OK();
}

}  // namespace tessera::store
