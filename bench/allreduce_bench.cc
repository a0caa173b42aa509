// Allreduce through ProcessGroup (mpi and gloo backends) next to a plain
// MPI_Allreduce of the same buffers in the same run (issue 5): algorithmic
// bandwidth (bytes / time) for 1, 16 and 64 MB of fp32, median of the timed
// iterations. Run as is: it starts itself under `mpirun -np 2` (--np N to
// change), then as N plain processes meeting through a folder (Gloo without
// MPI in the process, as `tessera launch` runs it: MPI's runtime in the same
// process slows Gloo's small messages ~5x here). JSON lines.
//
//   build/bench/allreduce_bench [--np 2] [--iters 20]
#include <mpi.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "bench/common.h"
#include "runtime/dist/process_group.h"

using namespace tessera;

namespace {

template <typename F, typename B>
double median_seconds(int iters, F&& f, B&& barrier) {
  f();  // warm-up
  std::vector<double> t;
  for (int i = 0; i < iters; ++i) {
    barrier();
    const auto t0 = std::chrono::steady_clock::now();
    f();
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

const std::vector<size_t> kSizesMb = {1, 16, 64};

bench::json row(const char* impl, int ranks, size_t mb, double s, double raw) {
  const double bytes = static_cast<double>(mb) * (1u << 20);
  return {{"bench", "allreduce"}, {"impl", impl},
          {"ranks", ranks},       {"mb", mb},
          {"median_ms", s * 1e3}, {"algbw_gb_s", bytes / s / 1e9},
          {"vs_raw_mpi", raw / s}};
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Allreduce: ProcessGroup (mpi, gloo) vs raw MPI_Allreduce"};
  int np = 2, iters = 20;
  app.add_option("--np", np, "Ranks (when it starts mpirun itself)")->capture_default_str();
  app.add_option("--iters", iters)->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  const std::string it = std::to_string(iters);

  if (std::getenv("TESSERA_WORLD_SIZE")) {
    // A plain Gloo rank (no MPI in this process): medians, rank 0 prints.
    auto gloo = dist::make_process_group("gloo");
    for (size_t mb : kSizesMb) {
      std::vector<float> x(mb * (1u << 20) / 4, 1.0f);
      const double s = median_seconds(
          iters,
          [&] { gloo->allreduce(x.data(), x.size(), dist::DType::F32, dist::ReduceOp::kSum); },
          [&] { gloo->barrier(); });
      if (gloo->rank() == 0) bench::emit({{"mb", mb}, {"median_s", s}});
    }
    return 0;
  }

  if (!std::getenv("OMPI_COMM_WORLD_SIZE")) {
    char self[4096] = {0};
    if (readlink("/proc/self/exe", self, sizeof self - 1) <= 0) return 1;
    const std::string n = std::to_string(np);
    // Under mpirun: raw MPI, ProcessGroup mpi, ProcessGroup gloo (met over MPI).
    std::vector<bench::json> rows = bench::json_lines(
        "mpirun --allow-run-as-root --oversubscribe -np " + n + " " + self + " --iters " + it);
    std::map<size_t, double> raw;
    for (const bench::json& r : rows) {
      bench::emit(r);
      if (r["impl"] == "raw_mpi_allreduce")
        raw[r["mb"].get<size_t>()] = r["median_ms"].get<double>() / 1e3;
    }
    // N plain processes, Gloo meeting through a folder.
    const std::string dir = "/tmp/tessera_allreduce_bench_" + std::to_string(getpid());
    std::string cmd = "mkdir -p " + dir + " && (";
    for (int r = np - 1; r >= 0; --r)
      cmd += "TESSERA_WORLD_SIZE=" + n + " TESSERA_RANK=" + std::to_string(r) +
             " TESSERA_RENDEZVOUS=file://" + dir + " TESSERA_HOST=127.0.0.1 " + self + " --iters " +
             it + (r > 0 ? " > /dev/null & " : "; wait)");
    for (const bench::json& r : bench::json_lines(cmd)) {
      const size_t mb = r["mb"].get<size_t>();
      bench::emit(row("process_group_gloo_plain_processes", np, mb, r["median_s"].get<double>(),
                      raw.count(mb) ? raw[mb] : 0.0));
    }
    std::filesystem::remove_all(dir);
    return rows.empty() ? 1 : 0;
  }

  auto mpi = dist::make_mpi();                   // initialises MPI
  auto gloo = dist::make_process_group("gloo");  // meets over MPI
  const int rank = mpi->rank();
  auto mpi_barrier = [] { MPI_Barrier(MPI_COMM_WORLD); };
  for (size_t mb : kSizesMb) {
    const size_t n = mb * (1u << 20) / 4;
    std::vector<float> x(n, 1.0f);
    const double raw = median_seconds(
        iters,
        [&] {
          MPI_Allreduce(MPI_IN_PLACE, x.data(), static_cast<int>(n), MPI_FLOAT, MPI_SUM,
                        MPI_COMM_WORLD);
        },
        mpi_barrier);
    const double pg_mpi = median_seconds(
        iters, [&] { mpi->allreduce(x.data(), n, dist::DType::F32, dist::ReduceOp::kSum); },
        mpi_barrier);
    const double pg_gloo = median_seconds(
        iters, [&] { gloo->allreduce(x.data(), n, dist::DType::F32, dist::ReduceOp::kSum); },
        mpi_barrier);
    if (rank == 0) {
      bench::emit(row("raw_mpi_allreduce", mpi->size(), mb, raw, raw));
      bench::emit(row("process_group_mpi", mpi->size(), mb, pg_mpi, raw));
      bench::emit(row("process_group_gloo_under_mpirun", mpi->size(), mb, pg_gloo, raw));
    }
  }
  return 0;
}
