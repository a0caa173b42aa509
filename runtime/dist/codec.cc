#include "runtime/dist/codec.h"

#include <cstdint>
#include <cstring>

#include "runtime/common/error.h"

namespace tessera::dist {

std::string pack_fields(const std::vector<std::string>& fields) {
  std::string out;
  for (const std::string& f : fields) {
    const uint64_t n = f.size();
    out.append(reinterpret_cast<const char*>(&n), sizeof n);
    out += f;
  }
  return out;
}

std::vector<std::string> unpack_fields(std::string_view in, size_t count, const std::string& what) {
  std::vector<std::string> fields;
  size_t at = 0;
  while (fields.size() < count) {
    uint64_t n = 0;
    if (in.size() - at < sizeof n) break;
    std::memcpy(&n, in.data() + at, sizeof n);
    at += sizeof n;
    if (n > in.size() - at) break;
    fields.emplace_back(in.substr(at, n));
    at += n;
  }
  if (fields.size() != count || at != in.size())
    throw Error(str(what, ": a malformed message (", in.size(), " bytes)"));
  return fields;
}

std::string i64_field(int64_t v) {
  return std::string(reinterpret_cast<const char*>(&v), sizeof v);
}

int64_t i64_of(std::string_view field, const std::string& what) {
  int64_t v = 0;
  if (field.size() != sizeof v)
    throw Error(str(what, ": an integer field of ", field.size(), " bytes (expected 8)"));
  std::memcpy(&v, field.data(), sizeof v);
  return v;
}

void send_message(ProcessGroup& g, int dst, const std::vector<std::string>& fields,
                  const CallOptions& o) {
  const std::string body = pack_fields(fields);
  const uint64_t n = body.size();
  g.send(&n, sizeof n, dst, o);
  if (n > 0) g.send(body.data(), body.size(), dst, o);
}

std::vector<std::string> recv_message(ProcessGroup& g, int src, size_t count,
                                      const std::string& what, const CallOptions& o,
                                      uint64_t max_bytes) {
  uint64_t n = 0;
  g.recv(&n, sizeof n, src, o);
  if (n > max_bytes)
    throw Error(str(what, ": a message of ", n, " bytes (at most ", max_bytes, " expected)"));
  std::string body(static_cast<size_t>(n), '\0');
  if (n > 0) g.recv(body.data(), body.size(), src, o);
  return unpack_fields(body, count, what);
}

}  // namespace tessera::dist
