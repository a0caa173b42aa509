// The lookup API (store/service.h) over real loopback gRPC: the client gives
// what the embedded library gives; tokens, TLS, size and time limits; every
// malformed request refused with its code and field named while the server
// keeps serving; 8 concurrent clients mixing Put/Get/List/Search.
#include "store/service.h"

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "tessera/library_service.grpc.pb.h"
#include "tests/store/store_testing.h"
#include "tests/testing.h"

namespace tessera::store {
namespace {

const std::string kToken = "test-token-0123456789";

std::string fixture(const std::string& f) {
  return std::string(TESSERA_SOURCE_DIR) + "/tests/fixtures/tls/" + f;
}

struct Served {
  std::unique_ptr<Library> lib;
  std::unique_ptr<Server> server;
  std::string dir, target;
  explicit Served(const std::string& name, ServerOptions so = ServerOptions()) {
    dir = testing::temp_dir(name);
    EXPECT_TRUE(Library::Open(Options(), dir, &lib).ok());
    if (so.token.empty()) so.token = kToken;
    Status s = Server::Start(lib.get(), so, &server);
    EXPECT_TRUE(s.ok()) << s.ToString();
    target = "127.0.0.1:" + std::to_string(server->port());
  }
  std::unique_ptr<RemoteLibrary> client(const std::string& token = kToken,
                                        ClientOptions co = ClientOptions()) {
    co.target = target;
    co.token = token;
    std::unique_ptr<RemoteLibrary> c;
    Status s = RemoteLibrary::Connect(co, &c);
    EXPECT_TRUE(s.ok()) << s.ToString();
    return c;
  }
  // A raw stub for requests the client class would never send.
  std::unique_ptr<LibraryService::Stub> stub() {
    return LibraryService::NewStub(grpc::CreateChannel(target, grpc::InsecureChannelCredentials()));
  }
};

void auth(grpc::ClientContext* ctx, int timeout_ms = 10000) {
  ctx->AddMetadata("authorization", "Bearer " + kToken);
  ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(timeout_ms));
}

void expect_same(const std::vector<TensorData>& a, const std::vector<TensorData>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].name, b[i].name);
    EXPECT_EQ(a[i].dtype, b[i].dtype);
    EXPECT_EQ(a[i].shape, b[i].shape);
    EXPECT_TRUE(a[i].bytes == b[i].bytes) << a[i].name;
  }
}

// What a raw Put stream ends with: the status, and whether anything was stored.
grpc::Status raw_put(Served& s, const std::vector<PutChunk>& msgs) {
  auto stub = s.stub();
  grpc::ClientContext ctx;
  auth(&ctx);
  PutResponse resp;
  auto w = stub->Put(&ctx, &resp);
  for (const auto& m : msgs)
    if (!w->Write(m)) break;
  w->WritesDone();
  return w->Finish();
}

PutChunk header(const std::string& name, uint64_t bytes, const std::string& dtype = "F32") {
  PutChunk m;
  AdapterRecord* r = m.mutable_record();
  r->set_name(name);
  r->set_kind("lora");
  TensorRef* t = r->add_tensors();
  t->set_name("w");
  t->set_dtype(dtype);
  t->add_shape(static_cast<int64_t>(bytes / 4));
  t->set_bytes(bytes);
  return m;
}

void piece(PutChunk* m, uint32_t tensor, uint64_t offset, size_t n) {
  TensorPiece* p = m->add_pieces();
  p->set_tensor(tensor);
  p->set_offset(offset);
  p->set_data(std::string(n, 'x'));
}

void expect_code(const grpc::Status& s, grpc::StatusCode code, const std::string& field) {
  EXPECT_EQ(s.error_code(), code) << s.error_message();
  EXPECT_NE(s.error_message().find(field), std::string::npos)
      << "'" << s.error_message() << "' does not name " << field;
}

TEST(LookupApi, RemoteCallsGiveWhatTheEmbeddedLibraryGives) {
  // A small message limit: a 1 MiB adapter must travel in chunks.
  ServerOptions so;
  so.max_message_bytes = 128 << 10;
  so.chunk_bytes = 32 << 10;
  Served s("svc_rt", so);
  ClientOptions co;
  co.chunk_bytes = 16 << 10;
  auto c = s.client(kToken, co);
  std::vector<TensorData> big = {f32("a", {256, 1024}, 1.0f), f32("b", {3}, 2.0f),
                                 f32("empty", {0, 4}, 0.0f)};
  AdapterRecord r = rec("big", "lora", {"t1"}, "perm");
  Signature* sig = r.add_signatures();
  sig->set_name("proto");
  for (int i = 0; i < 4; ++i) sig->add_vector(static_cast<float>(i + 1));
  AdapterRecord stored;
  Status st = c->Put(r, big, &stored);
  ASSERT_TRUE(st.ok()) << st.ToString();
  EXPECT_EQ(stored.version(), 1);
  // Through the API and straight from the store: the same record, the same bytes.
  AdapterRecord got, local;
  std::vector<TensorData> ts, lts;
  ASSERT_TRUE(c->Get("big@latest", &got, &ts).ok());
  ASSERT_TRUE(s.lib->Get("big", &local, &lts).ok());
  EXPECT_EQ(got.SerializeAsString(), local.SerializeAsString());
  expect_same(ts, big);
  // Record only: no bytes.
  AdapterRecord only;
  ASSERT_TRUE(c->Get(stored.id(), &only).ok());
  EXPECT_EQ(only.id(), stored.id());
  // A second version; name@N; NotFound and AlreadyExists keep their codes.
  big[1] = f32("b", {3}, 5.0f);
  ASSERT_TRUE(c->Put(rec("big"), big, &stored).ok());
  EXPECT_EQ(stored.version(), 2);
  ASSERT_TRUE(c->Get("big@1", &got).ok());
  EXPECT_EQ(got.version(), 1);
  EXPECT_TRUE(c->Get("nope", &got).IsNotFound());
  EXPECT_EQ(c->Put(rec("other"), big, nullptr).code(), Status::Code::kAlreadyExists);
  // List pages and filters equal the library's.
  for (int i = 0; i < 7; ++i)
    ASSERT_TRUE(c->Put(rec("n" + std::to_string(i), i % 2 ? "dora" : "lora"),
                       {f32("w", {4}, 10.0f + i)}, nullptr)
                    .ok());
  ListFilter f;
  f.kind = "lora";
  std::vector<std::string> remote_ids, local_ids;
  for (auto* api : std::initializer_list<LibraryApi*>{c.get(), s.lib.get()}) {
    std::string token;
    auto& out = api == c.get() ? remote_ids : local_ids;
    do {
      ListPage page;
      ASSERT_TRUE(api->List(f, 2, token, &page).ok());
      for (const auto& x : page.records) out.push_back(x.id());
      token = page.next_token;
    } while (!token.empty());
  }
  EXPECT_EQ(remote_ids, local_ids);
  EXPECT_EQ(remote_ids.size(), 6u);  // big@1, big@2, n0, n2, n4, n6
  // Search, Delete, Stat, Verify, Gc.
  std::vector<SearchHit> hits;
  ASSERT_TRUE(c->Search("proto", {1, 2, 3, 4.5f}, 3, ListFilter(), &hits).ok());
  ASSERT_EQ(hits.size(), 1u);
  EXPECT_EQ(hits[0].name, "big");
  EXPECT_NEAR(hits[0].score, 1.0f, 1e-2f);
  ASSERT_TRUE(c->Delete("n0").ok());
  EXPECT_TRUE(c->Delete("n0").IsNotFound());
  LibraryStats stats;
  ASSERT_TRUE(c->Stat(&stats).ok());
  EXPECT_EQ(stats.records, 8);
  EXPECT_EQ(stats.deleted, 1);
  EXPECT_EQ(stats.signatures, 1);
  int64_t n = 0;
  ASSERT_TRUE(c->Verify(&n).ok());
  EXPECT_EQ(n, 9);
  ASSERT_TRUE(c->Gc(&n).ok());
  EXPECT_EQ(n, 1);
}

// AddSignatures through the API: the record the library stores, codes kept,
// and the server's own checks on the request.
TEST(LookupApi, AddSignaturesRemotelyAsEmbedded) {
  Served s("svc_sigs", ServerOptions());
  auto c = s.client(kToken);
  AdapterRecord stored;
  ASSERT_TRUE(c->Put(rec("x"), {f32("w", {2}, 1.0f)}, &stored).ok());
  Signature sg;
  sg.set_name("centroid");
  for (float v : {1.0f, 2.0f}) sg.add_vector(v);
  AdapterRecord after, local;
  Status st = c->AddSignatures("x", {sg}, &after);
  ASSERT_TRUE(st.ok()) << st.ToString();
  ASSERT_TRUE(s.lib->Get("x", &local).ok());
  EXPECT_EQ(after.SerializeAsString(), local.SerializeAsString());
  EXPECT_EQ(after.signatures_size(), 1);
  EXPECT_TRUE(c->AddSignatures("nope", {sg}, nullptr).IsNotFound());
  EXPECT_TRUE(c->AddSignatures("x", {}, nullptr).IsInvalidArgument());  // the server's check
  Signature unnamed = sg;
  unnamed.clear_name();
  EXPECT_TRUE(c->AddSignatures("x", {unnamed}, nullptr).IsInvalidArgument());
}

TEST(LookupApi, TokensAreCheckedOnEveryCall) {
  Served s("svc_auth");
  ClientOptions co;
  co.target = s.target;
  std::unique_ptr<RemoteLibrary> c;
  for (const std::string& token : {std::string(), std::string("wrong"), kToken + "x"}) {
    co.token = token;
    Status st = RemoteLibrary::Connect(co, &c);
    EXPECT_EQ(st.code(), Status::Code::kUnauthenticated) << token << ": " << st.ToString();
  }
  // Every method, not just Health: a raw stub without a token.
  auto stub = s.stub();
  {
    grpc::ClientContext ctx;
    ListResponse resp;
    EXPECT_EQ(stub->List(&ctx, ListRequest(), &resp).error_code(),
              grpc::StatusCode::UNAUTHENTICATED);
  }
  {
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", "Bearer wrong");
    GetRequest req;
    req.set_key("x");
    auto r = stub->Get(&ctx, req);
    GetChunk m;
    EXPECT_FALSE(r->Read(&m));
    EXPECT_EQ(r->Finish().error_code(), grpc::StatusCode::UNAUTHENTICATED);
  }
  {
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", kToken);  // no "Bearer "
    PutResponse resp;
    auto w = stub->Put(&ctx, &resp);
    w->Write(header("x", 16));
    w->WritesDone();
    EXPECT_EQ(w->Finish().error_code(), grpc::StatusCode::UNAUTHENTICATED);
  }
  EXPECT_TRUE(s.client()->Health().ok());
  // Nothing was stored by the refused Put.
  ListPage page;
  ASSERT_TRUE(s.lib->List(ListFilter(), 10, "", &page).ok());
  EXPECT_TRUE(page.records.empty());
}

TEST(LookupApi, MalformedRequestsNameTheFieldAndStoreNothing) {
  Served s("svc_bad");
  using C = grpc::StatusCode;
  // Put: the record must come first, alone, and describe its tensors truly.
  expect_code(raw_put(s, {}), C::INVALID_ARGUMENT, "record");
  PutChunk no_record;
  piece(&no_record, 0, 0, 4);
  expect_code(raw_put(s, {no_record}), C::INVALID_ARGUMENT, "record");
  PutChunk no_name = header("", 16);
  expect_code(raw_put(s, {no_name}), C::INVALID_ARGUMENT, "record.name");
  expect_code(raw_put(s, {header("x", 16, "F64")}), C::INVALID_ARGUMENT, "record.tensors[0].dtype");
  PutChunk wrong_bytes = header("x", 16);
  wrong_bytes.mutable_record()->mutable_tensors(0)->set_bytes(17);
  expect_code(raw_put(s, {wrong_bytes}), C::INVALID_ARGUMENT, "record.tensors[0].bytes");
  PutChunk huge = header("x", 16);
  // A shape whose byte count overflows 64 bits is malformed...
  huge.mutable_record()->mutable_tensors(0)->set_shape(0, int64_t(1) << 40);
  huge.mutable_record()->mutable_tensors(0)->add_shape(int64_t(1) << 40);
  expect_code(raw_put(s, {huge}), C::INVALID_ARGUMENT, "record.tensors[0].shape");
  // ...one that is merely too large is over the limit.
  huge.mutable_record()->mutable_tensors(0)->set_shape(1, 1);
  huge.mutable_record()->mutable_tensors(0)->set_bytes(uint64_t(1) << 42);
  expect_code(raw_put(s, {huge}), C::RESOURCE_EXHAUSTED, "record.tensors");
  // Pieces: in range, in order, not past the end.
  PutChunk h = header("x", 16);
  PutChunk m = h;
  piece(&m, 1, 0, 4);
  expect_code(raw_put(s, {m}), C::INVALID_ARGUMENT, "pieces[0].tensor");
  m = h;
  piece(&m, 0, 8, 4);
  expect_code(raw_put(s, {m}), C::INVALID_ARGUMENT, "pieces[0].offset");
  m = h;
  piece(&m, 0, 0, 12);
  piece(&m, 0, 12, 8);
  expect_code(raw_put(s, {m}), C::INVALID_ARGUMENT, "pieces[1].data");
  PutChunk twice = header("x", 16);
  expect_code(raw_put(s, {h, twice}), C::INVALID_ARGUMENT, "record");
  // Truncated: the stream ends before every byte arrived.
  m = h;
  piece(&m, 0, 0, 12);
  grpc::Status t = raw_put(s, {m});
  expect_code(t, C::INVALID_ARGUMENT, "ended early");
  EXPECT_NE(t.error_message().find("12 of its 16"), std::string::npos) << t.error_message();
  // A checksum that does not match the bytes that arrived.
  m = h;
  piece(&m, 0, 0, 16);
  m.mutable_record()->mutable_tensors(0)->set_sha256(std::string(64, '0'));
  expect_code(raw_put(s, {m}), C::DATA_LOSS, "tensor w");
  // Unary requests.
  auto stub = s.stub();
  {
    grpc::ClientContext ctx;
    auth(&ctx);
    SearchRequest req;
    req.add_vector(1);
    req.add_vector(std::numeric_limits<float>::quiet_NaN());
    req.set_k(3);
    SearchResponse resp;
    expect_code(stub->Search(&ctx, req, &resp), C::INVALID_ARGUMENT, "vector[1]");
  }
  {
    grpc::ClientContext ctx;
    auth(&ctx);
    SearchRequest req;
    req.add_vector(1);
    SearchResponse resp;
    expect_code(stub->Search(&ctx, req, &resp), C::INVALID_ARGUMENT, "k");
  }
  {
    grpc::ClientContext ctx;
    auth(&ctx);
    ListRequest req;
    req.set_limit(5000);
    ListResponse resp;
    expect_code(stub->List(&ctx, req, &resp), C::INVALID_ARGUMENT, "limit");
  }
  {
    grpc::ClientContext ctx;
    auth(&ctx);
    ListRequest req;
    req.set_page_token("not-a-token");
    ListResponse resp;
    expect_code(stub->List(&ctx, req, &resp), C::INVALID_ARGUMENT, "page_token");
  }
  for (const auto& [key, chunk, field] :
       {std::tuple<std::string, uint32_t, std::string>{"", 0, "key"}, {"x", 10, "chunk_bytes"}}) {
    grpc::ClientContext ctx;
    auth(&ctx);
    GetRequest req;
    req.set_key(key);
    req.set_chunk_bytes(chunk);
    auto r = stub->Get(&ctx, req);
    GetChunk g;
    while (r->Read(&g)) {
    }
    expect_code(r->Finish(), C::INVALID_ARGUMENT, field);
  }
  {
    // Bytes that are no ListRequest at all.
    grpc::GenericStub generic(grpc::CreateChannel(s.target, grpc::InsecureChannelCredentials()));
    grpc::ClientContext ctx;
    auth(&ctx);
    grpc::Slice junk(std::string("\xff\xff\xff\xff\x0f garbage", 13));
    grpc::ByteBuffer req(&junk, 1), resp;
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
    grpc::Status st;
    generic.UnaryCall(&ctx, "/tessera.LibraryService/List", grpc::StubOptions(), &req, &resp,
                      [&](grpc::Status x) {
                        std::lock_guard<std::mutex> l(mu);
                        st = x;
                        done = true;
                        cv.notify_all();
                      });
    std::unique_lock<std::mutex> l(mu);
    ASSERT_TRUE(cv.wait_for(l, std::chrono::seconds(10), [&] { return done; }));
    // gRPC's status-code table: a request proto that does not parse is INTERNAL.
    EXPECT_EQ(st.error_code(), C::INTERNAL) << st.error_code() << " " << st.error_message();
  }
  // Still serving, and nothing of the above was stored.
  auto c = s.client();
  EXPECT_TRUE(c->Health().ok());
  LibraryStats stats;
  ASSERT_TRUE(c->Stat(&stats).ok());
  EXPECT_EQ(stats.records, 0);
}

TEST(LookupApi, SizeAndTimeLimitsHold) {
  ServerOptions so;
  so.max_message_bytes = 256 << 10;
  so.chunk_bytes = 64 << 10;
  so.max_adapter_bytes = 1 << 20;
  so.max_call_ms = 300;
  Served s("svc_limits", so);
  // One message above the message limit: gRPC's RESOURCE_EXHAUSTED.
  PutChunk m = header("x", 512 << 10);
  piece(&m, 0, 0, 512 << 10);
  EXPECT_EQ(raw_put(s, {m}).error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  // An adapter above the adapter limit, even in small chunks: refused up front.
  auto c = s.client();
  Status st = c->Put(rec("big"), {f32("w", {512 << 10}, 1)}, nullptr);
  EXPECT_EQ(st.code(), Status::Code::kResourceExhausted) << st.ToString();
  EXPECT_NE(st.message().find("record.tensors"), std::string::npos) << st.message();
  // A Put that stalls after its header is cancelled at the call limit.
  {
    auto stub = s.stub();
    grpc::ClientContext ctx;
    auth(&ctx, 20000);
    PutResponse resp;
    auto w = stub->Put(&ctx, &resp);
    const auto t0 = std::chrono::steady_clock::now();
    ASSERT_TRUE(w->Write(header("slow", 1024)));
    grpc::Status fin = w->Finish();  // without WritesDone: the server must end it
    const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_EQ(fin.error_code(), grpc::StatusCode::CANCELLED) << fin.error_message();
    EXPECT_LT(sec, 5.0);
  }
  // Adapters within the limits still go through.
  std::vector<TensorData> ok = {f32("w", {200 << 10}, 3)};
  ASSERT_TRUE(c->Put(rec("fits"), ok, nullptr).ok());
  AdapterRecord got;
  std::vector<TensorData> ts;
  ASSERT_TRUE(c->Get("fits", &got, &ts).ok());
  expect_same(ts, ok);
  EXPECT_TRUE(c->Health().ok());
}

TEST(LookupApi, CorruptionIsReportedThroughTheApi) {
  // Damage on disk is found by the server's Get (DATA_LOSS → Corruption); a
  // wrong value that RocksDB's checksums cannot see is found by the client's
  // CRC-32C check on arrival. Verify finds both.
  for (bool on_disk : {true, false}) {
    const std::string dir = testing::temp_dir(on_disk ? "svc_disk" : "svc_logical");
    AdapterRecord stored;
    {
      std::unique_ptr<Library> lib;
      ASSERT_TRUE(Library::Open(Options(), dir, &lib).ok());
      ASSERT_TRUE(lib->Put(rec("victim"), {f32("big", {1024, 64}, 1)}, &stored).ok());
    }
    if (on_disk)
      flip_byte_on_disk(dir);
    else
      flip_stored_byte(dir, stored.id() + "/big", 4000);
    std::unique_ptr<Library> lib;
    ASSERT_TRUE(Library::Open(Options(), dir, &lib).ok());
    ServerOptions so;
    so.token = kToken;
    std::unique_ptr<Server> server;
    ASSERT_TRUE(Server::Start(lib.get(), so, &server).ok());
    ClientOptions co;
    co.target = "127.0.0.1:" + std::to_string(server->port());
    co.token = kToken;
    std::unique_ptr<RemoteLibrary> c;
    ASSERT_TRUE(RemoteLibrary::Connect(co, &c).ok());
    AdapterRecord got;
    std::vector<TensorData> ts;
    Status st = c->Get("victim", &got, &ts);
    EXPECT_TRUE(st.IsCorruption()) << st.ToString();
    EXPECT_NE(st.message().find("tensor big"), std::string::npos) << st.message();
    EXPECT_NE(st.message().find(on_disk ? "damaged on disk" : "CRC-32C"), std::string::npos)
        << st.message();
    st = c->Verify();
    EXPECT_TRUE(st.IsCorruption()) << st.ToString();
    EXPECT_TRUE(c->Health().ok());
  }
}

TEST(LookupApi, TlsWithTheRightRootsOnly) {
  ServerOptions so;
  so.tls_cert_file = fixture("server.pem");
  so.tls_key_file = fixture("server.key");
  Served s("svc_tls", so);
  ClientOptions co;
  co.tls_ca_file = fixture("ca.pem");
  auto c = s.client(kToken, co);
  ASSERT_TRUE(c);
  ASSERT_TRUE(c->Put(rec("tls"), {f32("w", {64}, 1)}, nullptr).ok());
  AdapterRecord got;
  EXPECT_TRUE(c->Get("tls", &got).ok());
  // Plaintext to a TLS server, or TLS trusting another root: refused.
  std::unique_ptr<RemoteLibrary> bad;
  co.target = s.target;
  co.token = kToken;
  co.deadline_ms = 5000;
  co.tls_ca_file.clear();
  EXPECT_FALSE(RemoteLibrary::Connect(co, &bad).ok());
  co.tls_ca_file = fixture("other_ca.pem");
  EXPECT_FALSE(RemoteLibrary::Connect(co, &bad).ok());
  // Mistakes in the server's files are named.
  std::unique_ptr<Server> none;
  ServerOptions half = so;
  half.tls_key_file.clear();
  EXPECT_TRUE(Server::Start(s.lib.get(), half, &none).IsInvalidArgument());
  ServerOptions swapped = so;
  swapped.tls_cert_file = fixture("server.key");
  Status st = Server::Start(s.lib.get(), swapped, &none);
  EXPECT_TRUE(st.IsInvalidArgument());
  EXPECT_NE(st.message().find("server.key"), std::string::npos) << st.message();
  // Beyond loopback a token is required.
  ServerOptions open;
  open.listen = "0.0.0.0:0";
  EXPECT_TRUE(Server::Start(s.lib.get(), open, &none).IsInvalidArgument());
}

// ../shared/cases/reliability/serve-ignores-base-fingerprint: the server
// honours GetRequest.base_fingerprint and force as the proto promises — an
// adapter of another base is FAILED_PRECONDITION naming both (no tensors
// sent), force fetches it, the right base or none fetches it, and a
// malformed fingerprint is INVALID_ARGUMENT naming the field.
TEST(LookupApi, GetHonoursBaseFingerprintAndForce) {
  Served s("get_base");
  ASSERT_TRUE(s.lib->Put(rec("a"), {f32("t", {8}, 1.0f)}, nullptr).ok());  // base "aa…a"
  auto stub = s.stub();
  using C = grpc::StatusCode;
  auto get = [&](const std::string& fp, bool force, int64_t* bytes) {
    grpc::ClientContext ctx;
    auth(&ctx);
    GetRequest req;
    req.set_key("a");
    req.set_base_fingerprint(fp);
    req.set_force(force);
    auto r = stub->Get(&ctx, req);
    GetChunk g;
    *bytes = 0;
    while (r->Read(&g))
      for (const auto& p : g.pieces()) *bytes += static_cast<int64_t>(p.data().size());
    return r->Finish();
  };
  int64_t bytes = 0;
  const grpc::Status other = get(std::string(64, 'b'), false, &bytes);
  expect_code(other, C::FAILED_PRECONDITION, "bbbbbbbbbbbbbbbb");
  EXPECT_NE(other.error_message().find("aaaaaaaaaaaaaaaa"), std::string::npos);
  EXPECT_EQ(bytes, 0);
  EXPECT_TRUE(get(std::string(64, 'b'), true, &bytes).ok());
  EXPECT_EQ(bytes, 32);
  EXPECT_TRUE(get(std::string(64, 'a'), false, &bytes).ok());
  EXPECT_EQ(bytes, 32);
  EXPECT_TRUE(get("", false, &bytes).ok());
  for (const std::string& bad : {std::string(63, 'a'), std::string(64, 'A'), std::string("xyz")})
    expect_code(get(bad, false, &bytes), C::INVALID_ARGUMENT, "base_fingerprint");
}

// ../shared/cases/reliability/serve-reuseport: a second server on a port in
// use is refused, naming it (gRPC's SO_REUSEPORT would split connections
// between two libraries); an out-of-range or malformed port is refused
// before anything listens.
TEST(LookupApi, OneServerPerAddressAndPortsInRange) {
  Served a("reuse_a");
  std::unique_ptr<Library> other;
  const std::string dir = testing::temp_dir("reuse_b");
  ASSERT_TRUE(Library::Open(Options(), dir, &other).ok());
  ServerOptions so;
  so.token = kToken;
  so.listen = a.target;
  std::unique_ptr<Server> second;
  const Status s = Server::Start(other.get(), so, &second);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("in use"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find(a.target), std::string::npos) << s.message();
  // The first still answers, from its own library.
  LibraryStats st;
  EXPECT_TRUE(a.client()->Stat(&st).ok());
  for (const char* bad : {"127.0.0.1:99999", "127.0.0.1:-1", "127.0.0.1:80a", "127.0.0.1:"}) {
    so.listen = bad;
    const Status b = Server::Start(other.get(), so, &second);
    EXPECT_TRUE(b.IsInvalidArgument()) << bad << ": " << b.ToString();
    EXPECT_NE(b.message().find("0 to 65535"), std::string::npos) << b.message();
  }
}

TEST(LookupApi, EightConcurrentClientsSeeConsistentResults) {
  Served s("svc_conc");
  constexpr int kThreads = 8, kRounds = 12;
  std::atomic<int> failures{0};
  std::vector<std::string> errors(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&, t] {
      auto fail = [&](const std::string& what) {
        if (errors[t].empty()) errors[t] = what;
        ++failures;
      };
      auto c = s.client();
      if (!c) return fail("connect");
      for (int i = 0; i < kRounds; ++i) {
        const std::string name = "c" + std::to_string(t);
        std::vector<TensorData> ts = {f32("a", {64, 256}, 100.0f * t + i),
                                      f32("b", {8}, -1.0f * i)};
        AdapterRecord r = rec(name, "lora", {"thread" + std::to_string(t)});
        Signature* sg = r.add_signatures();
        sg->set_name("proto");
        for (int d = 0; d < 16; ++d) sg->add_vector(d == t ? 1.0f : 0.01f * i);
        AdapterRecord stored;
        Status st = c->Put(r, ts, &stored);
        if (!st.ok()) return fail("put: " + st.ToString());
        if (stored.version() != i + 1) return fail("version " + std::to_string(stored.version()));
        AdapterRecord got;
        std::vector<TensorData> back;
        st = c->Get(name + "@latest", &got, &back);
        if (!st.ok() || got.id() != stored.id() || back.size() != 2 ||
            back[0].bytes != ts[0].bytes || back[1].bytes != ts[1].bytes)
          return fail("get: " + st.ToString());
        ListFilter f;
        f.tags = {"thread" + std::to_string(t)};
        ListPage page;
        st = c->List(f, 1000, "", &page);
        if (!st.ok() || static_cast<int>(page.records.size()) != i + 1)
          return fail("list: " + st.ToString() + " " + std::to_string(page.records.size()));
        std::vector<float> q(16, 0.0f);
        q[t] = 1.0f;
        std::vector<SearchHit> hits;
        st = c->Search("proto", q, 1, f, &hits);
        if (!st.ok() || hits.size() != 1 || hits[0].name != name)
          return fail("search: " + st.ToString());
      }
    });
  for (auto& th : threads) th.join();
  for (int t = 0; t < kThreads; ++t) EXPECT_TRUE(errors[t].empty()) << t << ": " << errors[t];
  EXPECT_EQ(failures.load(), 0);
  auto c = s.client();
  EXPECT_TRUE(c->Health().ok());
  LibraryStats stats;
  ASSERT_TRUE(c->Stat(&stats).ok());
  EXPECT_EQ(stats.records, kThreads * kRounds);
  int64_t n = 0;
  ASSERT_TRUE(c->Verify(&n).ok());
  EXPECT_EQ(n, kThreads * kRounds);
}

}  // namespace
}  // namespace tessera::store
