// A rank for the fault tests: joins the process group its environment names
// (make_process_group), then runs allreduce steps, printing "step S" after
// each. TESSERA_TEST_STEPS bounds the loop (default: forever), a rank equal
// to TESSERA_TEST_DIE_RANK kills itself with SIGKILL at step
// TESSERA_TEST_DIE_AT (or, with TESSERA_TEST_HANG=1, stops calling and
// sleeps), TESSERA_TEST_TIMEOUT_MS is every call's timeout.
// A failure prints the error and exits 1, as tessera's commands do.
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "runtime/dist/process_group.h"

int main() {
  auto num = [](const char* name, long fallback) {
    const char* v = std::getenv(name);
    return v ? std::atol(v) : fallback;
  };
  try {
    auto g = tessera::dist::make_process_group();
    tessera::dist::CallOptions o;
    o.timeout = std::chrono::milliseconds(num("TESSERA_TEST_TIMEOUT_MS", 5000));
    const long steps = num("TESSERA_TEST_STEPS", -1), die_rank = num("TESSERA_TEST_DIE_RANK", -1),
               die_at = num("TESSERA_TEST_DIE_AT", -1);
    std::vector<float> x(4096);
    for (long s = 0; steps < 0 || s < steps; ++s) {
      if (g->rank() == die_rank && s == die_at) {
        if (num("TESSERA_TEST_HANG", 0) == 0) raise(SIGKILL);
        for (;;) sleep(1);  // hung: alive, never answering
      }
      for (float& v : x) v = 1.0f;
      g->allreduce(x.data(), x.size(), tessera::dist::DType::F32, tessera::dist::ReduceOp::kSum, o);
      if (x[0] != static_cast<float>(g->size())) {
        std::fprintf(stderr, "rank %d: wrong sum %g\n", g->rank(), x[0]);
        return 1;
      }
      std::printf("rank %d step %ld\n", g->rank(), s);
      std::fflush(stdout);
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tessera: error: %s\n", e.what());
    return 1;
  }
}
