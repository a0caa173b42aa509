#include "adapters/spec.h"

#include <sstream>
#include <stdexcept>

#include "adapters/adapter_file.h"
#include "runtime/common/error.h"

namespace tessera::adapters {

AdapterArgs parse_adapter_spec(const std::string& spec) {
  AdapterArgs a;
  AdapterSpec& s = a.spec;
  const size_t colon = spec.find(':');
  try {
    s.kind = parse_kind(spec.substr(0, colon));
  } catch (const Error& e) {
    throw Error(str("adapter '", spec, "': ", e.what()));
  }
  const bool bottleneck = s.kind == Kind::Bottleneck;
  if (bottleneck) {
    s.lora.defaults.r = 16;  // bottleneck width
    a.targets = placement_targets("houlsby");
  }
  if (s.kind == Kind::Vera) s.lora.defaults.r = 64;  // VeRA's ranks are larger (PEFT: 256)
  if (colon == std::string::npos) return a;
  auto split = [](const std::string& v) {
    std::vector<std::string> out;
    std::stringstream ts(v);
    std::string t;
    while (std::getline(ts, t, '|'))
      if (!t.empty()) out.push_back(t);
    if (out.empty()) throw std::invalid_argument(v);
    return out;
  };
  auto boolean = [](const std::string& v) {
    if (v != "true" && v != "false") throw std::invalid_argument(v);
    return v == "true";
  };
  std::stringstream ss(spec.substr(colon + 1));
  std::string kv;
  bool explicit_targets = false;
  while (std::getline(ss, kv, ',')) {
    const size_t eq = kv.find('=');
    if (eq == std::string::npos)
      throw Error(str("adapter '", spec, "': '", kv, "' is not key=value"));
    const std::string k = kv.substr(0, eq), v = kv.substr(eq + 1);
    try {
      size_t pos = v.size();
      if (k == "r") {
        s.lora.defaults.r = std::stoll(v, &pos);
        if (s.lora.defaults.r < 1) throw std::out_of_range(v);
      } else if (k == "alpha") {
        s.lora.defaults.alpha = std::stof(v, &pos);
      } else if (k == "rslora") {
        s.lora.defaults.rslora = boolean(v);
      } else if (k == "dropout") {
        s.dropout = std::stof(v, &pos);
        if (!(s.dropout >= 0.0f && s.dropout < 1.0f)) throw std::out_of_range(v);
      } else if (k == "targets") {
        a.targets = split(v);
        explicit_targets = true;
      } else if (k == "placement" && bottleneck) {
        if (!explicit_targets)
          a.targets = placement_targets(v);
        else
          placement_targets(v);  // still validate the name
      } else if (k == "act" && bottleneck) {
        s.act = parse_act(v);
      } else if (k == "d_init" && s.kind == Kind::Vera) {
        s.vera_d_init = std::stof(v, &pos);
      } else if (k == "feedforward" && s.kind == Kind::Ia3) {
        s.feedforward = split(v);
      } else if (k == "exact_grad" && s.kind == Kind::Dora) {
        s.dora_exact_grad = boolean(v);
      } else {
        throw Error(str(
            "adapter '", spec, "': unknown key '", k, "' for ", kind_name(s.kind),
            " (expected r, alpha, rslora, dropout, targets", bottleneck ? ", placement, act" : "",
            s.kind == Kind::Vera ? ", d_init" : "", s.kind == Kind::Ia3 ? ", feedforward" : "",
            s.kind == Kind::Dora ? ", exact_grad" : "", ")"));
      }
      if (pos != v.size()) throw std::invalid_argument(v);
    } catch (const std::logic_error&) {
      throw Error(str("adapter '", spec, "': bad value '", v, "' for ", k));
    } catch (const Error& e) {
      if (std::string(e.what()).find(spec) != std::string::npos) throw;
      throw Error(str("adapter '", spec, "': ", e.what()));
    }
  }
  return a;
}

}  // namespace tessera::adapters
