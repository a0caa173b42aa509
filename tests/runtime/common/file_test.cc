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
}

}  // namespace
}  // namespace tessera
