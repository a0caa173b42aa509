#include "runtime/common/file.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>

#include "runtime/common/error.h"

namespace tessera {

namespace {

// The whole file into `out` (a string or a byte vector), sized once from
// fstat for a regular file.
template <typename Out>
Out read_all(const std::string& path, const std::string& what) {
  errno = 0;
  std::unique_ptr<FILE, int (*)(FILE*)> file(std::fopen(path.c_str(), "rb"), &std::fclose);
  FILE* f = file.get();
  if (!f)
    throw Error(str("cannot read ", what, " '", path,
                    "': ", errno ? std::strerror(errno) : "cannot open it"));
  Out out;
  struct stat st {};
  if (::fstat(fileno(f), &st) == 0 && S_ISREG(st.st_mode))
    out.reserve(static_cast<size_t>(st.st_size));
  char buf[1 << 16];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) out.insert(out.end(), buf, buf + n);
  const int err = std::ferror(f) ? errno : 0;
  if (err || (st.st_mode != 0 && S_ISDIR(st.st_mode)))
    throw Error(str("cannot read ", what, " '", path,
                    "': a read failed: ", std::strerror(err ? err : EISDIR)));
  return out;
}

}  // namespace

std::string read_file(const std::string& path, const std::string& what) {
  return read_all<std::string>(path, what);
}

std::vector<uint8_t> read_file_bytes(const std::string& path, const std::string& what) {
  return read_all<std::vector<uint8_t>>(path, what);
}

}  // namespace tessera
