// Crash safety: a child process writes adapters in a loop and is SIGKILLed at
// a random moment; afterwards the library opens, Verify passes, every record
// is complete, and every adapter whose Put returned OK is there. A handful of
// kills by default; TESSERA_LONG_TESTS=1 runs 50.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <set>
#include <string>

#include "store/library.h"
#include "tests/testing.h"

namespace tessera::store {
namespace {

TensorData tensor(const std::string& name, int i, int64_t n) {
  TensorData t{name, "F32", {n}, {}};
  t.bytes.resize(static_cast<size_t>(n) * 4);
  for (size_t b = 0; b < t.bytes.size(); ++b) t.bytes[b] = static_cast<char>((b * 131 + i) & 0xff);
  std::memcpy(t.bytes.data(), &i, sizeof i);  // every adapter's content differs
  return t;
}

// The child: Put adapter 0, 1, 2, ... and report each index once Put returned OK.
[[noreturn]] void writer(const std::string& dir, int fd, int start) {
  std::unique_ptr<Library> lib;
  if (!Library::Open(Options(), dir, &lib).ok()) _exit(3);
  for (int i = start;; ++i) {
    AdapterRecord r;
    r.set_name("crash" + std::to_string(i));
    r.set_kind("lora");
    r.add_tags(i % 2 ? "odd" : "even");
    // Alternate small values and 256 KB ones (blob files).
    if (!lib->Put(r, {tensor("w", i, i % 2 ? 65536 : 16), tensor("b", i + 1, 8)}, nullptr).ok())
      _exit(4);
    const std::string line = std::to_string(i) + "\n";
    if (write(fd, line.data(), line.size()) < 0) _exit(5);
  }
}

TEST(LibraryCrash, KilledWritersLoseNothingAcknowledged) {
  const char* long_env = std::getenv("TESSERA_LONG_TESTS");
  const int rounds = long_env && std::string(long_env) == "1" ? 50 : 5;
  const std::string dir = testing::temp_dir("library_crash");
  std::set<int> acked;
  std::srand(12345);
  int next = 0;
  for (int round = 0; round < rounds; ++round) {
    int fds[2];
    ASSERT_EQ(pipe(fds), 0);
    const pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      close(fds[0]);
      writer(dir, fds[1], next);
    }
    close(fds[1]);
    usleep(static_cast<useconds_t>(20000 + std::rand() % 150000));
    kill(pid, SIGKILL);
    int status = 0;
    waitpid(pid, &status, 0);
    ASSERT_TRUE(WIFSIGNALED(status)) << "the writer exited on its own: " << WEXITSTATUS(status);
    std::string got;
    char buf[4096];
    ssize_t n;
    while ((n = read(fds[0], buf, sizeof buf)) > 0) got.append(buf, static_cast<size_t>(n));
    close(fds[0]);
    size_t pos = 0;
    while (true) {
      size_t nl = got.find('\n', pos);
      if (nl == std::string::npos) break;
      const int i = std::stoi(got.substr(pos, nl - pos));
      acked.insert(i);
      next = std::max(next, i + 1);
      pos = nl + 1;
    }
    next += 1000;  // the next writer starts on fresh names
    std::unique_ptr<Library> lib;
    Status s = Library::Open(Options(), dir, &lib);
    ASSERT_TRUE(s.ok()) << "round " << round << ": " << s.ToString();
    int64_t checked = 0;
    s = lib->Verify(&checked);
    ASSERT_TRUE(s.ok()) << "round " << round << ": " << s.ToString();
    EXPECT_GE(checked, static_cast<int64_t>(acked.size()));
    for (int i : acked) {
      AdapterRecord r;
      std::vector<TensorData> ts;
      s = lib->Get("crash" + std::to_string(i), &r, &ts);
      ASSERT_TRUE(s.ok()) << "acknowledged adapter " << i << " lost in round " << round << ": "
                          << s.ToString();
      ASSERT_EQ(ts.size(), 2u);
    }
  }
  EXPECT_GT(acked.size(), static_cast<size_t>(rounds)) << "the writers barely wrote";
}

}  // namespace
}  // namespace tessera::store
