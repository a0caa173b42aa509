// Allreduce through ProcessGroup (mpi and gloo backends) next to a plain
// MPI_Allreduce of the same buffers in the same run (issue 5): algorithmic
// bandwidth (bytes / time) for 1, 16 and 64 MB of fp32, median of the timed
// iterations. Run as is: it starts itself under `mpirun -np 2` (--np N to
// change) when not already under mpirun. JSON lines from rank 0.
//
//   build/bench/allreduce_bench [--np 2] [--iters 20]
#include <mpi.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "bench/common.h"
#include "runtime/dist/process_group.h"

using namespace tessera;

namespace {

template <typename F>
double median_seconds(int iters, F&& f) {
  f();  // warm-up
  std::vector<double> t;
  for (int i = 0; i < iters; ++i) {
    MPI_Barrier(MPI_COMM_WORLD);
    const auto t0 = std::chrono::steady_clock::now();
    f();
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Allreduce: ProcessGroup (mpi, gloo) vs raw MPI_Allreduce"};
  int np = 2, iters = 20;
  app.add_option("--np", np, "Ranks (when it starts mpirun itself)")->capture_default_str();
  app.add_option("--iters", iters)->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  if (!std::getenv("OMPI_COMM_WORLD_SIZE")) {
    const std::string n = std::to_string(np), it = std::to_string(iters);
    char self[4096] = {0};
    if (readlink("/proc/self/exe", self, sizeof self - 1) <= 0) return 1;
    execlp("mpirun", "mpirun", "--allow-run-as-root", "--oversubscribe", "-np", n.c_str(), self,
           "--iters", it.c_str(), static_cast<char*>(nullptr));
    std::perror("allreduce_bench: mpirun");
    return 1;
  }
  auto mpi = dist::make_mpi();                   // initialises MPI
  auto gloo = dist::make_process_group("gloo");  // meets over MPI
  const int rank = mpi->rank();
  for (size_t mb : {size_t(1), size_t(16), size_t(64)}) {
    const size_t n = mb * (1u << 20) / 4;
    std::vector<float> x(n, 1.0f);
    const double raw = median_seconds(iters, [&] {
      MPI_Allreduce(MPI_IN_PLACE, x.data(), static_cast<int>(n), MPI_FLOAT, MPI_SUM,
                    MPI_COMM_WORLD);
    });
    const double pg_mpi = median_seconds(
        iters, [&] { mpi->allreduce(x.data(), n, dist::DType::kF32, dist::ReduceOp::kSum); });
    const double pg_gloo = median_seconds(
        iters, [&] { gloo->allreduce(x.data(), n, dist::DType::kF32, dist::ReduceOp::kSum); });
    if (rank == 0)
      for (const auto& [impl, s] :
           {std::pair{"raw_mpi_allreduce", raw}, std::pair{"process_group_mpi", pg_mpi},
            std::pair{"process_group_gloo", pg_gloo}})
        bench::emit({{"bench", "allreduce"},
                     {"impl", impl},
                     {"ranks", mpi->size()},
                     {"mb", mb},
                     {"median_ms", s * 1e3},
                     {"algbw_gb_s", static_cast<double>(n) * 4 / s / 1e9},
                     {"vs_raw_mpi", raw / s}});
  }
  return 0;
}
