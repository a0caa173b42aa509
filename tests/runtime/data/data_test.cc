#include "runtime/data/data.h"

#include <gtest/gtest.h>
#include <zlib.h>

#include <fstream>
#include <set>

#include "runtime/common/error.h"
#include "tests/testing.h"

namespace tessera::data {
namespace {

std::vector<uint8_t> idx_bytes(std::vector<uint32_t> dims, const std::vector<uint8_t>& data) {
  std::vector<uint8_t> b = {0, 0, 0x08, static_cast<uint8_t>(dims.size())};
  for (uint32_t d : dims)
    for (int s = 24; s >= 0; s -= 8) b.push_back(static_cast<uint8_t>(d >> s));
  b.insert(b.end(), data.begin(), data.end());
  return b;
}

void write_gz(const std::string& path, const std::vector<uint8_t>& b) {
  gzFile f = gzopen(path.c_str(), "wb");
  gzwrite(f, b.data(), static_cast<unsigned>(b.size()));
  gzclose(f);
}

TEST(Idx, ParsesAndRefusesMalformed) {
  Idx ok = parse_idx(idx_bytes({2, 3}, {1, 2, 3, 4, 5, 6}), "ok");
  EXPECT_EQ(ok.dims, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(ok.data[5], 6);
  EXPECT_THROW(parse_idx({0, 0}, "short"), Error);
  EXPECT_THROW(parse_idx({1, 0, 8, 1, 0, 0, 0, 1, 5}, "magic"), Error);
  EXPECT_THROW(parse_idx({0, 0, 0x0d, 1, 0, 0, 0, 1, 5}, "float type"), Error);
  EXPECT_THROW(parse_idx(idx_bytes({2, 3}, {1, 2, 3}), "truncated data"), Error);
  EXPECT_THROW(parse_idx(idx_bytes({2}, {1, 2, 3}), "trailing data"), Error);
}

// read_idx: plain and gzip files through the one reader; two gzip members
// read as one stream (as gzread did); a cut or damaged stream and a missing
// file are refused naming the file.
TEST(Idx, ReadsPlainAndGzipFilesAndNamesBadOnes) {
  const std::string dir = testing::temp_dir("idx_read");
  const std::vector<uint8_t> b = idx_bytes({2, 3}, {1, 2, 3, 4, 5, 6});
  {
    std::ofstream f(dir + "/plain", std::ios::binary);
    f.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
  }
  EXPECT_EQ(read_idx(dir + "/plain").data, (std::vector<uint8_t>{1, 2, 3, 4, 5, 6}));
  write_gz(dir + "/one.gz", b);
  EXPECT_EQ(read_idx(dir + "/one.gz").dims, (std::vector<int64_t>{2, 3}));
  // Two members: the header and half the data, then the rest.
  write_gz(dir + "/a.gz", std::vector<uint8_t>(b.begin(), b.begin() + 15));
  write_gz(dir + "/b.gz", std::vector<uint8_t>(b.begin() + 15, b.end()));
  {
    std::ofstream f(dir + "/two.gz", std::ios::binary);
    for (const char* part : {"/a.gz", "/b.gz"}) {
      std::ifstream in(dir + part, std::ios::binary);
      f << in.rdbuf();
    }
  }
  EXPECT_EQ(read_idx(dir + "/two.gz").data, (std::vector<uint8_t>{1, 2, 3, 4, 5, 6}));
  std::ifstream in(dir + "/one.gz", std::ios::binary);
  std::string gz((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  {
    std::ofstream f(dir + "/cut.gz", std::ios::binary);
    f << gz.substr(0, gz.size() - 6);
  }
  EXPECT_NE(testing::error_of([&] {
              read_idx(dir + "/cut.gz");
            }).find("'" + dir + "/cut.gz' is corrupt or not gzip/IDX data"),
            std::string::npos);
  gz[12] = static_cast<char>(gz[12] ^ 0x55);
  {
    std::ofstream f(dir + "/bad.gz", std::ios::binary);
    f << gz;
  }
  EXPECT_THROW(read_idx(dir + "/bad.gz"), Error);
  EXPECT_NE(testing::error_of([&] {
              read_idx(dir + "/none.gz");
            }).find("cannot read IDX file '" + dir + "/none.gz': No such file"),
            std::string::npos);
}

TEST(Idx, SurvivesEveryTruncationAndByteFlip) {
  const std::vector<uint8_t> good = idx_bytes({2, 3, 2}, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12});
  for (size_t n = 0; n < good.size(); ++n)
    EXPECT_THROW(parse_idx(std::vector<uint8_t>(good.begin(), good.begin() + n), "prefix"), Error);
  for (size_t i = 0; i < good.size(); ++i)
    for (uint8_t x : {0x01, 0x80, 0xff}) {
      auto b = good;
      b[i] ^= x;
      try {
        Idx idx = parse_idx(b, "flip");
        uint64_t total = 1;
        for (int64_t d : idx.dims) total *= static_cast<uint64_t>(d);
        EXPECT_EQ(total, idx.data.size());  // whatever parses is self-consistent
      } catch (const Error&) {
      }
    }
}

TEST(FashionMnist, ReadsGzipFolderAndStandardises) {
  const std::string dir = testing::temp_dir("fmnist");
  std::vector<uint8_t> px(3 * 2 * 2);
  for (size_t i = 0; i < px.size(); ++i) px[i] = static_cast<uint8_t>(i * 20);
  write_gz(dir + "/train-images-idx3-ubyte.gz", idx_bytes({3, 2, 2}, px));
  write_gz(dir + "/train-labels-idx1-ubyte.gz", idx_bytes({3}, {7, 0, 9}));
  ImageSet s = load_fashion_mnist(dir, "train");
  EXPECT_EQ(s.size(), 3);
  EXPECT_EQ(s.features(), 4);
  EXPECT_EQ(s.labels, (std::vector<int32_t>{7, 0, 9}));
  EXPECT_FLOAT_EQ(s.images.data()[1], (20.0f / 255.0f - kFashionMean) / kFashionStd);
  EXPECT_EQ(load_fashion_mnist(dir, "train", 2).size(), 2);
  try {
    load_fashion_mnist(dir, "test");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("dataset-fashion-mnist"), std::string::npos) << e.what();
  }
  write_gz(dir + "/t10k-images-idx3-ubyte.gz", idx_bytes({2, 2, 2}, std::vector<uint8_t>(8)));
  write_gz(dir + "/t10k-labels-idx1-ubyte.gz", idx_bytes({3}, {1, 2, 3}));
  EXPECT_THROW(load_fashion_mnist(dir, "test"), Error);  // 3 labels for 2 images
  // Loads are cached by path, size and mtime: a rewritten file is read anew.
  write_gz(dir + "/train-labels-idx1-ubyte.gz", idx_bytes({3}, {1, 1, 1}));
  EXPECT_EQ(load_fashion_mnist(dir, "train").labels, (std::vector<int32_t>{1, 1, 1}));
  EXPECT_EQ(load_fashion_mnist(dir, "train").labels, (std::vector<int32_t>{1, 1, 1}));
}

ImageSet tiny_images(int64_t n, int64_t side) {
  ImageSet s;
  s.images = Tensor::empty({n, side * side});
  for (int64_t i = 0; i < s.images.numel(); ++i) s.images.data()[i] = static_cast<float>(i % 17);
  for (int64_t i = 0; i < n; ++i) s.labels.push_back(static_cast<int32_t>(i % 10));
  return s;
}

TEST(ImageTask, PermuteIsASeededPixelPermutation) {
  ImageSet a = tiny_images(3, 4), b = tiny_images(3, 4), c = tiny_images(3, 4),
           orig = tiny_images(3, 4);
  apply_image_task(&a, "permute:seed=5", 4);
  apply_image_task(&b, "permute:seed=5", 4);
  apply_image_task(&c, "permute:seed=6", 4);
  EXPECT_EQ(a.images.to_vector(), b.images.to_vector());
  EXPECT_NE(a.images.to_vector(), c.images.to_vector());
  EXPECT_NE(a.images.to_vector(), orig.images.to_vector());
  for (int64_t n = 0; n < 3; ++n) {
    std::vector<float> x(a.images.data() + n * 16, a.images.data() + (n + 1) * 16);
    std::vector<float> y(orig.images.data() + n * 16, orig.images.data() + (n + 1) * 16);
    std::sort(x.begin(), x.end());
    std::sort(y.begin(), y.end());
    EXPECT_EQ(x, y);  // same pixels, other places
  }
  EXPECT_EQ(a.labels, orig.labels);
}

TEST(ImageTask, RotateByHandAndFourQuarterTurnsAreIdentity) {
  ImageSet s;
  s.images = Tensor::zeros({1, 9});
  s.images.data()[1] = 5.0f;  // row 0, column 1
  s.labels = {3};
  apply_image_task(&s, "rotate:deg=90", 3);
  // Now at row 1, column 2: a quarter turn clockwise; a 90° turn of a square
  // image moves every pixel onto the grid, so the rest stays 0.
  for (int64_t i = 0; i < 9; ++i) EXPECT_EQ(s.images.data()[i], i == 5 ? 5.0f : 0.0f) << i;
  ImageSet r = tiny_images(2, 5), orig = tiny_images(2, 5);
  for (int k = 0; k < 4; ++k) apply_image_task(&r, "rotate:deg=90", 5);
  EXPECT_EQ(r.images.to_vector(), orig.images.to_vector());
}

TEST(ImageTask, ClassSubsetAndMalformedSpecs) {
  ImageSet s = tiny_images(20, 2);
  apply_image_task(&s, "classes:1,3", 2);
  EXPECT_EQ(s.labels, (std::vector<int32_t>{1, 3, 1, 3}));
  EXPECT_EQ(s.images.size(0), 4);
  EXPECT_EQ(s.images.data()[0], static_cast<float>((1 * 4) % 17));  // row of example 1
  for (const char* bad :
       {"permute", "permute:seed=x", "rotate:deg=", "classes:", "classes:12", "blur:3"}) {
    ImageSet t = tiny_images(2, 2);
    EXPECT_THROW(apply_image_task(&t, bad, 2), Error) << bad;
  }
}

TEST(ImageTask, ViewsEqualTheTransformedImagesAndLeaveTheBaseAlone) {
  // What several tasks at once read (one shared copy) is what one task gets
  // by transforming its images — for every kind, rotations off the grid too.
  for (const char* task : {"permute:seed=3", "rotate:deg=30", "rotate:deg=90", "classes:2,7", ""}) {
    ImageSet base = tiny_images(25, 5), done = tiny_images(25, 5);
    const std::vector<float> before = base.images.to_vector();
    apply_image_task(&done, task, 5);
    ImageTask view = parse_image_task(base, task, 5);
    ASSERT_EQ(view.size(base), done.size()) << task;
    std::vector<float> row(25);
    for (int64_t k = 0; k < done.size(); ++k) {
      view.row(base, k, row.data());
      EXPECT_EQ(row,
                std::vector<float>(done.images.data() + k * 25, done.images.data() + (k + 1) * 25))
          << task << " example " << k;
      EXPECT_EQ(view.label(base, k), done.labels[k]) << task;
    }
    EXPECT_EQ(base.images.to_vector(), before) << task;
  }
}

TEST(Text, GlobsSplitAndWindows) {
  const std::string dir = testing::temp_dir("text");
  std::ofstream(dir + "/a.txt") << "abcdefghij";
  std::ofstream(dir + "/b.txt") << "0123456789";
  TokenCorpus c = load_text({dir + "/*.txt"});
  ASSERT_EQ(c.tokens.size(), 20u);
  EXPECT_EQ(c.tokens[0], 'a');
  EXPECT_EQ(c.tokens[10], '0');
  EXPECT_THROW(load_text({dir + "/*.none"}), Error);
  TokenCorpus tr, te;
  split_holdout(c, 0.25, &tr, &te);
  EXPECT_EQ(tr.tokens.size(), 15u);
  EXPECT_EQ(te.tokens.size(), 5u);
  LmWindows w(&c, 4);
  std::vector<int32_t> ids, tgt;
  w.fill({0, 1}, 0, &ids, &tgt);
  ASSERT_EQ(ids.size(), 8u);
  for (size_t i = 0; i < ids.size(); ++i) {
    // Targets are the inputs shifted by one token.
    auto it = std::find(c.tokens.begin(), c.tokens.end(), ids[i]);
    EXPECT_EQ(*(it + 1), tgt[i]);
  }
  EXPECT_THROW(LmWindows(&te, 8), Error);
}

TEST(Tokens, RawAndLlmcFormats) {
  const std::string dir = testing::temp_dir("tok");
  std::vector<uint16_t> raw = {5, 6, 7, 8};
  std::ofstream(dir + "/raw.bin", std::ios::binary)
      .write(reinterpret_cast<const char*>(raw.data()), 8);
  TokenCorpus c = load_token_bins({dir + "/raw.bin"}, 2);
  EXPECT_EQ(c.tokens, (std::vector<int32_t>{5, 6, 7, 8}));
  EXPECT_EQ(c.vocab, 9);
  std::vector<int32_t> hdr(256, 0);
  hdr[0] = 20240520;
  hdr[1] = 1;
  hdr[2] = 3;
  std::vector<uint16_t> toks = {100, 200, 300};
  {
    std::ofstream f(dir + "/llmc.bin", std::ios::binary);
    f.write(reinterpret_cast<const char*>(hdr.data()), 1024);
    f.write(reinterpret_cast<const char*>(toks.data()), 6);
  }
  EXPECT_EQ(load_token_bins({dir + "/llmc.bin"}, 4).tokens, (std::vector<int32_t>{100, 200, 300}));
  std::ofstream(dir + "/odd.bin", std::ios::binary) << "abc";
  EXPECT_THROW(load_token_bins({dir + "/odd.bin"}, 2), Error);
  EXPECT_THROW(load_token_bins({dir + "/raw.bin"}, 3), Error);
}

TEST(Sampler, SeededEpochsAndResume) {
  Sampler a(10, 4, 99), b(10, 4, 99), c(10, 4, 100);
  std::vector<int64_t> seq_a, seq_c;
  for (int i = 0; i < 6; ++i) {
    auto x = a.next(), y = b.next(), z = c.next();
    EXPECT_EQ(x, y);
    seq_a.insert(seq_a.end(), x.begin(), x.end());
    seq_c.insert(seq_c.end(), z.begin(), z.end());
  }
  EXPECT_NE(seq_a, seq_c);
  EXPECT_EQ(a.batches_per_epoch(), 2);
  // Within an epoch every index appears at most once.
  std::set<int64_t> first(seq_a.begin(), seq_a.begin() + 8);
  EXPECT_EQ(first.size(), 8u);
  // Resume from a saved state reproduces the rest of the sequence.
  Sampler d(10, 4, 99);
  d.next();
  d.next();
  d.next();
  Sampler e(10, 4, 99);
  e.set_state(d.state());
  for (int i = 0; i < 5; ++i) EXPECT_EQ(d.next(), e.next());
  EXPECT_THROW(e.set_state("garbage"), Error);
  EXPECT_THROW(e.set_state("0 99"), Error);
}

TEST(Sampler, RanksPartitionTheGlobalBatch) {
  const int world = 3;
  std::vector<Sampler> ranks;
  for (int r = 0; r < world; ++r) ranks.emplace_back(30, 6, 5, r, world);
  Sampler single(30, 6, 5);
  for (int step = 0; step < 7; ++step) {
    std::vector<int64_t> joined;
    for (auto& s : ranks) {
      auto part = s.next();
      EXPECT_EQ(part.size(), 2u);
      joined.insert(joined.end(), part.begin(), part.end());
    }
    EXPECT_EQ(joined, single.next());
  }
  EXPECT_THROW(Sampler(30, 5, 1, 0, 3), Error);  // 5 does not split over 3 ranks
  EXPECT_THROW(Sampler(3, 4, 1), Error);         // fewer examples than one batch
}

}  // namespace
}  // namespace tessera::data
