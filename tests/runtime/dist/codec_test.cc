// The field codec between ranks: round trips, and every malformed message
// (short, long, truncated, a length past the end) refused by name.
#include "runtime/dist/codec.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>

#include "runtime/common/error.h"

namespace tessera::dist {
namespace {

TEST(FieldCodec, RoundTripsEmptyAndBinaryFields) {
  const std::vector<std::string> f = {"", std::string("a\0b", 3), std::string(1000, '\xff'), "x"};
  const std::string m = pack_fields(f);
  EXPECT_EQ(m.size(), 4 * 8 + 0 + 3 + 1000 + 1);
  EXPECT_EQ(unpack_fields(m, 4, "m"), f);
  EXPECT_TRUE(unpack_fields("", 0, "m").empty());
}

TEST(FieldCodec, RefusesMalformedMessagesNamingThem) {
  const std::string m = pack_fields({"abc", "de"});
  EXPECT_THROW(unpack_fields(m, 3, "m"), Error);                          // a field short
  EXPECT_THROW(unpack_fields(m, 1, "m"), Error);                          // bytes left over
  EXPECT_THROW(unpack_fields(m.substr(0, m.size() - 1), 2, "m"), Error);  // truncated
  EXPECT_THROW(unpack_fields(m.substr(0, 5), 1, "m"), Error);             // a length cut short
  std::string huge(8, '\0');
  const uint64_t n = uint64_t{1} << 62;
  std::memcpy(huge.data(), &n, 8);
  try {
    unpack_fields(huge, 1, "rank 3, task 'x'");
    FAIL() << "a length past the end was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("rank 3, task 'x'"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace tessera::dist
