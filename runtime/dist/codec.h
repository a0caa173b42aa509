// The one framing of a message's fields between ranks: each field as its
// length (8 bytes, host order — every rank of a job runs the same build) then
// its bytes. Used by build-library's results over the work queue, and by
// federated rounds later. Unpacking validates: a short, long or truncated
// message is an Error naming `what`, never a read past the end.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace tessera::dist {

std::string pack_fields(const std::vector<std::string>& fields);
// Exactly `count` fields, filling `in` exactly.
std::vector<std::string> unpack_fields(std::string_view in, size_t count, const std::string& what);

}  // namespace tessera::dist
