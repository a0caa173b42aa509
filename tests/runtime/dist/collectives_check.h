// Every collective of a ProcessGroup, checked on the calling rank against
// values computed by hand (integer-valued floats: every sum is exact).
// Shared by the local/Gloo tests and the MPI test run under mpirun; on_gloo
// runs a body on a world of Gloo ranks as threads.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "runtime/dist/process_group.h"
#include "runtime/dist/work_queue.h"
#include "tests/testing.h"

namespace tessera::dist {

// Runs `body(group)` on `world` ranks, each a thread with its own Gloo group;
// failures inside a rank are collected and reported by rank.
// `rendezvous` empty: a fresh folder (Gloo's FileStore); else e.g. redis://h:p
// (the job prefix is `name` and the world size, so runs do not mix).
inline void on_gloo(int world, const std::string& name,
                    const std::function<void(ProcessGroup&)>& body,
                    std::chrono::milliseconds timeout = std::chrono::seconds(30),
                    const std::string& rendezvous = "") {
  const std::string dir =
      rendezvous.empty() ? testing::temp_dir("gloo_" + name + "_" + std::to_string(world)) : "";
  std::vector<std::string> errors(static_cast<size_t>(world));
  std::vector<std::thread> ranks;
  for (int r = 0; r < world; ++r)
    ranks.emplace_back([&, r] {
      try {
        GlooOptions o;
        o.rendezvous = rendezvous.empty() ? "file://" + dir : rendezvous;
        o.prefix = name + "-" + std::to_string(world);
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

inline float value(int rank, size_t i) {
  return static_cast<float>((rank + 1) * (i % 7 + 1));
}

// Every collective, checked on this rank.
inline void check_collectives(ProcessGroup& g) {
  const int W = g.size(), R = g.rank();
  const float tri = static_cast<float>(W * (W + 1) / 2);
  for (size_t n : {size_t(0), size_t(1), size_t(1000), size_t(1000000)}) {
    for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kMean, ReduceOp::kMax, ReduceOp::kMin}) {
      std::vector<float> x(n);
      for (size_t i = 0; i < n; ++i) x[i] = value(R, i);
      g.allreduce(x.data(), n, DType::F32, op);
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
    g.allreduce(k.data(), n, DType::I64, ReduceOp::kSum);
    for (size_t i = 0; i < n; ++i)
      if (k[i] != (static_cast<int64_t>(W) * (W - 1) / 2) << 33) {
        ADD_FAILURE() << "i64 sum n=" << n;
        break;
      }
    std::vector<double> d(n, 0.5 * R);
    g.allreduce(d.data(), n, DType::F64, ReduceOp::kMax);
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
    g.gather(mine.data(), all.data(), blk, DType::F32, 0);
    if (R == 0) {
      for (int r = 0; r < W; ++r)
        for (size_t i = 0; i < blk; ++i) EXPECT_EQ(all[r * blk + i], value(r, i)) << "gather";
    }
    std::vector<float> src(blk * W), got(blk, -1.0f);
    for (size_t j = 0; j < src.size(); ++j) src[j] = static_cast<float>(j);
    g.scatter(src.data(), got.data(), blk, DType::F32, 0);
    for (size_t i = 0; i < blk; ++i) EXPECT_EQ(got[i], static_cast<float>(R * blk + i));
    std::vector<float> rs_in(blk * W), rs_out(blk, -1.0f);
    for (size_t j = 0; j < rs_in.size(); ++j) rs_in[j] = value(R, j);
    g.reduce_scatter(rs_in.data(), rs_out.data(), blk, DType::F32, ReduceOp::kSum);
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
  g.allgatherv(in.data(), out.data(), counts, DType::I32);
  size_t at = 0;
  for (int r = 0; r < W; ++r)
    for (size_t i = 0; i < counts[r]; ++i) EXPECT_EQ(out[at++], r * 100 + static_cast<int>(i));
  std::vector<int32_t> eq(W * 2, -1), one = {R, -R};
  g.allgather(one.data(), eq.data(), 2, DType::I32);
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

// The work queue: 23 items of uneven cost and size over every rank; every
// item finishes exactly once, its bytes reach rank 0 intact and name the
// rank that made them; a work that throws (item 7) and a done that throws
// (item 11) fail just their items, with their messages.
inline void check_work_queue(ProcessGroup& g) {
  const size_t n = 23;
  auto payload = [](size_t i, int rank) {
    std::string s;
    for (size_t k = 0; k < i * 100; ++k) s += static_cast<char>('a' + (k + i) % 26);
    return s + "@" + std::to_string(rank);
  };
  std::vector<int> calls(n, 0);
  std::vector<std::string> got(n);
  WorkOptions o;
  o.tag = 40;
  WorkSummary s = distribute(
      g, n,
      [&](size_t i) -> std::string {
        std::this_thread::sleep_for(std::chrono::milliseconds(static_cast<int>(i % 4) * 3));
        if (i == 7) throw Error("item 7 is bad");
        return i == 0 ? std::string() : payload(i, g.rank());
      },
      [&](size_t i, int rank, const std::string& bytes) {
        ++calls[i];
        got[i] = bytes;
        if (i == 11) throw Error("cannot store item 11");
        if (i > 0) {
          EXPECT_EQ(bytes, payload(i, rank)) << "item " << i;
        }
      },
      o);
  if (g.rank() != 0) {
    for (const WorkReport& r : s.items) EXPECT_EQ(r.rank, g.rank());
    return;
  }
  ASSERT_EQ(s.items.size(), n);
  EXPECT_TRUE(s.ranks_lost.empty());
  EXPECT_FALSE(s.all_ok());
  for (size_t i = 0; i < n; ++i) {
    const WorkReport& r = s.items[i];
    EXPECT_EQ(r.item, i);
    EXPECT_GE(r.rank, 0);
    EXPECT_LT(r.rank, g.size());
    EXPECT_EQ(calls[i], i == 7 ? 0 : 1) << "item " << i;
    if (i == 7) {
      EXPECT_FALSE(r.ok);
      EXPECT_EQ(r.error, "item 7 is bad");
    } else if (i == 11) {
      EXPECT_FALSE(r.ok);
      EXPECT_EQ(r.error, "cannot store item 11");
    } else {
      EXPECT_TRUE(r.ok) << "item " << i << ": " << r.error;
    }
  }
}

// split(): even and odd ranks form two sub-groups ranked by key = -(rank/4)
// (reverse order, ties in parent-rank order) and the last rank of a world
// of three or more joins none. Each
// sub-group's sums name exactly its own members (two sub-groups run at once
// without cross-talk), every collective works inside it, a sub-group splits
// again, the parent still works afterwards, and a bad color is refused by name.
inline void check_split(ProcessGroup& g) {
  const int W = g.size(), R = g.rank();
  const bool out = W >= 3 && R == W - 1;
  const int color = out ? ProcessGroup::kNoColor : R % 2;
  auto sub = g.split(color, -(R / 4));
  if (out) {
    EXPECT_EQ(sub, nullptr);
  } else {
    ASSERT_NE(sub, nullptr);
    std::vector<int> members;  // parent ranks of my color, by (key, rank)
    for (int r = 0; r < W; ++r)
      if (!(W >= 3 && r == W - 1) && r % 2 == color) members.push_back(r);
    std::sort(members.begin(), members.end(), [](int a, int b) {
      return std::make_pair(-(a / 4), a) < std::make_pair(-(b / 4), b);
    });
    EXPECT_EQ(sub->backend(), g.backend());
    ASSERT_EQ(sub->size(), static_cast<int>(members.size()));
    EXPECT_EQ(members[static_cast<size_t>(sub->rank())], R);
    int64_t sum = R, want = 0;
    for (int r : members) want += r;
    sub->allreduce(&sum, 1, DType::I64, ReduceOp::kSum);
    EXPECT_EQ(sum, want) << "color " << color;
    check_collectives(*sub);
    // Split again: every member alone.
    auto alone = sub->split(sub->rank(), 0);
    ASSERT_NE(alone, nullptr);
    EXPECT_EQ(alone->size(), 1);
    EXPECT_EQ(alone->rank(), 0);
    float x = 5;
    alone->allreduce(&x, 1, DType::F32, ReduceOp::kSum);
    EXPECT_EQ(x, 5.0f);
  }
  int64_t n = 1;
  g.allreduce(&n, 1, DType::I64, ReduceOp::kSum);
  EXPECT_EQ(n, W);
  EXPECT_NE(testing::error_of([&] { g.split(-2, 0); }).find("color -2"), std::string::npos);
}

}  // namespace tessera::dist
