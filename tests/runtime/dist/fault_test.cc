// A rank SIGKILLed during an allreduce loop never hangs the job: the other
// ranks exit non-zero within their timeout with a message naming the dead
// rank — Gloo (ranks as processes meeting through a FileStore folder) and
// MPI (under mpirun, which names the rank that died).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "tests/testing.h"

namespace {

using Clock = std::chrono::steady_clock;

std::string slurp(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// Starts `argv` with `env` added, stdout and stderr to `log`.
pid_t spawn(const std::vector<std::string>& argv, const std::vector<std::string>& env,
            const std::string& log) {
  const pid_t pid = fork();
  if (pid == 0) {
    const int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fd, 1);
    dup2(fd, 2);
    for (const auto& e : env) putenv(const_cast<char*>(e.c_str()));
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execv(args[0], args.data());
    _exit(127);
  }
  return pid;
}

// Waits for `pid` until `deadline`; its exit code, 128+signal, or -1 if it
// is still running then (it is killed).
int wait_until(pid_t pid, Clock::time_point deadline) {
  for (;;) {
    int st = 0;
    if (waitpid(pid, &st, WNOHANG) == pid)
      return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    if (Clock::now() > deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &st, 0);
      return -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

TEST(DistFault, GlooSurvivorsFailNamingTheDeadRank) {
  const std::string dir = tessera::testing::temp_dir("fault_gloo");
  const int world = 3;
  std::vector<pid_t> pids;
  for (int r = 0; r < world; ++r)
    pids.push_back(
        spawn({TESSERA_DIST_WORKER},
              {"TESSERA_WORLD_SIZE=3", "TESSERA_RANK=" + std::to_string(r),
               "TESSERA_RENDEZVOUS=file://" + dir + "/rdv", "TESSERA_HOST=127.0.0.1",
               "TESSERA_TEST_DIE_RANK=1", "TESSERA_TEST_DIE_AT=20", "TESSERA_TEST_TIMEOUT_MS=3000"},
              dir + "/" + std::to_string(r) + ".log"));
  // Within the 3 s timeout (plus start-up), every survivor has exited non-zero
  // naming the dead rank (and, when it looked late, the survivor that had
  // already quit because of it).
  const auto deadline = Clock::now() + std::chrono::seconds(20);
  int named_dead = 0;
  for (int r = 0; r < world; ++r) {
    const int code = wait_until(pids[r], deadline);
    const std::string log = slurp(dir + "/" + std::to_string(r) + ".log");
    if (r == 1) {
      EXPECT_EQ(code, 128 + SIGKILL) << log;
      continue;
    }
    EXPECT_EQ(code, 1) << "rank " << r << ":\n" << log;
    EXPECT_NE(log.find("step 19"), std::string::npos) << log;  // it was running
    EXPECT_NE(log.find("allreduce"), std::string::npos) << log;
    // "(rank 1 is gone)", or "(ranks 0, 1 are gone)" when the other survivor
    // had already quit by the time this one looked.
    const bool names = log.find("(rank 1 is gone)") != std::string::npos ||
                       log.find(", 1 are gone)") != std::string::npos ||
                       log.find("ranks 1, ") != std::string::npos;
    EXPECT_TRUE(names) << "rank " << r << ":\n" << log;
    named_dead += names;
  }
  EXPECT_GE(named_dead, 1);
}

TEST(DistFault, MpiJobEndsNamingTheDeadRank) {
  const std::string dir = tessera::testing::temp_dir("fault_mpi");
  const auto t0 = Clock::now();
  const pid_t pid = spawn({TESSERA_MPIEXEC, "--allow-run-as-root", "--oversubscribe", "-np", "3",
                           "-x", "TESSERA_TEST_DIE_RANK=1", "-x", "TESSERA_TEST_DIE_AT=20", "-x",
                           "TESSERA_TEST_TIMEOUT_MS=3000", TESSERA_DIST_WORKER},
                          {}, dir + "/mpirun.log");
  const int code = wait_until(pid, t0 + std::chrono::seconds(30));
  const std::string log = slurp(dir + "/mpirun.log");
  EXPECT_NE(code, 0) << log;
  EXPECT_NE(code, -1) << "mpirun still running after 30 s:\n" << log;
  EXPECT_NE(log.find("rank 1"), std::string::npos) << log;
  EXPECT_NE(log.find("step 19"), std::string::npos) << log;
}

// A peer that hangs (alive, never answering): MPI cannot cancel the call, so
// the survivors' watchdog ends the job at the timeout, naming the call.
TEST(DistFault, MpiHungPeerAbortsAtTheTimeout) {
  const std::string dir = tessera::testing::temp_dir("fault_mpi_hang");
  const auto t0 = Clock::now();
  const pid_t pid =
      spawn({TESSERA_MPIEXEC, "--allow-run-as-root", "--oversubscribe", "-np", "2", "-x",
             "TESSERA_TEST_DIE_RANK=1", "-x", "TESSERA_TEST_DIE_AT=10", "-x", "TESSERA_TEST_HANG=1",
             "-x", "TESSERA_TEST_TIMEOUT_MS=1500", TESSERA_DIST_WORKER},
            {}, dir + "/mpirun.log");
  const int code = wait_until(pid, t0 + std::chrono::seconds(30));
  const std::string log = slurp(dir + "/mpirun.log");
  EXPECT_NE(code, 0) << log;
  EXPECT_NE(code, -1) << "still running after 30 s:\n" << log;
  EXPECT_NE(
      log.find("mpi allreduce (tag 0, rank 0 of 2): no answer from every peer within 1500 ms"),
      std::string::npos)
      << log;
}

// Two "hosts": network namespaces joined by a veth pair, one Gloo rank in
// each, reaching each other only over that link (10.77.x.1 / .2). Needs root
// (CAP_NET_ADMIN) and iproute2; skipped without them.
class Namespaces {
 public:
  Namespaces() : a_("tsa" + std::to_string(getpid())), b_("tsb" + std::to_string(getpid())) {}
  ~Namespaces() {
    sh("ip netns del " + a_);
    sh("ip netns del " + b_);
  }
  bool Make(const std::string& net) {
    const std::string va = "tva" + std::to_string(getpid() % 100000),
                      vb = "tvb" + std::to_string(getpid() % 100000);
    return sh("ip netns add " + a_) && sh("ip netns add " + b_) &&
           sh("ip link add " + va + " type veth peer name " + vb) &&
           sh("ip link set " + va + " netns " + a_) && sh("ip link set " + vb + " netns " + b_) &&
           sh("ip -n " + a_ + " addr add " + net + ".1/24 dev " + va) &&
           sh("ip -n " + b_ + " addr add " + net + ".2/24 dev " + vb) &&
           sh("ip -n " + a_ + " link set " + va + " up") &&
           sh("ip -n " + b_ + " link set " + vb + " up") && sh("ip -n " + a_ + " link set lo up") &&
           sh("ip -n " + b_ + " link set lo up");
  }
  const std::string& a() const { return a_; }
  const std::string& b() const { return b_; }

 private:
  static bool sh(const std::string& cmd) {
    return std::system((cmd + " 2>/dev/null").c_str()) == 0;
  }
  std::string a_, b_;
};

TEST(DistMultiHost, GlooAcrossTwoNetworkNamespaces) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to make network namespaces";
  Namespaces ns;
  const std::string net = "10.77." + std::to_string(getpid() % 200 + 1);
  if (!ns.Make(net)) GTEST_SKIP() << "cannot make network namespaces here (ip netns / veth)";
  const std::string dir = tessera::testing::temp_dir("netns");
  std::vector<pid_t> pids;
  for (int r = 0; r < 2; ++r)
    pids.push_back(spawn(
        {"/usr/bin/env", "ip", "netns", "exec", r == 0 ? ns.a() : ns.b(), TESSERA_DIST_WORKER},
        {"TESSERA_WORLD_SIZE=2", "TESSERA_RANK=" + std::to_string(r),
         "TESSERA_RENDEZVOUS=file://" + dir + "/rdv",
         "TESSERA_HOST=" + net + "." + std::to_string(r + 1), "TESSERA_TEST_STEPS=20",
         "TESSERA_TEST_TIMEOUT_MS=10000"},
        dir + "/" + std::to_string(r) + ".log"));
  const auto deadline = Clock::now() + std::chrono::seconds(60);
  for (int r = 0; r < 2; ++r) {
    const int code = wait_until(pids[r], deadline);
    const std::string log = slurp(dir + "/" + std::to_string(r) + ".log");
    EXPECT_EQ(code, 0) << "rank " << r << ":\n" << log;
    EXPECT_NE(log.find("rank " + std::to_string(r) + " step 19"), std::string::npos) << log;
  }
}

}  // namespace
