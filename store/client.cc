#include "store/client.h"

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstring>
#include <thread>

#include "store/crc32c.h"
#include "store/wire.h"
#include "tessera/library_service.grpc.pb.h"

namespace tessera::store {

using namespace wire;  // NOLINT: the client speaks the wire helpers throughout

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

Status RemoteLibrary::AddSignatures(const std::string& key,
                                    const std::vector<Signature>& signatures,
                                    AdapterRecord* stored) {
  grpc::ClientContext ctx;
  impl_->Prepare(&ctx);
  AddSignaturesRequest req;
  req.set_key(key);
  for (const Signature& sg : signatures) *req.add_signatures() = sg;
  AddSignaturesResponse resp;
  Status s = from_grpc(impl_->stub->AddSignatures(&ctx, req, &resp),
                       impl_->Where() + ": AddSignatures " + key);
  if (s.ok() && stored) *stored = resp.record();
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
