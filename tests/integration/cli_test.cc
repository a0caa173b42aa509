// The tessera binary as a user runs it: pretrain from a config file with
// overrides, resume, eval, and one clear message (exit 2) for each mistake.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>

#include <nlohmann/json.hpp>

#include <array>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include "tests/testing.h"

namespace tessera {
namespace {

namespace fs = std::filesystem;

struct CliRun {
  int code;
  std::string out;
};

// Everything a popen'd command prints until it ends, and its exit code.
CliRun finish(FILE* p) {
  std::string out;
  std::array<char, 4096> buf{};
  while (size_t n = fread(buf.data(), 1, buf.size(), p)) out.append(buf.data(), n);
  const int st = pclose(p);
  return {WIFEXITED(st) ? WEXITSTATUS(st) : -1, out};
}

CliRun run(const std::string& args) {
  return finish(popen((std::string(TESSERA_BINARY) + " " + args + " 2>&1").c_str(), "r"));
}

// The tessera command on `np` ranks under mpirun.
CliRun run_mpirun(int np, const std::string& args) {
  return finish(popen(("mpirun --allow-run-as-root --oversubscribe -np " + std::to_string(np) +
                       " " + std::string(TESSERA_BINARY) + " " + args + " 2>&1")
                          .c_str(),
                      "r"));
}

// `tessera serve` started in the background on a free port of loopback.
struct Served {
  FILE* out = nullptr;  // its output (the first line after the pid: the banner)
  int pid = 0;
  std::string banner, hostport;  // hostport empty: it did not start
};
Served serve(const std::string& library, const std::string& token_file) {
  Served s;
  const std::string cmd = "sh -c 'echo $$; exec " + std::string(TESSERA_BINARY) +
                          " serve --library " + library + " --listen 127.0.0.1:0 --token-file " +
                          token_file + "' 2>&1";
  s.out = popen(cmd.c_str(), "r");
  std::array<char, 512> line{};
  if (!s.out || !fgets(line.data(), line.size(), s.out)) return s;
  s.pid = std::atoi(line.data());
  if (!fgets(line.data(), line.size(), s.out)) return s;
  s.banner = line.data();
  const size_t at = s.banner.find("127.0.0.1:");
  if (at != std::string::npos)
    s.hostport = "127.0.0.1:" + std::to_string(std::atoi(s.banner.c_str() + at + 10));
  return s;
}

class Cli : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::temp_dir("cli");
    std::ofstream c(dir_ + "/corpus.txt");
    for (int i = 0; i < 400; ++i) c << "modular experts share one frozen base. ";
    std::ofstream(dir_ + "/lm.pbtxt") << "model: \"decoder\"\n"
                                         "decoder { d_model: 32 n_layer: 1 n_head: 2 n_ctx: 16 }\n"
                                         "data { kind: \"text\" files: \"" +
                                             dir_ +
                                             "/corpus.txt\" holdout: 0.2 }\n"
                                             "batch_size: 4\nsteps: 20\nlog_every: 5\n"
                                             "optim { warmup_steps: 2 }\n"
                                             "out_dir: \"" +
                                             dir_ + "/run\"\n";
  }
  // A small MLP base pretrained on a Fashion-MNIST subset into dir_/<name>.
  CliRun pretrain_mlp(const std::string& name, int steps) {
    return run(
        "pretrain --quiet --model mlp data.limit_train=2048 data.limit_test=500 epochs=0 "
        "steps=" +
        std::to_string(steps) + " threads=1 out_dir=" + dir_ + "/" + name);
  }
  // dir_/base pretrained, then a LoRA on permute:seed=2 trained into `library` as perm2
  // (its files under dir_/ad).
  CliRun base_and_adapter_in(const std::string& library) {
    CliRun p = pretrain_mlp("base", 20);
    if (p.code != 0) return p;
    return run("train-adapter --quiet --base " + dir_ +
               "/base/checkpoint.safetensors --task permute:seed=2 --out " + dir_ +
               "/ad --library " + library + " --name perm2 epochs=0 steps=10 threads=1");
  }
  // The "accuracy ..." tail of eval with `adapter` on `base` for `task`.
  std::string accuracy(const std::string& base, const std::string& adapter,
                       const std::string& task) {
    CliRun e = run("eval --checkpoint " + base + " --adapter " + adapter + " data.task=" + task);
    EXPECT_EQ(e.code, 0) << e.out;
    const size_t at = e.out.find("accuracy");
    return at == std::string::npos ? e.out : e.out.substr(at);
  }
  std::string dir_;
};

TEST_F(Cli, PretrainResumeAndEval) {
  CliRun a = run("pretrain --quiet --config " + dir_ + "/lm.pbtxt --max-steps 8 threads=1");
  ASSERT_EQ(a.code, 0) << a.out;
  EXPECT_NE(a.out.find("8 steps"), std::string::npos) << a.out;
  CliRun b = run("pretrain --quiet --config " + dir_ + "/lm.pbtxt --resume " + dir_ +
                 "/run/checkpoint.safetensors threads=1");
  ASSERT_EQ(b.code, 0) << b.out;
  EXPECT_NE(b.out.find("resumed"), std::string::npos) << b.out;
  EXPECT_NE(b.out.find("20 steps"), std::string::npos) << b.out;
  std::ifstream m(dir_ + "/run/metrics.jsonl");
  std::string line, last;
  int rows = 0;
  while (std::getline(m, line)) {
    ++rows;
    last = line;
  }
  EXPECT_GE(rows, 4);
  EXPECT_NE(last.find("\"step\":20"), std::string::npos) << last;
  EXPECT_NE(last.find("tok_per_s"), std::string::npos) << last;
  CliRun e = run("eval --checkpoint " + dir_ + "/run/checkpoint.safetensors");
  ASSERT_EQ(e.code, 0) << e.out;
  EXPECT_NE(e.out.find("bits/token"), std::string::npos) << e.out;
  // The exported Hugging Face folder evaluates too (same weights, default data overridden).
  CliRun h = run("eval --checkpoint " + dir_ + "/run/model data.files=" + dir_ +
                 "/corpus.txt data.holdout=0.2");
  ASSERT_EQ(h.code, 0) << h.out;
  auto loss_of = [](const std::string& s) { return s.substr(s.find("loss ")); };
  EXPECT_EQ(loss_of(e.out), loss_of(h.out));
  // The folder is the same base as the checkpoint: one fingerprint, so an
  // adapter trained on the checkpoint loads onto the folder unforced.
  CliRun lm = run("train-adapter --quiet --base " + dir_ +
                  "/run/checkpoint.safetensors --task text:" + dir_ + "/corpus.txt --out " + dir_ +
                  "/lm_ad steps=3 threads=1");
  ASSERT_EQ(lm.code, 0) << lm.out;
  CliRun ha = run("eval --checkpoint " + dir_ + "/run/model --adapter " + dir_ +
                  "/lm_ad/adapter.safetensors data.files=" + dir_ + "/corpus.txt data.holdout=0.2");
  EXPECT_EQ(ha.code, 0) << ha.out;
}

// A Hugging Face folder whose sizes are not tessera's defaults, as every real
// checkpoint's are: pretrain from it, and every base-taking command on the
// folder or on the checkpoint; the checkpoint needs the folder no more.
TEST_F(Cli, AHuggingFaceFolderIsABaseLikeAnyCheckpoint) {
  const std::string small = dir_ + "/small", hf = small + "/model";
  const std::string data = " data.files=" + dir_ + "/corpus.txt data.holdout=0.2 threads=1";
  CliRun a =
      run("pretrain --quiet --model decoder decoder.flavor=llama decoder.d_model=32 "
          "decoder.n_head=4 decoder.n_kv_head=2 decoder.n_layer=2 decoder.n_ctx=32 "
          "decoder.d_ff=48 decoder.rope_theta=500 decoder.norm_eps=1e-6 --max-steps 1 "
          "out_dir=" +
          small + data);
  ASSERT_EQ(a.code, 0) << a.out;
  CliRun ft = run("pretrain --quiet --model decoder decoder.init_from=" + hf +
                  " --max-steps 2 out_dir=" + dir_ + "/ft" + data);
  ASSERT_EQ(ft.code, 0) << ft.out;
  EXPECT_NE(ft.out.find("decoder (llama)"), std::string::npos) << ft.out;
  const std::string ckpt = dir_ + "/ft/checkpoint.safetensors";
  const std::string task = " --task text:" + dir_ + "/corpus.txt";
  for (const std::string& base : {ckpt, hf}) {
    CliRun t = run("train-adapter --quiet --base " + base + task + " --adapter lora:r=2 --out " +
                   dir_ + "/ad steps=2 data.seq_len=8 threads=1");
    ASSERT_EQ(t.code, 0) << base << "\n" << t.out;
    CliRun i = run("import-peft " + dir_ + "/ad/adapter --base " + base + " -o " + dir_ +
                   "/back.safetensors");
    EXPECT_EQ(i.code, 0) << base << "\n" << i.out;
  }
  // Token ids (tokens:GLOB), as a real model's tokenizer would write them.
  {
    std::ofstream bin(dir_ + "/train.bin", std::ios::binary);
    for (int i = 0; i < 4096; ++i) {
      const uint16_t id = static_cast<uint16_t>((i * 7 + i / 13) % 256);
      bin.write(reinterpret_cast<const char*>(&id), 2);
    }
  }
  CliRun tok = run("train-adapter --quiet --base " + hf + " --task tokens:" + dir_ +
                   "/train.bin --adapter lora:r=2 --out " + dir_ + "/tok steps=2 threads=1");
  EXPECT_EQ(tok.code, 0) << tok.out;
  // The checkpoint holds the whole architecture: the folder can go.
  CliRun before = run("eval --checkpoint " + ckpt + data);
  ASSERT_EQ(before.code, 0) << before.out;
  fs::rename(hf, small + "/moved");
  CliRun after = run("eval --checkpoint " + ckpt + data);
  ASSERT_EQ(after.code, 0) << after.out;
  EXPECT_EQ(after.out, before.out);
  // An override that contradicts the architecture names both values.
  CliRun d = run("eval --checkpoint " + ckpt + " decoder.rope_theta=10000" + data);
  EXPECT_EQ(d.code, 2) << d.out;
  EXPECT_NE(d.out.find("decoder.rope_theta = 10000 contradicts"), std::string::npos) << d.out;
  EXPECT_NE(d.out.find("decoder.rope_theta = 500"), std::string::npos) << d.out;
  CliRun p = run("pretrain --quiet --model decoder decoder.init_from=" + small +
                 "/moved decoder.n_head=2 --max-steps 1 out_dir=" + dir_ + "/ft2" + data);
  EXPECT_EQ(p.code, 2) << p.out;
  EXPECT_NE(p.out.find("decoder.n_head = 2 contradicts"), std::string::npos) << p.out;
  // Restating the architecture as it is, is fine.
  CliRun same = run("eval --checkpoint " + ckpt + " decoder.n_head=4 decoder.n_kv_head=2" + data);
  EXPECT_EQ(same.code, 0) << same.out;
  // Windows longer than the context are refused by name.
  CliRun w = run("eval --checkpoint " + ckpt + " data.seq_len=64" + data);
  EXPECT_EQ(w.code, 2) << w.out;
  EXPECT_NE(w.out.find("data.seq_len = 64"), std::string::npos) << w.out;
}

// rocksdb #5029: a read-only command on a mistyped path, or on a folder that
// holds no library, must leave the file system as it was; a library another
// process holds is named as such (rocksdb #991).
TEST_F(Cli, LibraryReadsTouchNothingAndAHeldLibraryIsNamed) {
  const std::string run_dir = dir_ + "/runs/myrun";
  fs::create_directories(run_dir);
  std::ofstream(run_dir + "/notes.txt") << "my notes\n";
  auto listing = [&] {
    std::set<std::string> s;
    for (const auto& e : fs::recursive_directory_iterator(dir_ + "/runs")) s.insert(e.path());
    return s;
  };
  const auto before = listing();
  for (const std::string& cmd : {std::string("ls"), std::string("stat"), std::string("verify"),
                                 std::string("show x"), "get x -o " + dir_ + "/x"}) {
    for (const std::string& where : {dir_ + "/runs/mylibray", run_dir}) {
      CliRun r = run("library --library " + where + " " + cmd);
      EXPECT_EQ(r.code, 2) << r.out;
      EXPECT_NE(r.out.find("no adapter library at"), std::string::npos) << r.out;
    }
  }
  EXPECT_EQ(listing(), before);
  // A library held by a server: reads and writes say so and point to --remote.
  const std::string lib = dir_ + "/held";
  ASSERT_EQ(base_and_adapter_in(lib).code, 0);
  const auto files = [&] {
    std::set<std::string> s;
    for (const auto& e : fs::directory_iterator(lib)) s.insert(e.path().filename());
    return s;
  };
  const auto lib_files = files();
  CliRun ls = run("library --library " + lib + " ls");
  EXPECT_EQ(ls.code, 0) << ls.out;
  EXPECT_EQ(files(), lib_files) << "a read-only ls wrote into the library";
  std::ofstream(dir_ + "/token") << "cli-test-token\n";
  Served sv = serve(lib, dir_ + "/token");
  ASSERT_FALSE(sv.hostport.empty()) << sv.banner;
  for (const std::string& cmd :
       {std::string("ls"), "put " + dir_ + "/ad/adapter.safetensors --name other"}) {
    CliRun r = run("library --library " + lib + " " + cmd);
    EXPECT_EQ(r.code, 2) << r.out;
    EXPECT_NE(r.out.find("is open in another process (pid " + std::to_string(sv.pid)),
              std::string::npos)
        << r.out;
    EXPECT_NE(r.out.find("--remote"), std::string::npos) << r.out;
  }
  kill(sv.pid, SIGTERM);
  pclose(sv.out);
}

TEST_F(Cli, TrainAdapterOnAFrozenMlpBase) {
  CliRun p = pretrain_mlp("base", 40);
  ASSERT_EQ(p.code, 0) << p.out;
  CliRun a = run("train-adapter --quiet --base " + dir_ +
                 "/base/checkpoint.safetensors --task permute:seed=3 --out " + dir_ +
                 "/ad --adapter lora:r=4,alpha=8 epochs=1 threads=1");
  ASSERT_EQ(a.code, 0) << a.out;
  EXPECT_NE(a.out.find("base        accuracy"), std::string::npos) << a.out;
  EXPECT_NE(a.out.find("adapter     accuracy"), std::string::npos) << a.out;
  EXPECT_TRUE(std::filesystem::exists(dir_ + "/ad/adapter/adapter_config.json"));
  EXPECT_TRUE(std::filesystem::exists(dir_ + "/ad/adapter/adapter_model.safetensors"));
  // The adapter file, its PEFT export and the re-imported file all evaluate
  // to the accuracy train-adapter reported.
  const std::string base = dir_ + "/base/checkpoint.safetensors";
  auto acc_of = [](const std::string& s, const std::string& after) {
    size_t at = s.find("accuracy", s.find(after));
    return at == std::string::npos ? std::string("none") : s.substr(at, 16);
  };
  const std::string trained = acc_of(a.out, "adapter     accuracy");
  ASSERT_NE(trained, "none") << a.out;
  CliRun e1 = run("eval --checkpoint " + base + " --adapter " + dir_ +
                  "/ad/adapter.safetensors data.task=permute:seed=3");
  ASSERT_EQ(e1.code, 0) << e1.out;
  EXPECT_EQ(acc_of(e1.out, "adapter.safetensors"), trained) << e1.out << a.out;
  CliRun ex = run("export-peft " + dir_ + "/ad/adapter.safetensors -o " + dir_ + "/peft");
  ASSERT_EQ(ex.code, 0) << ex.out;
  CliRun im =
      run("import-peft " + dir_ + "/peft --base " + base + " -o " + dir_ + "/re.safetensors");
  ASSERT_EQ(im.code, 0) << im.out;
  for (const std::string& ad : {dir_ + "/peft", dir_ + "/re.safetensors"}) {
    CliRun e = run("eval --checkpoint " + base + " --adapter " + ad + " data.task=permute:seed=3");
    ASSERT_EQ(e.code, 0) << e.out;
    EXPECT_EQ(acc_of(e.out, ad), trained) << e.out;
  }
  // Another kind: (IA)3 trains and writes only tessera's file (PEFT LoRA cannot hold it).
  CliRun ia = run("train-adapter --quiet --base " + base + " --task rotate:deg=90 --out " + dir_ +
                  "/ia3 --adapter ia3 epochs=0 steps=10 threads=1");
  ASSERT_EQ(ia.code, 0) << ia.out;
  EXPECT_TRUE(std::filesystem::exists(dir_ + "/ia3/adapter.safetensors"));
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/ia3/adapter"));
  // Two tasks at once: one expert each, in one pass over the base; each expert's
  // file evaluates to the accuracy printed for it.
  CliRun two = run("train-adapter --quiet --base " + base +
                   " --task permute:seed=3 --task rotate:deg=90 --out " + dir_ + "/two --library " +
                   dir_ + "/lib2 epochs=0 steps=30 threads=1");
  ASSERT_EQ(two.code, 0) << two.out;
  EXPECT_NE(two.out.find("2 experts in one pass"), std::string::npos) << two.out;
  CliRun ls2 = run("library --library " + dir_ + "/lib2 ls --task rotate:deg=90 --json");
  ASSERT_EQ(ls2.code, 0) << ls2.out;
  EXPECT_NE(ls2.out.find("\"name\":\"rotate:deg=90\""), std::string::npos) << ls2.out;
  EXPECT_EQ(ls2.out.find("permute"), std::string::npos) << ls2.out;
  for (int k = 0; k < 2; ++k) {
    const std::string file = dir_ + "/two/" + std::to_string(k) + "/adapter.safetensors";
    const std::string task = k == 0 ? "permute:seed=3" : "rotate:deg=90";
    CliRun e = run("eval --checkpoint " + base + " --adapter " + file + " data.task=" + task);
    ASSERT_EQ(e.code, 0) << e.out;
    const std::string printed = two.out.substr(two.out.find(task));
    const std::string acc = e.out.substr(e.out.find("accuracy ") + 9, 5);  // "87.12"
    EXPECT_NE(printed.substr(0, printed.find('\n')).find(acc), std::string::npos) << e.out << "\n"
                                                                                  << two.out;
  }
  CliRun nope = run("export-peft " + dir_ + "/ia3/adapter.safetensors -o " + dir_ + "/p2");
  EXPECT_EQ(nope.code, 2) << nope.out;
  EXPECT_NE(nope.out.find("ia3"), std::string::npos) << nope.out;
  CliRun bad = run("train-adapter --base " + dir_ +
                   "/base/checkpoint.safetensors --task permute:seed=3 --adapter lora:r=0");
  EXPECT_EQ(bad.code, 2) << bad.out;
  EXPECT_NE(bad.out.find("lora:r=0"), std::string::npos) << bad.out;
  CliRun text = run("train-adapter --base " + dir_ +
                    "/base/checkpoint.safetensors --task text:/usr/include/*.h");
  EXPECT_EQ(text.code, 2) << text.out;
  EXPECT_NE(text.out.find("decoder base"), std::string::npos) << text.out;
}

TEST_F(Cli, AdaptersGoIntoTheLibraryAndComeBack) {
  const std::string base = dir_ + "/base/checkpoint.safetensors", lib = dir_ + "/lib";
  CliRun a = base_and_adapter_in(lib);
  ASSERT_EQ(a.code, 0) << a.out;
  EXPECT_NE(a.out.find("library " + lib + ": perm2@1"), std::string::npos) << a.out;
  CliRun ls = run("library --library " + lib + " ls --json");
  ASSERT_EQ(ls.code, 0) << ls.out;
  EXPECT_NE(ls.out.find("\"name\":\"perm2\""), std::string::npos) << ls.out;
  EXPECT_NE(ls.out.find("\"task\":\"permute:seed=2\""), std::string::npos) << ls.out;
  // Out of the library, the adapter evaluates as the trained file does.
  CliRun g = run("library --library " + lib + " get perm2@latest -o " + dir_ + "/back.safetensors");
  ASSERT_EQ(g.code, 0) << g.out;
  auto acc = [&](const std::string& file) { return accuracy(base, file, "permute:seed=2"); };
  EXPECT_EQ(acc(dir_ + "/back.safetensors"), acc(dir_ + "/ad/adapter.safetensors"));
  EXPECT_EQ(run("library --library " + lib + " verify").code, 0);
  // PEFT out of the library and back in under another name (the same content
  // would be refused, so the import goes to a second library).
  CliRun ex = run("library --library " + lib + " export-peft perm2 -o " + dir_ + "/peft2");
  ASSERT_EQ(ex.code, 0) << ex.out;
  CliRun im = run("library --library " + dir_ + "/lib3 import-peft " + dir_ +
                  "/peft2 --name from-peft --base " + base);
  ASSERT_EQ(im.code, 0) << im.out;
  CliRun g3 =
      run("library --library " + dir_ + "/lib3 get from-peft -o " + dir_ + "/p.safetensors");
  ASSERT_EQ(g3.code, 0) << g3.out;
  EXPECT_EQ(acc(dir_ + "/p.safetensors"), acc(dir_ + "/ad/adapter.safetensors"));
  CliRun dup =
      run("library --library " + lib + " put " + dir_ + "/ad/adapter.safetensors --name x");
  EXPECT_EQ(dup.code, 2);
  EXPECT_NE(dup.out.find("perm2@1"), std::string::npos) << dup.out;
  EXPECT_EQ(run("library --library " + lib + " rm perm2").code, 0);
  CliRun gone = run("library --library " + lib + " show perm2");
  EXPECT_EQ(gone.code, 2);
  EXPECT_NE(gone.out.find("NotFound"), std::string::npos) << gone.out;
  // On another base (other weights) the adapter is refused, unless forced.
  CliRun p2 = pretrain_mlp("base2", 5);
  ASSERT_EQ(p2.code, 0) << p2.out;
  const std::string other = dir_ + "/base2/checkpoint.safetensors";
  CliRun wrong =
      run("eval --checkpoint " + other + " --adapter " + dir_ + "/ad/adapter.safetensors");
  EXPECT_EQ(wrong.code, 2) << wrong.out;
  EXPECT_NE(wrong.out.find("fingerprint"), std::string::npos) << wrong.out;
  EXPECT_EQ(
      run("eval --force --checkpoint " + other + " --adapter " + dir_ + "/ad/adapter.safetensors")
          .code,
      0);
  // The PEFT folder tessera wrote records the base too (in its safetensors
  // metadata): eval, import-peft and merge refuse it on or with another base.
  CliRun wrong_peft = run("eval --checkpoint " + other + " --adapter " + dir_ + "/ad/adapter");
  EXPECT_EQ(wrong_peft.code, 2) << wrong_peft.out;
  EXPECT_NE(wrong_peft.out.find("fingerprint"), std::string::npos) << wrong_peft.out;
  CliRun wrong_import =
      run("import-peft " + dir_ + "/ad/adapter --base " + other + " -o " + dir_ + "/x.safetensors");
  EXPECT_EQ(wrong_import.code, 2) << wrong_import.out;
  EXPECT_NE(wrong_import.out.find("fingerprint"), std::string::npos) << wrong_import.out;
  CliRun a2 = run("train-adapter --quiet --base " + other + " --task permute:seed=2 --out " + dir_ +
                  "/ad2 epochs=0 steps=3 threads=1");
  ASSERT_EQ(a2.code, 0) << a2.out;
  CliRun mixed = run("merge " + dir_ + "/ad/adapter " + dir_ + "/ad2/adapter.safetensors -o " +
                     dir_ + "/m.safetensors");
  EXPECT_EQ(mixed.code, 2) << mixed.out;
  EXPECT_NE(mixed.out.find("different bases"), std::string::npos) << mixed.out;
  CliRun wrong_put = run("library --library " + dir_ + "/lib4 put " + dir_ +
                         "/ad/adapter.safetensors --name y --base " + other);
  EXPECT_EQ(wrong_put.code, 2) << wrong_put.out;
  CliRun none = run("library --library " + dir_ + "/nowhere ls");
  EXPECT_EQ(none.code, 2);
  EXPECT_NE(none.out.find("no adapter library"), std::string::npos) << none.out;
}

// ../shared/cases/reliability/cli-messages: serving a path that holds no
// library says it made a new, empty one (a mistyped path is not silent).
TEST_F(Cli, ServingAMissingLibrarySaysItIsNew) {
  std::ofstream(dir_ + "/token") << "cli-test-token\n";
  Served sv = serve(dir_ + "/typo-lib", dir_ + "/token");
  ASSERT_FALSE(sv.hostport.empty()) << sv.banner;
  EXPECT_NE(sv.banner.find("a NEW, EMPTY library"), std::string::npos) << sv.banner;
  std::array<char, 512> line{};
  ASSERT_NE(fgets(line.data(), line.size(), sv.out), nullptr);
  EXPECT_NE(std::string(line.data()).find("held no library; it was created now"), std::string::npos)
      << line.data();
  kill(sv.pid, SIGTERM);
  pclose(sv.out);
}

TEST_F(Cli, HelpAndVersionExitZero) {
  for (const char* args : {"help", "--help", "route --help", "--version"}) {
    const CliRun r = run(args);
    EXPECT_EQ(r.code, 0) << args << "\n" << r.out;
    EXPECT_NE(r.out.find("tessera"), std::string::npos) << args;
  }
}

TEST_F(Cli, MistakesGetOneClearMessage) {
  struct Case {
    std::string args, needle;
  };
  const std::vector<Case> cases = {
      {"pretrain --config /nonexistent.pbtxt", "/nonexistent.pbtxt"},
      {"pretrain --config " + dir_ + "/lm.pbtxt optim.lr=-1", "optim.lr"},
      {"pretrain --config " + dir_ + "/lm.pbtxt optim.lrr=1", "optim.lrr"},
      {"pretrain --config " + dir_ + "/lm.pbtxt batch_size=four", "batch_size"},
      {"pretrain --config " + dir_ + "/lm.pbtxt data.files=/nope/*.txt", "/nope/*.txt"},
      {"pretrain --config " + dir_ + "/lm.pbtxt decoder.n_head=3", "n_head"},
      {"pretrain --model mlp data.dir=" + dir_, "dataset-fashion-mnist"},
      {"eval --checkpoint " + dir_ + "/corpus.txt", "corpus.txt"},
      {"eval --checkpoint " + dir_ + "/missing.safetensors", "does not exist"},
      // ../shared/cases/reliability/cli-messages: command-line mistakes exit 2
      // with one line (CLI11's own codes were 106, 109).
      {"pretrian --model mlp", "unknown command 'pretrian'; did you mean pretrain?"},
      {"frobnicate", "unknown command 'frobnicate' (tessera --help"},
      {"launch --nproc 2 pretrian --model mlp", "launch: 'pretrian' is not a tessera command"},
      {"library --library " + dir_ + "/nolib verify extra args",
       "library verify takes no arguments; got 'extra' and 1 more"},
      {"route --library x --eval permute:seed=1", "route: --base is required"},
      {"eval --checkpoint x --no-such-option", "eval: The following argument was not expected"},
  };
  for (const auto& c : cases) {
    CliRun r = run(c.args);
    EXPECT_EQ(r.code, 2) << c.args << "\n" << r.out;
    EXPECT_NE(r.out.find("tessera: error:"), std::string::npos) << c.args << "\n" << r.out;
    EXPECT_NE(r.out.find(c.needle), std::string::npos) << c.args << "\n" << r.out;
  }
}

// `tessera serve` as a user starts it, and the library commands through it.
TEST_F(Cli, ServeAndRemoteLibraryCommands) {
  const std::string base = dir_ + "/base/checkpoint.safetensors", lib = dir_ + "/served";
  CliRun a = base_and_adapter_in(lib);
  ASSERT_EQ(a.code, 0) << a.out;
  std::ofstream(dir_ + "/token") << "cli-test-token\n";
  std::ofstream(dir_ + "/wrong") << "not-the-token\n";
  Served sv = serve(lib, dir_ + "/token");
  ASSERT_FALSE(sv.hostport.empty()) << sv.banner;
  EXPECT_EQ(sv.banner.find("NEW, EMPTY"), std::string::npos) << sv.banner;  // it holds perm2
  FILE* srv = sv.out;
  const int pid = sv.pid;
  const std::string hostport = sv.hostport;
  std::array<char, 512> line{};
  const std::string remote = "library --remote " + hostport + " --token-file " + dir_ + "/token ";
  CliRun ls = run(remote + "ls --json");
  EXPECT_EQ(ls.code, 0) << ls.out;
  EXPECT_NE(ls.out.find("\"name\":\"perm2\""), std::string::npos) << ls.out;
  // Routing signatures were computed when the adapter went in: one Arrow
  // prototype per LoRA module.
  EXPECT_NE(ls.out.find("\"name\":\"arrow/"), std::string::npos) << ls.out;
  // Fetched through the API, the adapter evaluates as the trained file does.
  ASSERT_EQ(run(remote + "get perm2 -o " + dir_ + "/back.safetensors").code, 0);
  auto acc = [&](const std::string& file) { return accuracy(base, file, "permute:seed=2"); };
  EXPECT_EQ(acc(dir_ + "/back.safetensors"), acc(dir_ + "/ad/adapter.safetensors"));
  // Training straight into the served library.
  CliRun b = run("train-adapter --quiet --base " + base + " --task permute:seed=5 --out " + dir_ +
                 "/ad5 --library grpc://" + hostport + " --token-file " + dir_ +
                 "/token --name perm5 epochs=0 steps=5 threads=1");
  EXPECT_EQ(b.code, 0) << b.out;
  CliRun st = run(remote + "stat --json");
  EXPECT_NE(st.out.find("\"records\":2"), std::string::npos) << st.out;
  EXPECT_EQ(run(remote + "verify").code, 0);
  // A wrong token, a missing token: refused, the server unharmed.
  CliRun bad = run("library --remote " + hostport + " --token-file " + dir_ + "/wrong ls");
  EXPECT_EQ(bad.code, 2);
  EXPECT_NE(bad.out.find("Unauthenticated"), std::string::npos) << bad.out;
  CliRun none = run("library --remote " + hostport + " ls");
  EXPECT_EQ(none.code, 2);
  EXPECT_NE(none.out.find("bearer token"), std::string::npos) << none.out;
  // Another base: get --base refuses, --force takes it.
  CliRun p2 = pretrain_mlp("base2", 5);
  ASSERT_EQ(p2.code, 0) << p2.out;
  const std::string other = dir_ + "/base2/checkpoint.safetensors";
  CliRun wrong = run(remote + "get perm2 --base " + other + " -o " + dir_ + "/w.safetensors");
  EXPECT_EQ(wrong.code, 2);
  EXPECT_NE(wrong.out.find("FailedPrecondition"), std::string::npos) << wrong.out;
  EXPECT_EQ(
      run(remote + "get perm2 --force --base " + other + " -o " + dir_ + "/w.safetensors").code, 0);
  EXPECT_EQ(run(remote + "get perm2 --base " + base + " -o " + dir_ + "/w.safetensors").code, 0);
  EXPECT_EQ(run(remote + "ls").code, 0);  // still serving
  // SIGTERM: the server finishes and exits 0.
  kill(pid, SIGTERM);
  std::string rest;
  while (fgets(line.data(), line.size(), srv)) rest += line.data();
  const int status = pclose(srv);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << rest;
  // Mistakes in the serve command itself.
  CliRun open = run("serve --library " + lib + " --listen 0.0.0.0:0");
  EXPECT_EQ(open.code, 2);
  EXPECT_NE(open.out.find("token"), std::string::npos) << open.out;
  CliRun notok = run("serve --library " + lib + " --token-file " + dir_ + "/missing");
  EXPECT_EQ(notok.code, 2);
  EXPECT_NE(notok.out.find("missing"), std::string::npos) << notok.out;
}

}  // namespace
}  // namespace tessera

namespace tessera {
namespace {

std::vector<double> losses_of(const std::string& metrics) {
  std::vector<double> out;
  std::ifstream f(metrics);
  for (std::string line; std::getline(f, line);) {
    const size_t at = line.find("\"loss\":");
    if (at != std::string::npos) out.push_back(std::stod(line.substr(at + 7)));
  }
  return out;
}

// Data parallel: the same global batch over 1, 2 and 4 ranks (tessera launch,
// Gloo) and over 2 MPI ranks (mpirun) follows the same losses, also when a
// one-rank checkpoint resumes on two; train-adapter over 2 ranks follows one,
// for one task and for a bank of experts (several --task).
TEST_F(Cli, DataParallelPretrainFollowsOneRank) {
  const std::string args =
      "pretrain --quiet --model mlp data.limit_train=2048 data.limit_test=500 epochs=0 steps=50 "
      "threads=1 log_every=1 batch_size=64 out_dir=" +
      dir_;
  CliRun one = run(args + "/w1");
  ASSERT_EQ(one.code, 0) << one.out;
  const std::vector<double> want = losses_of(dir_ + "/w1/metrics.jsonl");
  ASSERT_EQ(want.size(), 50u);
  auto expect_same = [&](const std::string& name) {
    const std::vector<double> got = losses_of(dir_ + "/" + name + "/metrics.jsonl");
    ASSERT_EQ(got.size(), want.size()) << name;
    for (size_t i = 0; i < want.size(); ++i)
      EXPECT_NEAR(got[i], want[i], 1e-5 * std::abs(want[i])) << name << " step " << i + 1;
  };
  for (int n : {2, 4}) {
    std::string name = "w";  // appended, not "w" + ...: GCC 12's -Wrestrict misfires on that
    name += std::to_string(n);
    CliRun r = run("launch --nproc " + std::to_string(n) + " " + args + "/" + name);
    ASSERT_EQ(r.code, 0) << r.out;
    EXPECT_NE(r.out.find("checkpoint"), std::string::npos) << r.out;  // rank 0 speaks
    expect_same(name);
  }
  CliRun mpi = run_mpirun(2, args + "/mpi2");
  ASSERT_EQ(mpi.code, 0) << mpi.out;
  expect_same("mpi2");
  // A checkpoint of one rank resumes on two: the 50 losses still follow.
  ASSERT_EQ(run(args + "/rs --max-steps 25").code, 0);
  CliRun rs =
      run("launch --nproc 2 " + args + "/rs --resume " + dir_ + "/rs/checkpoint.safetensors");
  ASSERT_EQ(rs.code, 0) << rs.out;
  expect_same("rs");
  // Adapter training too: two ranks follow one.
  const std::string ta = "train-adapter --quiet --base " + dir_ +
                         "/w1/checkpoint.safetensors --task permute:seed=1 epochs=0 steps=20 "
                         "threads=1 log_every=1 batch_size=64 --out " +
                         dir_;
  ASSERT_EQ(run(ta + "/a1").code, 0);
  CliRun a2 = run("launch --nproc 2 " + ta + "/a2");
  ASSERT_EQ(a2.code, 0) << a2.out;
  const std::vector<double> a1l = losses_of(dir_ + "/a1/metrics.jsonl"),
                            a2l = losses_of(dir_ + "/a2/metrics.jsonl");
  ASSERT_EQ(a1l.size(), 20u);
  ASSERT_EQ(a2l.size(), a1l.size());
  for (size_t i = 0; i < a1l.size(); ++i)
    EXPECT_NEAR(a2l[i], a1l[i], 1e-5 * std::abs(a1l[i])) << "train-adapter step " << i + 1;
  // A bank of two LoRA experts (several --task) too.
  const std::string bank = "train-adapter --quiet --base " + dir_ +
                           "/w1/checkpoint.safetensors --task permute:seed=1 --task "
                           "permute:seed=2 epochs=0 steps=12 threads=1 log_every=1 batch_size=64 "
                           "--out " +
                           dir_;
  CliRun b1 = run(bank + "/k1");
  ASSERT_EQ(b1.code, 0) << b1.out;
  CliRun b2 = run("launch --nproc 2 " + bank + "/k2");
  ASSERT_EQ(b2.code, 0) << b2.out;
  EXPECT_NE(b2.out.find("permute:seed=2"), std::string::npos) << b2.out;  // rank 0's table
  const std::vector<double> k1 = losses_of(dir_ + "/k1/metrics.jsonl"),
                            k2 = losses_of(dir_ + "/k2/metrics.jsonl");
  ASSERT_EQ(k1.size(), 12u);
  ASSERT_EQ(k2.size(), k1.size());
  for (size_t i = 0; i < k1.size(); ++i)
    EXPECT_NEAR(k2[i], k1[i], 1e-5 * std::abs(k1[i])) << "bank step " << i + 1;
  EXPECT_TRUE(fs::exists(dir_ + "/k2/1/adapter.safetensors"));
  // A batch that does not split over the ranks is refused by name.
  CliRun odd = run("launch --nproc 3 " + args + "/w3");
  EXPECT_NE(odd.code, 0);
  EXPECT_NE(odd.out.find("batch_size 64 does not split over 3 ranks"), std::string::npos)
      << odd.out;
}

// name -> content id of every adapter in a library (folder or grpc://).
std::map<std::string, std::string> ids_in(const std::string& library_args) {
  CliRun ls = run("library " + library_args + " ls --json");
  EXPECT_EQ(ls.code, 0) << ls.out;
  std::map<std::string, std::string> ids;
  std::stringstream ss(ls.out);
  std::string line;
  while (std::getline(ss, line)) {
    if (line.empty()) continue;
    nlohmann::json j = nlohmann::json::parse(line);
    EXPECT_TRUE(ids.emplace(j["name"].get<std::string>(), j["id"].get<std::string>()).second)
        << "listed twice: " << line;
  }
  return ids;
}

// build-library: 6 tasks over 3 ranks (tessera launch, Gloo; mpirun, MPI)
// store exactly 6 experts, each once, bit-identical to a one-rank build; a
// second build resumes (only the new task is trained); with the lookup
// service every rank puts its own experts; mistakes fail every rank at once.
TEST_F(Cli, BuildLibraryAcrossRanksStoresEachExpertOnce) {
  ASSERT_EQ(pretrain_mlp("base", 20).code, 0);
  const std::string build = "build-library --base " + dir_ +
                            "/base/checkpoint.safetensors --tasks 'permute:seed={1..6}' "
                            "epochs=0 steps=10 threads=1 ";
  CliRun one = run(build + "--library " + dir_ + "/lib1 --out " + dir_ + "/b1");
  ASSERT_EQ(one.code, 0) << one.out;
  const std::map<std::string, std::string> want = ids_in("--library " + dir_ + "/lib1");
  ASSERT_EQ(want.size(), 6u);
  for (int k = 1; k <= 6; ++k) {
    std::string name = "permute:seed=";
    name += std::to_string(k);
    EXPECT_EQ(want.count(name), 1u) << name;
  }
  // Three Gloo ranks.
  CliRun three =
      run("launch --nproc 3 " + build + "--library " + dir_ + "/lib3 --out " + dir_ + "/b3");
  ASSERT_EQ(three.code, 0) << three.out;
  EXPECT_NE(three.out.find("6 of 6 experts trained and stored"), std::string::npos) << three.out;
  EXPECT_EQ(ids_in("--library " + dir_ + "/lib3"), want);
  std::ifstream bj(dir_ + "/b3/build.json");
  nlohmann::json report = nlohmann::json::parse(bj);
  EXPECT_EQ(report["ranks"], 3);
  ASSERT_EQ(report["experts"].size(), 6u);
  std::set<int> ranks;
  for (const auto& e : report["experts"]) {
    EXPECT_TRUE(e["ok"].get<bool>()) << e.dump();
    ranks.insert(e["rank"].get<int>());
  }
  EXPECT_GE(ranks.size(), 2u) << report.dump();  // the queue spread the work
  // Every expert's file is on rank 0's disk too.
  for (int k = 0; k < 6; ++k)
    EXPECT_TRUE(fs::exists(dir_ + "/b3/" + std::to_string(k) + "/adapter.safetensors")) << k;
  // Three MPI ranks.
  CliRun mpi = run_mpirun(3, build + "--library " + dir_ + "/libm --out " + dir_ + "/bm");
  ASSERT_EQ(mpi.code, 0) << mpi.out;
  EXPECT_EQ(ids_in("--library " + dir_ + "/libm"), want);
  // Resume: the six are there, only the seventh is trained.
  CliRun more = run("launch --nproc 3 " + build + "--tasks 'permute:seed=7' --library " + dir_ +
                    "/lib3 --out " + dir_ + "/b3");
  ASSERT_EQ(more.code, 0) << more.out;
  EXPECT_NE(more.out.find("7 tasks, 6 already in"), std::string::npos) << more.out;
  EXPECT_EQ(ids_in("--library " + dir_ + "/lib3").size(), 7u);
  // Another rank of adapter is not "already there": a new version is trained.
  CliRun r4 = run("build-library --base " + dir_ +
                  "/base/checkpoint.safetensors --tasks permute:seed=1 --adapter lora:r=4 "
                  "--library " +
                  dir_ + "/lib3 --out " + dir_ + "/b4 epochs=0 steps=10 threads=1");
  ASSERT_EQ(r4.code, 0) << r4.out;
  EXPECT_NE(r4.out.find("1 tasks, 0 already in"), std::string::npos) << r4.out;
  EXPECT_NE(r4.out.find("permute:seed=1@2"), std::string::npos) << r4.out;
  // Through the lookup service: each of 2 ranks puts what it trained.
  std::ofstream(dir_ + "/token") << "build-token\n";
  Served sv = serve(dir_ + "/served", dir_ + "/token");
  ASSERT_FALSE(sv.hostport.empty()) << sv.banner;
  const std::string remote = "--library grpc://" + sv.hostport + " --token-file " + dir_ + "/token";
  CliRun viasvc = run("launch --nproc 2 " + build + remote + " --out " + dir_ + "/bs");
  EXPECT_EQ(viasvc.code, 0) << viasvc.out;
  EXPECT_EQ(ids_in(remote), want);
  kill(sv.pid, SIGTERM);
  pclose(sv.out);
  // A rank killed in the middle of a task: its task goes back to the queue,
  // the others finish, every expert is stored once (the same ones).
  {
    const std::string cmd = "sh -c 'echo $$; exec " + std::string(TESSERA_BINARY) +
                            " launch --nproc 3 --grace 120 " + build + "--library " + dir_ +
                            "/libk --out " + dir_ + "/bk steps=150' 2>&1";
    FILE* job = popen(cmd.c_str(), "r");
    ASSERT_NE(job, nullptr);
    std::array<char, 4096> buf{};
    ASSERT_NE(fgets(buf.data(), buf.size(), job), nullptr);
    const int launcher = std::atoi(buf.data());
    // Rank 2: the launcher's child whose environment says TESSERA_RANK=2.
    int victim = 0;
    for (int i = 0; i < 100 && victim == 0; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      for (const auto& e : fs::directory_iterator("/proc")) {
        std::ifstream stat(e.path() / "stat");
        std::string pid, comm, state;
        int ppid = 0;
        if (!(stat >> pid >> comm >> state >> ppid) || ppid != launcher) continue;
        std::ifstream env(e.path() / "environ");
        std::string all((std::istreambuf_iterator<char>(env)), {});
        if (all.find(std::string("TESSERA_RANK=2") + '\0') != std::string::npos)
          victim = std::atoi(pid.c_str());
      }
    }
    ASSERT_GT(victim, 0) << "rank 2 of the job not found";
    std::this_thread::sleep_for(std::chrono::milliseconds(2500));  // inside its first task
    kill(victim, SIGKILL);
    const std::string out = finish(job).out;
    EXPECT_NE(out.find("lost rank 2"), std::string::npos) << out;
    EXPECT_NE(out.find("6 of 6 experts trained and stored"), std::string::npos) << out;
    const std::map<std::string, std::string> got = ids_in("--library " + dir_ + "/libk");
    ASSERT_EQ(got.size(), 6u) << out;
  }
  // Mistakes: every rank refuses the same way before training.
  const std::string bad = "launch --nproc 2 build-library --base " + dir_ +
                          "/base/checkpoint.safetensors --library " + dir_ + "/libx --tasks ";
  for (const auto& [tasks, says] : std::vector<std::pair<std::string, std::string>>{
           {"'permute:sed=1'", "task 'permute:sed=1'"},
           {"'rotate:deg=90;rotate:deg=90'", "task 'rotate:deg=90' is given twice"},
           {"'permute:seed={3..1}'", "expected a range {FIRST..LAST}"},
           {"@" + dir_ + "/missing.txt", "cannot read the file"},
           {"'text:" + dir_ + "/*.txt'", "needs a decoder base"}}) {
    CliRun r = run(bad + tasks);
    EXPECT_EQ(r.code, 2) << tasks << "\n" << r.out;
    EXPECT_NE(r.out.find(says), std::string::npos) << tasks << "\n" << r.out;
  }
  EXPECT_FALSE(fs::exists(dir_ + "/libx/CURRENT"));  // nothing was stored
}

}  // namespace
}  // namespace tessera
