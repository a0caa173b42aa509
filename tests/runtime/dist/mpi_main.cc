// The MPI backend under `mpirun -np N` (registered with ctest by
// tests/CMakeLists.txt for N = 2 and 4): every collective on every rank.
// Not a *_test.cc file, so it is not also run as a plain single process.
#include <gtest/gtest.h>

#include "tests/runtime/dist/collectives_check.h"
#include "tests/testing.h"

namespace tessera::dist {
namespace {

TEST(Mpi, EveryCollectiveOnEveryRank) {
  auto g = make_process_group();  // mpirun's environment picks mpi
  ASSERT_EQ(g->backend(), "mpi");
  ASSERT_GE(g->size(), 2);
  check_collectives(*g);
  check_work_queue(*g);
  check_split(*g);
  // Calls with different tags run on different communicators.
  float a = 1, b = 2;
  CallOptions t1, t2;
  t1.tag = 1;
  t2.tag = 2;
  g->allreduce(&a, 1, DType::F32, ReduceOp::kSum, t1);
  g->allreduce(&b, 1, DType::F32, ReduceOp::kSum, t2);
  EXPECT_EQ(a, static_cast<float>(g->size()));
  EXPECT_EQ(b, 2.0f * g->size());
  EXPECT_NE(testing::error_of([&] { g->broadcast(&a, 4, g->size()); }).find("root"),
            std::string::npos);
  g->barrier();
}

// Gloo launched by mpirun: ranks meet through Gloo's Store implemented over MPI.
TEST(Mpi, GlooRendezvousOverMpi) {
  auto g = make_process_group("gloo");
  ASSERT_EQ(g->backend(), "gloo");
  ASSERT_GE(g->size(), 2);
  check_collectives(*g);
  check_work_queue(*g);
  check_split(*g);
}

}  // namespace
}  // namespace tessera::dist
