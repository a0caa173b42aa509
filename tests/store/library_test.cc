// The adapter library on RocksDB: round trips, versions, filters and paging
// against brute force, soft delete and Gc, reopening, and corruption found by
// Get and Verify.
#include "store/library.h"

#include "store/crc32c.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>

#include "runtime/common/rng.h"
#include "tests/store/store_testing.h"
#include "tests/testing.h"

namespace tessera::store {
namespace {

std::unique_ptr<Library> open(const std::string& dir) {
  std::unique_ptr<Library> lib;
  Status s = Library::Open(Options(), dir, &lib);
  EXPECT_TRUE(s.ok()) << s.ToString();
  return lib;
}

TEST(Checksums, KnownValues) {
  // The CRC-32C check value (RFC 3720) and SHA-256("abc") (FIPS 180-2).
  EXPECT_EQ(crc32c("123456789", 9), 0xE3069283u);
  EXPECT_EQ(crc32c("", 0), 0u);
  std::string odd(1003, 'x');  // a tail that is not a multiple of 8
  EXPECT_EQ(crc32c(odd.data(), 1003), crc32c(odd.data() + 500, 503, crc32c(odd.data(), 500)));
  // Long inputs (the three-stream path and its joins) against the bit-wise definition.
  std::string big(3 * 8192 * 2 + 3 * 256 + 77, '\0');
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>((i * 2654435761u) >> 13);
  for (size_t len : {size_t(3 * 256), size_t(3 * 8192), size_t(3 * 8192 + 5), big.size()}) {
    uint32_t ref = ~0u;
    for (size_t i = 0; i < len; ++i) {
      ref ^= static_cast<unsigned char>(big[i]);
      for (int k = 0; k < 8; ++k) ref = (ref >> 1) ^ (0x82F63B78u & (0u - (ref & 1u)));
    }
    EXPECT_EQ(crc32c(big.data(), len), ~ref) << len;
    EXPECT_EQ(crc32c(big.data(), len), crc32c(big.data() + 100, len - 100, crc32c(big.data(), 100)))
        << len;
  }
  EXPECT_EQ(sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(Library, PutGetRoundTripsBitExactlyAndSurvivesReopen) {
  const std::string dir = testing::temp_dir("library_rt");
  // 256 KB and tiny tensors: blob files and inline values.
  std::vector<TensorData> ts = {f32("layers.0.lora_A.weight", {8, 8192}, 1.0f),
                                f32("layers.0.lora_B.weight", {4, 2}, -3.0f)};
  AdapterRecord stored;
  {
    auto lib = open(dir);
    ASSERT_TRUE(lib->Put(rec("perm"), ts, &stored).ok());
    EXPECT_EQ(stored.version(), 1);
    EXPECT_EQ(stored.id().size(), 64u);
    EXPECT_EQ(stored.tensors_size(), 2);
    // The same content again is the same record, not a new version.
    AdapterRecord again;
    ASSERT_TRUE(lib->Put(rec("perm"), ts, &again).ok());
    EXPECT_EQ(again.id(), stored.id());
    EXPECT_EQ(again.version(), 1);
    // Under another name it is refused, naming the record that holds it.
    Status dup = lib->Put(rec("copy"), ts, nullptr);
    EXPECT_EQ(dup.code(), Status::Code::kAlreadyExists);
    EXPECT_NE(dup.message().find("perm@1"), std::string::npos) << dup.ToString();
  }
  auto lib = open(dir);
  for (const std::string& key :
       {stored.id(), std::string("perm"), std::string("perm@1"), std::string("perm@latest")}) {
    AdapterRecord got;
    std::vector<TensorData> back;
    Status s = lib->Get(key, &got, &back);
    ASSERT_TRUE(s.ok()) << key << ": " << s.ToString();
    EXPECT_EQ(got.id(), stored.id());
    ASSERT_EQ(back.size(), 2u);
    for (size_t i = 0; i < 2; ++i) {
      EXPECT_EQ(back[i].name, ts[i].name);
      EXPECT_EQ(back[i].shape, ts[i].shape);
      EXPECT_TRUE(back[i].bytes == ts[i].bytes) << "tensor bytes differ";
    }
  }
  int64_t n = 0;
  EXPECT_TRUE(lib->Verify(&n).ok());
  EXPECT_EQ(n, 1);
}

TEST(Library, VersionsNamesAndBadInput) {
  auto lib = open(testing::temp_dir("library_versions"));
  AdapterRecord a, b, c;
  ASSERT_TRUE(lib->Put(rec("task"), {f32("w", {2}, 1)}, &a).ok());
  ASSERT_TRUE(lib->Put(rec("task"), {f32("w", {2}, 2)}, &b).ok());
  ASSERT_TRUE(lib->Put(rec("other"), {f32("w", {2}, 3)}, &c).ok());
  EXPECT_EQ(b.version(), 2);
  EXPECT_EQ(c.version(), 1);
  AdapterRecord got;
  ASSERT_TRUE(lib->Get("task@latest", &got).ok());
  EXPECT_EQ(got.id(), b.id());
  ASSERT_TRUE(lib->Get("task@1", &got).ok());
  EXPECT_EQ(got.id(), a.id());
  // Deleting the latest makes the previous one latest; the number stays taken.
  ASSERT_TRUE(lib->Delete("task@2").ok());
  ASSERT_TRUE(lib->Get("task", &got).ok());
  EXPECT_EQ(got.id(), a.id());
  EXPECT_TRUE(lib->Get("task@2", &got).IsNotFound());
  int64_t removed = 0;
  ASSERT_TRUE(lib->Gc(&removed).ok());
  EXPECT_EQ(removed, 1);
  AdapterRecord d;
  ASSERT_TRUE(lib->Put(rec("task"), {f32("w", {2}, 4)}, &d).ok());
  EXPECT_EQ(d.version(), 3);
  EXPECT_TRUE(lib->Get("nope", &got).IsNotFound());
  EXPECT_TRUE(lib->Get("task@x", &got).IsInvalidArgument());
  EXPECT_TRUE(lib->Get("task@0", &got).IsInvalidArgument());
  EXPECT_TRUE(lib->Get("", &got).IsInvalidArgument());
  EXPECT_TRUE(lib->Put(rec("a@b"), {f32("w", {2}, 1)}, nullptr).IsInvalidArgument());
  EXPECT_TRUE(lib->Put(rec("x"), {}, nullptr).IsInvalidArgument());
  TensorData bad = f32("w", {3}, 1);
  bad.bytes.pop_back();
  Status s = lib->Put(rec("x"), {bad}, nullptr);
  EXPECT_TRUE(s.IsInvalidArgument());
  EXPECT_NE(s.message().find("tensor w"), std::string::npos) << s.ToString();
  EXPECT_TRUE(
      lib->Put(rec("x"), {f32("w", {1}, 1), f32("w", {1}, 2)}, nullptr).IsInvalidArgument());
  int64_t n = 0;
  EXPECT_TRUE(lib->Verify(&n).ok());
  EXPECT_EQ(n, 3);
}

TEST(Library, ListFiltersAndPagesLikeBruteForce) {
  auto lib = open(testing::temp_dir("library_list"));
  std::vector<AdapterRecord> all;
  for (int i = 0; i < 37; ++i) {
    std::vector<std::string> tags;
    if (i % 2) tags.push_back("odd");
    if (i % 3 == 0) tags.push_back("three");
    AdapterRecord r;
    ASSERT_TRUE(lib->Put(rec(i % 4 ? "perm" : "rot", i % 5 ? "lora" : "dora", tags,
                             i % 2 ? "permute" : "rotate"),
                         {f32("w", {3}, static_cast<float>(i))}, &r)
                    .ok());
    all.push_back(r);
  }
  ASSERT_TRUE(lib->Delete(all[3].id()).ok());
  all[3].set_deleted(true);
  std::vector<ListFilter> filters(6);
  filters[1].tags = {"odd"};
  filters[2].tags = {"odd", "three"};
  filters[3].kind = "dora";
  filters[4].task = "rotate";
  filters[4].name_prefix = "ro";
  filters[5].include_deleted = true;
  for (const ListFilter& f : filters) {
    std::vector<std::string> want;
    for (const auto& r : all) {
      bool ok = !r.deleted() || f.include_deleted;
      for (const auto& t : f.tags)
        ok = ok && std::find(r.tags().begin(), r.tags().end(), t) != r.tags().end();
      ok = ok && (f.kind.empty() || r.kind() == f.kind) && (f.task.empty() || r.task() == f.task);
      ok = ok && r.name().rfind(f.name_prefix, 0) == 0;
      if (ok) want.push_back(r.id());
    }
    std::sort(want.begin(), want.end());
    std::vector<std::string> got;
    std::string token;
    int pages = 0;
    do {
      ListPage page;
      ASSERT_TRUE(lib->List(f, 5, token, &page).ok());
      for (const auto& r : page.records) got.push_back(r.id());
      token = page.next_token;
      ASSERT_LT(++pages, 20);
    } while (!token.empty());
    EXPECT_EQ(got, want);
  }
  ListPage p;
  EXPECT_TRUE(lib->List({}, 0, "", &p).IsInvalidArgument());
  EXPECT_TRUE(lib->List({}, 5, "garbage", &p).IsInvalidArgument());
}

TEST(Library, SearchRanksLikeBruteForceCosine) {
  const std::string dir = testing::temp_dir("library_search");
  Rng rng(3);
  const int D = 16;
  std::vector<AdapterRecord> all;
  std::vector<std::vector<float>> vecs;
  {
    auto lib = open(dir);
    for (int i = 0; i < 300; ++i) {
      AdapterRecord r = rec("e" + std::to_string(i % 7), "lora",
                            i % 2 ? std::vector<std::string>{"odd"} : std::vector<std::string>{});
      Signature* sg = r.add_signatures();
      sg->set_name("mean");
      std::vector<float> v(D);
      for (float& x : v) x = rng.normal(0.0f, 1.0f);
      for (float x : v) sg->add_vector(x);
      AdapterRecord st;
      ASSERT_TRUE(lib->Put(r, {f32("w", {1}, static_cast<float>(i))}, &st).ok());
      all.push_back(st);
      vecs.push_back(v);
    }
    ASSERT_TRUE(lib->Delete(all[0].id()).ok());
  }
  auto lib = open(dir);  // the in-memory index is rebuilt from the records
  std::vector<float> q(D);
  for (float& x : q) x = rng.normal(0.0f, 1.0f);
  for (bool odd : {false, true}) {
    std::vector<std::pair<double, std::string>> want;
    for (size_t i = 1; i < all.size(); ++i) {  // record 0 is deleted
      if (odd && i % 2 == 0) continue;
      double dot = 0, nq = 0, nv = 0;
      for (int d = 0; d < D; ++d) {
        dot += static_cast<double>(q[d]) * vecs[i][d];
        nq += static_cast<double>(q[d]) * q[d];
        nv += static_cast<double>(vecs[i][d]) * vecs[i][d];
      }
      want.push_back({-dot / std::sqrt(nq * nv), all[i].id()});
    }
    std::sort(want.begin(), want.end());
    ListFilter f;
    if (odd) f.tags = {"odd"};
    for (const std::string sig : {"", "mean"}) {
      std::vector<SearchHit> hits;
      ASSERT_TRUE(lib->Search(sig, q, 10, f, &hits).ok());
      ASSERT_EQ(hits.size(), 10u);
      for (size_t j = 0; j < hits.size(); ++j) {
        EXPECT_EQ(hits[j].id, want[j].second) << "rank " << j;
        EXPECT_NEAR(hits[j].score, -want[j].first, 1e-5);
      }
    }
  }
  std::vector<SearchHit> hits;
  EXPECT_TRUE(lib->Search("", std::vector<float>(D + 1, 1.0f), 3, {}, &hits).IsInvalidArgument());
  EXPECT_TRUE(lib->Search("layer9", q, 3, {}, &hits).IsNotFound());
  EXPECT_TRUE(lib->Search("", q, 0, {}, &hits).IsInvalidArgument());
  AdapterRecord wrong = rec("w");
  wrong.add_signatures()->set_name("mean");
  wrong.mutable_signatures(0)->add_vector(1.0f);  // 1 dimension, the library has 16
  EXPECT_TRUE(lib->Put(wrong, {f32("w", {1}, 9)}, nullptr).IsInvalidArgument());
}

// Signatures added to stored adapters: new names appended, a name there
// replaced, the id unchanged, Search finds the new vectors at once and after
// reopening; bad signatures and deleted adapters refused.
TEST(Library, AddSignaturesToStoredAdapters) {
  const std::string dir = testing::temp_dir("library_add_signatures");
  auto sig = [](const std::string& name, std::vector<float> v) {
    Signature s;
    s.set_name(name);
    for (float x : v) s.add_vector(x);
    return s;
  };
  std::string a_id, b_id;
  {
    auto lib = open(dir);
    AdapterRecord a = rec("a"), b = rec("b"), st;
    *a.add_signatures() = sig("arrow/q", {1, 0, 0});
    ASSERT_TRUE(lib->Put(a, {f32("w", {1}, 1)}, &st).ok());
    a_id = st.id();
    ASSERT_TRUE(lib->Put(b, {f32("w", {1}, 2)}, &st).ok());
    b_id = st.id();
    // b had none: it gains two; a's arrow/q is replaced and it gains centroid.
    ASSERT_TRUE(
        lib->AddSignatures("b", {sig("arrow/q", {0, 1, 0}), sig("centroid", {1, 1})}, &st).ok());
    EXPECT_EQ(st.id(), b_id);
    EXPECT_EQ(st.signatures_size(), 2);
    ASSERT_TRUE(
        lib->AddSignatures(a_id, {sig("arrow/q", {0, 0, 1}), sig("centroid", {1, -1})}, &st).ok());
    EXPECT_EQ(st.id(), a_id);
    ASSERT_EQ(st.signatures_size(), 2);
    EXPECT_EQ(st.signatures(0).name(), "arrow/q");
    EXPECT_EQ(st.signatures(0).vector(2), 1.0f);
    std::vector<SearchHit> hits;
    ASSERT_TRUE(lib->Search("arrow/q", {0, 0.1f, 1}, 2, {}, &hits).ok());
    ASSERT_EQ(hits.size(), 2u);
    EXPECT_EQ(hits[0].id, a_id);  // the replaced vector, not the old (1, 0, 0)
    // Refused: a dimension the library's signatures of that name do not have,
    // an empty or repeated one, a deleted or unknown adapter.
    EXPECT_TRUE(lib->AddSignatures("a", {sig("centroid", {1, 2, 3})}, nullptr).IsInvalidArgument());
    EXPECT_TRUE(lib->AddSignatures("a", {sig("x", {})}, nullptr).IsInvalidArgument());
    EXPECT_TRUE(
        lib->AddSignatures("a", {sig("x", {1}), sig("x", {2})}, nullptr).IsInvalidArgument());
    EXPECT_TRUE(lib->AddSignatures("nobody", {sig("x", {1})}, nullptr).IsNotFound());
    ASSERT_TRUE(lib->Delete("b").ok());
    EXPECT_TRUE(lib->AddSignatures("b", {sig("x", {1})}, nullptr).IsNotFound());
  }
  auto lib = open(dir);  // persisted, and the index rebuilt from the records
  std::vector<SearchHit> hits;
  ASSERT_TRUE(lib->Search("centroid", {1, -1}, 5, {}, &hits).ok());
  ASSERT_EQ(hits.size(), 1u);  // b is deleted
  EXPECT_EQ(hits[0].id, a_id);
  EXPECT_NEAR(hits[0].score, 1.0f, 1e-6);
}

TEST(Library, AFlippedTensorByteIsCorruptionNamingRecordAndTensor) {
  // Damage on disk: a byte of a blob file. Get (RocksDB's checksum of what
  // it reads) and Verify (ours) both report it, naming record and tensor.
  for (bool on_disk : {true, false}) {
    const std::string dir = testing::temp_dir(on_disk ? "library_disk" : "library_logical");
    AdapterRecord stored;
    {
      auto lib = open(dir);
      ASSERT_TRUE(
          lib->Put(rec("victim"), {f32("big", {1024, 64}, 1), f32("small", {2}, 2)}, &stored).ok());
    }
    if (on_disk)
      flip_byte_on_disk(dir);
    else  // A wrong value written through RocksDB: its checksums hold, ours does not.
      flip_stored_byte(dir, stored.id() + "/big", 1000);
    Options paranoid;
    paranoid.paranoid_get = true;
    for (bool check_crc : {false, true}) {
      std::unique_ptr<Library> lib;
      ASSERT_TRUE(Library::Open(check_crc ? paranoid : Options(), dir, &lib).ok());
      AdapterRecord got;
      std::vector<TensorData> ts;
      Status s = lib->Get("victim", &got, &ts);
      if (!on_disk && !check_crc) {
        // Only our CRC can see this one: a plain Get hands the bytes over
        // (the remote client and Verify check the CRC).
        EXPECT_TRUE(s.ok()) << s.ToString();
      } else {
        EXPECT_TRUE(s.IsCorruption()) << on_disk << check_crc << ": " << s.ToString();
        EXPECT_NE(s.message().find(stored.id()), std::string::npos) << s.message();
        EXPECT_NE(s.message().find("tensor big"), std::string::npos) << s.message();
      }
      s = lib->Verify();
      EXPECT_TRUE(s.IsCorruption()) << s.ToString();
      EXPECT_NE(s.message().find("tensor big"), std::string::npos) << s.message();
    }
  }
  // Opening without create on a missing folder says so.
  std::unique_ptr<Library> none;
  Options o;
  o.create_if_missing = false;
  EXPECT_FALSE(Library::Open(o, testing::temp_dir("library_none") + "/x", &none).ok());
}

}  // namespace
}  // namespace tessera::store
