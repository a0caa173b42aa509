// Library-scale routing: the LRU expert cache, the retrieval query by hand,
// retrieve-then-route equal to routing over the whole library when every
// expert is retrieved, the right candidates retrieved when few are, and the
// errors a caller can cause.
#include "routing/retrieval.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "routing/arrow.h"
#include "routing/routers.h"
#include "runtime/common/error.h"
#include "runtime/nn/layers.h"
#include "tests/testing.h"

namespace tessera::routing {
namespace {

using adapters::LoraFactors;
using testing::randn;

void expect_error(const std::function<void()>& f, const std::string& want) {
  const std::string got = testing::error_of(f);
  EXPECT_NE(got.find(want), std::string::npos) << "error '" << got << "' lacks '" << want << "'";
}

TEST(ExpertCache, EvictsTheLeastRecentlyUsedAndCountsHits) {
  std::vector<std::string> loaded;
  ExpertCache cache(
      [&](const std::string& id) {
        if (id == "bad") throw Error("no such expert");
        loaded.push_back(id);
        CandidateExpert e;
        e.id = id;
        return e;
      },
      2);
  EXPECT_EQ(cache.get("a")->id, "a");
  cache.get("b");
  cache.get("a");  // a is now the most recent
  cache.get("c");  // evicts b
  EXPECT_EQ(cache.size(), 2u);
  cache.get("a");
  cache.get("b");  // loaded again
  EXPECT_EQ(loaded, (std::vector<std::string>{"a", "b", "c", "b"}));
  EXPECT_EQ(cache.hits(), 2);
  EXPECT_EQ(cache.misses(), 4);
  EXPECT_THROW(cache.get("bad"), Error);
  EXPECT_EQ(cache.size(), 2u);
  EXPECT_THROW(ExpertCache([](const std::string&) { return CandidateExpert(); }, 0), Error);
}

TEST(RetrievalQuery, MeanOfTheNormalisedRows) {
  // Rows (3, 4), (0, 0) (skipped in the sum, counted in the mean), (0, 2).
  const std::vector<float> q = retrieval_query(Tensor::from_vector({3, 4, 0, 0, 0, 2}, {3, 2}));
  EXPECT_NEAR(q[0], 0.6 / 3, 1e-7);
  EXPECT_NEAR(q[1], (0.8 + 1.0) / 3, 1e-7);
  EXPECT_THROW(retrieval_query(Tensor::zeros({2, 2, 2})), Error);
}

// E experts on two modules (in 6 → 5 → 4), each with stored Arrow and
// centroid signatures, and an exact cosine search over them.
struct Library {
  std::vector<CandidateExpert> experts;
  int searches = 0;
  SearchFn search() {
    return [this](const std::string& sig, const std::vector<float>& q, int n) {
      ++searches;
      std::vector<SearchResult> all;
      double qn = 0;
      for (float v : q) qn += double(v) * v;
      for (const CandidateExpert& e : experts) {
        const std::vector<float>& s = e.signatures.at(sig);
        double dot = 0, sn = 0;
        for (size_t i = 0; i < s.size(); ++i) dot += double(s[i]) * q[i], sn += double(s[i]) * s[i];
        all.push_back({e.id, static_cast<float>(dot / std::sqrt(sn * qn))});
      }
      std::stable_sort(all.begin(), all.end(), [](const SearchResult& a, const SearchResult& b) {
        return a.score > b.score;
      });
      all.resize(std::min<size_t>(all.size(), static_cast<size_t>(n)));
      return all;
    };
  }
  ExpertCache::LoadFn loader() {
    return [this](const std::string& id) {
      for (const CandidateExpert& e : experts)
        if (e.id == id) return e;
      throw Error("missing " + id);
    };
  }
};

Library make_library(int E, Rng& rng) {
  Library lib;
  const std::vector<std::pair<std::string, std::pair<int64_t, int64_t>>> mods = {{"m0", {6, 5}},
                                                                                 {"m1", {5, 4}}};
  for (int e = 0; e < E; ++e) {
    CandidateExpert c;
    c.id = "id" + std::to_string(e);
    for (const auto& [m, io] : mods) {
      const int64_t r = 1 + e % 3;
      LoraFactors f{randn({r, io.first}, rng, 0.7f), randn({io.second, r}, rng, 0.7f),
                    0.5f + 0.25f * e};
      c.signatures["arrow/" + m] = arrow_prototype(f);
      std::vector<float> cen = randn({io.first}, rng).to_vector();
      double n = 0;
      for (float v : cen) n += double(v) * v;
      for (float& v : cen) v = static_cast<float>(v / std::sqrt(n));
      c.signatures["centroid/" + m] = cen;
      c.factors[m] = f;
    }
    lib.experts.push_back(c);
  }
  return lib;
}

// The two modules' outputs on x [N, 6] under `slot(m)` adapters.
std::vector<float> run(nn::Linear& l0, nn::Linear& l1, const Tensor& x) {
  return l1.forward(l0.forward(x)).to_vector();
}

TEST(RetrievalRouter, RetrievingEveryExpertRoutesAsTheWholeLibraryDoes) {
  Rng rng(11);
  const int E = 6;
  Library lib = make_library(E, rng);
  nn::ParameterSet ps;
  nn::Linear l0(ps, "m0", 6, 5, true, false, rng, nn::Init::Normal, 0.5f);
  nn::Linear l1(ps, "m1", 5, 4, true, false, rng, nn::Init::Normal, 0.5f);
  const Tensor x = randn({7, 6}, rng);
  for (const char* text : {"arrow:top_k=2,candidates=6", "centroid:top_k=3,candidates=6",
                           "arrow:top_k=2,candidates=6,retrieve=centroid,mode=merge-before"}) {
    const RouterSpec spec = parse_router_spec(text);
    // The whole library, in library order.
    std::vector<Tensor> tables;
    std::vector<ExpertStack> stacks;
    for (const char* m : {"m0", "m1"}) {
      std::vector<LoraFactors> fs;
      std::vector<float> t;
      const std::string sig =
          std::string(spec.kind == RouterKind::Arrow ? "arrow/" : "centroid/") + m;
      for (const auto& e : lib.experts) {
        fs.push_back(e.factors.at(m));
        for (float v : e.signatures.at(sig)) t.push_back(v);
      }
      stacks.push_back(stack_experts(fs));
      tables.push_back(Tensor::from_vector(t, {E, fs[0].A.size(1)}));
    }
    auto full = [&](size_t m) {
      return [&, m](const Tensor& in) {
        return spec.kind == RouterKind::Arrow ? arrow_route(in, tables[m], spec.top_k, 1.0f)
                                              : centroid_route(in, tables[m], spec.top_k);
      };
    };
    l0.set_adapter(std::make_shared<RoutedLora>(stacks[0], full(0), spec.combine));
    l1.set_adapter(std::make_shared<RoutedLora>(stacks[1], full(1), spec.combine));
    const std::vector<float> want = run(l0, l1, x);
    ExpertCache cache(lib.loader(), 16);
    RetrievalRouter router({"m0", "m1"}, spec, lib.search(), &cache);
    l0.set_adapter(std::make_shared<RoutedLora>(
        [&](const Tensor& in) { return router.route(0, in); }, spec.combine));
    l1.set_adapter(std::make_shared<RoutedLora>(
        [&](const Tensor& in) { return router.route(1, in); }, spec.combine));
    const std::vector<float> got = run(l0, l1, x);
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-5) << text;
    EXPECT_EQ(router.candidates().size(), 6u);
    EXPECT_EQ(router.retrievals(), 1);
    run(l0, l1, x);  // a second batch: the cache serves every expert
    EXPECT_EQ(cache.misses(), 6);
    EXPECT_EQ(cache.hits(), 6);
  }
}

TEST(RetrievalRouter, RetrievesTheExpertsWhoseSignaturesMatchTheBatch) {
  Rng rng(5);
  Library lib = make_library(12, rng);
  ExpertCache cache(lib.loader(), 4);
  // A batch of rows near expert 7's centroid: centroid retrieval ranks it
  // first; near minus expert 4's Arrow prototype: Arrow retrieval (|cos|)
  // ranks it first all the same.
  for (const auto& [text, target, sign] :
       {std::tuple<const char*, int, float>{"centroid:top_k=1,candidates=3", 7, 1.0f},
        std::tuple<const char*, int, float>{"arrow:top_k=1,candidates=3", 4, -1.0f}}) {
    const RouterSpec spec = parse_router_spec(text);
    RetrievalRouter router({"m0", "m1"}, spec, lib.search(), &cache);
    const std::string sig = std::string(spec.retrieve) + "/m0";
    const std::vector<float>& s = lib.experts[static_cast<size_t>(target)].signatures.at(sig);
    Tensor x = randn({8, 6}, rng, 0.05f);
    for (int64_t n = 0; n < 8; ++n)
      for (int64_t i = 0; i < 6; ++i) x.data()[n * 6 + i] += sign * s[static_cast<size_t>(i)];
    router.route(0, x);
    ASSERT_EQ(router.candidates().size(), 3u) << text;
    EXPECT_EQ(router.candidates()[0]->id, "id" + std::to_string(target)) << text;
  }
}

TEST(RetrievalRouter, RefusesWhatItCannotRoute) {
  Rng rng(2);
  Library lib = make_library(3, rng);
  ExpertCache cache(lib.loader(), 4);
  const Tensor x = randn({2, 6}, rng), h = randn({2, 5}, rng);
  {
    RetrievalRouter r({"m0", "m1"}, parse_router_spec("arrow:top_k=1,candidates=2"), lib.search(),
                      &cache);
    expect_error([&] { r.route(1, h); }, "no successful retrieval at m0");
    r.route(0, x);
    expect_error(
        [&] {
          r.route(0, x);
          r.route(0, x);
          r.route(1, h);
          r.route(1, h);
        },
        "out of model order; expected m0");
  }
  {
    // The library holds 3 experts; top_k 3 of candidates 4 finds only 3 — fine;
    // but a search returning fewer than top_k is refused.
    RetrievalRouter r(
        {"m0"}, parse_router_spec("arrow:top_k=3,candidates=4"),
        [](const std::string&, const std::vector<float>&, int) {
          return std::vector<SearchResult>{{"id0", 1.0f}};
        },
        &cache);
    expect_error([&] { r.route(0, x); }, "found 1 expert; top_k = 3");
  }
  {
    RetrievalRouter r({"m0", "m2"}, parse_router_spec("centroid:top_k=1,candidates=2"),
                      lib.search(), &cache);
    expect_error([&] { r.route(0, x); }, "does not adapt m2");
  }
  expect_error([] { parse_router_spec("arrow:top_k=3,candidates=2"); },
               "top_k = 3 but candidates = 2");
  expect_error([] { parse_router_spec("arrow:retrieve=arrow"); }, "needs candidates=N");
  expect_error([] { parse_router_spec("centroid:candidates=2,retrieve=x"); },
               "expected centroid or arrow");
  expect_error([] { parse_router_spec("uniform:candidates=2"); }, "takes no 'candidates'");
  EXPECT_EQ(parse_router_spec("centroid:candidates=4").top_k, 0);  // all retrieved
  expect_error([] { parse_router_spec("centroid:top_k=5,candidates=4"); },
               "top_k = 5 but candidates = 4");
  EXPECT_EQ(parse_router_spec("arrow:top_k=2,candidates=8").label(),
            "arrow top_k=2 T=1 merge-after of 8 by arrow");
}

}  // namespace
}  // namespace tessera::routing
