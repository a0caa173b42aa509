// What the lookup API's server and client share (internal to store/): the
// mapping between Status codes and gRPC's, validation of the tensor headers
// and pieces a Put or Get stream carries, and the List/Search filter as it
// travels in a request.
#pragma once

#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "store/library.h"
#include "tessera/library_service.grpc.pb.h"

namespace tessera::store::wire {

// NotFound ↔ NOT_FOUND, Corruption ↔ DATA_LOSS, InvalidArgument ↔
// INVALID_ARGUMENT, AlreadyExists ↔ ALREADY_EXISTS, IOError → INTERNAL, ...
grpc::StatusCode to_grpc(Status::Code c);
grpc::Status to_grpc(const Status& s);
// A failed call as a Status whose message starts with `what`; a code with
// no Status twin becomes IOError naming the gRPC code.
Status from_grpc(const grpc::Status& s, const std::string& what);
// INVALID_ARGUMENT "field: what".
grpc::Status invalid(const std::string& field, const std::string& what);
bool read_file(const std::string& path, std::string* out);
// The bytes a tensor header declares, checked against its dtype and shape
// (at most `limit` bytes); "" when valid, else what is wrong.
std::string check_header(const TensorRef& t, uint64_t limit);
// Places `p` into tensor `p.tensor()` of `bufs`, whose sizes are `want` and
// of which `have` bytes arrived so far; "" when it fits, else why not. A
// whole tensor in one piece is moved, not copied.
std::string place(TensorPiece* p, const std::vector<uint64_t>& want, std::vector<std::string>* bufs,
                  std::vector<uint64_t>* have);
// The filter a List or Search request carries (Search has no name prefix
// and never includes deleted records).
template <typename Req>
ListFilter filter_of(const Req& req) {
  ListFilter f;
  f.tags.assign(req.tags().begin(), req.tags().end());
  f.base_fingerprint = req.base_fingerprint();
  f.kind = req.kind();
  f.task = req.task();
  if constexpr (std::is_same_v<Req, ListRequest>) {
    f.name_prefix = req.name_prefix();
    f.include_deleted = req.include_deleted();
  }
  return f;
}

void fill_filter(const ListFilter& f, google::protobuf::RepeatedPtrField<std::string>* tags,
                 std::string* base, std::string* kind, std::string* task);

}  // namespace tessera::store::wire
