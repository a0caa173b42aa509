#include "runtime/metrics/metrics.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "runtime/common/error.h"

namespace tessera::metrics {

JsonlWriter::JsonlWriter(const std::string& path, bool append) : path_(path) {
  f_ = std::fopen(path.c_str(), append ? "a" : "w");
  if (!f_) throw Error(str("cannot open metrics file '", path, "': ", std::strerror(errno)));
}

JsonlWriter::~JsonlWriter() {
  if (f_) std::fclose(f_);
}

void JsonlWriter::write(const nlohmann::json& row) {
  if (!f_) return;
  std::string s = row.dump();
  s.push_back('\n');
  std::fwrite(s.data(), 1, s.size(), f_);
  std::fflush(f_);
}

std::string format_duration(double s) {
  if (s < 0 || s > 1e7) return "?";
  int64_t t = static_cast<int64_t>(s + 0.5);
  char buf[32];
  if (t >= 3600)
    std::snprintf(buf, sizeof buf, "%ldh%02ldm", static_cast<long>(t / 3600),
                  static_cast<long>((t / 60) % 60));
  else if (t >= 60)
    std::snprintf(buf, sizeof buf, "%ldm%02lds", static_cast<long>(t / 60),
                  static_cast<long>(t % 60));
  else
    std::snprintf(buf, sizeof buf, "%lds", static_cast<long>(t));
  return buf;
}

Progress::Progress(std::string label, int64_t total_steps, FILE* out)
    : label_(std::move(label)), total_(total_steps), out_(out), tty_(isatty(fileno(out)) != 0) {
  start_ = last_print_ = std::chrono::steady_clock::now();
}

double Progress::rate() const {
  double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  return el > 0 ? units_ / el : 0.0;
}

void Progress::update(int64_t step, double units, const std::string& status) {
  units_ += units;
  last_step_ = step;
  auto now = std::chrono::steady_clock::now();
  double since = std::chrono::duration<double>(now - last_print_).count();
  double el = std::chrono::duration<double>(now - start_).count();
  bool last = total_ > 0 && step >= total_;
  if (!(tty_ ? since >= 0.2 : since >= 10.0) && !last) return;
  last_print_ = now;
  double eta = step > 0 && total_ > 0
                   ? el / static_cast<double>(step) * static_cast<double>(total_ - step)
                   : -1;
  char head[96];
  if (total_ > 0)
    std::snprintf(head, sizeof head, "%s %ld/%ld (%3.0f%%)", label_.c_str(),
                  static_cast<long>(step), static_cast<long>(total_),
                  100.0 * static_cast<double>(step) / static_cast<double>(total_));
  else
    std::snprintf(head, sizeof head, "%s %ld", label_.c_str(), static_cast<long>(step));
  std::string line =
      str(head, " | ", status, " | elapsed ", format_duration(el), " eta ", format_duration(eta));
  if (tty_)
    std::fprintf(out_, "\r\033[K%s", line.c_str());
  else
    std::fprintf(out_, "%s\n", line.c_str());
  std::fflush(out_);
}

void Progress::finish(const std::string& status) {
  double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  std::string line =
      str(label_, " done: ", last_step_, " steps in ", format_duration(el), " | ", status);
  if (tty_)
    std::fprintf(out_, "\r\033[K%s\n", line.c_str());
  else
    std::fprintf(out_, "%s\n", line.c_str());
  std::fflush(out_);
}

}  // namespace tessera::metrics
