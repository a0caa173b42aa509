// Library-scale routing (issue 13): routing among thousands of stored
// experts, candidates first retrieved by the store's signature Search.
// Printed as JSON lines, all in this one run:
//   - overhead (kernels, d 512, r 8, 4,096 tokens, k 2): the adapter
//     compute (the weighted gather kernel over the chosen experts) beside
//     the routing that chooses them — Arrow scoring every one of 256 experts
//     per token (PEFT's and mttl's way), retrieval of N candidates through an
//     embedded library's Search then per-token Arrow among them, and Arrow
//     per sequence (16 sequences of 256 tokens). Goal: routing <= 10% of the
//     adapter compute.
//   - scale: ten Fashion-MNIST experts (build-library) routed on their tasks
//     with no task ids, then the same after 9,990 more experts are stored
//     beside them (each a real expert with its input pixels permuted: an
//     expert for another permutation task, with its signatures): the oracle,
//     centroid and Arrow routers over the whole loaded library (the peers'
//     way: every expert in memory, every one scored per token) against
//     retrieve-then-route with 16 candidates per batch — accuracy, routing
//     accuracy, seconds, experts fetched.
//
//   library_bench [--out DIR] [--experts N] [--quick] [--threads N]
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <filesystem>
#include <numeric>

#include "adapters/adapter_file.h"
#include "bench/common.h"
#include "launch/base.h"
#include "launch/commands.h"
#include "launch/experts.h"
#include "launch/runs.h"
#include "routing/arrow.h"
#include "routing/retrieval.h"
#include "runtime/autograd/ops.h"
#include "runtime/common/error.h"
#include "runtime/common/rng.h"
#include "runtime/common/threads.h"
#include "runtime/io/fingerprint.h"
#include "store/adapter_io.h"
#include "store/library.h"
#include "tessera/library.pb.h"

using namespace tessera;
using namespace tessera::launch;
using bench::emit;
using bench::joined;
using bench::json;
using bench::Quiet;
using bench::seconds_since;
const std::vector<std::string>& kTasks = bench::ten_image_tasks();
namespace fs = std::filesystem;

namespace {

// The median seconds of `reps` runs of f (after one warm-up).
template <class F>
double median_seconds(int reps, F&& f) {
  f();
  std::vector<double> s;
  for (int i = 0; i < reps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    s.push_back(seconds_since(t0));
  }
  std::sort(s.begin(), s.end());
  return s[s.size() / 2];
}

Tensor randn(const Shape& shape, Rng& rng, float std) {
  Tensor t = Tensor::empty(shape);
  for (int64_t i = 0; i < t.numel(); ++i) t.data()[i] = rng.normal(0.0f, std);
  return t;
}

void overhead(const std::string& dir, int reps) {
  const int64_t d = 512, r = 8, N = 4096, E = 256, k = 2, seqs = 16;
  Rng rng(7);
  std::vector<adapters::LoraFactors> experts;
  Tensor A = Tensor::empty({E, r, d}), B = Tensor::empty({E, d, r}), P = Tensor::empty({E, d});
  for (int64_t e = 0; e < E; ++e) {
    adapters::LoraFactors f{randn({r, d}, rng, 0.05f), randn({d, r}, rng, 0.05f), 2.0f};
    std::copy(f.A.data(), f.A.data() + r * d, A.data() + e * r * d);
    std::copy(f.B.data(), f.B.data() + d * r, B.data() + e * d * r);
    const std::vector<float> p = routing::arrow_prototype(f);
    std::copy(p.begin(), p.end(), P.data() + e * d);
  }
  const std::vector<float> scales(static_cast<size_t>(E), 2.0f);
  // Tokens of 16 sequences, each near one expert's prototype: routing has
  // something to find.
  Tensor x = randn({N, d}, rng, 0.3f);
  for (int64_t s = 0; s < seqs; ++s)
    for (int64_t t = 0; t < N / seqs; ++t)
      for (int64_t i = 0; i < d; ++i)
        x.data()[(s * (N / seqs) + t) * d + i] += 3.0f * P.data()[(s * 13 % E) * d + i];
  const Tensor base_out = randn({N, d}, rng, 1.0f);
  routing::TopK routed = routing::arrow_route(x, P, k, 1.0f);
  const Tensor w = Tensor::from_vector(routed.weights, {N, k});
  const double gather = median_seconds(reps, [&] {
    ops::lora_gather(x, base_out, A, B, routed.ids, k, w, scales, ops::LoraMix::Output, false);
  });
  const double full = median_seconds(reps, [&] { routing::arrow_route(x, P, k, 1.0f); });
  // The same 256 prototypes stored as records of an embedded library: Search.
  fs::remove_all(dir);
  std::unique_ptr<store::Library> lib;
  store::Options so;
  so.create_if_missing = true;
  so.sync = false;
  store::Status st = store::Library::Open(so, dir, &lib);
  if (!st.ok()) throw Error(st.message());
  for (int64_t e = 0; e < E; ++e) {
    AdapterRecord rec;
    rec.set_name("expert-" + std::to_string(e));
    rec.set_kind("lora");
    Signature* s = rec.add_signatures();
    s->set_name("arrow/m");
    for (int64_t i = 0; i < d; ++i) s->add_vector(P.data()[e * d + i]);
    store::TensorData td{"m.lora_A.weight", "F32", {1}, std::string(4, '\0')};
    td.bytes[0] = static_cast<char>(e & 0xff);
    td.bytes[1] = static_cast<char>(e >> 8);
    st = lib->Put(rec, {td}, nullptr);
    if (!st.ok()) throw Error(st.message());
  }
  json j = {{"bench", "library_overhead"},
            {"d", d},
            {"r", r},
            {"tokens", N},
            {"experts", E},
            {"top_k", k},
            {"threads", num_threads()},
            {"gather_seconds", gather},
            {"arrow_all_per_token_seconds", full},
            {"arrow_all_per_token_overhead", full / gather}};
  for (int n : {8, 16, 32}) {
    // Per batch: the query, Search for q and −q, then Arrow among the n.
    const double s = median_seconds(reps, [&] {
      std::vector<float> q = routing::retrieval_query(x);
      std::vector<store::SearchHit> hits, neg;
      check_store(lib->Search("arrow/m", q, n, {}, &hits), "search");
      for (float& v : q) v = -v;
      check_store(lib->Search("arrow/m", q, n, {}, &neg), "search");
      Tensor sub = Tensor::empty({n, d});
      for (int i = 0; i < n; ++i) {
        const int64_t e = std::stoll(hits[static_cast<size_t>(i)].name.substr(7));
        std::copy(P.data() + e * d, P.data() + (e + 1) * d, sub.data() + i * d);
      }
      routing::arrow_route(x, sub, k, 1.0f);
    });
    j[str("retrieve_", n, "_per_token_seconds")] = s;
    j[str("retrieve_", n, "_per_token_overhead")] = s / gather;
  }
  const double per_seq = median_seconds(reps, [&] {
    Tensor p = Tensor::zeros({seqs, d});
    float* pp = p.data();
    const float* xp = x.data();
    const int64_t T = N / seqs;
    for (int64_t s = 0; s < seqs; ++s)
      for (int64_t t = 0; t < T; ++t)
        for (int64_t i = 0; i < d; ++i) pp[s * d + i] += xp[(s * T + t) * d + i] / T;
    routing::arrow_route(p, P, k, 1.0f);
  });
  j["arrow_all_per_sequence_seconds"] = per_seq;
  j["arrow_all_per_sequence_overhead"] = per_seq / gather;
  emit(j);
}

void emit_route(const RouteResult& r, int64_t experts, double seconds) {
  for (const auto& row : r.rows)
    emit({{"bench", "library_route"},
          {"library_experts", experts},
          {"router", row.router},
          {"mean_accuracy", row.mean},
          {"routing_accuracy", row.routing_acc},
          {"module_routing_accuracy", row.module_acc},
          {"eval_seconds", row.eval_seconds},
          {"score_seconds", row.score_seconds},
          {"retrieve_seconds", row.retrieve_seconds},
          {"retrievals", row.retrievals},
          {"experts_fetched", row.cache_misses},
          {"route_command_seconds", seconds}});
}

// n experts stored beside the library's ten: expert i is real expert i % 10
// with the columns of its first module's lora_A permuted (an expert for that
// permutation composed with its task), the centroid of that module permuted
// alike, its other centroids kept.
void add_distractors(const LibraryTarget& where, const std::string& base, int64_t n) {
  std::unique_ptr<store::Library> lib;
  store::Options so;
  so.create_if_missing = false;
  so.sync = false;  // a bench: no fsync per record
  const store::Status st = store::Library::Open(so, where.where, &lib);
  if (!st.ok()) throw Error(st.message());
  const std::string fp = io::base_fingerprint(base);
  std::vector<std::pair<AdapterRecord, adapters::AdapterFile>> real;
  for (const AdapterRecord& r : list_lora_records(*lib, fp)) {
    adapters::AdapterFile f;
    AdapterRecord rec;
    check_store(store::GetAdapter(*lib, r.id(), &f, &rec), r.name());
    real.push_back({rec, f});
  }
  Rng rng(2026);
  for (int64_t i = 0; i < n; ++i) {
    const auto& [rec, file] = real[static_cast<size_t>(i) % real.size()];
    std::vector<std::pair<std::string, adapters::LoraFactors>> mods = file.linear_factors();
    adapters::LoraFactors& f0 = mods[0].second;
    const int64_t in = f0.A.size(1), rank = f0.A.size(0);
    std::vector<int64_t> perm(static_cast<size_t>(in));
    std::iota(perm.begin(), perm.end(), 0);
    for (int64_t j = in - 1; j > 0; --j)
      std::swap(perm[j], perm[static_cast<int64_t>(rng.below(static_cast<uint64_t>(j + 1)))]);
    Tensor A = Tensor::empty({rank, in});
    for (int64_t q = 0; q < rank; ++q)
      for (int64_t c = 0; c < in; ++c) A.data()[q * in + c] = f0.A.data()[q * in + perm[c]];
    f0.A = A;
    const adapters::AdapterFile adapter =
        adapters::lora_factors_adapter(mods, file.conv1d, file.base_model, file.base_fingerprint);
    AdapterRecord out;
    out.set_name(str("distractor-", i));
    out.set_task(str("permute:composed=", i));
    for (const Signature& s : rec.signatures()) {
      if (s.name().rfind("centroid/", 0) != 0) continue;
      Signature* c = out.add_signatures();
      c->set_name(s.name());
      if (s.name() == "centroid/" + mods[0].first)
        for (int64_t j = 0; j < in; ++j) c->add_vector(s.vector(static_cast<int>(perm[j])));
      else
        *c->mutable_vector() = s.vector();
    }
    check_store(store::PutAdapter(*lib, adapter, out, nullptr, routing::arrow_signatures),
                str("storing distractor ", i));
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Routing among thousands of stored experts"};
  std::string out = "/tmp/library_bench";
  int64_t total = 10000;
  bool quick = false;
  int threads = 0;
  app.add_option("--out", out, "Work folder (wiped)");
  app.add_option("--experts", total, "Experts stored in the large library (>= 10)");
  app.add_flag("--quick", quick, "Fewer steps and experts (a smoke run, not the figures)");
  app.add_option("--threads", threads, "Threads (0: the cores)");
  CLI11_PARSE(app, argc, argv);
  try {
    if (total < 10) throw Error("--experts: at least the ten real ones");
    if (threads > 0) set_num_threads(threads);
    fs::remove_all(out);
    fs::create_directories(out);
    overhead(out + "/overhead_lib", quick ? 3 : 15);

    const std::string th = "threads=" + std::to_string(threads);
    auto t0 = std::chrono::steady_clock::now();
    PretrainOptions p;
    p.model = "mlp";
    p.quiet = true;
    p.overrides = {quick ? "epochs=0.3" : "epochs=2", th, "out_dir=" + out + "/base"};
    {
      Quiet q;
      run_pretrain(p);
    }
    const std::string base = out + "/base/checkpoint.safetensors";
    BuildLibraryOptions b;
    b.base = base;
    b.tasks = {joined(kTasks)};
    b.library.where = out + "/lib";
    b.out_dir = out + "/experts";
    b.overrides = {quick ? "epochs=0.1" : "epochs=0.5", th};
    {
      Quiet q;
      run_build_library(b);
    }
    emit({{"phase", "base and ten experts"}, {"seconds", seconds_since(t0)}});

    RouteOptions ro;
    ro.base = base;
    ro.library = b.library;
    ro.eval = joined(kTasks);
    ro.max_batches = quick ? 1 : 4;
    ro.overrides = {th};
    ro.routers = {"task", "centroid:top_k=1", "arrow:top_k=2", "r2t2:alpha=0.5",
                  "r2t2:alpha=0,neighbours=10"};
    t0 = std::chrono::steady_clock::now();
    RouteResult small;
    {
      Quiet q;
      small = run_route(ro);
    }
    emit_route(small, 10, seconds_since(t0));

    t0 = std::chrono::steady_clock::now();
    const int64_t extra = quick ? std::min<int64_t>(total, 200) - 10 : total - 10;
    add_distractors(b.library, base, extra);
    emit({{"phase", "store distractors"}, {"experts", extra}, {"seconds", seconds_since(t0)}});

    for (const std::vector<std::string>& routers :
         {std::vector<std::string>{"task", "centroid:top_k=1,candidates=16",
                                   "arrow:top_k=2,candidates=16,retrieve=centroid",
                                   "arrow:top_k=2,candidates=16"},
          std::vector<std::string>{"centroid:top_k=1", "arrow:top_k=2"}}) {
      ro.routers = routers;
      t0 = std::chrono::steady_clock::now();
      RouteResult big;
      {
        Quiet q;
        big = run_route(ro);
      }
      emit_route(big, 10 + extra, seconds_since(t0));
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "library_bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
