#include "adapters/spec.h"

#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>

#include "adapters/adapter_file.h"
#include "adapters/kinds.h"
#include "runtime/common/error.h"

namespace tessera::adapters {

// Ordered: rank/alpha patterns resolve to their first matching key, in order.
using json = nlohmann::ordered_json;

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

// ---------------------------------------------------------------------------
// AdapterConfig: the message, its JSON form, and the AdapterFile value

AdapterConfig adapter_config(const AdapterFile& a) {
  const AdapterSpec& s = a.spec;
  AdapterConfig c;
  c.set_format(kAdapterConfigFormat);
  c.set_kind(kind_name(s.kind));
  c.set_r(s.lora.defaults.r);
  c.set_alpha(s.lora.defaults.alpha);
  c.set_rslora(s.lora.defaults.rslora);
  c.set_dropout(s.dropout);
  c.set_dora_exact_grad(s.dora_exact_grad);
  c.set_vera_d_init(s.vera_d_init);
  for (const std::string& f : s.feedforward) c.add_feedforward(f);
  c.set_act(act_name(s.act));
  for (const auto& [k, v] : s.lora.rank_pattern) {
    RankPattern* p = c.add_rank_pattern();
    p->set_pattern(k);
    p->set_r(v);
  }
  for (const auto& [k, v] : s.lora.alpha_pattern) {
    AlphaPattern* p = c.add_alpha_pattern();
    p->set_pattern(k);
    p->set_alpha(v);
  }
  for (const std::string& t : a.targets) c.add_targets(t);
  for (const std::string& m : a.modules) c.add_modules(m);
  for (bool b : a.conv1d) c.add_conv1d(b);
  c.set_base_model(a.base_model);
  c.set_base_fingerprint(a.base_fingerprint);
  for (const std::string& m : a.embedding_modules) c.add_embedding_modules(m);
  for (const std::string& m : a.modules_to_save) c.add_modules_to_save(m);
  return c;
}

namespace {
void check_format(int format, const std::string& source) {
  if (format != kAdapterConfigFormat)
    throw Error(str("adapter file '", source, "' has format ", format, "; this tessera reads ",
                    kAdapterConfigFormat));
}
}  // namespace

AdapterFile adapter_from_config(const AdapterConfig& c, const std::string& source) {
  check_format(c.format(), source);
  AdapterFile a;
  a.path = source;
  AdapterSpec& s = a.spec;
  s.kind = parse_kind(c.kind());
  s.lora.defaults.r = c.r();
  s.lora.defaults.alpha = c.alpha();
  s.lora.defaults.rslora = c.rslora();
  s.dropout = c.dropout();
  s.dora_exact_grad = c.dora_exact_grad();
  s.vera_d_init = c.vera_d_init();
  s.feedforward.assign(c.feedforward().begin(), c.feedforward().end());
  s.act = parse_act(c.act());
  for (const RankPattern& p : c.rank_pattern()) s.lora.rank_pattern.push_back({p.pattern(), p.r()});
  for (const AlphaPattern& p : c.alpha_pattern())
    s.lora.alpha_pattern.push_back({p.pattern(), p.alpha()});
  a.targets.assign(c.targets().begin(), c.targets().end());
  a.modules.assign(c.modules().begin(), c.modules().end());
  a.conv1d.assign(c.conv1d().begin(), c.conv1d().end());
  a.base_model = c.base_model();
  a.base_fingerprint = c.base_fingerprint();
  a.embedding_modules.assign(c.embedding_modules().begin(), c.embedding_modules().end());
  a.modules_to_save.assign(c.modules_to_save().begin(), c.modules_to_save().end());
  if (a.modules.empty() && a.embedding_modules.empty() && a.modules_to_save.empty())
    throw Error(str("adapter file '", source, "' adapts no module"));
  if (a.conv1d.size() != a.modules.size())
    throw Error(str("adapter file '", source, "': ", a.modules.size(), " modules but ",
                    a.conv1d.size(), " conv1d flags"));
  return a;
}

std::string config_json(const AdapterConfig& c) {
  json rp = json::object(), ap = json::object();
  for (const RankPattern& p : c.rank_pattern()) rp[p.pattern()] = p.r();
  for (const AlphaPattern& p : c.alpha_pattern()) ap[p.pattern()] = p.alpha();
  auto strings = [](const auto& field) {
    return std::vector<std::string>(field.begin(), field.end());
  };
  const json j = {{"format", c.format()},
                  {"kind", c.kind()},
                  {"r", c.r()},
                  {"alpha", c.alpha()},
                  {"rslora", c.rslora()},
                  {"dropout", c.dropout()},
                  {"dora_exact_grad", c.dora_exact_grad()},
                  {"vera_d_init", c.vera_d_init()},
                  {"feedforward", strings(c.feedforward())},
                  {"act", c.act()},
                  {"rank_pattern", rp},
                  {"alpha_pattern", ap},
                  {"targets", strings(c.targets())},
                  {"modules", strings(c.modules())},
                  {"conv1d", std::vector<bool>(c.conv1d().begin(), c.conv1d().end())},
                  {"base_model", c.base_model()},
                  {"base_fingerprint", c.base_fingerprint()},
                  {"embedding_modules", strings(c.embedding_modules())},
                  {"modules_to_save", strings(c.modules_to_save())}};
  return j.dump();
}

namespace {
template <typename T>
T get(const json& j, const char* key, const std::string& source) {
  try {
    return j.at(key).get<T>();
  } catch (const json::exception&) {
    throw Error(str("adapter file '", source, "': metadata field '", key,
                    "' is missing or has the wrong type"));
  }
}

template <typename Field>
void set_strings(Field* field, const std::vector<std::string>& v) {
  for (const std::string& x : v) field->Add(std::string(x));
}
}  // namespace

AdapterConfig parse_config_json(const std::string& text, const std::string& source) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    throw Error(str("adapter file '", source, "': metadata is not valid JSON: ", e.what()));
  }
  if (!j.is_object())
    throw Error(str("adapter file '", source, "': metadata is not a JSON object"));
  AdapterConfig c;
  c.set_format(get<int>(j, "format", source));
  check_format(c.format(), source);
  c.set_kind(get<std::string>(j, "kind", source));
  (void)parse_kind(c.kind());  // refused here, before the fields after it
  c.set_r(get<int64_t>(j, "r", source));
  c.set_alpha(get<float>(j, "alpha", source));
  c.set_rslora(get<bool>(j, "rslora", source));
  c.set_dropout(get<float>(j, "dropout", source));
  c.set_dora_exact_grad(get<bool>(j, "dora_exact_grad", source));
  c.set_vera_d_init(get<float>(j, "vera_d_init", source));
  set_strings(c.mutable_feedforward(), get<std::vector<std::string>>(j, "feedforward", source));
  c.set_act(get<std::string>(j, "act", source));
  (void)parse_act(c.act());
  for (const char* key : {"rank_pattern", "alpha_pattern"}) {
    if (!j.contains(key) || !j[key].is_object())
      throw Error(str("adapter file '", source, "': metadata field '", key, "' is not an object"));
    for (auto it = j[key].begin(); it != j[key].end(); ++it) {
      if (!it.value().is_number())
        throw Error(str("adapter file '", source, "': ", key, " value of '", it.key(),
                        "' is not a number"));
      if (std::string(key) == "rank_pattern") {
        RankPattern* p = c.add_rank_pattern();
        p->set_pattern(it.key());
        p->set_r(it.value().get<int64_t>());
      } else {
        AlphaPattern* p = c.add_alpha_pattern();
        p->set_pattern(it.key());
        p->set_alpha(it.value().get<float>());
      }
    }
  }
  set_strings(c.mutable_targets(), get<std::vector<std::string>>(j, "targets", source));
  set_strings(c.mutable_modules(), get<std::vector<std::string>>(j, "modules", source));
  for (bool b : get<std::vector<bool>>(j, "conv1d", source)) c.add_conv1d(b);
  c.set_base_model(get<std::string>(j, "base_model", source));
  if (j.contains("base_fingerprint"))
    c.set_base_fingerprint(get<std::string>(j, "base_fingerprint", source));
  if (j.contains("embedding_modules"))
    set_strings(c.mutable_embedding_modules(),
                get<std::vector<std::string>>(j, "embedding_modules", source));
  if (j.contains("modules_to_save"))
    set_strings(c.mutable_modules_to_save(),
                get<std::vector<std::string>>(j, "modules_to_save", source));
  return c;
}

}  // namespace tessera::adapters
