// The one way tessera reads a whole file (a config, a token file, an IDX
// file, an adapter's bytes): an Error that names the file and why
// ("cannot read config file 'x': No such file or directory") instead of each
// caller's own ifstream and message.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace tessera {

// The whole file; `what` says what it is in the message ("config file").
std::string read_file(const std::string& path, const std::string& what = "file");
// The same as bytes (token files, IDX data).
std::vector<uint8_t> read_file_bytes(const std::string& path, const std::string& what = "file");

}  // namespace tessera
