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

float value(int rank, size_t i) {
  return static_cast<float>((rank + 1) * (i % 7 + 1));
}

// Every collective, checked on this rank.
void check_collectives(ProcessGroup& g) {
  const int W = g.size(), R = g.rank();
  const float tri = static_cast<float>(W * (W + 1) / 2);
  for (size_t n : {size_t(0), size_t(1), size_t(1000), size_t(1000000)}) {
    for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kMean, ReduceOp::kMax, ReduceOp::kMin}) {
      std::vector<float> x(n);
      for (size_t i = 0; i < n; ++i) x[i] = value(R, i);
      g.allreduce(x.data(), n, DType::kF32, op);
      for (size_t i = 0; i < n; ++i) {
        const float base = static_cast<float>(i % 7 + 1);
        const float want = op == ReduceOp::kSum    ? tri * base
                           : op == ReduceOp::kMean ? tri * base / static_cast<float>(W)
                           : op == ReduceOp::kMax  ? static_cast<float>(W) * base
                                                   : base;
        if (x[i] != want) {
          ADD_FAILURE() << op_name(op) << " n=" << n << " [" << i << "] " << x[i] << " != " << want;
          break;
        }
      }
    }
    // Doubles and 64-bit integers too.
    std::vector<int64_t> k(n, static_cast<int64_t>(R) << 33);
    g.allreduce(k.data(), n, DType::kI64, ReduceOp::kSum);
    for (size_t i = 0; i < n; ++i)
      if (k[i] != (static_cast<int64_t>(W) * (W - 1) / 2) << 33) {
        ADD_FAILURE() << "i64 sum n=" << n;
        break;
      }
    std::vector<double> d(n, 0.5 * R);
    g.allreduce(d.data(), n, DType::kF64, ReduceOp::kMax);
    for (size_t i = 0; i < n; ++i)
      if (d[i] != 0.5 * (W - 1)) {
        ADD_FAILURE() << "f64 max n=" << n;
        break;
      }
    // Broadcast from the last rank.
    std::vector<float> b(n, R == W - 1 ? 3.5f : -1.0f);
    g.broadcast(b.data(), n * 4, W - 1);
    for (size_t i = 0; i < n; ++i)
      if (b[i] != 3.5f) {
        ADD_FAILURE() << "broadcast n=" << n;
        break;
      }
    // Gather to rank 0, scatter from rank 0, reduce-scatter, equal blocks of n / W.
    const size_t blk = n / static_cast<size_t>(W);
    std::vector<float> mine(blk), all(blk * W, -1.0f);
    for (size_t i = 0; i < blk; ++i) mine[i] = value(R, i);
    g.gather(mine.data(), all.data(), blk, DType::kF32, 0);
    if (R == 0) {
      for (int r = 0; r < W; ++r)
        for (size_t i = 0; i < blk; ++i) EXPECT_EQ(all[r * blk + i], value(r, i)) << "gather";
    }
    std::vector<float> src(blk * W), got(blk, -1.0f);
    for (size_t j = 0; j < src.size(); ++j) src[j] = static_cast<float>(j);
    g.scatter(src.data(), got.data(), blk, DType::kF32, 0);
    for (size_t i = 0; i < blk; ++i) EXPECT_EQ(got[i], static_cast<float>(R * blk + i));
    std::vector<float> rs_in(blk * W), rs_out(blk, -1.0f);
    for (size_t j = 0; j < rs_in.size(); ++j) rs_in[j] = value(R, j);
    g.reduce_scatter(rs_in.data(), rs_out.data(), blk, DType::kF32, ReduceOp::kSum);
    for (size_t i = 0; i < blk; ++i)
      EXPECT_EQ(rs_out[i], tri * static_cast<float>((R * blk + i) % 7 + 1)) << "reduce_scatter";
  }
  // Uneven allgather: rank r gives r * 3 elements (rank 0 gives none).
  std::vector<size_t> counts;
  size_t total = 0;
  for (int r = 0; r < W; ++r) {
    counts.push_back(static_cast<size_t>(r) * 3);
    total += counts.back();
  }
  std::vector<int32_t> in(counts[R]), out(total, -1);
  for (size_t i = 0; i < in.size(); ++i) in[i] = R * 100 + static_cast<int32_t>(i);
  g.allgatherv(in.data(), out.data(), counts, DType::kI32);
  size_t at = 0;
  for (int r = 0; r < W; ++r)
    for (size_t i = 0; i < counts[r]; ++i) EXPECT_EQ(out[at++], r * 100 + static_cast<int>(i));
  std::vector<int32_t> eq(W * 2, -1), one = {R, -R};
  g.allgather(one.data(), eq.data(), 2, DType::kI32);
  for (int r = 0; r < W; ++r) {
    EXPECT_EQ(eq[2 * r], r);
    EXPECT_EQ(eq[2 * r + 1], -r);
  }
  g.barrier();
  // Point to point around the ring (even ranks send first, odd ranks receive first).
  if (W > 1) {
    const int next = (R + 1) % W, prev = (R + W - 1) % W;
    std::vector<float> out_msg(1000, static_cast<float>(R)), in_msg(1000, -1.0f);
    CallOptions o;
    o.tag = 7;
    if (R % 2 == 0) {
      g.send(out_msg.data(), 4000, next, o);
      g.recv(in_msg.data(), 4000, prev, o);
    } else {
      g.recv(in_msg.data(), 4000, prev, o);
      g.send(out_msg.data(), 4000, next, o);
    }
    for (float v : in_msg) ASSERT_EQ(v, static_cast<float>(prev));
  }
}

TEST(ProcessGroup, LocalIsExact) {
  auto g = make_local();
  EXPECT_EQ(g->rank(), 0);
  EXPECT_EQ(g->size(), 1);
  check_collectives(*g);
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
