// The one file reader: whole contents, and a refusal naming what and where.
#include "runtime/common/file.h"

#include <gtest/gtest.h>

#include <fstream>

#include "runtime/common/error.h"
#include "tests/testing.h"

namespace tessera {
namespace {

TEST(ReadFile, ReturnsTheBytesOrNamesTheFileAndWhy) {
  const std::string dir = testing::temp_dir("read_file");
  {
    std::ofstream f(dir + "/x.bin", std::ios::binary);
    f << std::string("a\0b\n", 4);
  }
  EXPECT_EQ(read_file(dir + "/x.bin"), std::string("a\0b\n", 4));
  try {
    read_file(dir + "/missing.pbtxt", "config file");
    FAIL() << "a missing file was read";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("config file '" + dir + "/missing.pbtxt'"), std::string::npos) << m;
    EXPECT_NE(m.find("No such file"), std::string::npos) << m;
  }
  // Bytes of a file larger than one read buffer; a folder is not a file.
  std::string big(200000, '\0');
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>(i * 7);
  {
    std::ofstream f(dir + "/big.bin", std::ios::binary);
    f << big;
  }
  const std::vector<uint8_t> b = read_file_bytes(dir + "/big.bin", "token file");
  EXPECT_EQ(std::string(b.begin(), b.end()), big);
  EXPECT_NE(testing::error_of([&] {
              read_file_bytes(dir, "token file");
            }).find("cannot read token file '" + dir + "': a read failed: Is a directory"),
            std::string::npos);
}

}  // namespace
}  // namespace tessera
