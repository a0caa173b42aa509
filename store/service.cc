#include "store/service.h"

#include <grpcpp/grpcpp.h>
#include <openssl/crypto.h>

#include <chrono>
#include <cmath>
#include <condition_variable>
#include <fstream>
#include <map>
#include <sstream>
#include <thread>
#include <type_traits>

#include "store/crc32c.h"
#include "tessera/library_service.grpc.pb.h"

namespace tessera::store {

namespace {

using Clock = std::chrono::steady_clock;

grpc::StatusCode to_grpc(Status::Code c) {
  using C = Status::Code;
  switch (c) {
    case C::kOk:
      return grpc::StatusCode::OK;
    case C::kNotFound:
      return grpc::StatusCode::NOT_FOUND;
    case C::kCorruption:
      return grpc::StatusCode::DATA_LOSS;
    case C::kInvalidArgument:
      return grpc::StatusCode::INVALID_ARGUMENT;
    case C::kIOError:
      return grpc::StatusCode::INTERNAL;
    case C::kAlreadyExists:
      return grpc::StatusCode::ALREADY_EXISTS;
    case C::kUnauthenticated:
      return grpc::StatusCode::UNAUTHENTICATED;
    case C::kUnavailable:
      return grpc::StatusCode::UNAVAILABLE;
    case C::kResourceExhausted:
      return grpc::StatusCode::RESOURCE_EXHAUSTED;
    case C::kDeadlineExceeded:
      return grpc::StatusCode::DEADLINE_EXCEEDED;
    case C::kFailedPrecondition:
      return grpc::StatusCode::FAILED_PRECONDITION;
  }
  return grpc::StatusCode::UNKNOWN;
}

grpc::Status to_grpc(const Status& s) {
  return s.ok() ? grpc::Status::OK : grpc::Status(to_grpc(s.code()), s.message());
}

Status from_grpc(const grpc::Status& s, const std::string& what) {
  using C = Status::Code;
  if (s.ok()) return Status::OK();
  C c = C::kIOError;
  switch (s.error_code()) {
    case grpc::StatusCode::NOT_FOUND:
      c = C::kNotFound;
      break;
    case grpc::StatusCode::DATA_LOSS:
      c = C::kCorruption;
      break;
    case grpc::StatusCode::INVALID_ARGUMENT:
      c = C::kInvalidArgument;
      break;
    case grpc::StatusCode::ALREADY_EXISTS:
      c = C::kAlreadyExists;
      break;
    case grpc::StatusCode::UNAUTHENTICATED:
      c = C::kUnauthenticated;
      break;
    case grpc::StatusCode::UNAVAILABLE:
      c = C::kUnavailable;
      break;
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      c = C::kResourceExhausted;
      break;
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      c = C::kDeadlineExceeded;
      break;
    case grpc::StatusCode::FAILED_PRECONDITION:
      c = C::kFailedPrecondition;
      break;
    default:
      break;
  }
  std::string m = what + ": " + s.error_message();
  if (c == C::kIOError)
    m += " (gRPC code " + std::to_string(static_cast<int>(s.error_code())) + ")";
  return Status::Make(c, m);
}

grpc::Status invalid(const std::string& field, const std::string& what) {
  return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, field + ": " + what);
}

bool read_file(const std::string& path, std::string* out) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return false;
  std::ostringstream ss;
  ss << f.rdbuf();
  *out = ss.str();
  return true;
}

// The bytes a tensor header declares, checked against its dtype and shape;
// "" when valid, else what is wrong.
std::string check_header(const TensorRef& t, uint64_t limit) {
  if (t.name().empty() || t.name().size() > 1024) return "name: expected 1..1024 characters";
  const size_t es = DtypeSize(t.dtype());
  if (es == 0) return "dtype: '" + t.dtype() + "', expected F32, F16 or BF16";
  if (t.shape_size() > 8) return "shape: more than 8 dimensions";
  uint64_t n = es;
  for (int64_t d : t.shape()) {
    if (d < 0) return "shape: negative dimension";
    if (d > 0 && n > limit / static_cast<uint64_t>(d)) return "shape: more than 2^62 bytes";
    n *= static_cast<uint64_t>(d);
  }
  if (n != t.bytes())
    return "bytes: " + std::to_string(t.bytes()) + " for a " + t.dtype() + " tensor of " +
           std::to_string(n / es) + " elements (expected " + std::to_string(n) + ")";
  if (!t.sha256().empty() && t.sha256().size() != 64) return "sha256: expected 64 hex digits";
  return "";
}

// Places `p` into tensor `p.tensor()` of `bufs`, whose sizes are `want` and
// of which `have` bytes arrived so far; "" when it fits, else why not. A
// whole tensor in one piece is moved, not copied.
std::string place(TensorPiece* p, const std::vector<uint64_t>& want, std::vector<std::string>* bufs,
                  std::vector<uint64_t>* have) {
  if (p->tensor() >= bufs->size())
    return "tensor: " + std::to_string(p->tensor()) + " but the record has " +
           std::to_string(bufs->size()) + " tensors";
  uint64_t& h = (*have)[p->tensor()];
  std::string& b = (*bufs)[p->tensor()];
  const uint64_t w = want[p->tensor()];
  if (p->offset() != h)
    return "offset: " + std::to_string(p->offset()) + ", expected " + std::to_string(h) +
           " (pieces of a tensor arrive in order)";
  if (p->data().size() > w - h)
    return "data: " + std::to_string(p->data().size()) + " bytes at offset " + std::to_string(h) +
           " run past the tensor's " + std::to_string(w) + " bytes";
  const uint64_t n = p->data().size();
  if (h == 0 && n == w) {
    b = std::move(*p->mutable_data());
  } else {
    if (b.size() != w) b.resize(w);
    std::memcpy(b.data() + h, p->data().data(), n);
  }
  h += n;
  return "";
}

// The filter a List or Search request carries (Search has no name prefix
// and never includes deleted records).
template <typename Req>
ListFilter filter_of(const Req& req) {
  ListFilter f;
  f.tags.assign(req.tags().begin(), req.tags().end());
  f.base_fingerprint = req.base_fingerprint();
  f.kind = req.kind();
  f.task = req.task();
  if constexpr (std::is_same_v<Req, ListRequest>) {
    f.name_prefix = req.name_prefix();
    f.include_deleted = req.include_deleted();
  }
  return f;
}

void fill_filter(const ListFilter& f, google::protobuf::RepeatedPtrField<std::string>* tags,
                 std::string* base, std::string* kind, std::string* task) {
  for (const auto& t : f.tags) *tags->Add() = t;
  *base = f.base_fingerprint;
  *kind = f.kind;
  *task = f.task;
}

}  // namespace

Status ReadTokenFile(const std::string& path, std::string* token) {
  std::string t;
  if (!read_file(path, &t))
    return Status::InvalidArgument("token file '" + path + "': cannot read it");
  const auto b = t.find_first_not_of(" \t\r\n");
  const auto e = t.find_last_not_of(" \t\r\n");
  if (b == std::string::npos)
    return Status::InvalidArgument("token file '" + path + "': empty (expected the bearer token)");
  t = t.substr(b, e - b + 1);
  for (char c : t)
    if (static_cast<unsigned char>(c) < 0x21 || static_cast<unsigned char>(c) > 0x7e)
      return Status::InvalidArgument("token file '" + path +
                                     "': the token holds whitespace or non-printable bytes");
  *token = t;
  return Status::OK();
}

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
      AdapterRecord r;
      std::vector<TensorData> ts;
      Status s = lib_->Get(req->key(), &r, req->record_only() ? nullptr : &ts);
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
  auto impl = std::make_unique<Impl>();
  impl->service = std::make_unique<Service>(library, o);
  grpc::ServerBuilder b;
  b.AddListeningPort(o.listen, creds, &impl->port);
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
                           "' (address in use, or not an address of this machine?)");
  out->reset(new Server(std::move(impl)));
  return Status::OK();
}

// ---------------------------------------------------------------- client

struct RemoteLibrary::Impl {
  ClientOptions o;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<LibraryService::Stub> stub;
  uint32_t put_chunk = 0;  // tensor bytes per Put message

  void Prepare(grpc::ClientContext* ctx) const {
    if (!o.token.empty()) ctx->AddMetadata("authorization", "Bearer " + o.token);
    ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(o.deadline_ms));
  }
  std::string Where() const { return "library service " + o.target; }
};

RemoteLibrary::RemoteLibrary(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
RemoteLibrary::~RemoteLibrary() = default;

Status RemoteLibrary::Connect(const ClientOptions& o, std::unique_ptr<RemoteLibrary>* out) {
  if (o.target.empty() || o.target.find(':') == std::string::npos)
    return Status::InvalidArgument("remote library '" + o.target + "': expected HOST:PORT");
  if (o.chunk_bytes < 4096 || o.chunk_bytes > (64u << 20))
    return Status::InvalidArgument("chunk size: expected 4 KiB..64 MiB");
  std::shared_ptr<grpc::ChannelCredentials> creds = grpc::InsecureChannelCredentials();
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(static_cast<int>(o.max_message_bytes));
  args.SetMaxSendMessageSize(-1);
  // A connection of its own: two clients in one process are two clients.
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  args.SetInt(GRPC_ARG_HTTP2_MAX_FRAME_SIZE, 1 << 20);
  args.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 8 << 20);
  if (!o.tls_ca_file.empty()) {
    grpc::SslCredentialsOptions ssl;
    if (!read_file(o.tls_ca_file, &ssl.pem_root_certs) ||
        ssl.pem_root_certs.find("-----BEGIN CERTIFICATE-----") == std::string::npos)
      return Status::InvalidArgument("TLS roots '" + o.tls_ca_file +
                                     "': cannot read PEM certificates from it");
    creds = grpc::SslCredentials(ssl);
    if (!o.tls_server_name.empty()) args.SetSslTargetNameOverride(o.tls_server_name);
  }
  auto impl = std::make_unique<Impl>();
  impl->o = o;
  impl->put_chunk = o.chunk_bytes;
  impl->channel = grpc::CreateCustomChannel(o.target, creds, args);
  impl->stub = LibraryService::NewStub(impl->channel);
  std::unique_ptr<RemoteLibrary> lib(new RemoteLibrary(std::move(impl)));
  // A first call fails fast on a connection attempt that failed (seen under
  // load on loopback: a transient UNAVAILABLE); a few short retries tell that
  // from a server that is not there, which still fails within ~0.4 s.
  Status s = lib->Health();
  for (int wait_ms = 50; s.code() == Status::Code::kUnavailable && wait_ms <= 200; wait_ms *= 2) {
    std::this_thread::sleep_for(std::chrono::milliseconds(wait_ms));
    s = lib->Health();
  }
  if (!s.ok()) return s;
  *out = std::move(lib);
  return Status::OK();
}

Status RemoteLibrary::Health() {
  grpc::ClientContext ctx;
  impl_->Prepare(&ctx);
  HealthRequest req;
  HealthResponse resp;
  Status s = from_grpc(impl_->stub->Health(&ctx, req, &resp), impl_->Where());
  if (s.ok() && resp.state() != HealthResponse::SERVING)
    return Status::Make(Status::Code::kUnavailable, impl_->Where() + ": not serving");
  // Put messages sized to the server's limit (with room for the framing).
  if (s.ok() && resp.max_message_bytes() > (64u << 10))
    impl_->put_chunk = static_cast<uint32_t>(
        std::min<uint64_t>(impl_->o.chunk_bytes, resp.max_message_bytes() - (32u << 10)));
  return s;
}

Status RemoteLibrary::Put(const AdapterRecord& record, const std::vector<TensorData>& tensors,
                          AdapterRecord* stored) {
  grpc::ClientContext ctx;
  impl_->Prepare(&ctx);
  PutResponse resp;
  auto w = impl_->stub->Put(&ctx, &resp);
  PutChunk msg;
  *msg.mutable_record() = record;
  msg.mutable_record()->clear_tensors();
  for (const TensorData& t : tensors) {
    TensorRef* h = msg.mutable_record()->add_tensors();
    h->set_name(t.name);
    h->set_dtype(t.dtype);
    for (int64_t d : t.shape) h->add_shape(d);
    h->set_bytes(t.bytes.size());
    h->set_sha256(sha256_hex(t.bytes));  // the server checks the bytes that arrive
  }
  const uint64_t chunk = impl_->put_chunk;
  uint64_t room = chunk;
  bool open = true;
  for (size_t i = 0; i < tensors.size() && open; ++i) {
    const std::string& b = tensors[i].bytes;
    for (uint64_t off = 0; off < b.size() && open;) {
      if (room == 0) {
        open = w->Write(msg);
        msg.Clear();
        room = chunk;
      }
      const uint64_t n = std::min<uint64_t>(room, b.size() - off);
      TensorPiece* p = msg.add_pieces();
      p->set_tensor(static_cast<uint32_t>(i));
      p->set_offset(off);
      p->set_data(b.data() + off, n);
      room -= n;
      off += n;
    }
  }
  if (open) w->Write(msg);
  w->WritesDone();
  Status s = from_grpc(w->Finish(), impl_->Where() + ": Put " + record.name());
  if (s.ok() && stored) *stored = std::move(*resp.mutable_record());
  return s;
}

Status RemoteLibrary::Get(const std::string& key, AdapterRecord* record,
                          std::vector<TensorData>* tensors) {
  grpc::ClientContext ctx;
  impl_->Prepare(&ctx);
  GetRequest req;
  req.set_key(key);
  req.set_record_only(tensors == nullptr);
  auto r = impl_->stub->Get(&ctx, req);
  GetChunk msg;
  AdapterRecord rec;
  std::vector<std::string> bufs;
  std::vector<uint64_t> have, want;
  const std::string what = impl_->Where() + ": Get " + key;
  std::string bad;
  for (size_t m = 0; r->Read(&msg); ++m) {
    if (m == 0) {
      if (!msg.has_record()) {
        bad = "its first answer message has no record";
        break;
      }
      rec = std::move(*msg.mutable_record());
      if (tensors) {
        bufs.resize(rec.tensors_size());
        have.assign(rec.tensors_size(), 0);
        for (int i = 0; i < rec.tensors_size(); ++i) {
          if (rec.tensors(i).bytes() > (64ull << 30)) {
            bad = "tensor " + rec.tensors(i).name() + " claims an implausible size";
            break;
          }
          want.push_back(rec.tensors(i).bytes());
        }
        if (!bad.empty()) break;
      }
    }
    if (!tensors && msg.pieces_size() > 0) {
      bad = "tensor bytes came for a record-only Get";
      break;
    }
    for (TensorPiece& p : *msg.mutable_pieces()) {
      bad = place(&p, want, &bufs, &have);
      if (!bad.empty()) break;
    }
    if (!bad.empty()) break;
  }
  if (!bad.empty()) {
    ctx.TryCancel();
    r->Finish();
    return Status::Corruption(what + ": the server's answer is malformed: " + bad);
  }
  Status s = from_grpc(r->Finish(), what);
  if (!s.ok()) return s;
  if (rec.id().empty()) return Status::Corruption(what + ": the answer held no record");
  if (tensors) {
    tensors->clear();
    for (int i = 0; i < rec.tensors_size(); ++i) {
      const TensorRef& t = rec.tensors(i);
      if (have[i] != want[i])
        return Status::Corruption(what + ": tensor " + t.name() + " arrived with " +
                                  std::to_string(have[i]) + " of " + std::to_string(want[i]) +
                                  " bytes");
      bufs[i].resize(want[i]);  // a tensor of 0 bytes got no allocation
      if (crc32c(bufs[i].data(), bufs[i].size()) != t.crc32c())
        return Status::Corruption(what + ": tensor " + t.name() +
                                  " arrived with bytes that fail its CRC-32C");
      TensorData d;
      d.name = t.name();
      d.dtype = t.dtype();
      d.shape.assign(t.shape().begin(), t.shape().end());
      d.bytes = std::move(bufs[i]);
      tensors->push_back(std::move(d));
    }
  }
  *record = std::move(rec);
  return Status::OK();
}

Status RemoteLibrary::List(const ListFilter& f, int limit, const std::string& token,
                           ListPage* out) {
  grpc::ClientContext ctx;
  impl_->Prepare(&ctx);
  ListRequest req;
  fill_filter(f, req.mutable_tags(), req.mutable_base_fingerprint(), req.mutable_kind(),
              req.mutable_task());
  req.set_name_prefix(f.name_prefix);
  req.set_include_deleted(f.include_deleted);
  req.set_limit(limit);
  req.set_page_token(token);
  ListResponse resp;
  Status s = from_grpc(impl_->stub->List(&ctx, req, &resp), impl_->Where() + ": List");
  if (!s.ok()) return s;
  out->records.assign(std::make_move_iterator(resp.mutable_records()->begin()),
                      std::make_move_iterator(resp.mutable_records()->end()));
  out->next_token = resp.next_page_token();
  return Status::OK();
}

Status RemoteLibrary::Search(const std::string& signature, const std::vector<float>& query, int k,
                             const ListFilter& f, std::vector<SearchHit>* out) {
  grpc::ClientContext ctx;
  impl_->Prepare(&ctx);
  SearchRequest req;
  req.set_signature(signature);
  req.mutable_vector()->Add(query.begin(), query.end());
  req.set_k(k);
  fill_filter(f, req.mutable_tags(), req.mutable_base_fingerprint(), req.mutable_kind(),
              req.mutable_task());
  SearchResponse resp;
  Status s = from_grpc(impl_->stub->Search(&ctx, req, &resp), impl_->Where() + ": Search");
  if (!s.ok()) return s;
  out->clear();
  for (const auto& h : resp.hits()) out->push_back({h.id(), h.name(), h.version(), h.score()});
  return Status::OK();
}

Status RemoteLibrary::Delete(const std::string& key) {
  grpc::ClientContext ctx;
  impl_->Prepare(&ctx);
  DeleteRequest req;
  req.set_key(key);
  DeleteResponse resp;
  return from_grpc(impl_->stub->Delete(&ctx, req, &resp), impl_->Where() + ": Delete " + key);
}

Status RemoteLibrary::Verify(int64_t* checked) {
  grpc::ClientContext ctx;
  impl_->Prepare(&ctx);
  VerifyResponse resp;
  Status s =
      from_grpc(impl_->stub->Verify(&ctx, VerifyRequest(), &resp), impl_->Where() + ": Verify");
  if (checked) *checked = resp.checked();
  return s;
}

Status RemoteLibrary::Gc(int64_t* removed) {
  grpc::ClientContext ctx;
  impl_->Prepare(&ctx);
  GcResponse resp;
  Status s = from_grpc(impl_->stub->Gc(&ctx, GcRequest(), &resp), impl_->Where() + ": Gc");
  if (removed) *removed = resp.removed();
  return s;
}

Status RemoteLibrary::Stat(LibraryStats* out) {
  grpc::ClientContext ctx;
  impl_->Prepare(&ctx);
  StatResponse resp;
  Status s = from_grpc(impl_->stub->Stat(&ctx, StatRequest(), &resp), impl_->Where() + ": Stat");
  if (!s.ok()) return s;
  out->records = resp.records();
  out->deleted = resp.deleted();
  out->tensor_bytes = resp.tensor_bytes();
  out->disk_bytes = resp.disk_bytes();
  out->signatures = resp.signatures();
  return Status::OK();
}

}  // namespace tessera::store
