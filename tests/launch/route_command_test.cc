// `tessera route` on a real library: an MLP base on a Fashion-MNIST subset,
// three experts built by build-library (permutations, which record their
// centroids as they train). The oracle reproduces each expert's own stored
// score, top-1 routing is the same in both combine modes, centroid routing
// finds the permutations, and every mistake is one clear Error.
#include <gtest/gtest.h>

#include <cmath>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include "adapters/adapter_file.h"
#include "launch/base.h"
#include "launch/commands.h"
#include "launch/experts.h"
#include "launch/runs.h"
#include "routing/arrow.h"
#include "routing/spec.h"
#include "routing/trained.h"
#include "runtime/common/error.h"
#include "runtime/io/fingerprint.h"
#include "runtime/train/trainer.h"
#include "store/adapter_io.h"
#include "store/library.h"
#include "tessera/library.pb.h"
#include "tests/testing.h"

namespace tessera::launch {
namespace {

using testing::error_of;
namespace fs = std::filesystem;

class Route : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(testing::temp_dir("route_cmd"));
    PretrainOptions p;
    p.model = "mlp";
    p.quiet = true;
    p.overrides = {
        "data.limit_train=2048",     "data.limit_test=500", "epochs=0", "steps=40", "threads=2",
        "out_dir=" + *dir_ + "/base"};
    ASSERT_EQ(run_pretrain(p), 0);
    BuildLibraryOptions b;
    b.base = base();
    b.tasks = {"permute:seed={1..3}"};
    b.library.where = *dir_ + "/lib";
    b.out_dir = *dir_ + "/build";
    b.overrides = {"epochs=0", "steps=60", "threads=2"};
    ASSERT_EQ(run_build_library(b), 0);
  }
  static void TearDownTestSuite() { delete dir_; }
  static std::string base() { return *dir_ + "/base/checkpoint.safetensors"; }
  static RouteOptions options(std::vector<std::string> routers) {
    RouteOptions o;
    o.base = base();
    o.library.where = *dir_ + "/lib";
    o.eval = "permute:seed=1;permute:seed=2;permute:seed=3;permute:seed=9";
    o.routers = std::move(routers);
    o.overrides = {"data.limit_train=2048", "data.limit_test=500", "threads=2"};
    return o;
  }
  static std::string* dir_;
};
std::string* Route::dir_ = nullptr;

TEST_F(Route, OracleReproducesEachExpertsOwnScoreAndTheBaseIsTheBase) {
  const RouteResult r = run_route(options({"base", "task", "uniform"}));
  ASSERT_EQ(r.experts.size(), 3u);
  ASSERT_EQ(r.modules.size(), 2u);  // the MLP's two hidden layers
  ASSERT_EQ(r.task_expert.size(), 4u);
  EXPECT_EQ(r.task_expert[3], -1);  // seed 9: no expert saw it
  LibraryTarget where;
  where.where = *dir_ + "/lib";
  auto lib = open_library(where, false, true);
  for (int t = 0; t < 3; ++t) {
    ASSERT_GE(r.task_expert[t], 0);
    AdapterRecord rec;
    ASSERT_TRUE(lib->Get(r.experts[r.task_expert[t]], &rec).ok());
    EXPECT_EQ(rec.task(), r.tasks[t]);
    // The oracle routes each example to its task's expert: the accuracy
    // build-library measured for it (gather vs the LoRA slot: summation order).
    EXPECT_NEAR(r.rows[1].score[t], rec.scores(0).value(), 0.004) << r.tasks[t];
    EXPECT_GT(r.rows[1].score[t], r.rows[0].score[t] + 0.05) << "the expert helps";
  }
  EXPECT_DOUBLE_EQ(r.rows[1].routing_acc, 1.0);
  EXPECT_DOUBLE_EQ(r.rows[1].score[3], r.rows[0].score[3]);  // no expert: the base
  EXPECT_EQ(r.rows[0].routing_acc, 0.0);
  for (double u : r.rows[2].usage[0]) EXPECT_NEAR(u, 1.0 / 3, 1e-6);
  EXPECT_NEAR(r.rows[2].entropy, std::log(3.0), 1e-6);
}

TEST_F(Route, TopOneIsTheSameInBothModesAndCentroidsFindThePermutations) {
  const RouteResult r = run_route(options(
      {"arrow:top_k=1", "arrow:top_k=1,mode=merge-before", "centroid:top_k=1", "centroid"}));
  EXPECT_EQ(r.rows[0].score, r.rows[1].score);
  EXPECT_EQ(r.rows[0].module_acc, r.rows[1].module_acc);
  // A permutation's pixels are its own: the first layer's centroids tell them apart.
  EXPECT_GE(r.rows[2].module_acc[0], 0.95) << r.rows[2].router;
  EXPECT_GT(r.rows[2].routing_acc, 0.5);
  for (size_t t = 0; t < 3; ++t) {
    const auto& u = r.rows[2].usage[t];
    EXPECT_GT(u[r.task_expert[t]], 0.5) << r.tasks[t];
  }
}

// Library-scale routing through the store's Search: retrieving every
// expert routes exactly as routing over the loaded library; retrieving two
// of three by centroid signatures still finds each permutation's own expert
// (the batch's query is its task's), fetching each expert once.
TEST_F(Route, RetrieveThenRouteMatchesTheWholeLibrary) {
  const RouteResult r =
      run_route(options({"arrow:top_k=2", "arrow:top_k=2,candidates=3", "centroid:top_k=1",
                         "centroid:top_k=1,candidates=2", "task"}));
  EXPECT_EQ(r.rows[1].router, "arrow top_k=2 T=1 merge-after of 3 by arrow");
  for (size_t t = 0; t < r.tasks.size(); ++t) {
    EXPECT_NEAR(r.rows[1].score[t], r.rows[0].score[t], 1e-9) << r.tasks[t];
    EXPECT_NEAR(r.rows[3].score[t], r.rows[2].score[t], 0.02) << r.tasks[t];
  }
  EXPECT_EQ(r.rows[1].module_acc, r.rows[0].module_acc);
  EXPECT_GE(r.rows[3].module_acc[0], 0.95);
  // The heat maps as a PNG: a panel per router (5) and the per-module one.
  const std::string png = *dir_ + "/route.png";
  write_route_png(r, png);
  std::ifstream f(png, std::ios::binary);
  std::string head(24, '\0');
  f.read(head.data(), 24);
  ASSERT_EQ(head.substr(1, 3), "PNG");
  auto be32 = [&](size_t at) {
    return (uint32_t(uint8_t(head[at])) << 24) | (uint32_t(uint8_t(head[at + 1])) << 16) |
           (uint32_t(uint8_t(head[at + 2])) << 8) | uint32_t(uint8_t(head[at + 3]));
  };
  // At least labels + 3 expert columns + margin; wider where a title needs it.
  EXPECT_GE(be32(16), 300u + 34u * 3u + 24u);
  EXPECT_LE(be32(16), 16u + 9u * 80u);
  EXPECT_EQ(be32(20), 24u + 5u * (28u + 130u + 34u * 4u + 24u) + (28u + 130u + 34u * 5u + 24u));
  EXPECT_NE(
      error_of([&] { write_route_png(r, *dir_ + "/no/such/dir/route.png"); }).find("cannot write"),
      std::string::npos);
  EXPECT_GT(r.rows[1].retrievals, 0);
  EXPECT_GT(r.rows[1].retrieve_seconds, 0);
  EXPECT_EQ(r.rows[0].retrievals, 0);
  // Each expert fetched once over all batches and routers (the cache is the run's).
  EXPECT_EQ(r.rows[1].cache_misses, 3);
  EXPECT_EQ(r.rows[3].cache_misses, 0);
  // Only library-scale and oracle routers: experts are not loaded up front.
  const RouteResult lean = run_route(options({"centroid:top_k=1,candidates=2", "task"}));
  EXPECT_EQ(lean.rows[0].score, r.rows[3].score);
  EXPECT_EQ(lean.rows[1].score, r.rows[4].score);
  RouteOptions named = options({"arrow:top_k=1,candidates=2"});
  named.experts = {lean.experts[0]};
  EXPECT_NE(error_of([&] { run_route(named); }).find("drop one or the other"), std::string::npos);
}

// A library holding two versions of an expert: retrieval routes among the
// newest versions only, as routing over the loaded library does.
TEST_F(Route, RetrievalUsesEachExpertsNewestVersionOnly) {
  const std::string copy = *dir_ + "/lib_v2";
  fs::remove_all(copy);
  fs::copy(*dir_ + "/lib", copy, fs::copy_options::recursive);
  {
    LibraryTarget where;
    where.where = copy;
    auto lib = open_library(where, false);
    adapters::AdapterFile file;
    AdapterRecord rec;
    ASSERT_TRUE(store::GetAdapter(*lib, "permute:seed=2", &file, &rec).ok());
    auto mods = file.linear_factors();
    for (auto& [name, f] : mods) f.B = ops::scale(f.B, 3.0f);  // another expert, same name
    AdapterRecord v2;
    v2.set_name(rec.name());
    v2.set_task(rec.task());
    for (const Signature& sg : rec.signatures())
      if (sg.name().rfind("centroid/", 0) == 0) *v2.add_signatures() = sg;
    AdapterRecord stored;
    ASSERT_TRUE(store::PutAdapter(*lib,
                                  adapters::lora_factors_adapter(mods, file.conv1d, file.base_model,
                                                                 file.base_fingerprint),
                                  v2, &stored, routing::arrow_signatures)
                    .ok());
    ASSERT_EQ(stored.version(), 2);
  }
  RouteOptions o =
      options({"arrow:top_k=2", "arrow:top_k=2,candidates=3", "centroid:top_k=1,candidates=3"});
  o.library.where = copy;
  const RouteResult r = run_route(o);
  ASSERT_EQ(r.experts.size(), 3u);
  EXPECT_NE(std::find(r.experts.begin(), r.experts.end(), "permute:seed=2@2"), r.experts.end());
  EXPECT_EQ(r.rows[1].score, r.rows[0].score);
  EXPECT_EQ(r.rows[1].module_acc, r.rows[0].module_acc);
  EXPECT_EQ(r.rows[2].cache_misses, 0);  // the newest three, already fetched
}

// R2-T2 behind a router: with alpha 1 it keeps the centroid router's own
// routing (top-1 of the dense softmax: the centroid top-1 router, exactly);
// with alpha 0 the routing is its correctly-routed neighbours', which on
// these permutations routes at least as well as the centroids; results do
// not depend on the other tasks evaluated beside a task (order-independent).
TEST_F(Route, R2T2ReRoutesTowardCorrectlyRoutedNeighbours) {
  const RouteResult r = run_route(
      options({"centroid:top_k=1", "r2t2:alpha=1", "r2t2:alpha=0,neighbours=8,reference=128"}));
  EXPECT_EQ(r.rows[1].router, "r2t2 top_k=1 neighbours=5 alpha=1 ref=256 merge-after");
  EXPECT_EQ(r.rows[1].score, r.rows[0].score);
  EXPECT_EQ(r.rows[1].module_acc, r.rows[0].module_acc);
  EXPECT_GE(r.rows[2].routing_acc, r.rows[0].routing_acc - 0.01);
  EXPECT_GE(r.rows[2].module_acc[1], r.rows[0].module_acc[1]);
  RouteOptions alone = options({"r2t2:alpha=0,neighbours=8,reference=128"});
  alone.eval = "permute:seed=3;permute:seed=1";
  const RouteResult a = run_route(alone);
  EXPECT_EQ(a.rows[0].score[1], r.rows[2].score[0]);
  EXPECT_EQ(a.rows[0].score[0], r.rows[2].score[2]);
  const std::string few = error_of([] { run_route(options({"r2t2:neighbours=50,reference=10"})); });
  EXPECT_NE(few.find("lower neighbours (50) or raise reference (10 per task)"), std::string::npos)
      << few;
  EXPECT_NE(
      error_of([] { run_route(options({"r2t2:candidates=2"})); }).find("takes no 'candidates'"),
      std::string::npos);
  EXPECT_NE(
      error_of([] { run_route(options({"centroid:context=prefix"})); }).find("one row per example"),
      std::string::npos);
  RouteOptions png = options({"task"});
  png.png_out = *dir_ + "/no/such/folder/route.png";
  EXPECT_NE(error_of([&] { run_route(png); }).find("does not exist"), std::string::npos);
}

// Another base (another fingerprint): the library has nothing for it, a
// named expert of the first base is refused naming both, and so is a router.
TEST_F(Route, ExpertsAndRoutersOfAnotherBaseAreRefused) {
  PretrainOptions p;
  p.model = "mlp";
  p.quiet = true;
  p.overrides = {"data.limit_train=2048",
                 "data.limit_test=500",
                 "epochs=0",
                 "steps=3",
                 "threads=2",
                 "seed=9",
                 "out_dir=" + *dir_ + "/other"};
  ASSERT_EQ(run_pretrain(p), 0);
  const std::string other = *dir_ + "/other/checkpoint.safetensors";
  RouteOptions o = options({"task"});
  o.base = other;
  EXPECT_NE(error_of([&] { run_route(o); }).find("holds no LoRA experts for the base"),
            std::string::npos);
  o.experts = {"permute:seed=1"};
  const std::string named = error_of([&] { run_route(o); });
  EXPECT_NE(named.find("FailedPrecondition"), std::string::npos) << named;
  EXPECT_NE(named.find("permute:seed=1"), std::string::npos) << named;
  TrainRouterOptions tr;
  tr.base = other;
  tr.library.where = *dir_ + "/lib";
  tr.router = "mole:top_k=1";
  tr.tasks = {"permute:seed=1;permute:seed=2"};
  tr.quiet = true;
  tr.overrides = {"epochs=0", "steps=2", "threads=2", "data.limit_train=2048",
                  "data.limit_test=500"};
  EXPECT_NE(error_of([&] { run_train_router(tr); }).find("holds no LoRA experts"),
            std::string::npos);
}

TEST_F(Route, EveryMistakeIsOneClearError) {
  EXPECT_NE(error_of([] {
              run_route(options({"arrow:top_k=4"}));
            }).find("top_k = 4 but the library holds 3"),
            std::string::npos);
  EXPECT_NE(error_of([] { run_route(options({"arrow:k=2"})); }).find("arrow takes no 'k'"),
            std::string::npos);
  EXPECT_NE(error_of([] { run_route(options({"arow"})); }).find("expected one of arrow"),
            std::string::npos);
  RouteOptions o = options({"task"});
  o.eval = "";
  EXPECT_NE(error_of([&] { run_route(o); }).find("--eval"), std::string::npos);
  o = options({"task"});
  o.library.where = *dir_ + "/no_such_lib";
  const std::string missing = error_of([&] { run_route(o); });
  EXPECT_NE(missing.find("no_such_lib"), std::string::npos) << missing;
  o.library.where = *dir_ + "/empty_lib";
  open_library(o.library, true);
  EXPECT_NE(error_of([&] { run_route(o); }).find("holds no LoRA experts"), std::string::npos);
  o = options({"task"});
  o.experts = {"nope"};
  EXPECT_NE(error_of([&] { run_route(o); }).find("nope"), std::string::npos);
  o = options({"task"});
  o.eval = "rotate:deg=abc";
  EXPECT_NE(error_of([&] { run_route(o); }).find("rotate"), std::string::npos);
}

// An expert put without centroids (from an older tessera, or a file): the
// centroid router names the command that computes them; after it, the
// router runs and routes as the experts that recorded them while training.
TEST_F(Route, CentroidsCommandFillsInWhatOlderExpertsLack) {
  RouteOptions o = options({"centroid:top_k=1"});
  o.library.where = *dir_ + "/old_lib";
  auto lib = open_library(o.library, true);
  for (int k = 0; k < 3; ++k) {
    AdapterRecord rec;
    rec.set_name(str("perm", k + 1));
    rec.set_task(str("permute:seed=", k + 1));
    put_adapter_file(*lib, str(*dir_, "/build/", k, "/adapter.safetensors"), rec);
  }
  lib.reset();
  const std::string e = error_of([&] { run_route(o); });
  EXPECT_NE(e.find("tessera centroids --base"), std::string::npos) << e;
  CentroidsOptions c;
  c.base = base();
  c.library = o.library;
  c.overrides = o.overrides;
  ASSERT_EQ(run_centroids(c), 0);
  const RouteResult have = run_route(o);
  RouteOptions trained = options({"centroid:top_k=1"});
  const RouteResult want = run_route(trained);
  EXPECT_EQ(have.rows[0].module_acc, want.rows[0].module_acc);
  EXPECT_EQ(have.rows[0].score, want.rows[0].score);
}

// train-router stores a router whose record pins its experts; loaded again
// onto a fresh model it scores exactly what training measured; a pinned
// expert deleted, the router is refused naming it.
TEST_F(Route, TrainedRoutersRoundTripThroughTheLibraryAndPinTheirExperts) {
  namespace fs = std::filesystem;
  const std::string lib_dir = *dir_ + "/router_lib";
  fs::remove_all(lib_dir);
  fs::copy(*dir_ + "/lib", lib_dir, fs::copy_options::recursive);
  // mole with the loss-free bias (it must travel with the record: selection
  // depends on it) and one gate for both layers of different widths.
  for (const char* spec : {"mole:top_k=1", "poly:skills=3,splits=2,r=4",
                           "mole:top_k=2,bias_rate=0.01,granularity=global"}) {
    SCOPED_TRACE(spec);
    TrainRouterOptions o;
    o.base = base();
    o.library.where = lib_dir;
    o.router = spec;
    o.tasks = {"permute:seed=1;permute:seed=2;permute:seed=3"};
    o.name = std::string(spec).find("bias") != std::string::npos ? "biased"
                                                                 : std::string(spec).substr(0, 4);
    o.quiet = true;
    o.overrides = {"epochs=0", "steps=40", "threads=2", "data.limit_train=2048",
                   "data.limit_test=500"};
    ASSERT_EQ(run_train_router(o), 0);
    LibraryTarget where;
    where.where = lib_dir;
    auto lib = open_library(where, false, true);
    AdapterRecord rec;
    ASSERT_TRUE(lib->Get(o.name + "@latest", &rec).ok());
    EXPECT_EQ(rec.kind(), "router");
    ASSERT_EQ(rec.scores_size(), 3);
    const RunConfig cfg = adapter_run_config(
        base(), {"permute:seed=1", "permute:seed=2", "permute:seed=3"}, "", o.overrides);
    train::Trainer t(cfg);
    load_base_weights(t, base());
    auto r = load_library_router(*lib, rec.id(), t, io::base_fingerprint(base()),
                                 {"permute:seed=1", "permute:seed=2", "permute:seed=3"});
    EXPECT_EQ(r->config.experts_size(), o.name == "poly" ? 0 : 3);
    for (int i = 0; i < 3; ++i)
      EXPECT_NEAR(t.evaluate(-1, i).accuracy, rec.scores(i).value(), 1e-6) << i;
  }
  // Delete one pinned expert: the mole router is refused, naming it.
  LibraryTarget where;
  where.where = lib_dir;
  auto lib = open_library(where, false);
  AdapterRecord mole;
  ASSERT_TRUE(lib->Get("mole@latest", &mole).ok());
  const RouterConfig c = routing::parse_router_config_json(mole.config_json(), "test");
  ASSERT_TRUE(lib->Delete(c.experts(1).id()).ok());
  const RunConfig cfg = adapter_run_config(base(), {"permute:seed=1"}, "", {"threads=2"});
  train::Trainer t(cfg);
  const std::string e = error_of([&] {
    load_library_router(*lib, "mole@latest", t, io::base_fingerprint(base()), {"permute:seed=1"});
  });
  EXPECT_NE(e.find("mixes expert " + c.experts(1).name()), std::string::npos) << e;
  EXPECT_NE(e.find("no longer holds"), std::string::npos) << e;
  // An adapter is not a router.
  EXPECT_NE(error_of([&] {
              load_library_router(*lib, c.experts(0).id(), t, io::base_fingerprint(base()), {});
            }).find("not a router"),
            std::string::npos);
}

// build-library --cluster: probes per task (kept out of the library), MBC,
// one expert per cluster on its tasks' union; the clusters in build.json.
TEST_F(Route, BuildLibraryClustersTasksIntoExperts) {
  BuildLibraryOptions b;
  b.base = base();
  b.tasks = {"permute:seed={1..3};rotate:deg=90"};
  b.library.where = *dir_ + "/clustered";
  b.out_dir = *dir_ + "/clustered_run";
  b.cluster = "mbc:k=2,steps=20,feature=init-free";
  b.overrides = {"epochs=0", "steps=20", "threads=2", "data.limit_train=2048",
                 "data.limit_test=500"};
  ASSERT_EQ(run_build_library(b), 0);
  std::ifstream f(b.out_dir + "/build.json");
  const nlohmann::json j = nlohmann::json::parse(f);
  ASSERT_EQ(j["clusters"].size(), 2u);
  EXPECT_EQ(j["feature"], "init-free");
  size_t covered = 0;
  auto lib = open_library(b.library, false, true);
  for (const auto& c : j["clusters"]) {
    AdapterRecord rec;
    ASSERT_TRUE(lib->Get(c["name"].get<std::string>() + "@latest", &rec).ok()) << c.dump();
    std::string want;
    for (const auto& t : c["tasks"]) {
      if (!want.empty()) want += ";";
      want += t.get<std::string>();
    }
    EXPECT_EQ(rec.task(), want);
    covered += c["tasks"].size();
  }
  EXPECT_EQ(covered, 4u);  // every task in exactly one cluster
  store::ListPage page;
  ASSERT_TRUE(lib->List({}, 100, "", &page).ok());
  EXPECT_EQ(page.records.size(), 2u);  // the probes stayed out
  for (const char* bad :
       {"mbc", "mbc:k=5", "kmeans:k=2", "mbc:k=2,feature=raw", "mbc:k=2,steps=0"}) {
    b.cluster = bad;
    EXPECT_THROW(run_build_library(b), Error) << bad;
  }
}

// A Poly router on a decoder: its one text task is not in data.task, so the
// workload's task order comes from the task given; eval reproduces what
// training measured (with every row sent to the skill average it did not).
TEST(DecoderRouter, PolyOnATextTaskRoundTrips) {
  const std::string dir = testing::temp_dir("route_decoder");
  {
    std::ofstream c(dir + "/corpus.txt");
    for (int i = 0; i < 300; ++i) c << "routers mix experts over one frozen base. ";
  }
  PretrainOptions p;
  p.model = "decoder";
  p.quiet = true;
  p.overrides = {"decoder.d_model=32", "decoder.n_layer=1",
                 "decoder.n_head=2",   "decoder.n_ctx=16",
                 "data.kind=text",     "data.files=" + dir + "/corpus.txt",
                 "batch_size=4",       "steps=5",
                 "threads=2",          "out_dir=" + dir + "/base"};
  ASSERT_EQ(run_pretrain(p), 0);
  const std::string base = dir + "/base/checkpoint.safetensors";
  LibraryTarget where;
  where.where = dir + "/lib";
  open_library(where, true);
  const std::string task = "text:" + dir + "/corpus.txt";
  TrainRouterOptions tr;
  tr.base = base;
  tr.library = where;
  tr.router = "poly:skills=3,splits=2,r=2";
  tr.tasks = {task};
  tr.name = "poly";
  tr.quiet = true;
  tr.overrides = {"steps=15", "optim.lr=0.01", "eval_batches=2", "threads=2"};
  ASSERT_EQ(run_train_router(tr), 0);
  auto lib = open_library(where, false, true);
  AdapterRecord rec;
  ASSERT_TRUE(lib->Get("poly@latest", &rec).ok());
  const RunConfig cfg = adapter_run_config(base, {task}, "", tr.overrides);
  train::Trainer t(cfg);
  load_base_weights(t, base);
  auto r = load_library_router(*lib, rec.id(), t, io::base_fingerprint(base),
                               workload_tasks(cfg, {task}));
  EXPECT_NEAR(t.evaluate(-1, -1).bits_per_token, rec.scores(0).value(), 1e-5);
}

TEST(RouterConfig, ParsesEveryTrainedKindAndRefusesWhatItDoesNotTake) {
  RouterConfig m = routing::parse_router_config("mole:top_k=1");
  EXPECT_EQ(m.weights(), "switch");  // k = 1: the gate must get a gradient
  EXPECT_FLOAT_EQ(m.balance(), 0.01f);
  RouterConfig p = routing::parse_router_config("poly:skills=4,splits=2,scale=alpha/r,alpha=8");
  EXPECT_EQ(p.skills(), 4);
  EXPECT_EQ(p.scale(), "alpha/r");
  const RouterConfig back =
      routing::parse_router_config_json(routing::router_config_json(p), "round trip");
  EXPECT_EQ(back.SerializeAsString(), p.SerializeAsString());
  for (const char* bad :
       {"mole:k=2", "poly:top_k=2", "mixlora:experts=0", "mole:top_k=1,weights=renormalized",
        "mole:granularity=layer", "poly:scale=2/r", "moe", "mole:balance=-1", "mole:top_k=x"})
    EXPECT_THROW(routing::parse_router_config(bad), Error) << bad;
  EXPECT_THROW(routing::parse_router_config_json("{\"kind\": 3", "bad"), Error);
}

TEST(RouterSpec, ParsesEveryKindAndRefusesWhatItDoesNotTake) {
  routing::RouterSpec a =
      routing::parse_router_spec("arrow:top_k=2,temperature=sqrt,mode=merge-before");
  EXPECT_EQ(a.kind, routing::RouterKind::Arrow);
  EXPECT_EQ(a.top_k, 2);
  EXPECT_TRUE(a.sqrt_temperature);
  EXPECT_EQ(a.combine, routing::Combine::MergeBefore);
  EXPECT_EQ(routing::parse_router_spec("arrow").top_k, 3);  // PEFT's default
  EXPECT_EQ(routing::parse_router_spec("centroid").top_k, 0);
  EXPECT_EQ(routing::parse_router_spec("arrow:temperature=0.5").temperature, 0.5f);
  for (const char* bad : {"arrow:top_k=0", "arrow:top_k=1.5", "arrow:temperature=0",
                          "arrow:temperature=x", "task:top_k=1", "uniform:top_k=2",
                          "arrow:mode=sideways", "arrow:top_k", "centroid:temperature=2", "oracle"})
    EXPECT_THROW(routing::parse_router_spec(bad), Error) << bad;
}

}  // namespace
}  // namespace tessera::launch
