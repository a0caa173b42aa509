// MBC against mttl's recipe run with numpy and scikit-learn
// (tests/fixtures/mbc, scripts/gen_mbc_fixture.py); k-means by hand; the
// init-free feature on experts whose factors started from different A.
#include "routing/cluster.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "runtime/common/error.h"
#include "runtime/common/rng.h"
#include "runtime/io/safetensors.h"
#include "tests/testing.h"

namespace tessera::routing {
namespace {

TEST(Mbc, MatchesMttlWithScikitLearn) {
  auto f = io::SafetensorsFile::open(testing::source_dir() + "/tests/fixtures/mbc/mbc.safetensors");
  const Tensor meta = f->load_f32("meta");
  const int64_t N = static_cast<int64_t>(meta.data()[0]), k = static_cast<int64_t>(meta.data()[1]);
  std::vector<std::vector<float>> features;
  for (int64_t e = 0; e < N; ++e) {
    ModuleFactors m;
    for (int j = 0; j < 2; ++j) {
      adapters::LoraFactors lf;
      lf.A = f->load_f32(str("A.", e, ".", j));
      lf.B = f->load_f32(str("B.", e, ".", j));
      m.push_back({str("m", j), lf});
    }
    features.push_back(lora_feature(m));
  }
  ASSERT_EQ(features[0].size(), 196u);
  // The quantile lands on an element (0.8 · 195 = 156): it and the 156 below
  // it are zeroed.
  const Tensor thr = f->load_f32("threshold");
  for (int64_t e = 0; e < N; ++e) {
    double t = 0;
    const std::vector<double> s = sparsify(features[e], 0.8, &t);
    EXPECT_NEAR(t, thr.data()[e], 1e-6 * t) << e;
    EXPECT_EQ(std::count(s.begin(), s.end(), 0.0), 157) << e;
  }
  const auto emb = svd_embeddings(features, 0.8, 64);
  ASSERT_EQ(emb[0].size(), static_cast<size_t>(meta.data()[2]));  // min(64, N − 1)
  // The embeddings equal sklearn's up to each component's sign: compare
  // every pair's cosine, and each row's norm (1).
  const auto cos = cosine_matrix(emb);
  const Tensor want = f->load_f32("cosine");
  double worst = 0;
  for (int64_t i = 0; i < N; ++i)
    for (int64_t j = 0; j < N; ++j)
      worst = std::max(worst, std::abs(cos[i][j] - want.data()[i * N + j]));
  EXPECT_LT(worst, 1e-5);
  std::vector<int> labels;
  for (float v : f->load_f32("labels").to_vector()) labels.push_back(static_cast<int>(v));
  MbcOptions o;
  o.k = k;
  EXPECT_EQ(canonical_labels(mbc_clusters(features, o)), canonical_labels(labels));
}

TEST(KMeans, HandCasesAndLimits) {
  const std::vector<std::vector<double>> x = {{0}, {10}, {0.1}, {10.2}, {0.2}};
  const KMeans two = kmeans(x, 2, 3, 1);
  EXPECT_EQ(canonical_labels(two.labels), (std::vector<int>{0, 1, 0, 1, 0}));
  // Centres 0.1 and 10.1: 0.01 + 0.01 + 0 + 0.01 + 0.01.
  EXPECT_NEAR(two.inertia, 0.04, 1e-12);
  const KMeans all = kmeans(x, 5, 2, 1);
  EXPECT_EQ(canonical_labels(all.labels), (std::vector<int>{0, 1, 2, 3, 4}));
  EXPECT_EQ(all.inertia, 0.0);
  EXPECT_THROW(kmeans(x, 6, 1, 1), Error);
  EXPECT_THROW(kmeans(x, 0, 1, 1), Error);
  EXPECT_THROW(svd_embeddings({{1, 2}, {1}}), Error);
  EXPECT_THROW(svd_embeddings({{1, 2}}, 1.0), Error);
}

// Three groups of three experts; within a group ΔW = B A is the same, but
// each expert's factors are (B Qᵀ, Q A) for its own random rotation Q — as
// if trained from differently seeded lora_A. mttl's feature sees nine
// unrelated experts; the init-free feature sees three groups.
TEST(Mbc, InitFreeFeatureFindsWhatExpertsComputeWhateverTheirInit) {
  Rng rng(3);
  const int64_t r = 4, in = 20, out = 10;
  std::vector<std::pair<Tensor, Tensor>> groups;
  for (int g = 0; g < 3; ++g)
    groups.push_back({testing::randn({r, in}, rng), testing::randn({out, r}, rng)});
  std::vector<std::vector<float>> mttl, free;
  std::vector<int> truth;
  for (int e = 0; e < 9; ++e) {
    const int g = e % 3;
    // Q: block-diagonal 2×2 rotations by random angles.
    std::vector<double> Q(static_cast<size_t>(r * r), 0.0);
    for (int b = 0; b < r; b += 2) {
      const double t = rng.uniform(0.0f, 6.2831853f);
      Q[b * r + b] = std::cos(t);
      Q[b * r + b + 1] = -std::sin(t);
      Q[(b + 1) * r + b] = std::sin(t);
      Q[(b + 1) * r + b + 1] = std::cos(t);
    }
    adapters::LoraFactors f;
    f.A = Tensor::zeros({r, in});
    f.B = Tensor::zeros({out, r});
    for (int64_t i = 0; i < r; ++i)
      for (int64_t c = 0; c < in; ++c)
        for (int64_t j = 0; j < r; ++j)
          f.A.data()[i * in + c] +=
              static_cast<float>(Q[i * r + j] * groups[g].first.data()[j * in + c]);
    for (int64_t o = 0; o < out; ++o)
      for (int64_t i = 0; i < r; ++i)
        for (int64_t j = 0; j < r; ++j)  // B Qᵀ
          f.B.data()[o * r + i] +=
              static_cast<float>(groups[g].second.data()[o * r + j] * Q[i * r + j]);
    // What each learned differs a little.
    for (int64_t i = 0; i < f.B.numel(); ++i) f.B.data()[i] += rng.normal(0.0f, 0.05f);
    ModuleFactors m = {{"layer", f}};
    mttl.push_back(lora_feature(m));
    free.push_back(init_free_feature(m, 16, 5));
    truth.push_back(g);
  }
  MbcOptions o;
  o.k = 3;
  EXPECT_EQ(canonical_labels(mbc_clusters(free, o)), canonical_labels(truth));
  EXPECT_NE(canonical_labels(mbc_clusters(mttl, o)), canonical_labels(truth));
  EXPECT_THROW(init_free_feature({}, 0, 1), Error);
}

}  // namespace
}  // namespace tessera::routing
