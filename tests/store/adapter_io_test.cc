// PEFT folders and adapter files in and out of a library, embedded and
// through the lookup API alike: factors round-trip bit-exactly, Arrow
// signatures are written, mistakes are InvalidArgument naming the input.
#include "store/adapter_io.h"

#include <gtest/gtest.h>

#include <cstring>

#include "adapters/adapter_file.h"
#include "adapters/peft.h"
#include "routing/arrow.h"
#include "runtime/io/hf.h"
#include "runtime/io/safetensors.h"
#include "store/service.h"
#include "tests/testing.h"

namespace tessera::store {
namespace {

std::string fixture(const std::string& f) {
  return testing::source_dir() + "/tests/fixtures/peft/" + f;
}

TEST(AdapterIo, PeftInAndOutOfEmbeddedAndRemoteLibraries) {
  const std::string dir = testing::temp_dir("adapter_io");
  std::unique_ptr<Library> lib;
  ASSERT_TRUE(Library::Open(Options(), dir + "/lib", &lib).ok());
  ServerOptions so;
  so.token = "t";
  std::unique_ptr<Server> server;
  ASSERT_TRUE(Server::Start(lib.get(), so, &server).ok());
  ClientOptions co;
  co.target = "127.0.0.1:" + std::to_string(server->port());
  co.token = "t";
  std::unique_ptr<RemoteLibrary> remote;
  ASSERT_TRUE(RemoteLibrary::Connect(co, &remote).ok());
  const auto want = adapters::read_peft(fixture("gpt2")).factors();
  int round = 0;
  for (LibraryApi* api : std::initializer_list<LibraryApi*>{lib.get(), remote.get()}) {
    const std::string name = "gpt2-" + std::to_string(round++);
    AdapterRecord r, stored;
    r.set_name(name);
    r.set_task("fixture");
    if (round == 2) {
      // The same content under another name is refused; once the first copy
      // is deleted it goes in again.
      Status dup = ImportPeft(*api, fixture("gpt2"), r, &stored, routing::arrow_signatures);
      EXPECT_EQ(dup.code(), Status::Code::kAlreadyExists) << dup.ToString();
      ASSERT_TRUE(api->Delete("gpt2-0").ok());
    }
    // The signatures are the caller's (launch/ passes Arrow's); the store
    // keeps what it is given.
    Status st = ImportPeft(*api, fixture("gpt2"), r, &stored, routing::arrow_signatures);
    ASSERT_TRUE(st.ok()) << st.ToString();
    EXPECT_EQ(stored.kind(), "lora");
    EXPECT_EQ(stored.task(), "fixture");
    EXPECT_EQ(stored.target_modules_size(), static_cast<int>(want.size()));
    // One Arrow prototype per module, unit length, in the module's input space.
    ASSERT_EQ(stored.signatures_size(), static_cast<int>(want.size()));
    for (int i = 0; i < stored.signatures_size(); ++i) {
      const Signature& sg = stored.signatures(i);
      EXPECT_EQ(sg.name(), "arrow/" + want[i].first);
      EXPECT_EQ(sg.vector_size(), want[i].second.A.size(1));
      double n = 0;
      for (float x : sg.vector()) n += double(x) * x;
      EXPECT_NEAR(n, 1.0, 1e-5);
    }
    // As a value in memory: the same factors as went in.
    adapters::AdapterFile value;
    ASSERT_TRUE(GetAdapter(*api, name, &value).ok());
    ASSERT_EQ(value.factors().size(), want.size());
    EXPECT_EQ(value.factors()[0].second.B.to_vector(), want[0].second.B.to_vector());
    // Out again as PEFT: the same factors, bit for bit; and as an adapter file.
    ASSERT_TRUE(ExportPeft(*api, name, dir + "/out" + name).ok());
    const auto got = adapters::read_peft(dir + "/out" + name).factors();
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < got.size(); ++i) {
      EXPECT_EQ(got[i].first, want[i].first);
      for (const auto& [a, b] : {std::pair{got[i].second.A, want[i].second.A},
                                 std::pair{got[i].second.B, want[i].second.B}}) {
        ASSERT_EQ(a.numel(), b.numel());
        EXPECT_EQ(std::memcmp(a.data(), b.data(), a.numel() * 4), 0) << got[i].first;
      }
      EXPECT_EQ(got[i].second.scale, want[i].second.scale);
    }
    ASSERT_TRUE(GetAdapterFile(*api, name, dir + "/" + name + ".safetensors").ok());
    EXPECT_EQ(adapters::read_adapter(dir + "/" + name + ".safetensors").modules.size(),
              want.size());
  }
  // Mistakes: a DoRA folder without a base, a missing folder, a missing file.
  AdapterRecord r;
  r.set_name("x");
  Status st = ImportPeft(*lib, fixture("gpt2_dora"), r, nullptr, nullptr);
  EXPECT_TRUE(st.IsInvalidArgument()) << st.ToString();
  EXPECT_NE(st.message().find("DoRA"), std::string::npos) << st.message();
  st = ImportPeft(*remote, dir + "/nowhere", r, nullptr, nullptr);
  EXPECT_TRUE(st.IsInvalidArgument()) << st.ToString();
  EXPECT_NE(st.message().find("nowhere"), std::string::npos) << st.message();
  st = PutAdapterFile(*lib, dir + "/none.safetensors", r, nullptr, nullptr);
  EXPECT_TRUE(st.IsInvalidArgument()) << st.ToString();
  EXPECT_TRUE(ExportPeft(*remote, "no-such", dir + "/y").IsNotFound());
}

// An adapter with LoRA on an embedding and a modules_to_save copy beside its
// Linear LoRAs goes in and comes back whole (Arrow signatures for the Linear
// ones; before, the put refused it).
TEST(AdapterIo, EmbeddingLorasAndModuleCopiesRoundTrip) {
  const std::string src = testing::source_dir() + "/tests/fixtures/interchange/";
  const std::string dir = testing::temp_dir("adapter_io_extras");
  for (const char* name : {"embedding", "modules_to_save"}) {
    auto model = io::load_hf_decoder(src + "gpt2_untied/model");
    adapters::PeftImport imp =
        adapters::import_peft(src + name, model->linears(), model->params(), model->embeddings());
    const std::string file = dir + "/" + name + ".safetensors";
    adapters::save_adapter(*imp.set, file, "tiny");
    std::unique_ptr<Library> lib;
    ASSERT_TRUE(Library::Open(Options(), dir + "/lib_" + name, &lib).ok());
    AdapterRecord rec, stored;
    rec.set_name(name);
    Status put = PutAdapterFile(*lib, file, rec, &stored, routing::arrow_signatures);
    ASSERT_TRUE(put.ok()) << put.ToString();
    EXPECT_GT(stored.signatures_size(), 0) << name;
    // Without a signature function the store computes none.
    AdapterRecord bare, bare_stored;
    bare.set_name(std::string(name) + "-bare");
    std::unique_ptr<Library> bare_lib;
    ASSERT_TRUE(Library::Open(Options(), dir + "/lib_bare_" + name, &bare_lib).ok());
    ASSERT_TRUE(PutAdapterFile(*bare_lib, file, bare, &bare_stored, nullptr).ok());
    EXPECT_EQ(bare_stored.signatures_size(), 0) << name;
    ASSERT_TRUE(GetAdapterFile(*lib, name, dir + "/back.safetensors").ok());
    const adapters::AdapterFile a = adapters::read_adapter(file),
                                b = adapters::read_adapter(dir + "/back.safetensors");
    EXPECT_EQ(a.embedding_modules, b.embedding_modules);
    EXPECT_EQ(a.modules_to_save, b.modules_to_save);
    EXPECT_FALSE(a.embedding_modules.empty() && a.modules_to_save.empty());
    auto f1 = io::SafetensorsFile::open(file),
         f2 = io::SafetensorsFile::open(dir + "/back.safetensors");
    ASSERT_EQ(f1->tensors().size(), f2->tensors().size());
    for (const auto& t : f1->tensors())
      EXPECT_EQ(f1->load_f32(t).to_vector(), f2->load_f32(t.name).to_vector()) << t.name;
  }
}

}  // namespace
}  // namespace tessera::store
