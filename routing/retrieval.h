// Library-scale routing: retrieve, then route. A library of thousands of
// experts is never loaded whole; per batch, the candidates are retrieved by
// a signature search (the store's exact cosine `Search`, embedded or over
// gRPC — launch/ supplies it: routing/ includes no store), their factors are
// fetched through a bounded cache keyed by content id, and the router (Arrow
// or centroids, routing/arrow.h, routing/routers.h) picks top_k of those N
// per token through the weighted gather kernel. No peer does this: PEFT's
// Arrow and mttl's routers hold every expert in memory and score all of them
// for every token.
//
// The retrieval query of a batch is the mean of its L2-normalised module
// inputs at the first routed module (in model order). Retrieval by
// centroid signatures ranks experts by cos(q, c_e) — the batch-level form of
// the centroid router's own logits. Retrieval by Arrow prototypes ranks by
// |cos(q, p_e)| (a prototype's sign is arbitrary: the search runs for q and
// for −q and keeps the N largest magnitudes). A batch mixing many tasks
// needs N at least the number of tasks in it; the bench measures the
// routing accuracy this costs against routing over the whole library.
#pragma once

#include <cstdint>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "adapters/merge.h"
#include "routing/router.h"
#include "routing/spec.h"

namespace tessera::routing {

// One expert as retrieval loads it: factors per module name and the
// signatures the router scores with ("arrow/<module>", "centroid/<module>").
struct CandidateExpert {
  std::string id;  // content id: the cache key
  std::map<std::string, adapters::LoraFactors> factors;
  std::map<std::string, std::vector<float>> signatures;
};

// A bounded LRU cache of experts by content id (ids never change meaning:
// they hash the content). `load` fetches a missing one (it may throw; the
// cache is left unchanged). capacity >= 1 experts.
class ExpertCache {
 public:
  using LoadFn = std::function<CandidateExpert(const std::string& id)>;
  ExpertCache(LoadFn load, size_t capacity);
  std::shared_ptr<const CandidateExpert> get(const std::string& id);
  int64_t hits() const { return hits_; }
  int64_t misses() const { return misses_; }
  size_t size() const { return map_.size(); }

 private:
  LoadFn load_;
  size_t capacity_;
  std::list<std::string> order_;  // most recently used first
  std::unordered_map<std::string, std::pair<std::shared_ptr<const CandidateExpert>,
                                            std::list<std::string>::iterator>>
      map_;
  int64_t hits_ = 0, misses_ = 0;
};

// The retrieval query of inputs x [N, in]: the mean of the L2-normalised
// rows (zero rows skipped). Error when x is not a matrix.
std::vector<float> retrieval_query(const Tensor& x);

// `search(signature, query, n)`: the content ids of the n stored experts
// whose signature `signature` is most cosine-similar to `query`, best first,
// with their scores (launch/ wraps LibraryApi::Search).
struct SearchResult {
  std::string id;
  float score = 0;
};
using SearchFn = std::function<std::vector<SearchResult>(const std::string& signature,
                                                         const std::vector<float>& query, int n)>;

// Retrieve-then-route over the modules `modules` (module names, in model
// order; `modules[0]` is where a batch's retrieval happens). `spec`: an
// Arrow or centroid router with spec.candidates = N >= top_k;
// spec.retrieve names the signature kind searched ("centroid" or "arrow").
// Each call `route(m, x)` for module m returns the TopK over the current
// candidates (ids index `candidates()`) and the candidates' bank for that
// module; module 0 retrieves anew. Errors naming the expert and module: a
// candidate that does not adapt a module, or lacks the signature the router
// scores with; modules called out of model order (module 0 first). An
// expert stored without the searched signature (`retrieve`/<modules[0]>) is
// never retrieved: launch/ stores Arrow prototypes with every expert, and
// centroids with those trained on a task (tessera centroids adds them).
class RetrievalRouter {
 public:
  RetrievalRouter(std::vector<std::string> modules, RouterSpec spec, SearchFn search,
                  ExpertCache* cache);
  using Routed = RoutedLora::Routed;
  Routed route(size_t module, const Tensor& x);
  // The current batch's candidates, best retrieved first.
  const std::vector<std::shared_ptr<const CandidateExpert>>& candidates() const {
    return candidates_;
  }
  // Seconds spent retrieving (query, search, cache) and scoring (signature
  // GEMM, top-k, softmax) since construction: the overhead routing adds to
  // the adapter compute.
  double retrieve_seconds() const { return retrieve_s_; }
  double score_seconds() const { return score_s_; }
  int64_t retrievals() const { return retrievals_; }

 private:
  void retrieve(const Tensor& x);
  std::vector<std::string> modules_;
  RouterSpec spec_;
  SearchFn search_;
  ExpertCache* cache_;
  std::vector<std::shared_ptr<const CandidateExpert>> candidates_;
  std::vector<std::string> bank_ids_;  // the candidates the banks below were built for
  std::vector<ExpertStack> banks_;     // per module, for bank_ids_
  bool ready_ = false;                 // the current batch's retrieval succeeded
  size_t next_ = 0;                    // the module expected next
  std::vector<Tensor> tables_;         // per module: [N, in] signatures scored against
  double retrieve_s_ = 0, score_s_ = 0;
  int64_t retrievals_ = 0;
};

}  // namespace tessera::routing
