// tessera route: the library's experts routed zero-shot on a mixed test
// stream whose inputs carry no task id (Arrow, hidden-state centroids,
// R2-T2, uniform; over the whole library or among candidates retrieved per
// batch), next to the task oracle and the base; per task, per module
// routing accuracy against the true task, each task's expert usage, the
// routing's cost, and heat maps of both (--png).
#include <CLI/CLI.hpp>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>

#include "adapters/adapter_file.h"
#include "launch/base.h"
#include "launch/commands.h"
#include "launch/config.h"
#include "launch/experts.h"
#include "launch/heatmap.h"
#include "launch/runs.h"
#include "routing/arrow.h"
#include "routing/r2t2.h"
#include "routing/retrieval.h"
#include "routing/router.h"
#include "routing/routers.h"
#include "routing/spec.h"
#include "runtime/common/error.h"
#include "runtime/io/fingerprint.h"
#include "runtime/train/trainer.h"
#include "store/adapter_io.h"
#include "store/library.h"
#include "tessera/library.pb.h"

namespace tessera::launch {

namespace fs = std::filesystem;

namespace {

using routing::RouterKind;

// A module's experts for one run: the gather's bank, Arrow prototypes and
// centroids [E, in].
struct ModuleBank {
  std::string name;
  routing::ExpertStack stack;
  Tensor prototypes, centroids;
};

// Routing statistics summed over calls, weighted by rows.
struct Tally {
  double correct = 0, mass = 0, rows_with_task = 0, entropy = 0, rows = 0;
  std::vector<double> load;
  void add(const routing::TopK& t, int64_t E, int32_t truth) {
    const int64_t M = t.k > 0 ? static_cast<int64_t>(t.ids.size()) / t.k : 0;
    const routing::RoutingStats s =
        routing::routing_stats(t, E, std::vector<int32_t>(static_cast<size_t>(M), truth));
    if (load.empty()) load.assign(static_cast<size_t>(E), 0.0);
    correct += s.accuracy * s.rows_with_task;
    mass += s.correct_mass * s.rows_with_task;
    rows_with_task += s.rows_with_task;
    entropy += s.entropy * M;
    rows += M;
    for (int64_t e = 0; e < E; ++e) load[e] += s.load[e] * M;
  }
};

}  // namespace

namespace {

// A library expert as the retrieval cache holds it.
routing::CandidateExpert candidate_of(store::LibraryApi& lib, const std::string& id) {
  LibraryExpert e = read_library_expert(lib, id);
  routing::CandidateExpert c;
  c.id = e.id;
  c.factors = std::move(e.factors);
  c.signatures = std::move(e.signatures);
  return c;
}

// t's ids mapped through `global` (local id -> library index; -1 kept).
routing::TopK to_global(const routing::TopK& t, const std::vector<int32_t>& global) {
  routing::TopK g = t;
  for (int32_t& id : g.ids)
    if (id >= 0) id = global[static_cast<size_t>(id)];
  return g;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// x [N, in] with each row scaled to unit length (zero rows kept).
Tensor unit_rows(const Tensor& x) {
  const int64_t N = x.size(0), in = x.size(1);
  Tensor u = Tensor::empty({N, in});
  const float* xp = x.data();
  float* up = u.data();
  for (int64_t n = 0; n < N; ++n) {
    double n2 = 0;
    for (int64_t i = 0; i < in; ++i) n2 += double(xp[n * in + i]) * xp[n * in + i];
    const double inv = n2 > 0 ? 1.0 / std::sqrt(n2) : 0.0;
    for (int64_t i = 0; i < in; ++i) up[n * in + i] = static_cast<float>(xp[n * in + i] * inv);
  }
  return u;
}

// R2-T2's reference set per module: up to spec.reference rows of each
// expert's task (examples, or a decoder's tokens, sampled evenly over up to
// spec.reference training examples spread over its split) routed by the
// centroid router over every expert, each row kept when its top expert is
// the task's own — the rows the router handles correctly — with its
// unit-length module input as the embedding and its dense routing vector.
// Departures, deliberate: the paper keeps the examples the model predicts
// correctly (route sees no per-example prediction, and routing is what
// re-routing corrects), and embeds the input once; here every module's own
// input is its embedding. A module's reference inputs come from a forward
// routed by the dense centroid mixture upstream, while at test time the
// upstream modules are R2-T2's own top-k: a small shift, not corrected.
std::vector<routing::ReferenceSet> r2t2_references(const routing::RouterSpec& spec,
                                                   const std::vector<ModuleBank>& banks,
                                                   const std::vector<LibraryExpert>& experts,
                                                   const RouteOptions& o, const BaseModel& base) {
  const int64_t E = static_cast<int64_t>(experts.size());
  std::vector<std::vector<float>> emb(banks.size()), routes(banks.size());
  for (int64_t e = 0; e < E; ++e) {
    if (experts[e].task.empty()) continue;
    const RunConfig cfg = adapter_run_config(o.base, {experts[e].task}, "", o.overrides);
    train::Trainer t(cfg);
    load_base_weights(t, base);
    const int64_t total = t.train_examples(), n_examples = std::min(total, spec.reference);
    // Every stride-th row of the forward: spread over all its examples.
    const int64_t stride = std::max<int64_t>(1, n_examples * t.rows_per_example() / spec.reference);
    std::vector<int64_t> kept(banks.size(), 0), seen(banks.size(), 0);
    std::vector<nn::Linear*> slots;
    for (size_t m = 0; m < banks.size(); ++m) {
      nn::Linear* l = nullptr;
      for (nn::Linear* c : t.linears())
        if (c->name() == banks[m].name) l = c;
      TESSERA_CHECK(l != nullptr, "module ", banks[m].name, " of task ", experts[e].task);
      auto record = [&, m, e](const Tensor& x) {
        const routing::TopK k = routing::centroid_route(x, banks[m].centroids, 0);
        const Tensor d = routing::dense_routes(k, E), u = unit_rows(x);
        const int64_t in = x.size(1);
        for (int64_t n = 0; n < x.size(0) && kept[m] < spec.reference; ++n) {
          if (seen[m]++ % stride != 0) continue;
          const float* r = d.data() + n * E;
          if (std::max_element(r, r + E) - r != e) continue;
          emb[m].insert(emb[m].end(), u.data() + n * in, u.data() + (n + 1) * in);
          routes[m].insert(routes[m].end(), r, r + E);
          ++kept[m];
        }
        return k;
      };
      l->set_adapter(std::make_shared<routing::RoutedLora>(banks[m].stack, record, spec.combine));
      slots.push_back(l);
    }
    std::vector<int64_t> idx;
    for (int64_t i = 0; i < n_examples; ++i) idx.push_back(i * total / n_examples);
    for (size_t at = 0; at < idx.size(); at += 256)
      t.forward_train(
          std::vector<int64_t>(idx.begin() + static_cast<int64_t>(at),
                               idx.begin() + static_cast<int64_t>(std::min(idx.size(), at + 256))));
    for (nn::Linear* l : slots) l->set_adapter(nullptr);
  }
  bool any_task = false;
  for (const LibraryExpert& e : experts) any_task = any_task || !e.task.empty();
  if (!any_task)
    throw Error(str("router '", spec.text,
                    "': no expert records the task it was trained on, so there are no "
                    "training examples to build R2-T2's reference set from"));
  std::vector<routing::ReferenceSet> out;
  for (size_t m = 0; m < banks.size(); ++m) {
    const int64_t R = static_cast<int64_t>(routes[m].size()) / E;
    if (R < spec.neighbours)
      throw Error(str("router '", spec.text, "': only ", R, " reference rows at ", banks[m].name,
                      " were routed to their own task's expert by the centroid router; lower "
                      "neighbours (",
                      spec.neighbours, ") or raise reference (", spec.reference, " per task)"));
    const int64_t in = static_cast<int64_t>(emb[m].size()) / R;
    out.push_back({Tensor::from_vector(emb[m], {R, in}), Tensor::from_vector(routes[m], {R, E})});
  }
  return out;
}

}  // namespace

RouteResult run_route(const RouteOptions& o) {
  if (o.base.empty()) throw Error("route: --base names the base checkpoint");
  for (const std::string* out : {&o.json_out, &o.png_out}) {  // before the run, not after it
    if (out->empty()) continue;
    const fs::path dir = fs::absolute(*out).parent_path();
    if (!fs::is_directory(dir))
      throw Error(str(out == &o.png_out ? "--png " : "--json ", *out, ": the folder ", dir.string(),
                      " does not exist"));
  }
  if (o.library.empty()) throw Error("route: --library names the library of experts");
  RouteResult res;
  res.tasks = split_tasks(o.eval);
  if (res.tasks.empty())
    throw Error("route: --eval names the tasks to evaluate on (TASK[;TASK...])");
  std::vector<routing::RouterSpec> routers;
  for (const std::string& r : o.routers) routers.push_back(routing::parse_router_spec(r));
  // Library-scale routers fetch the experts they retrieve; the others need
  // every expert in memory (the default comparison included).
  bool need_all = routers.empty(), scale = false;
  int64_t max_candidates = 0;
  for (const auto& r : routers) {
    scale = scale || r.candidates > 0;
    max_candidates = std::max(max_candidates, r.candidates);
    need_all =
        need_all || (r.candidates == 0 && r.kind != RouterKind::Task && r.kind != RouterKind::Base);
  }
  if (scale && !o.experts.empty())
    throw Error(
        "route: --experts names the experts to route among, but a router with candidates=N "
        "retrieves them from the whole library; drop one or the other");
  const BaseModel base = open_base(o.base, "--base");
  const std::string fingerprint = io::base_fingerprint(o.base);
  auto lib = open_library(o.library, false, true);
  const std::vector<LibraryExpert> experts =
      read_library_experts(*lib, fingerprint, o.experts, o.library.where, o.base, need_all);
  const int64_t E = static_cast<int64_t>(experts.size());
  for (const LibraryExpert& e : experts) res.experts.push_back(e.name);
  // Every stored version's content id -> the index of its expert (by name):
  // what a retrieved candidate counts as in the telemetry.
  std::map<std::string, int32_t> id_index;
  int64_t stale = 0;  // stored versions that are not their name's newest
  if (scale) {
    std::map<std::string, int32_t> by_name;
    for (int32_t e = 0; e < E; ++e)
      by_name[experts[e].name.substr(0, experts[e].name.rfind('@'))] = e;
    for (const AdapterRecord& r : list_lora_records(*lib, fingerprint)) {
      const bool newest = by_name.count(r.name()) && experts[by_name[r.name()]].id == r.id();
      id_index[r.id()] = newest ? by_name[r.name()] : -1;
      stale += !newest;
    }
  }
  routing::ExpertCache cache([&lib](const std::string& id) { return candidate_of(*lib, id); },
                             static_cast<size_t>(std::max<int64_t>(256, 4 * max_candidates)));
  auto factors_of = [&](int64_t e) {  // a copy: the cache may evict its entry
    if (!experts[e].factors.empty()) return experts[e].factors;
    return cache.get(experts[e].id)->factors;
  };
  if (routers.empty()) {
    // The default comparison, fitted to the library: Arrow with PEFT's
    // top_k 3 (or every expert, when there are fewer), and centroids when
    // every expert has them.
    routers = {routing::parse_router_spec("base"), routing::parse_router_spec("task"),
               routing::parse_router_spec(str("arrow:top_k=", std::min<int64_t>(3, E)))};
    bool centroids = true;
    for (const LibraryExpert& e : experts) {
      bool any = false;
      for (const auto& [name, v] : e.signatures) any = any || name.rfind("centroid/", 0) == 0;
      centroids = centroids && any;
    }
    if (centroids) routers.push_back(routing::parse_router_spec("centroid"));
  }
  for (const auto& r : routers)
    if ((r.kind == RouterKind::Arrow || r.kind == RouterKind::Centroid ||
         r.kind == RouterKind::R2T2) &&
        r.top_k > E)
      throw Error(str("router '", r.text, "': top_k = ", r.top_k, " but the library holds ", E,
                      " expert", E == 1 ? "" : "s", " for this base"));
  for (const std::string& t : res.tasks) {
    int idx = -1;
    for (int e = 0; e < E; ++e)
      if (experts[e].task == t) idx = e;
    res.task_expert.push_back(idx);
  }
  // The Trainer of each task (its test split); the banks are built once, on
  // the first, over the modules every expert adapts (library-scale: the
  // first expert's), in model order.
  std::vector<ModuleBank> banks;
  bool need_centroids = false;
  for (const auto& r : routers)
    need_centroids = need_centroids || (r.kind == RouterKind::Centroid && r.candidates == 0) ||
                     r.kind == RouterKind::R2T2;
  std::vector<std::vector<routing::ReferenceSet>> references(routers.size());  // R2-T2's
  std::vector<std::unique_ptr<routing::RetrievalRouter>> retrievers(routers.size());
  res.rows.resize(routers.size());
  std::vector<std::vector<Tally>> tallies(routers.size());  // [router][module], over all tasks
  for (size_t ti = 0; ti < res.tasks.size(); ++ti) {
    const RunConfig cfg = adapter_run_config(o.base, {res.tasks[ti]}, "", o.overrides);
    train::Trainer t(cfg);
    load_base_weights(t, base);
    res.classifier = t.kind() == "mlp";
    std::vector<nn::Linear*> linears;
    for (nn::Linear* l : t.linears()) {
      bool everyone = true;
      if (need_all)
        for (const LibraryExpert& e : experts) everyone = everyone && e.factors.count(l->name());
      else
        everyone = factors_of(0).count(l->name()) > 0;
      if (everyone) linears.push_back(l);
    }
    if (linears.empty())
      throw Error(
          "route: the experts share no adapted module of this base (their target modules "
          "differ, or they were trained on another architecture)");
    if (banks.empty()) {
      for (nn::Linear* l : linears) {
        ModuleBank b;
        b.name = l->name();
        res.modules.push_back(b.name);
        if (!need_all) {
          banks.push_back(std::move(b));
          continue;
        }
        std::vector<adapters::LoraFactors> fs;
        for (const LibraryExpert& e : experts) fs.push_back(e.factors.at(l->name()));
        b.stack = routing::stack_experts(fs);
        const int64_t in = l->in_features();
        b.prototypes = Tensor::empty({E, in});
        for (int64_t e = 0; e < E; ++e) {
          auto it = experts[e].signatures.find("arrow/" + b.name);
          const std::vector<float> p = it != experts[e].signatures.end()
                                           ? it->second
                                           : routing::arrow_prototype(fs[static_cast<size_t>(e)]);
          if (static_cast<int64_t>(p.size()) != in)
            throw Error(str("expert ", experts[e].name, ": its arrow/", b.name, " signature has ",
                            p.size(), " values; the module takes ", in));
          std::copy(p.begin(), p.end(), b.prototypes.data() + e * in);
        }
        if (need_centroids) {
          b.centroids = Tensor::empty({E, in});
          for (int64_t e = 0; e < E; ++e) {
            auto it = experts[e].signatures.find("centroid/" + b.name);
            if (it == experts[e].signatures.end())
              throw Error(str("the centroid and r2t2 routers: expert ", experts[e].name,
                              " has no centroid/", b.name,
                              " signature (experts trained by this tessera record them; compute "
                              "them for older ones with: tessera centroids --base ",
                              o.base, " --library ", o.library.where, ")"));
            if (static_cast<int64_t>(it->second.size()) != in)
              throw Error(str("expert ", experts[e].name, ": its centroid/", b.name,
                              " signature has ", it->second.size(), " values; the module takes ",
                              in));
            std::copy(it->second.begin(), it->second.end(), b.centroids.data() + e * in);
          }
        }
        banks.push_back(std::move(b));
      }
      for (auto& tl : tallies) tl.resize(banks.size());
      for (size_t ri = 0; ri < routers.size(); ++ri)
        if (routers[ri].kind == RouterKind::R2T2)
          references[ri] = r2t2_references(routers[ri], banks, experts, o, base);
      store::ListFilter filter;
      filter.base_fingerprint = fingerprint;
      filter.kind = "lora";
      for (size_t ri = 0; ri < routers.size(); ++ri) {
        if (routers[ri].candidates == 0) continue;
        // The newest version of each expert only, as routing over the loaded
        // library uses: asking for `stale` more hits leaves n newest ones.
        auto search = [&lib, &id_index, filter, stale](const std::string& sig,
                                                       const std::vector<float>& q, int n) {
          std::vector<store::SearchHit> hits;
          const int ask = static_cast<int>(std::min<int64_t>(1000, n + stale));
          check_store(lib->Search(sig, q, ask, filter, &hits),
                      str("searching the library by ", sig));
          std::vector<routing::SearchResult> out;
          for (const auto& h : hits) {
            auto it = id_index.find(h.id);
            if (it != id_index.end() && it->second >= 0 && static_cast<int>(out.size()) < n)
              out.push_back({h.id, h.score});
          }
          return out;
        };
        retrievers[ri] =
            std::make_unique<routing::RetrievalRouter>(res.modules, routers[ri], search, &cache);
      }
    }
    const int32_t truth = res.task_expert[ti];
    for (size_t ri = 0; ri < routers.size(); ++ri) {
      const routing::RouterSpec& r = routers[ri];
      RouteResult::Row& row = res.rows[ri];
      std::vector<Tally> task_tally(banks.size());
      routing::RetrievalRouter* rr = retrievers[ri].get();
      // The candidates' library indices, refreshed by module 0's retrieval.
      auto global = std::make_shared<std::vector<int32_t>>();
      for (size_t m = 0; m < banks.size(); ++m) {
        ModuleBank& b = banks[m];
        Tally* total = &tallies[ri][m];
        Tally* mine = &task_tally[m];
        if (rr != nullptr) {
          auto route = [rr, m, global, &id_index, total, mine, truth, E](const Tensor& x) {
            routing::RetrievalRouter::Routed k = rr->route(m, x);
            if (m == 0) {
              global->clear();
              for (const auto& c : rr->candidates()) {
                auto it = id_index.find(c->id);
                global->push_back(it != id_index.end() ? it->second : -1);
              }
            }
            const routing::TopK g = to_global(k.topk, *global);
            total->add(g, E, truth);
            mine->add(g, E, truth);
            return k;
          };
          linears[m]->set_adapter(std::make_shared<routing::RoutedLora>(route, r.combine));
          continue;
        }
        if (r.kind == RouterKind::Task || r.kind == RouterKind::Base) {
          // One expert's bank (the task's own; base: any, unused), so the
          // oracle needs no other expert in memory.
          const int64_t own = truth >= 0 ? truth : 0;
          const auto fs = factors_of(own);
          if (!fs.count(b.name))
            throw Error(str("route: expert ", experts[own].name, " does not adapt ", b.name,
                            ", which the library's first expert (", experts[0].name,
                            ") adapts; route experts of one set of target modules"));
          auto bank =
              std::make_shared<routing::ExpertStack>(routing::stack_experts({fs.at(b.name)}));
          const int32_t id = r.kind == RouterKind::Task && truth >= 0 ? 0 : -1;
          const std::vector<int32_t> global_of = {truth};
          auto route = [bank, id, global_of, total, mine, truth, E, &row](const Tensor& x) {
            const auto t0 = std::chrono::steady_clock::now();
            const int64_t N = x.numel() / x.size(x.ndim() - 1);
            routing::RoutedLora::Routed k;
            k.topk = routing::task_route(std::vector<int32_t>(static_cast<size_t>(N), id), 1);
            k.bank = bank.get();
            row.score_seconds += seconds_since(t0);
            const routing::TopK g = to_global(k.topk, global_of);
            total->add(g, E, truth);
            mine->add(g, E, truth);
            return k;
          };
          linears[m]->set_adapter(std::make_shared<routing::RoutedLora>(route, r.combine));
          continue;
        }
        const routing::ReferenceSet* ref = references[ri].empty() ? nullptr : &references[ri][m];
        const int64_t seq = t.rows_per_example();
        if (r.prefix && seq == 1)
          throw Error(str("router '", r.text,
                          "': context=prefix routes a token by its sequence so far; this base "
                          "sees one row per example (a classifier)"));
        auto route = [&r, &b, &row, ref, total, mine, truth, seq](const Tensor& x_in) {
          if (r.prefix && x_in.size(0) % seq != 0)
            throw Error(str("router '", r.text, "': context=prefix needs whole sequences of ", seq,
                            " tokens; the held-out split is shorter (raise data.holdout or "
                            "lower data.seq_len)"));
          const Tensor x = r.prefix ? routing::prefix_mean(x_in, seq) : x_in;
          const auto t0 = std::chrono::steady_clock::now();
          const int64_t N = x.numel() / x.size(x.ndim() - 1);
          const int64_t E = b.stack.experts();
          routing::TopK k;
          switch (r.kind) {
            case RouterKind::Arrow: {
              const float T =
                  r.sqrt_temperature ? std::sqrt(static_cast<float>(x.size(1))) : r.temperature;
              k = routing::arrow_route(x, b.prototypes, r.top_k, T);
              break;
            }
            case RouterKind::Centroid:
              k = routing::centroid_route(x, b.centroids, r.top_k);
              break;
            case RouterKind::Uniform:
              k = routing::uniform_route(N, E);
              break;
            case RouterKind::R2T2: {
              routing::R2T2Options ro;
              ro.k = r.neighbours;
              ro.alpha = r.alpha;
              ro.bandwidth = r.bandwidth;
              const Tensor dense =
                  routing::dense_routes(routing::centroid_route(x, b.centroids, 0), E);
              k = routing::top_k_renormalized(
                  routing::r2t2_kernel_regression(unit_rows(x), dense, *ref, ro), r.top_k);
              break;
            }
            case RouterKind::Task:
            case RouterKind::Base:
              TESSERA_CHECK(false, "task and base route through their own bank");
          }
          row.score_seconds += seconds_since(t0);
          total->add(k, E, truth);
          mine->add(k, E, truth);
          return k;
        };
        linears[m]->set_adapter(std::make_shared<routing::RoutedLora>(b.stack, route, r.combine));
      }
      const double retrieve0 = rr ? rr->retrieve_seconds() : 0,
                   score0 = rr ? rr->score_seconds() : 0;
      const int64_t misses0 = cache.misses();
      const auto t0 = std::chrono::steady_clock::now();
      const train::EvalResult ev = t.evaluate(o.max_batches);
      row.eval_seconds += seconds_since(t0);
      if (rr) {
        row.retrieve_seconds += rr->retrieve_seconds() - retrieve0;
        row.score_seconds += rr->score_seconds() - score0;
        row.retrievals = rr->retrievals();
        row.cache_misses += cache.misses() - misses0;
      }
      for (nn::Linear* l : linears) l->set_adapter(nullptr);
      row.router = r.label();
      row.score.push_back(res.classifier ? ev.accuracy : ev.bits_per_token);
      std::vector<double> usage(static_cast<size_t>(E), 0.0);
      for (const Tally& tl : task_tally)
        for (int64_t e = 0; e < E && !tl.load.empty(); ++e)
          usage[e] += tl.load[e] / std::max(1.0, tl.rows) / static_cast<double>(banks.size());
      row.usage.push_back(usage);
      std::vector<double> acc;
      for (const Tally& tl : task_tally)
        acc.push_back(tl.rows_with_task > 0 ? tl.correct / tl.rows_with_task : -1.0);
      row.task_module_acc.push_back(acc);
    }
  }
  for (size_t ri = 0; ri < routers.size(); ++ri) {
    RouteResult::Row& row = res.rows[ri];
    for (double s : row.score) row.mean += s / static_cast<double>(row.score.size());
    double acc = 0, mass = 0, with = 0, ent = 0, rows = 0;
    for (const Tally& tl : tallies[ri]) {
      row.module_acc.push_back(tl.rows_with_task > 0 ? tl.correct / tl.rows_with_task : -1);
      acc += tl.correct;
      mass += tl.mass;
      with += tl.rows_with_task;
      ent += tl.entropy;
      rows += tl.rows;
    }
    if (with > 0) {
      row.routing_acc = acc / with;
      row.correct_mass = mass / with;
    }
    row.entropy = rows > 0 ? ent / rows : 0;
  }
  return res;
}

namespace {

std::string score_text(const RouteResult& r, double v) {
  return r.classifier ? str(std::round(v * 10000) / 100, "%") : str(std::round(v * 1000) / 1000);
}

}  // namespace

void print_route(const RouteResult& r, bool details) {
  const char* metric = r.classifier ? "accuracy" : "bits per token (per byte on text: tasks)";
  std::printf(
      "\n%d experts over %zu modules; %s per task on its test split (no task ids given "
      "to the routers)\n\n",
      static_cast<int>(r.experts.size()), r.modules.size(), metric);
  std::printf("%-46s %9s", "router", "mean");
  for (const auto& t : r.tasks) std::printf(" %16.16s", t.c_str());
  std::printf(" %9s %8s %8s\n", "routing", "on true", "entropy");
  for (const auto& row : r.rows) {
    std::printf("%-46s %9s", row.router.c_str(), score_text(r, row.mean).c_str());
    for (double s : row.score) std::printf(" %16s", score_text(r, s).c_str());
    if (row.routing_acc >= 0)
      std::printf(" %8.1f%% %7.1f%% %8.3f\n", row.routing_acc * 100, row.correct_mass * 100,
                  row.entropy);
    else
      std::printf(" %9s %8s %8.3f\n", "-", "-", row.entropy);
  }
  if (!details) return;
  std::printf("\nrouting accuracy per module (share of rows whose top expert is their task's):\n");
  std::printf("%-34s", "module");
  for (size_t i = 0; i < r.rows.size(); ++i) std::printf(" %9s", str("#", i + 1).c_str());
  std::printf("\n");
  for (size_t m = 0; m < r.modules.size(); ++m) {
    std::printf("%-34.34s", r.modules[m].c_str());
    for (const auto& row : r.rows)
      std::printf(" %9s", row.module_acc[m] >= 0
                              ? str(std::round(row.module_acc[m] * 1000) / 10, "%").c_str()
                              : "-");
    std::printf("\n");
  }
  std::printf("(#k is the k-th router above)\n\nexperts: ");
  for (size_t e = 0; e < r.experts.size() && e < 40; ++e)
    std::printf("%s[%zu] %s", e ? ", " : "", e, r.experts[e].c_str());
  if (r.experts.size() > 40) std::printf(", ... (%zu in all; --json lists them)", r.experts.size());
  std::printf("\n");
  for (const auto& row : r.rows) {
    if (row.routing_acc < 0 && row.router.rfind("base", 0) == 0) continue;
    std::printf("\nexpert usage, %s (share of routing weight per task):\n", row.router.c_str());
    for (size_t t = 0; t < r.tasks.size(); ++t) {
      std::printf("  %-24.24s", r.tasks[t].c_str());
      if (row.usage[t].size() <= 16) {
        for (double u : row.usage[t]) std::printf(" %5.1f%%", u * 100);
      } else {  // a large library: the five most used
        std::vector<size_t> order(row.usage[t].size());
        for (size_t e = 0; e < order.size(); ++e) order[e] = e;
        std::partial_sort(order.begin(), order.begin() + 5, order.end(),
                          [&](size_t a, size_t b) { return row.usage[t][a] > row.usage[t][b]; });
        for (size_t j = 0; j < 5 && row.usage[t][order[j]] > 0; ++j)
          std::printf(" [%zu] %.1f%%", order[j], row.usage[t][order[j]] * 100);
      }
      std::printf("\n");
    }
  }
  std::printf("\nrouting cost (seconds over all tasks):\n");
  for (const auto& row : r.rows) {
    std::printf("  %-46s eval %8.3f  scoring %8.3f", row.router.c_str(), row.eval_seconds,
                row.score_seconds);
    if (row.retrievals > 0)
      std::printf("  retrieval %8.3f (%lld searches, %lld expert%s fetched)", row.retrieve_seconds,
                  static_cast<long long>(row.retrievals), static_cast<long long>(row.cache_misses),
                  row.cache_misses == 1 ? "" : "s");
    std::printf("\n");
  }
}

void write_route_png(const RouteResult& r, const std::string& path) {
  std::vector<HeatPanel> panels;
  const size_t E = r.experts.size();
  for (const auto& row : r.rows) {
    if (row.routing_acc < 0 && row.router.rfind("base", 0) == 0) continue;
    // The columns: every expert, or the 40 with the most weight over all tasks.
    std::vector<size_t> cols(E);
    for (size_t e = 0; e < E; ++e) cols[e] = e;
    if (E > 40) {
      std::vector<double> total(E, 0.0);
      for (const auto& u : row.usage)
        for (size_t e = 0; e < E; ++e) total[e] += u[e];
      std::partial_sort(cols.begin(), cols.begin() + 40, cols.end(),
                        [&](size_t a, size_t b) { return total[a] > total[b]; });
      cols.resize(40);
      while (cols.size() > 1 && total[cols.back()] <= 0) cols.pop_back();  // unused: left out
    }
    HeatPanel p;
    p.title = str("expert usage (% of routing weight), ", row.router,
                  E > 40 ? str(": the most used of ", E) : std::string());
    p.rows = r.tasks;
    for (size_t e : cols) p.cols.push_back(str("[", e, "] ", r.experts[e]));
    for (const auto& u : row.usage) {
      std::vector<double> v;
      for (size_t e : cols) v.push_back(u[e]);
      p.value.push_back(v);
    }
    panels.push_back(std::move(p));
  }
  HeatPanel acc;
  acc.title = "routing accuracy per module (% of rows whose top expert is their task's)";
  acc.cols = r.modules;
  for (const auto& row : r.rows) {
    acc.rows.push_back(row.router);
    acc.value.push_back(row.module_acc);
  }
  panels.push_back(std::move(acc));
  write_heatmap_png(path, panels);
}

namespace {

nlohmann::json route_json(const RouteResult& r) {
  nlohmann::json j;
  j["tasks"] = r.tasks;
  j["experts"] = r.experts;
  j["modules"] = r.modules;
  j["task_expert"] = r.task_expert;
  j["metric"] = r.classifier ? "accuracy" : "bits_per_token";
  for (const auto& row : r.rows)
    j["routers"].push_back({{"router", row.router},
                            {"score", row.score},
                            {"mean", row.mean},
                            {"module_routing_accuracy", row.module_acc},
                            {"routing_accuracy", row.routing_acc},
                            {"correct_mass", row.correct_mass},
                            {"entropy", row.entropy},
                            {"usage", row.usage},
                            {"task_module_routing_accuracy", row.task_module_acc},
                            {"eval_seconds", row.eval_seconds},
                            {"score_seconds", row.score_seconds},
                            {"retrieve_seconds", row.retrieve_seconds},
                            {"retrievals", row.retrievals},
                            {"experts_fetched", row.cache_misses}});
  return j;
}

}  // namespace

Command add_route_command(CLI::App& app) {
  auto o = std::make_shared<RouteOptions>();
  auto* c = app.add_subcommand(
      "route",
      "Route a library's experts on mixed tasks with no task ids (Arrow, centroids, "
      "uniform) beside the task oracle and the base");
  c->add_option("--base", o->base, "Base checkpoint or Hugging Face folder")->required();
  c->add_option("--library", o->library.where, "Library folder or grpc://HOST:PORT")->required();
  c->add_option("--token-file", o->library.token_file, "grpc://: the service's bearer token");
  c->add_option("--tls-ca", o->library.tls_ca, "grpc://: PEM roots to trust (TLS)");
  c->add_option("--router", o->routers,
                "arrow[:top_k=K,temperature=T|sqrt,mode=merge-after|merge-before], "
                "centroid[:top_k=K,mode=M], r2t2[:top_k=K,neighbours=N,alpha=A,bandwidth=H,"
                "reference=R,mode=M], uniform[:mode=M], task, base; repeat to compare; "
                "context=prefix on arrow or centroid scores a decoder's token by its sequence's "
                "mean so far; "
                "candidates=N[,retrieve=centroid|arrow] on arrow or centroid routes among the N "
                "experts a signature search retrieves per batch (libraries too large to load) "
                "(default: base, task, arrow with top_k up to 3, and centroid when the experts "
                "have centroids)")
      ->allow_extra_args(false);
  c->add_option("--eval", o->eval, "Tasks to evaluate on: TASK[;TASK...]")->required();
  c->add_option("--experts", o->experts, "Route among these experts only (names)")
      ->allow_extra_args(false);
  c->add_option("--max-batches", o->max_batches, "Per task, at most this many test batches");
  c->add_option("--json", o->json_out, "Also write the results as JSON to this file");
  c->add_option("--png", o->png_out,
                "Also draw heat maps (expert usage per task for each router, routing accuracy "
                "per module) to this PNG file");
  c->add_option("overrides", o->overrides, "key=value config overrides (data.dir=...)");
  return {c, [o] {
            const RouteResult r = run_route(*o);
            print_route(r, true);
            if (!o->json_out.empty()) {
              std::ofstream f(o->json_out);
              f << route_json(r).dump(1) << "\n";
              if (!f) throw Error(str("--json: cannot write ", o->json_out));
            }
            if (!o->png_out.empty()) write_route_png(r, o->png_out);
            return 0;
          }};
}

}  // namespace tessera::launch
