// Helpers for bench/ programs: JSON lines on stdout, peak RSS, timing, and running a
// PyTorch peer script (bench/peers/) in the same invocation at each of its
// thread settings, keeping the best — so ratios hold on a noisy machine.
#pragma once

#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace tessera::bench {

using nlohmann::json;

inline void emit(const json& j) {
  std::printf("%s\n", j.dump().c_str());
  std::fflush(stdout);
}

// Seconds since t0 on the steady clock.
inline double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// While alive, the process's stdout goes to /dev/null: the commands a bench
// runs print their tables and progress there, and stdout carries the JSON
// lines only.
class Quiet {
 public:
  Quiet() {
    std::fflush(stdout);
    saved_ = dup(1);
    const int null = open("/dev/null", O_WRONLY);
    dup2(null, 1);
    close(null);
  }
  ~Quiet() {
    std::fflush(stdout);
    dup2(saved_, 1);
    close(saved_);
  }
  Quiet(const Quiet&) = delete;
  Quiet& operator=(const Quiet&) = delete;

 private:
  int saved_;
};

// The ten Fashion-MNIST tasks the routing benches share: five pixel
// permutations, three rotations, two class subsets.
inline const std::vector<std::string>& ten_image_tasks() {
  static const std::vector<std::string> t = {
      "permute:seed=1", "permute:seed=2", "permute:seed=3", "permute:seed=4",  "permute:seed=5",
      "rotate:deg=90",  "rotate:deg=180", "rotate:deg=270", "classes:0,2,4,6", "classes:1,3,5,7,9"};
  return t;
}

// "a;b;c": tasks as one data.task / --tasks value.
inline std::string joined(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : ";") + x;
  return s;
}

inline double peak_rss_mb() {
  struct rusage u {};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_maxrss) / 1024.0;
}

// Seconds per call of f: one warm-up call, then `reps` windows of at least
// `window` seconds each (as many calls as fit), the best window's mean.
inline double best_seconds(const std::function<void()>& f, int reps, double window) {
  f();
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    int n = 0;
    const auto t0 = std::chrono::steady_clock::now();
    double s = 0;
    do {
      f();
      ++n;
      s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    } while (s < window);
    best = std::min(best, s / n);
  }
  return best;
}

// Runs a shell command; returns the JSON objects it printed, one a line
// (other lines are skipped).
inline std::vector<json> json_lines(const std::string& cmd) {
  std::vector<json> rows;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return rows;
  std::array<char, 65536> buf{};
  while (fgets(buf.data(), static_cast<int>(buf.size()), p)) {
    json j = json::parse(buf.data(), nullptr, false);
    if (j.is_object()) rows.push_back(j);
  }
  pclose(p);
  return rows;
}

// Runs `env python script args`, returns the JSON lines it printed.
inline std::vector<json> run_peer(const std::string& python, const std::string& script,
                                  const std::string& args, const std::string& env) {
  return json_lines(env + " " + python + " " + script + " " + args + " 2>/dev/null");
}

struct ThreadSetting {
  std::string env;
  int threads;
};

// PyTorch's best setting on a small core count is not its default: OpenMP
// workers spinning beside BLAS threads can cost it 2-4x. Try these.
inline std::vector<ThreadSetting> peer_settings(int cores) {
  std::vector<ThreadSetting> s = {{"OMP_WAIT_POLICY=ACTIVE", cores},
                                  {"OMP_WAIT_POLICY=PASSIVE", cores}};
  if (cores > 1) s.push_back({"OMP_WAIT_POLICY=PASSIVE", 1});
  return s;
}

// Probes each thread setting with a short run (`probe_args` plus --threads N),
// emits one probe row each, and returns the setting with the highest
// rows[row].samples_per_s (row: 0 = first line the peer printed, -1 = last).
inline ThreadSetting best_peer_setting(const std::string& python, const std::string& script,
                                       const std::string& probe_args, int cores,
                                       const std::string& bench, const std::string& impl,
                                       int row = -1) {
  ThreadSetting best{"", cores};
  double best_rate = 0;
  for (const auto& s : peer_settings(cores)) {
    auto rows =
        run_peer(python, script, probe_args + " --threads " + std::to_string(s.threads), s.env);
    if (rows.empty()) continue;
    const json& r = row < 0 ? rows.back() : rows.front();
    const double rate = r.value("samples_per_s", 0.0);
    emit({{"bench", bench},
          {"impl", impl},
          {"figure", "thread_setting_probe"},
          {"env", s.env},
          {"threads", s.threads},
          {"samples_per_s", rate}});
    if (rate > best_rate) {
      best_rate = rate;
      best = s;
    }
  }
  return best;
}

inline bool peer_available(const std::string& python, const std::string& modules = "torch") {
  std::string cmd = python + " -c 'import " + modules + "' >/dev/null 2>&1";
  return std::system(cmd.c_str()) == 0;
}

}  // namespace tessera::bench
