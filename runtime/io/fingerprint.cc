#include "runtime/io/fingerprint.h"

#include <openssl/evp.h>

#include <algorithm>
#include <filesystem>
#include <tuple>
#include <vector>

#include "runtime/io/hf.h"
#include "runtime/io/safetensors.h"

namespace tessera::io {

namespace {

// SHA-256 over (name, shape, F32 bytes) of every tensor, in name order.
struct Fingerprint {
  std::vector<std::tuple<std::string, std::vector<int64_t>, std::string>> items;
  std::string hex() {
    std::sort(items.begin(), items.end(),
              [](const auto& a, const auto& b) { return std::get<0>(a) < std::get<0>(b); });
    std::string h;
    for (const auto& [name, shape, bytes] : items) {
      h += name + '\0';
      for (int64_t d : shape) h += std::to_string(d) + ",";
      h += '\0' + sha256_hex(bytes);
    }
    return sha256_hex(h);
  }
};

}  // namespace

std::string sha256_hex(const std::string& data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  EVP_Digest(data.data(), data.size(), md, &n, EVP_sha256(), nullptr);
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (unsigned int i = 0; i < n; ++i) {
    out.push_back(hex[md[i] >> 4]);
    out.push_back(hex[md[i] & 15]);
  }
  return out;
}

std::string params_fingerprint(const nn::ParameterSet& params) {
  Fingerprint fp;
  for (const nn::Parameter& p : params.all())
    fp.items.emplace_back(
        p.name, p.tensor.shape(),
        std::string(reinterpret_cast<const char*>(p.tensor.data()), p.tensor.numel() * 4));
  return fp.hex();
}

std::string base_fingerprint(const std::string& path) {
  if (std::filesystem::is_directory(path))
    return params_fingerprint(load_hf_decoder(path)->params());
  Fingerprint fp;
  auto f = SafetensorsFile::open(path);
  for (const auto& t : f->tensors())
    if (t.name.rfind("optimizer.", 0) != 0)
      fp.items.emplace_back(
          t.name, t.shape,
          std::string(reinterpret_cast<const char*>(f->bytes(t)), t.end - t.begin));
  return fp.hex();
}

}  // namespace tessera::io
