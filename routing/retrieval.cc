#include "routing/retrieval.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "routing/arrow.h"
#include "routing/routers.h"
#include "runtime/common/error.h"
#include "runtime/kernels/cpu/matmul.h"

namespace tessera::routing {

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

ExpertCache::ExpertCache(LoadFn load, size_t capacity)
    : load_(std::move(load)), capacity_(capacity) {
  if (capacity_ < 1) throw Error("expert cache: capacity must be at least one expert");
}

std::shared_ptr<const CandidateExpert> ExpertCache::get(const std::string& id) {
  auto it = map_.find(id);
  if (it != map_.end()) {
    ++hits_;
    order_.splice(order_.begin(), order_, it->second.second);
    return it->second.first;
  }
  ++misses_;
  auto e = std::make_shared<const CandidateExpert>(load_(id));
  if (map_.size() >= capacity_) {
    map_.erase(order_.back());
    order_.pop_back();
  }
  order_.push_front(id);
  map_.emplace(id, std::make_pair(e, order_.begin()));
  return e;
}

std::vector<float> retrieval_query(const Tensor& x) {
  if (x.ndim() != 2) throw Error("retrieval query: expected module inputs [tokens, in]");
  const int64_t N = x.size(0), in = x.size(1);
  // q = xᵀ v with v_n = 1 / (N ‖x_n‖) (0 for a zero row): one pass for the
  // norms, one GEMV.
  std::vector<float> v(static_cast<size_t>(N)), q(static_cast<size_t>(in), 0.0f);
  const float* xp = x.data();
#pragma omp parallel for schedule(static) if (N * in > (1 << 16))
  for (int64_t n = 0; n < N; ++n) {
    const float* row = xp + n * in;
    double n2 = 0;
    for (int64_t i = 0; i < in; ++i) n2 += static_cast<double>(row[i]) * row[i];
    v[n] = n2 > 0 ? static_cast<float>(1.0 / (std::sqrt(n2) * static_cast<double>(N))) : 0.0f;
  }
  if (N > 0 && in > 0)
    kernels::cpu::gemm(true, false, in, 1, N, 1.0f, xp, in, v.data(), 1, 0.0f, q.data(), 1);
  return q;
}

RetrievalRouter::RetrievalRouter(std::vector<std::string> modules, RouterSpec spec, SearchFn search,
                                 ExpertCache* cache)
    : modules_(std::move(modules)),
      spec_(std::move(spec)),
      search_(std::move(search)),
      cache_(cache) {
  if (modules_.empty()) throw Error("library-scale routing: no modules to route");
  if (spec_.kind != RouterKind::Arrow && spec_.kind != RouterKind::Centroid)
    throw Error(str("router '", spec_.text, "': only arrow and centroid routers retrieve"));
  if (spec_.candidates < 1 || (spec_.retrieve != "arrow" && spec_.retrieve != "centroid"))
    throw Error(str("router '", spec_.text, "': library-scale routing needs candidates=N"));
  TESSERA_CHECK(cache_ != nullptr);
}

void RetrievalRouter::retrieve(const Tensor& x) {
  ready_ = false;
  const auto t0 = std::chrono::steady_clock::now();
  const std::vector<float> q = retrieval_query(x);
  const std::string sig = spec_.retrieve + "/" + modules_[0];
  const int n = static_cast<int>(spec_.candidates);
  std::vector<SearchResult> hits = search_(sig, q, n);
  if (spec_.retrieve == "arrow") {
    // A prototype's sign is arbitrary: rank by |cos|, the union of the best
    // for q and for −q.
    std::vector<float> neg(q.size());
    for (size_t i = 0; i < q.size(); ++i) neg[i] = -q[i];
    for (SearchResult& h : search_(sig, neg, n)) hits.push_back(h);
    for (SearchResult& h : hits) h.score = std::abs(h.score);
    std::stable_sort(hits.begin(), hits.end(), [](const SearchResult& a, const SearchResult& b) {
      return a.score != b.score ? a.score > b.score : a.id < b.id;
    });
    std::vector<SearchResult> unique;
    for (const SearchResult& h : hits) {
      bool seen = false;
      for (const SearchResult& u : unique) seen = seen || u.id == h.id;
      if (!seen && static_cast<int>(unique.size()) < n) unique.push_back(h);
    }
    hits = std::move(unique);
  }
  if (hits.empty() || static_cast<int64_t>(hits.size()) < spec_.top_k)
    throw Error(str("router '", spec_.text, "': the search for ", sig, " found ", hits.size(),
                    " expert", hits.size() == 1 ? "" : "s", "; top_k = ", spec_.top_k));
  // Built aside and swapped in whole: an error leaves the banks as they
  // were, and routes nothing until a retrieval succeeds.
  std::vector<std::shared_ptr<const CandidateExpert>> candidates;
  std::vector<std::string> ids;
  for (const SearchResult& h : hits) {
    candidates.push_back(cache_->get(h.id));
    ids.push_back(h.id);
  }
  ++retrievals_;
  candidates_ = std::move(candidates);
  if (ids != bank_ids_) {
    std::vector<ExpertStack> banks;
    std::vector<Tensor> tables;
    bank_ids_.clear();
    const int64_t N = static_cast<int64_t>(candidates_.size());
    const std::string kind = spec_.kind == RouterKind::Arrow ? "arrow/" : "centroid/";
    for (const std::string& m : modules_) {
      std::vector<adapters::LoraFactors> fs;
      for (const auto& c : candidates_) {
        auto f = c->factors.find(m);
        if (f == c->factors.end())
          throw Error(str("library-scale routing: expert ", c->id.substr(0, 16),
                          "… does not adapt ", m, ", which the router routes"));
        fs.push_back(f->second);
      }
      banks.push_back(stack_experts(fs));
      const int64_t in = fs[0].A.size(1);
      Tensor table = Tensor::empty({N, in});
      for (int64_t e = 0; e < N; ++e) {
        const CandidateExpert& c = *candidates_[static_cast<size_t>(e)];
        auto s = c.signatures.find(kind + m);
        std::vector<float> v;
        if (s != c.signatures.end())
          v = s->second;
        else if (spec_.kind == RouterKind::Arrow)
          v = arrow_prototype(fs[static_cast<size_t>(e)]);
        else
          throw Error(str("router '", spec_.text, "': expert ", c.id.substr(0, 16),
                          "… has no centroid/", m, " signature"));
        if (static_cast<int64_t>(v.size()) != in)
          throw Error(str("expert ", c.id.substr(0, 16), "…: its ", kind, m, " signature has ",
                          v.size(), " values; the module takes ", in));
        std::copy(v.begin(), v.end(), table.data() + e * in);
      }
      tables.push_back(std::move(table));
    }
    tables_ = std::move(tables);
    banks_ = std::move(banks);
    bank_ids_ = std::move(ids);
  }
  ready_ = true;
  retrieve_s_ += seconds_since(t0);
}

RetrievalRouter::Routed RetrievalRouter::route(size_t module, const Tensor& x) {
  TESSERA_CHECK(module < modules_.size());
  if (module == 0) {
    next_ = 0;
    retrieve(x);
  }
  // Modules run in model order, module 0 first in every forward: a batch's
  // candidates are never another batch's.
  if (!ready_ || module != next_)
    throw Error(str(
        "library-scale routing: module ", modules_[module],
        !ready_ ? " ran with no successful retrieval at " : " ran out of model order; expected ",
        !ready_ ? modules_[0] : modules_[next_],
        " (a batch's candidates are retrieved at the first module)"));
  next_ = (module + 1) % modules_.size();
  const auto t0 = std::chrono::steady_clock::now();
  Routed r;
  if (spec_.kind == RouterKind::Arrow) {
    const float T =
        spec_.sqrt_temperature ? std::sqrt(static_cast<float>(x.size(1))) : spec_.temperature;
    r.topk = arrow_route(x, tables_[module], spec_.top_k, T);
  } else {
    r.topk = centroid_route(x, tables_[module], spec_.top_k);
  }
  r.bank = &banks_[module];
  score_s_ += seconds_since(t0);
  return r;
}

}  // namespace tessera::routing
