#include "store/status.h"

namespace tessera::store {

std::string Status::ToString() const {
  static const char* names[] = {"OK",
                                "NotFound",
                                "Corruption",
                                "InvalidArgument",
                                "IOError",
                                "AlreadyExists",
                                "Unauthenticated",
                                "Unavailable",
                                "ResourceExhausted",
                                "DeadlineExceeded",
                                "FailedPrecondition"};
  std::string s = names[static_cast<int>(code_)];
  if (!msg_.empty()) s += ": " + msg_;
  return s;
}

}  // namespace tessera::store
