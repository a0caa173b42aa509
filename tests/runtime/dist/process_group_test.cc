// Process groups: every collective on `local` and on `gloo` with ranks as
// threads over real loopback TCP (rendezvous through Gloo's FileStore),
// world sizes 1..8, element counts 0, 1, 1000 and 1,000,000, every reduce
// op, uneven allgather; results checked against values computed by hand
// (integer-valued floats, so every sum is exact). Mistakes and timeouts
// throw dist::Error naming the call.
#include "runtime/dist/process_group.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <functional>
#include <thread>

#include <gloo/rendezvous/file_store.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/runtime/dist/collectives_check.h"
#include "tests/testing.h"

namespace tessera::dist {
namespace {

TEST(ProcessGroup, LocalIsExact) {
  auto g = make_local();
  EXPECT_EQ(g->rank(), 0);
  EXPECT_EQ(g->size(), 1);
  check_collectives(*g);
  check_work_queue(*g);
  check_split(*g);
  EXPECT_EQ(g->split(ProcessGroup::kNoColor, 0), nullptr);
  EXPECT_NE(testing::error_of([&] { g->broadcast(nullptr, 0, 1); }).find("root 1"),
            std::string::npos);
  int32_t x = 3;
  EXPECT_NE(testing::error_of([&] {
              g->allreduce(&x, 1, DType::I32, ReduceOp::kMean);
            }).find("mean needs a floating type"),
            std::string::npos);
  EXPECT_NE(testing::error_of([&] { g->send(&x, 4, 0); }).find("no peer"), std::string::npos);
  // One dtype vocabulary: collectives take five of its dtypes and name the rest.
  uint16_t h = 0;
  EXPECT_NE(testing::error_of([&] {
              g->allreduce(&h, 1, DType::F16, ReduceOp::kSum);
            }).find("dtype F16 (expected one of F32, F64, I32, I64 or U8)"),
            std::string::npos);
  EXPECT_NE(testing::error_of([&] {
              g->gather(&h, &h, 1, DType::BF16, 0);
            }).find("gather (tag 0, rank 0 of 1): dtype BF16"),
            std::string::npos);
}

TEST(ProcessGroup, GlooEveryCollectiveAtWorldSizesOneToEight) {
  for (int world : {1, 2, 3, 4, 5, 8}) on_gloo(world, "all", check_collectives);
}

TEST(ProcessGroup, GlooSplitsIntoSubGroupsThatMeetThroughTheParent) {
  for (int world : {1, 2, 3, 5, 6}) on_gloo(world, "split", check_split);
}

// A sub-group outlives its parent: it shares the parent's device and
// liveness listener, not the parent itself.
TEST(ProcessGroup, GlooSubGroupOutlivesItsParent) {
  const std::string dir = testing::temp_dir("gloo_outlive");
  std::vector<std::string> errors(3);
  std::vector<std::thread> ranks;
  for (int r = 0; r < 3; ++r)
    ranks.emplace_back([&, r] {
      try {
        GlooOptions o;
        o.rendezvous = "file://" + dir;
        o.interface_host = "127.0.0.1";
        o.timeout = std::chrono::seconds(30);
        auto parent = make_gloo(r, 3, o);
        auto sub = parent->split(r < 2 ? 0 : ProcessGroup::kNoColor, 0);
        parent.reset();
        if (sub) {
          float x = static_cast<float>(r + 1);
          sub->allreduce(&x, 1, DType::F32, ReduceOp::kSum);
          if (x != 3.0f) errors[r] = "sum " + std::to_string(x);
        }
      } catch (const std::exception& e) {
        errors[r] = e.what();
      }
    });
  for (auto& t : ranks) t.join();
  for (int r = 0; r < 3; ++r) EXPECT_EQ(errors[r], "") << "rank " << r;
}

TEST(WorkQueue, GlooEveryItemOnceAtWorldSizesOneToFive) {
  for (int world : {1, 2, 3, 5}) on_gloo(world, "queue", check_work_queue);
}

// A rank that stops answering (here: busy past the item timeout) loses its
// item back to the queue; the others finish every item, and rank 0 reports
// the rank it lost. (Gloo fails every pending call of the group on a timeout,
// so rank 0 ends up doing the rest itself: nothing is lost or done twice.)
TEST(WorkQueue, AHungRankLosesItsItemToTheOthers) {
  const size_t n = 8;
  std::vector<int> calls(n, 0);
  WorkSummary s0;
  std::string err2;
  on_gloo(3, "hung", [&](ProcessGroup& g) {
    WorkOptions o;
    o.item_timeout = std::chrono::milliseconds(400);
    bool slept = false;
    try {
      WorkSummary s = distribute(
          g, n,
          [&](size_t i) {
            if (g.rank() == 2 && !slept) {
              slept = true;
              std::this_thread::sleep_for(std::chrono::milliseconds(1500));
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(50));
            return std::to_string(i);
          },
          [&](size_t i, int, const std::string& bytes) {
            ++calls[i];
            EXPECT_EQ(bytes, std::to_string(i));
          },
          o);
      if (g.rank() == 0) s0 = s;
    } catch (const Error& e) {
      if (g.rank() == 0) throw;
      if (g.rank() == 2) err2 = e.what();
    }
  });
  ASSERT_EQ(s0.items.size(), n);
  EXPECT_TRUE(s0.all_ok());
  for (size_t i = 0; i < n; ++i) EXPECT_EQ(calls[i], 1) << "item " << i;
  bool lost2 = false;
  for (const LostRank& l : s0.ranks_lost) {
    EXPECT_FALSE(l.why.empty());
    if (l.rank == 2) {
      lost2 = true;
      EXPECT_GE(l.item, 0);  // it held an item, which another rank then did
      if (l.item >= 0) {
        EXPECT_NE(s0.items[static_cast<size_t>(l.item)].rank, 2);
      }
    }
  }
  EXPECT_TRUE(lost2) << s0.ranks_lost.size() << " ranks lost";
  EXPECT_NE(err2, "");  // the hung rank learns it was dropped when it reports
}

// Debian's redis-server on a free loopback port, stopped on destruction.
// The port is found by binding to 0 and closing; should another process take
// it first, redis-server exits and the next port is tried.
class RedisServer {
 public:
  explicit RedisServer(const std::string& binary) {
    for (int attempt = 0; attempt < 3 && port_ == 0; ++attempt) {
      const int port = free_port();
      const pid_t pid = fork();
      if (pid < 0) return;
      if (pid == 0) {
        const std::string p = std::to_string(port);
        execl(binary.c_str(), binary.c_str(), "--port", p.c_str(), "--bind", "127.0.0.1", "--save",
              "", "--appendonly", "no", "--logfile", "/dev/null", static_cast<char*>(nullptr));
        _exit(127);
      }
      for (int i = 0; i < 100; ++i) {
        int st = 0;
        if (waitpid(pid, &st, WNOHANG) == pid) break;  // it exited: port taken
        if (answers(port)) {
          pid_ = pid;
          port_ = port;
          return;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
    }
  }
  ~RedisServer() {
    if (pid_ <= 0) return;
    kill(pid_, SIGTERM);
    waitpid(pid_, nullptr, 0);
  }
  int port() const { return port_; }  // 0: it did not start

 private:
  static sockaddr_in loopback(int port) {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(static_cast<uint16_t>(port));
    return a;
  }
  static int free_port() {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a = loopback(0);
    socklen_t len = sizeof a;
    int port = 0;
    if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
        getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0)
      port = ntohs(a.sin_port);
    close(fd);
    return port;
  }
  static bool answers(int port) {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a = loopback(port);
    const bool ok = connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
    close(fd);
    return ok;
  }
  pid_t pid_ = 0;
  int port_ = 0;
};

// Rendezvous through Redis (skipped where redis-server is not installed):
// worlds of 2 and 3 meet on one server, each under its own prefix, and every
// collective works; an address where no server answers is refused by name.
TEST(ProcessGroup, GlooMeetsThroughRedis) {
  std::string binary;
  for (const char* c : {"/usr/bin/redis-server", "/usr/sbin/redis-server"})
    if (access(c, X_OK) == 0) binary = c;
  if (binary.empty()) GTEST_SKIP() << "redis-server is not installed (scripts/install-deps.sh)";
  RedisServer redis(binary);
  ASSERT_GT(redis.port(), 0) << "redis-server did not start";
  const std::string url = "redis://127.0.0.1:" + std::to_string(redis.port());
  for (int world : {2, 3})
    on_gloo(world, "redis", check_collectives, std::chrono::seconds(30), url);
  GlooOptions bad;
  bad.rendezvous = "redis://127.0.0.1:1";  // (port 1: nothing listens)
  bad.timeout = std::chrono::milliseconds(500);
  const std::string err = testing::error_of([&] { make_gloo(0, 2, bad); });
  EXPECT_NE(err.find("redis://127.0.0.1:1"), std::string::npos) << err;
  EXPECT_NE(err.find("no Redis server answers there"), std::string::npos) << err;
}

// pytorch/gloo #300: FileStore's files outlive a job, so the next job in the
// same folder failed at once with "File already exists" (reported as a
// timeout that never elapsed).
TEST(ProcessGroup, GlooFileRendezvousFolderServesJobAfterJob) {
  const std::string dir = testing::temp_dir("gloo_rerun");
  for (int job = 0; job < 3; ++job) {
    on_gloo(
        2, "rerun", [](ProcessGroup& g) { g.barrier(); }, std::chrono::seconds(30),
        "file://" + dir);
    EXPECT_TRUE(std::filesystem::is_empty(dir)) << "job " << job << " left files behind";
  }
  // A job that died mid-meeting leaves its entries: named at once, not a timeout.
  {
    gloo::rendezvous::FileStore fs(dir);
    const std::string dead = "127.0.0.1 1";  // (port 1: nothing listens)
    fs.set("tessera/alive/0", std::vector<char>(dead.begin(), dead.end()));
  }
  GlooOptions o;
  o.rendezvous = "file://" + dir;
  o.interface_host = "127.0.0.1";
  o.timeout = std::chrono::seconds(20);
  const auto t0 = std::chrono::steady_clock::now();
  const std::string err = testing::error_of([&] { make_gloo(1, 2, o); });
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 5.0);
  EXPECT_NE(err.find("holds an earlier job's files (rank 0"), std::string::npos) << err;
  EXPECT_NE(err.find("TESSERA_JOB_ID"), std::string::npos) << err;
}

TEST(ProcessGroup, GlooMistakesAndTimeoutsNameTheCall) {
  // A bad rendezvous string names itself and what was expected.
  GlooOptions bad;
  bad.rendezvous = "tcp://nowhere";
  EXPECT_NE(testing::error_of([&] { make_gloo(0, 2, bad); }).find("file:///"), std::string::npos);
  EXPECT_NE(testing::error_of([&] { make_gloo(2, 2, bad); }).find("rank 2"), std::string::npos);
  // A peer that never joins the allreduce: the other rank fails within its
  // timeout, naming the operation and itself.
  std::atomic<bool> done{false};
  std::string err;
  on_gloo(2, "timeout", [&](ProcessGroup& g) {
    if (g.rank() == 1) {
      while (!done) std::this_thread::sleep_for(std::chrono::milliseconds(10));
      return;
    }
    float v = 1;
    CallOptions o;
    o.timeout = std::chrono::milliseconds(300);
    const auto t0 = std::chrono::steady_clock::now();
    err = testing::error_of([&] { g.allreduce(&v, 1, DType::F32, ReduceOp::kSum, o); });
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_LT(s, 5.0);
    done = true;
  });
  EXPECT_NE(err.find("gloo allreduce (tag 0, rank 0 of 2)"), std::string::npos) << err;
  // Arguments that cannot be right.
  on_gloo(2, "args", [](ProcessGroup& g) {
    float v = 0;
    EXPECT_NE(testing::error_of([&] { g.broadcast(&v, 4, 5); }).find("root 5"), std::string::npos);
    EXPECT_NE(testing::error_of([&] {
                g.allgatherv(&v, &v, {1}, DType::F32);
              }).find("1 counts for a world of 2"),
              std::string::npos);
    g.barrier();
  });
}

}  // namespace
}  // namespace tessera::dist
