// safetensors: exact round trip, and every malformed case refused with a
// message (never a crash or an out-of-bounds read).
#include "runtime/io/safetensors.h"

#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "runtime/common/error.h"
#include "tests/testing.h"

namespace tessera::io {
namespace {

std::vector<uint8_t> image(const std::string& header, size_t data_bytes, bool pad = false) {
  std::string h = header;
  if (pad)
    while (h.size() % 8) h.push_back(' ');
  std::vector<uint8_t> out(8 + h.size() + data_bytes, 0);
  uint64_t n = h.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<uint8_t>(n >> (8 * i));
  std::memcpy(out.data() + 8, h.data(), h.size());
  return out;
}

std::string refusal(std::vector<uint8_t> bytes) {
  try {
    SafetensorsFile::parse(std::move(bytes), "case.safetensors");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(Safetensors, RoundTripIsBitExact) {
  Rng rng(1);
  Tensor a = testing::randn({3, 5}, rng), b = testing::randn({7}, rng), c = Tensor::empty({0, 4});
  Tensor s = Tensor::from_vector({42.0f}, {});
  std::vector<uint16_t> half = {f32_to_f16(1.5f), f32_to_f16(-2.25f)};
  std::vector<uint16_t> bf = {f32_to_bf16(3.0f), f32_to_bf16(-0.5f), f32_to_bf16(1e-3f)};
  std::vector<WriteEntry> e = {WriteEntry::f32("model.a", a),
                               WriteEntry::f32("b", b),
                               WriteEntry::f32("empty", c),
                               WriteEntry::f32("scalar", s),
                               {"half", DType::F16, {2}, half.data(), 4},
                               {"bf", DType::BF16, {3}, bf.data(), 6}};
  const std::string dir = testing::temp_dir("st");
  save_safetensors(dir + "/x.safetensors", e, {{"format", "pt"}, {"note", "hi"}});
  auto f = SafetensorsFile::open(dir + "/x.safetensors");
  EXPECT_EQ(f->metadata().at("note"), "hi");
  EXPECT_EQ(f->tensors().size(), 6u);
  EXPECT_EQ(f->load_f32("model.a").to_vector(), a.to_vector());
  EXPECT_EQ(f->load_f32("b").to_vector(), b.to_vector());
  EXPECT_EQ(f->load_f32("empty").shape(), (Shape{0, 4}));
  EXPECT_EQ(f->load_f32("scalar").item(), 42.0f);
  EXPECT_EQ(f->load_f32("half").to_vector(), (std::vector<float>{1.5f, -2.25f}));
  auto bv = f->load_f32("bf").to_vector();
  EXPECT_EQ(bv[0], 3.0f);
  EXPECT_EQ(bv[1], -0.5f);
  EXPECT_NEAR(bv[2], 1e-3f, 1e-5f);
  // Header padded to a multiple of 8 with spaces, as the format requires of writers.
  std::ifstream in(dir + "/x.safetensors", std::ios::binary);
  uint64_t n = 0;
  in.read(reinterpret_cast<char*>(&n), 8);
  EXPECT_EQ(n % 8, 0u);
  EXPECT_THROW(f->load_f32("missing"), Error);
}

TEST(Safetensors, HalfConversionsAreExactWhereRepresentable) {
  for (float v : {0.0f, -0.0f, 1.0f, -1.0f, 65504.0f, 6.103515625e-05f, 5.960464477539063e-08f,
                  0.333251953125f})
    EXPECT_EQ(f16_to_f32(f32_to_f16(v)), v) << v;
  EXPECT_TRUE(std::isinf(f16_to_f32(f32_to_f16(1e6f))));
  EXPECT_TRUE(std::isnan(f16_to_f32(f32_to_f16(NAN))));
  for (float v : {1.0f, -3.5f, 1.1754943508222875e-38f}) EXPECT_EQ(bf16_to_f32(f32_to_bf16(v)), v);
}

TEST(Safetensors, RefusesTruncatedFile) {
  EXPECT_NE(refusal({1, 2, 3}).find("truncated"), std::string::npos);
  EXPECT_NE(refusal({}).find("truncated"), std::string::npos);
}

TEST(Safetensors, RefusesHeaderLengthPastEnd) {
  auto b = image(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 4);
  b[0] = 0xff;  // header length now far beyond the file
  EXPECT_NE(refusal(b).find("past the end"), std::string::npos);
  std::vector<uint8_t> huge(16, 0);
  huge[7] = 0x7f;
  EXPECT_NE(refusal(huge).find("100 MB"), std::string::npos);
}

TEST(Safetensors, RefusesBadJson) {
  EXPECT_NE(refusal(image("{not json", 0)).find("not valid JSON"), std::string::npos);
  EXPECT_NE(refusal(image("[1,2]", 0)).find("not an object"), std::string::npos);
  EXPECT_NE(refusal(image(R"({"a":{"dtype":"F32","shape":[1]}})", 4)).find("data_offsets"),
            std::string::npos);
  EXPECT_NE(refusal(image(R"({"a":{"dtype":"Q4","shape":[1],"data_offsets":[0,4]}})", 4))
                .find("unknown dtype"),
            std::string::npos);
  EXPECT_NE(refusal(image(R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", 4))
                .find("negative"),
            std::string::npos);
  EXPECT_NE(refusal(image(R"({"__metadata__":{"k":1}})", 0)).find("not a string"),
            std::string::npos);
}

TEST(Safetensors, RefusesOverlapsAndGaps) {
  EXPECT_NE(refusal(image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                          R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                          12))
                .find("overlaps"),
            std::string::npos);
  EXPECT_NE(refusal(image(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                          R"("b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
                          12))
                .find("gap"),
            std::string::npos);
  // Trailing bytes not covered by any tensor.
  EXPECT_NE(
      refusal(image(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 8)).find("cover"),
      std::string::npos);
  // A range past the data section.
  EXPECT_NE(refusal(image(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 8))
                .find("runs past"),
            std::string::npos);
}

TEST(Safetensors, RefusesDtypeShapeSizeDisagreement) {
  EXPECT_NE(refusal(image(R"({"a":{"dtype":"F16","shape":[3],"data_offsets":[0,4]}})", 4))
                .find("needs 6 bytes"),
            std::string::npos);
  EXPECT_NE(
      refusal(
          image(R"({"a":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,4]}})", 4))
          .find("overflow"),
      std::string::npos);
}

TEST(Safetensors, RefusesDuplicateNames) {
  EXPECT_NE(refusal(image(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                          R"("a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                          8))
                .find("appears twice"),
            std::string::npos);
}

TEST(Safetensors, RefusesNonFloatAsFloatWithMessage) {
  std::vector<int32_t> v = {1, 2};
  auto bytes = serialize_safetensors({{"ids", DType::I32, {2}, v.data(), 8}}, {});
  auto f = SafetensorsFile::parse(bytes, "ids.safetensors");
  EXPECT_THROW(f->load_f32("ids"), Error);
}

TEST(Safetensors, MissingFileNamesPath) {
  try {
    SafetensorsFile::open("/nonexistent/x.safetensors");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/x.safetensors"), std::string::npos);
  }
}

TEST(Safetensors, SurvivesEveryTruncationAndByteFlipOfAValidFile) {
  // A small fuzz sweep: every prefix, and a flipped byte at every header position,
  // either parses or is refused with tessera::Error — never crashes.
  Rng rng(3);
  Tensor a = testing::randn({2, 3}, rng);
  auto good =
      serialize_safetensors({WriteEntry::f32("w", a), WriteEntry::f32("v", a)}, {{"k", "v"}});
  for (size_t n = 0; n < good.size(); ++n) {
    std::vector<uint8_t> b(good.begin(), good.begin() + n);
    EXPECT_THROW(SafetensorsFile::parse(b, "prefix"), Error) << "prefix " << n;
  }
  for (size_t i = 0; i < good.size(); ++i) {
    auto b = good;
    b[i] ^= 0x5a;
    try {
      SafetensorsFile::parse(b, "flip");
    } catch (const Error&) {
    }
  }
}

}  // namespace
}  // namespace tessera::io
