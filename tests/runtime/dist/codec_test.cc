// The field codec between ranks: round trips, and every malformed message
// (short, long, truncated, a length past the end) refused by name.
#include "runtime/dist/codec.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>

#include "runtime/common/error.h"
#include "tests/runtime/dist/collectives_check.h"

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

TEST(FieldCodec, IntegerFieldsRoundTripAndRefuseOtherWidths) {
  for (int64_t v : {int64_t{0}, int64_t{-1}, int64_t{1} << 40, INT64_MIN})
    EXPECT_EQ(i64_of(i64_field(v), "f"), v);
  EXPECT_NE(testing::error_of([] { i64_of("1234", "rank 2, item"); }).find("rank 2, item"),
            std::string::npos);
}

// Between two Gloo ranks: messages arrive whole and in order, a message of
// no fields is one send, and a length past the receiver's bound is refused
// before anything that large is allocated. (The next message reads in step
// only because this lying sender sends no body; real callers drop the peer.)
TEST(Messages, CrossRanksWholeAndRefuseALengthPastTheBound) {
  const std::string blob(300000, '\x7f');
  on_gloo(2, "messages", [&](ProcessGroup& g) {
    CallOptions o;
    o.tag = 7;
    if (g.rank() == 0) {
      send_message(g, 1, {"a", blob, "", i64_field(-5)}, o);
      send_message(g, 1, {}, o);
      const uint64_t lie = uint64_t{1} << 50;
      g.send(&lie, sizeof lie, 1, o);
      send_message(g, 1, {"after"}, o);
    } else {
      const auto m = recv_message(g, 0, 4, "rank 0", o);
      EXPECT_EQ(m[0], "a");
      EXPECT_EQ(m[1], blob);
      EXPECT_EQ(m[2], "");
      EXPECT_EQ(i64_of(m[3], "rank 0"), -5);
      EXPECT_TRUE(recv_message(g, 0, 0, "rank 0", o).empty());
      const std::string err =
          testing::error_of([&] { recv_message(g, 0, 1, "rank 0's update", o, 1 << 20); });
      EXPECT_NE(err.find("rank 0's update: a message of 1125899906842624 bytes"), std::string::npos)
          << err;
      EXPECT_EQ(recv_message(g, 0, 1, "rank 0", o), std::vector<std::string>{"after"});
    }
  });
}

}  // namespace
}  // namespace tessera::dist
