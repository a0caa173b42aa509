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
    throw Error(str(what, ": a malformed result (", in.size(), " bytes)"));
  return fields;
}

}  // namespace tessera::dist
