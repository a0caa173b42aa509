// The store's result type, in RocksDB's style (include/rocksdb/status.h): every
// recoverable failure of the library and of its lookup API is a Status with a
// code and a message naming what failed; nothing throws across these APIs.
// [[nodiscard]]: a Status dropped on the floor is a compile warning (a
// deliberate drop says so with a cast to void and a comment).
#pragma once

#include <string>
#include <utility>

namespace tessera::store {

class [[nodiscard]] Status {
 public:
  enum class Code {
    kOk,
    kNotFound,
    kCorruption,
    kInvalidArgument,
    kIOError,
    kAlreadyExists,
    // The lookup API's (store/service.h) failures a caller may meet remotely.
    kUnauthenticated,
    kUnavailable,
    kResourceExhausted,
    kDeadlineExceeded,
    kFailedPrecondition,
  };
  Status() = default;
  static Status OK() { return Status(); }
  static Status NotFound(std::string m) { return Status(Code::kNotFound, std::move(m)); }
  static Status Corruption(std::string m) { return Status(Code::kCorruption, std::move(m)); }
  static Status InvalidArgument(std::string m) {
    return Status(Code::kInvalidArgument, std::move(m));
  }
  static Status IOError(std::string m) { return Status(Code::kIOError, std::move(m)); }
  static Status AlreadyExists(std::string m) { return Status(Code::kAlreadyExists, std::move(m)); }
  static Status FailedPrecondition(std::string m) {
    return Status(Code::kFailedPrecondition, std::move(m));
  }
  static Status Make(Code c, std::string m) { return Status(c, std::move(m)); }
  bool ok() const { return code_ == Code::kOk; }
  bool IsNotFound() const { return code_ == Code::kNotFound; }
  bool IsCorruption() const { return code_ == Code::kCorruption; }
  bool IsInvalidArgument() const { return code_ == Code::kInvalidArgument; }
  Code code() const { return code_; }
  const std::string& message() const { return msg_; }
  std::string ToString() const;

 private:
  Status(Code c, std::string m) : code_(c), msg_(std::move(m)) {}
  Code code_ = Code::kOk;
  std::string msg_;
};

}  // namespace tessera::store
