// The one framing of messages between ranks. A message is its fields, each
// as its length (8 bytes, host order — every rank of a job runs the same
// build) then its bytes; on the wire it is preceded by its total length (8
// bytes), so a receiver knows what to allocate before the bytes arrive and
// refuses a length past its bound without allocating it. Used by the work
// queue, build-library's results over it, and federated rounds later.
// Unpacking validates: a short, long or truncated message, or a length past
// the bound, is an Error naming `what`, never a read past the end.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/dist/process_group.h"

namespace tessera::dist {

std::string pack_fields(const std::vector<std::string>& fields);
// Exactly `count` fields, filling `in` exactly.
std::vector<std::string> unpack_fields(std::string_view in, size_t count, const std::string& what);

// An integer as a field (8 bytes) and back (Error naming `what` unless the
// field is exactly 8 bytes).
std::string i64_field(int64_t v);
int64_t i64_of(std::string_view field, const std::string& what);

// The largest message recv_message accepts unless told otherwise (1 TiB: a
// guard against a corrupt length, not a quota; a receiver that knows its
// messages' size passes its own bound).
constexpr uint64_t kMaxMessageBytes = uint64_t{1} << 40;

// One message to `dst` (on o.tag): its length, then its packed fields (one
// send only for a message of no fields).
void send_message(ProcessGroup& g, int dst, const std::vector<std::string>& fields,
                  const CallOptions& o = {});
// The next message from `src` (on o.tag): exactly `count` fields and at most
// `max_bytes` in all, else an Error naming `what`. A length past the bound is
// refused before a buffer that large is allocated; the sender's body (if it
// sends one) is then still on the wire, so a caller drops that peer.
std::vector<std::string> recv_message(ProcessGroup& g, int src, size_t count,
                                      const std::string& what, const CallOptions& o = {},
                                      uint64_t max_bytes = kMaxMessageBytes);

}  // namespace tessera::dist
