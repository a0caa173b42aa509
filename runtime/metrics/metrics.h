// Run metrics: one JSONL file per run, and a progress line for long work
// (a single updating line with rate and ETA on a terminal, periodic plain
// lines otherwise).
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>

namespace tessera::metrics {

class JsonlWriter {
 public:
  JsonlWriter() = default;
  explicit JsonlWriter(const std::string& path, bool append = false);
  ~JsonlWriter();
  JsonlWriter(const JsonlWriter&) = delete;
  JsonlWriter& operator=(const JsonlWriter&) = delete;
  bool is_open() const { return f_ != nullptr; }
  void write(const nlohmann::json& row);
  const std::string& path() const { return path_; }

 private:
  FILE* f_ = nullptr;
  std::string path_;
};

class Progress {
 public:
  // `unit` names what is counted ("samples", "tok"); total 0 means unknown.
  Progress(std::string label, int64_t total_steps, FILE* out = stdout);
  // Call after each step with the units processed in it and a short status text.
  void update(int64_t step, double units, const std::string& status);
  void finish(const std::string& status);
  double rate() const;  // units per second over the run so far

 private:
  std::string label_;
  int64_t total_;
  FILE* out_;
  bool tty_;
  std::chrono::steady_clock::time_point start_, last_print_;
  double units_ = 0.0;
  int64_t last_step_ = 0;
};

std::string format_duration(double seconds);

}  // namespace tessera::metrics
