#include "runtime/common/file.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "runtime/common/error.h"

namespace tessera {

std::string read_file(const std::string& path, const std::string& what) {
  errno = 0;
  std::ifstream in(path, std::ios::binary);
  if (!in)
    throw Error(str("cannot read ", what, " '", path,
                    "': ", errno ? std::strerror(errno) : "cannot open it"));
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw Error(str("cannot read ", what, " '", path, "': a read failed"));
  return ss.str();
}

}  // namespace tessera
