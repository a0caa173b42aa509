// `tessera launch --nproc N <command ...>`: N local ranks of a tessera
// command over the Gloo backend, meeting through a FileStore folder made for
// the job. (Open MPI users run `mpirun -np N tessera <command>` instead.)
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
#include <CLI/CLI.hpp>
#include <memory>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "launch/commands.h"
#include "runtime/common/error.h"

namespace tessera::launch {

namespace fs = std::filesystem;

int run_launch(const LaunchOptions& o) {
  if (o.nproc < 1 || o.nproc > 256) throw Error(str("--nproc ", o.nproc, ": expected 1..256"));
  if (o.backend != "gloo")
    throw Error(str("launch --backend '", o.backend,
                    "': launch starts gloo ranks; for MPI run `mpirun -np N tessera ...`"));
  if (o.command.empty()) throw Error("launch: name the tessera command to run, e.g. pretrain ...");
  if (o.command[0] == "launch") throw Error("launch: the command cannot be launch itself");
  char tmpl[] = "/tmp/tessera_launch_XXXXXX";
  if (!mkdtemp(tmpl)) throw Error("launch: cannot make a rendezvous folder under /tmp");
  const std::string rdv = tmpl;
  std::vector<pid_t> pids;
  for (int r = 0; r < o.nproc; ++r) {
    const pid_t pid = fork();
    if (pid < 0) throw Error("launch: fork failed");
    if (pid == 0) {
      setenv("TESSERA_BACKEND", "gloo", 1);
      setenv("TESSERA_WORLD_SIZE", std::to_string(o.nproc).c_str(), 1);
      setenv("TESSERA_RANK", std::to_string(r).c_str(), 1);
      setenv("TESSERA_RENDEZVOUS", ("file://" + rdv).c_str(), 1);
      setenv("TESSERA_HOST", "127.0.0.1", 1);
      setenv("TESSERA_LOCAL_RANKS", std::to_string(o.nproc).c_str(), 1);
      if (r > 0 && !o.all_output) {  // one rank speaks; the others only their errors
        const int null = open("/dev/null", O_WRONLY);
        dup2(null, 1);
      }
      std::vector<std::string> args = {"/proc/self/exe"};
      args.insert(args.end(), o.command.begin(), o.command.end());
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv("/proc/self/exe", argv.data());
      std::fprintf(stderr, "tessera launch: rank %d could not start\n", r);
      _exit(127);
    }
    pids.push_back(pid);
  }
  // Wait for all; after the first failure give the others the grace period
  // (their calls time out on their own), then stop what is left.
  int code = 0, alive = o.nproc;
  std::vector<bool> done(pids.size(), false);
  auto stop_at = std::chrono::steady_clock::time_point::max();
  while (alive > 0) {
    for (size_t r = 0; r < pids.size(); ++r) {
      if (done[r]) continue;
      int st = 0;
      if (waitpid(pids[r], &st, WNOHANG) != pids[r]) continue;
      done[r] = true;
      --alive;
      const int c = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
      if (c != 0) {
        std::fprintf(stderr, "tessera launch: rank %zu of %d exited with %s %d\n", r, o.nproc,
                     WIFEXITED(st) ? "code" : "signal", WIFEXITED(st) ? c : WTERMSIG(st));
        if (code == 0) {
          code = c;
          stop_at = std::chrono::steady_clock::now() + std::chrono::seconds(o.grace_seconds);
        }
      }
    }
    if (alive > 0 && std::chrono::steady_clock::now() > stop_at) {
      for (size_t r = 0; r < pids.size(); ++r)
        if (!done[r]) {
          std::fprintf(stderr,
                       "tessera launch: stopping rank %zu (still running %d s after a "
                       "rank failed)\n",
                       r, o.grace_seconds);
          kill(pids[r], SIGKILL);
        }
      stop_at = std::chrono::steady_clock::time_point::max();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  std::error_code ec;
  fs::remove_all(rdv, ec);
  return code;
}

Command add_launch_command(CLI::App& app) {
  auto o = std::make_shared<LaunchOptions>();
  LaunchOptions& lc = *o;
  auto* c_launch =
      app.add_subcommand("launch",
                         "Run a tessera command on N local ranks (Gloo over loopback), e.g. "
                         "tessera launch --nproc 2 pretrain --model mlp");
  c_launch->add_option("--nproc", lc.nproc, "Ranks")->capture_default_str();
  c_launch->add_option("--backend", lc.backend, "gloo (for MPI use mpirun)")->capture_default_str();
  c_launch
      ->add_option("--grace", lc.grace_seconds,
                   "Seconds the other ranks may take to stop after one fails")
      ->capture_default_str();
  c_launch->add_flag("--all-output", lc.all_output, "Show every rank's output, not only rank 0's");
  // Everything from the first word that is not a launch option on is the
  // command, in order: tessera launch --nproc 2 pretrain --model mlp steps=5
  c_launch->prefix_command();
  CLI::App* root = &app;
  return {c_launch, [o, c_launch, root] {
            o->command = c_launch->remaining();
            // The command is checked here, before any rank is spawned: a
            // mistyped one would otherwise fail once per rank.
            if (!o->command.empty() && o->command[0].rfind("-", 0) != 0) {
              bool known = false;
              std::string names;
              for (const CLI::App* sub : root->get_subcommands([](CLI::App*) { return true; })) {
                known = known || sub->get_name() == o->command[0];
                names += (names.empty() ? "" : ", ") + sub->get_name();
              }
              if (!known)
                throw Error(
                    str("launch: '", o->command[0], "' is not a tessera command (", names, ")"));
            }
            return run_launch(*o);
          }};
}

}  // namespace tessera::launch
