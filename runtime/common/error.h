// tessera::Error — failures a user can cause (bad file, bad config, wrong shape).
// TESSERA_CHECK — programming errors (violated invariants); also throws, so a
// test sees it and the CLI prints it, but the message says it is a bug.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace tessera {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

class InternalError : public std::logic_error {
 public:
  explicit InternalError(const std::string& what) : std::logic_error(what) {}
};

namespace detail {
template <typename... Args>
std::string concat(Args&&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
}  // namespace detail

// Builds a message from streamable pieces: throw Error(str("bad ", x)).
template <typename... Args>
std::string str(Args&&... args) {
  return detail::concat(std::forward<Args>(args)...);
}

}  // namespace tessera

#define TESSERA_CHECK(cond, ...)                                                                \
  do {                                                                                          \
    if (!(cond))                                                                                \
      throw ::tessera::InternalError(::tessera::str("internal check failed at ", __FILE__, ":", \
                                                    __LINE__, ": " #cond " ", ##__VA_ARGS__));  \
  } while (0)
