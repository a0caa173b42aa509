// The README is part of the product: a new user runs its two commands, and CI
// runs the second. A README emptied by accident once landed with CI green
// (it tests the code, not the page); these checks fail on that.
#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <string>

#include "tests/testing.h"

namespace tessera {
namespace {

std::string slurp(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

TEST(Readme, HoldsTheTwoCommandsThatCiRuns) {
  const std::string readme = slurp(testing::source_dir() + "/README.md");
  ASSERT_GT(readme.size(), 2000u) << "README.md is (nearly) empty";
  EXPECT_NE(readme.find("## The two commands"), std::string::npos);
  EXPECT_NE(readme.find("scripts/demo.sh"), std::string::npos);
  EXPECT_NE(readme.find("scripts/test.sh"), std::string::npos);
  const std::string ci = slurp(testing::source_dir() + "/.ci/run");
  EXPECT_NE(ci.find("exec scripts/test.sh"), std::string::npos)
      << ".ci/run must run the README's test command and nothing else";
}

TEST(Readme, EveryCommandItNamesExists) {
  const std::string readme = slurp(testing::source_dir() + "/README.md");
  std::string help;
  {
    FILE* p = popen((std::string(TESSERA_BINARY) + " --help 2>&1").c_str(), "r");
    ASSERT_NE(p, nullptr);
    std::array<char, 4096> buf;
    while (size_t n = fread(buf.data(), 1, buf.size(), p)) help.append(buf.data(), n);
    pclose(p);
  }
  // Commands as the README runs them: "build/tessera <command>", or
  // "tessera <command>" in backticks.
  const std::regex use(R"((?:build/|`)tessera ([a-z][a-z-]+))");
  std::set<std::string> named;
  for (std::sregex_iterator it(readme.begin(), readme.end(), use), end; it != end; ++it)
    named.insert((*it)[1]);
  EXPECT_GE(named.size(), 8u) << "the README shows fewer commands than tessera has";
  // tessera --help lists each subcommand at the start of a line, indented.
  std::set<std::string> listed;
  const std::regex sub(R"(\n  ([a-z][a-z-]+)[ \n])");
  for (std::sregex_iterator it(help.begin(), help.end(), sub), end; it != end; ++it)
    listed.insert((*it)[1]);
  for (const std::string& c : named)
    EXPECT_TRUE(listed.count(c)) << "README runs `tessera " << c
                                 << "`, which tessera --help does not list";
}

}  // namespace
}  // namespace tessera
