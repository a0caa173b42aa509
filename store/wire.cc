#include "store/wire.h"

#include "runtime/common/error.h"
#include "runtime/common/file.h"

#include <cstring>
#include <fstream>
#include <sstream>

namespace tessera::store {

namespace wire {

grpc::StatusCode to_grpc(Status::Code c) {
  using C = Status::Code;
  switch (c) {
    case C::kOk:
      return grpc::StatusCode::OK;
    case C::kNotFound:
      return grpc::StatusCode::NOT_FOUND;
    case C::kCorruption:
      return grpc::StatusCode::DATA_LOSS;
    case C::kInvalidArgument:
      return grpc::StatusCode::INVALID_ARGUMENT;
    case C::kIOError:
      return grpc::StatusCode::INTERNAL;
    case C::kAlreadyExists:
      return grpc::StatusCode::ALREADY_EXISTS;
    case C::kUnauthenticated:
      return grpc::StatusCode::UNAUTHENTICATED;
    case C::kUnavailable:
      return grpc::StatusCode::UNAVAILABLE;
    case C::kResourceExhausted:
      return grpc::StatusCode::RESOURCE_EXHAUSTED;
    case C::kDeadlineExceeded:
      return grpc::StatusCode::DEADLINE_EXCEEDED;
    case C::kFailedPrecondition:
      return grpc::StatusCode::FAILED_PRECONDITION;
  }
  return grpc::StatusCode::UNKNOWN;
}

grpc::Status to_grpc(const Status& s) {
  return s.ok() ? grpc::Status::OK : grpc::Status(to_grpc(s.code()), s.message());
}

Status from_grpc(const grpc::Status& s, const std::string& what) {
  using C = Status::Code;
  if (s.ok()) return Status::OK();
  C c = C::kIOError;
  switch (s.error_code()) {
    case grpc::StatusCode::NOT_FOUND:
      c = C::kNotFound;
      break;
    case grpc::StatusCode::DATA_LOSS:
      c = C::kCorruption;
      break;
    case grpc::StatusCode::INVALID_ARGUMENT:
      c = C::kInvalidArgument;
      break;
    case grpc::StatusCode::ALREADY_EXISTS:
      c = C::kAlreadyExists;
      break;
    case grpc::StatusCode::UNAUTHENTICATED:
      c = C::kUnauthenticated;
      break;
    case grpc::StatusCode::UNAVAILABLE:
      c = C::kUnavailable;
      break;
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      c = C::kResourceExhausted;
      break;
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      c = C::kDeadlineExceeded;
      break;
    case grpc::StatusCode::FAILED_PRECONDITION:
      c = C::kFailedPrecondition;
      break;
    default:
      break;
  }
  std::string m = what + ": " + s.error_message();
  if (c == C::kIOError)
    m += " (gRPC code " + std::to_string(static_cast<int>(s.error_code())) + ")";
  return Status::Make(c, m);
}

grpc::Status invalid(const std::string& field, const std::string& what) {
  return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, field + ": " + what);
}

bool read_file(const std::string& path, std::string* out) {
  try {
    *out = tessera::read_file(path);
    return true;
  } catch (const tessera::Error&) {
    return false;
  }
}

// The bytes a tensor header declares, checked against its dtype and shape;
// "" when valid, else what is wrong.
std::string check_header(const TensorRef& t, uint64_t limit) {
  if (t.name().empty() || t.name().size() > 1024) return "name: expected 1..1024 characters";
  const size_t es = DtypeSize(t.dtype());
  if (es == 0) return "dtype: '" + t.dtype() + "', expected F32, F16 or BF16";
  if (t.shape_size() > 8) return "shape: more than 8 dimensions";
  uint64_t n = es;
  for (int64_t d : t.shape()) {
    if (d < 0) return "shape: negative dimension";
    if (d > 0 && n > limit / static_cast<uint64_t>(d)) return "shape: more than 2^62 bytes";
    n *= static_cast<uint64_t>(d);
  }
  if (n != t.bytes())
    return "bytes: " + std::to_string(t.bytes()) + " for a " + t.dtype() + " tensor of " +
           std::to_string(n / es) + " elements (expected " + std::to_string(n) + ")";
  if (!t.sha256().empty() && t.sha256().size() != 64) return "sha256: expected 64 hex digits";
  return "";
}

// Places `p` into tensor `p.tensor()` of `bufs`, whose sizes are `want` and
// of which `have` bytes arrived so far; "" when it fits, else why not. A
// whole tensor in one piece is moved, not copied.
std::string place(TensorPiece* p, const std::vector<uint64_t>& want, std::vector<std::string>* bufs,
                  std::vector<uint64_t>* have) {
  if (p->tensor() >= bufs->size())
    return "tensor: " + std::to_string(p->tensor()) + " but the record has " +
           std::to_string(bufs->size()) + " tensors";
  uint64_t& h = (*have)[p->tensor()];
  std::string& b = (*bufs)[p->tensor()];
  const uint64_t w = want[p->tensor()];
  if (p->offset() != h)
    return "offset: " + std::to_string(p->offset()) + ", expected " + std::to_string(h) +
           " (pieces of a tensor arrive in order)";
  if (p->data().size() > w - h)
    return "data: " + std::to_string(p->data().size()) + " bytes at offset " + std::to_string(h) +
           " run past the tensor's " + std::to_string(w) + " bytes";
  const uint64_t n = p->data().size();
  if (h == 0 && n == w) {
    b = std::move(*p->mutable_data());
  } else {
    if (b.size() != w) b.resize(w);
    std::memcpy(b.data() + h, p->data().data(), n);
  }
  h += n;
  return "";
}

void fill_filter(const ListFilter& f, google::protobuf::RepeatedPtrField<std::string>* tags,
                 std::string* base, std::string* kind, std::string* task) {
  for (const auto& t : f.tags) *tags->Add() = t;
  *base = f.base_fingerprint;
  *kind = f.kind;
  *task = f.task;
}

}  // namespace wire

Status ReadTokenFile(const std::string& path, std::string* token) {
  std::string t;
  if (!wire::read_file(path, &t))
    return Status::InvalidArgument("token file '" + path + "': cannot read it");
  const auto b = t.find_first_not_of(" \t\r\n");
  const auto e = t.find_last_not_of(" \t\r\n");
  if (b == std::string::npos)
    return Status::InvalidArgument("token file '" + path + "': empty (expected the bearer token)");
  t = t.substr(b, e - b + 1);
  for (char c : t)
    if (static_cast<unsigned char>(c) < 0x21 || static_cast<unsigned char>(c) > 0x7e)
      return Status::InvalidArgument("token file '" + path +
                                     "': the token holds whitespace or non-printable bytes");
  *token = t;
  return Status::OK();
}

}  // namespace tessera::store
