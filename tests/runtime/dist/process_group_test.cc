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
#include <functional>
#include <thread>

#include "tests/runtime/dist/collectives_check.h"
#include "tests/testing.h"

namespace tessera::dist {
namespace {

// Runs `body(group)` on `world` ranks, each a thread with its own Gloo group;
// failures inside a rank are collected and reported by rank.
void on_gloo(int world, const std::string& name, const std::function<void(ProcessGroup&)>& body,
             std::chrono::milliseconds timeout = std::chrono::seconds(30)) {
  const std::string dir = testing::temp_dir("gloo_" + name + "_" + std::to_string(world));
  std::vector<std::string> errors(static_cast<size_t>(world));
  std::vector<std::thread> ranks;
  for (int r = 0; r < world; ++r)
    ranks.emplace_back([&, r] {
      try {
        GlooOptions o;
        o.rendezvous = "file://" + dir;
        o.interface_host = "127.0.0.1";
        o.timeout = timeout;
        auto g = make_gloo(r, world, o);
        body(*g);
      } catch (const std::exception& e) {
        errors[r] = e.what();
      }
    });
  for (auto& t : ranks) t.join();
  for (int r = 0; r < world; ++r) EXPECT_EQ(errors[r], "") << "rank " << r << " of " << world;
}

TEST(ProcessGroup, LocalIsExact) {
  auto g = make_local();
  EXPECT_EQ(g->rank(), 0);
  EXPECT_EQ(g->size(), 1);
  check_collectives(*g);
  check_work_queue(*g);
  EXPECT_NE(testing::error_of([&] { g->broadcast(nullptr, 0, 1); }).find("root 1"),
            std::string::npos);
  int32_t x = 3;
  EXPECT_NE(testing::error_of([&] {
              g->allreduce(&x, 1, DType::kI32, ReduceOp::kMean);
            }).find("mean needs a floating type"),
            std::string::npos);
  EXPECT_NE(testing::error_of([&] { g->send(&x, 4, 0); }).find("no peer"), std::string::npos);
}

TEST(ProcessGroup, GlooEveryCollectiveAtWorldSizesOneToEight) {
  for (int world : {1, 2, 3, 4, 5, 8}) on_gloo(world, "all", check_collectives);
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
  for (const std::string& l : s0.ranks_lost) lost2 |= l.rfind("rank 2:", 0) == 0;
  EXPECT_TRUE(lost2) << ::testing::PrintToString(s0.ranks_lost);
  EXPECT_NE(err2, "");  // the hung rank learns it was dropped when it reports
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
    err = testing::error_of([&] { g.allreduce(&v, 1, DType::kF32, ReduceOp::kSum, o); });
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
                g.allgatherv(&v, &v, {1}, DType::kF32);
              }).find("1 counts for a world of 2"),
              std::string::npos);
    g.barrier();
  });
}

}  // namespace
}  // namespace tessera::dist
