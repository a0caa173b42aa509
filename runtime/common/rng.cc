#include "runtime/common/rng.h"

#include <cstring>
#include <sstream>

#include "runtime/common/error.h"

namespace tessera {

std::string Rng::state() const {
  uint32_t bits;
  std::memcpy(&bits, &spare_, sizeof bits);
  std::ostringstream os;
  os << s_[0] << ' ' << s_[1] << ' ' << s_[2] << ' ' << s_[3] << ' ' << (has_spare_ ? 1 : 0) << ' '
     << bits;
  return os.str();
}

void Rng::set_state(const std::string& text) {
  std::istringstream is(text);
  std::array<uint64_t, 4> s{};
  int flag = -1;
  uint32_t bits = 0;
  is >> s[0] >> s[1] >> s[2] >> s[3] >> flag >> bits;
  if (!is || (flag != 0 && flag != 1) || (s[0] | s[1] | s[2] | s[3]) == 0)
    throw Error(str("malformed RNG state '", text,
                    "': expected 4 non-zero-in-total u64 words, a 0/1 flag and a u32"));
  s_ = s;
  has_spare_ = flag == 1;
  std::memcpy(&spare_, &bits, sizeof bits);
}

}  // namespace tessera
