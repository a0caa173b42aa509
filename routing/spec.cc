#include "routing/spec.h"

#include <cmath>
#include <sstream>
#include <stdexcept>

#include "runtime/common/error.h"

namespace tessera::routing {

const NameTable<RouterKind>& router_kind_names() {
  static const NameTable<RouterKind> t = {
      {RouterKind::Arrow, "arrow"}, {RouterKind::Centroid, "centroid"},
      {RouterKind::Task, "task"},   {RouterKind::Uniform, "uniform"},
      {RouterKind::Base, "base"},   {RouterKind::R2T2, "r2t2"}};
  return t;
}

std::string RouterSpec::label() const {
  switch (kind) {
    case RouterKind::Arrow:
      return str("arrow top_k=", top_k,
                 sqrt_temperature ? std::string(" T=sqrt") : str(" T=", temperature), " ",
                 combine_names().name(combine), retrieval_label());
    case RouterKind::Centroid:
      return str("centroid top_k=", top_k == 0 ? std::string("all") : std::to_string(top_k), " ",
                 combine_names().name(combine), retrieval_label());
    case RouterKind::Uniform:
      return str("uniform ", combine_names().name(combine));
    case RouterKind::R2T2:
      return str("r2t2 top_k=", top_k, " neighbours=", neighbours, " alpha=", alpha,
                 bandwidth > 0 ? str(" h=", bandwidth) : std::string(), " ref=", reference, " ",
                 combine_names().name(combine));
    case RouterKind::Task:
      return "task (oracle)";
    case RouterKind::Base:
      return "base (no expert)";
  }
  return text;
}

std::string RouterSpec::retrieval_label() const {
  return candidates > 0 ? str(" of ", candidates, " by ", retrieve)
         : prefix       ? std::string(" prefix")
                        : std::string();
}

std::vector<std::pair<std::string, std::string>> spec_options(const std::string& spec,
                                                              const std::string& what) {
  std::vector<std::pair<std::string, std::string>> out;
  const size_t colon = spec.find(':');
  if (colon == std::string::npos) return out;
  std::stringstream ss(spec.substr(colon + 1));
  std::string kv;
  while (std::getline(ss, kv, ',')) {
    const size_t eq = kv.find('=');
    if (eq == std::string::npos || eq == 0) throw Error(str(what, ": '", kv, "' is not key=value"));
    out.push_back({kv.substr(0, eq), kv.substr(eq + 1)});
  }
  return out;
}

double spec_number(const std::string& what, const std::string& key, const std::string& value,
                   double lo, double hi, bool whole) {
  try {
    size_t pos = 0;
    const double d = std::stod(value, &pos);
    if (pos != value.size() || !(d >= lo && d <= hi) || (whole && d != std::floor(d)))
      throw std::invalid_argument(value);
    return d;
  } catch (const std::logic_error&) {
    throw Error(str(what, ": ", key, "=", value, " (expected a ", whole ? "whole " : "",
                    "number from ", lo, " to ", hi, ")"));
  }
}

RouterSpec parse_router_spec(const std::string& spec) {
  RouterSpec r;
  r.text = spec;
  const size_t colon = spec.find(':');
  r.kind = router_kind_names().parse(spec.substr(0, colon), str("router '", spec, "': kind"));
  if (r.kind == RouterKind::Centroid) r.top_k = 0;
  if (r.kind == RouterKind::R2T2) r.top_k = 1;
  const std::string what = str("router '", spec, "'");
  for (const auto& [key, value] : spec_options(spec, what)) {
    const bool takes_candidates = r.kind == RouterKind::Arrow || r.kind == RouterKind::Centroid;
    const bool takes_k = takes_candidates || r.kind == RouterKind::R2T2;
    const bool takes_mode = takes_k || r.kind == RouterKind::Uniform;
    const bool r2t2 = r.kind == RouterKind::R2T2;
    if (key == "top_k" && takes_k) {
      r.top_k = static_cast<int64_t>(
          spec_number(what, key, value, r.kind == RouterKind::Centroid ? 0 : 1, 1e6, true));
    } else if (key == "temperature" && r.kind == RouterKind::Arrow) {
      if (value == "sqrt") {
        r.sqrt_temperature = true;
      } else {
        r.temperature = static_cast<float>(spec_number(what, key, value, 0, 1e6, false));
        if (!(r.temperature > 0))
          throw Error(str("router '", spec, "': temperature=", value,
                          " (expected a number above 0, or sqrt for mttl's √in)"));
      }
    } else if (key == "neighbours" && r2t2) {
      r.neighbours = static_cast<int64_t>(spec_number(what, key, value, 1, 1e4, true));
    } else if (key == "alpha" && r2t2) {
      r.alpha = static_cast<float>(spec_number(what, key, value, 0, 1, false));
    } else if (key == "bandwidth" && r2t2) {
      r.bandwidth = static_cast<float>(spec_number(what, key, value, 0, 1e6, false));
    } else if (key == "reference" && r2t2) {
      r.reference = static_cast<int64_t>(spec_number(what, key, value, 1, 1e6, true));
    } else if (key == "context" && takes_candidates) {
      if (value != "token" && value != "prefix")
        throw Error(str("router '", spec, "': context=", value,
                        " (expected token, or prefix: the sequence's mean so far)"));
      r.prefix = value == "prefix";
    } else if (key == "candidates" && takes_candidates) {
      r.candidates = static_cast<int64_t>(spec_number(what, key, value, 1, 1000, true));
    } else if (key == "retrieve" && takes_candidates) {
      if (value != "centroid" && value != "arrow")
        throw Error(str("router '", spec, "': retrieve=", value,
                        " (expected centroid or arrow: the signatures searched)"));
      r.retrieve = value;
    } else if (key == "mode" && takes_mode) {
      r.combine = combine_names().parse(value, str("router '", spec, "' mode"));
    } else {
      throw Error(str(
          "router '", spec, "': ", router_kind_names().name(r.kind), " takes no '", key, "' (",
          r.kind == RouterKind::Arrow ? "top_k, temperature, mode, context, candidates, retrieve"
          : r.kind == RouterKind::Centroid ? "top_k, mode, context, candidates, retrieve"
          : r.kind == RouterKind::R2T2     ? "top_k, neighbours, alpha, bandwidth, reference, mode"
          : r.kind == RouterKind::Uniform  ? "mode"
                                           : "no options",
          ")"));
    }
  }
  if (r.candidates > 0 && r.prefix)
    throw Error(str("router '", spec,
                    "': context=prefix routes among every expert; it does not combine with "
                    "candidates=N yet"));
  if (r.candidates > 0) {
    if (r.retrieve.empty()) r.retrieve = r.kind == RouterKind::Arrow ? "arrow" : "centroid";
    if (r.kind == RouterKind::Arrow && r.top_k > r.candidates)
      throw Error(str("router '", spec, "': top_k = ", r.top_k, " but candidates = ", r.candidates,
                      " (the router picks its top_k among the candidates retrieved)"));
    if (r.kind == RouterKind::Centroid && r.top_k > r.candidates)
      throw Error(str("router '", spec, "': top_k = ", r.top_k, " but candidates = ", r.candidates,
                      " (the router picks its top_k among the candidates retrieved)"));
  } else if (!r.retrieve.empty()) {
    throw Error(str("router '", spec, "': retrieve=", r.retrieve,
                    " needs candidates=N (how many experts to retrieve per batch)"));
  }
  return r;
}

}  // namespace tessera::routing
