#include "runtime/train/config.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/io/tokenizer.h>
#include <google/protobuf/text_format.h>

#include <fstream>
#include <sstream>

#include "runtime/common/error.h"
#include "runtime/common/file.h"
#include "tessera/options.pb.h"

namespace tessera::train {

namespace pb = google::protobuf;

RunConfig default_config(const std::string& model) {
  RunConfig c;
  c.set_seed(1234);
  c.set_log_every(10);
  c.set_threads(0);
  auto* o = c.mutable_optim();
  o->set_kind("adamw");
  o->set_beta1(0.9f);
  o->set_beta2(0.999f);
  o->set_eps(1e-8f);
  o->set_momentum(0.9f);
  o->set_decay_vectors(true);
  o->set_schedule("constant");
  if (model == "mlp" || model.empty()) {
    c.set_model("mlp");
    auto* m = c.mutable_mlp();
    m->set_in_features(784);
    m->add_hidden(512);
    m->add_hidden(512);
    m->set_num_classes(10);
    m->set_activation("gelu");
    c.mutable_data()->set_kind("fashion_mnist");
    c.mutable_data()->set_dir("/usr/share/datasets/fashion-mnist");
    c.mutable_data()->set_holdout(0.0f);
    c.mutable_data()->set_token_bytes(2);
    o->set_lr(1e-3f);
    o->set_weight_decay(0.01f);
    o->set_schedule("cosine");  // decays to 0 over the run: ~1 point of accuracy over constant
    o->set_min_lr_ratio(0.0f);
    c.set_batch_size(128);
    c.set_epochs(5);
    c.set_out_dir("runs/mlp");
  } else {
    c.set_model(model);
    auto* d = c.mutable_decoder();
    d->set_flavor("gpt2");
    d->set_vocab_size(256);
    d->set_n_ctx(128);
    d->set_d_model(256);
    d->set_n_layer(4);
    d->set_n_head(4);
    d->set_norm_eps(1e-5f);
    d->set_rope_theta(10000.0f);
    d->set_tie_embeddings(true);
    c.mutable_data()->set_kind("text");
    c.mutable_data()->add_files("/usr/share/common-licenses/*");
    c.mutable_data()->set_holdout(0.1f);
    c.mutable_data()->set_token_bytes(2);
    o->set_lr(1e-3f);
    o->set_weight_decay(0.1f);
    o->set_decay_vectors(false);
    o->set_grad_clip(1.0f);
    o->set_schedule("cosine");
    o->set_warmup_steps(50);
    o->set_min_lr_ratio(0.1f);
    c.set_batch_size(16);
    c.set_steps(1000);
    c.set_eval_batches(0);
    c.set_out_dir("runs/decoder");
  }
  return c;
}

namespace {

class Collector : public pb::io::ErrorCollector {
 public:
  explicit Collector(std::string source) : source_(std::move(source)) {}
  void AddError(int line, int column, const std::string& message) override {
    if (first_.empty()) first_ = str(source_, ":", line + 1, ":", column + 1, ": ", message);
  }
  void AddWarning(int, int, const std::string&) override {}
  const std::string& first() const { return first_; }

 private:
  std::string source_, first_;
};

// Clears in `base` every repeated field that `over` sets, recursively, so a
// merge replaces lists instead of appending to the defaults.
void clear_overridden_repeated(pb::Message* base, const pb::Message& over) {
  const pb::Reflection* r = over.GetReflection();
  std::vector<const pb::FieldDescriptor*> fields;
  r->ListFields(over, &fields);
  for (const auto* f : fields) {
    if (f->is_repeated())
      base->GetReflection()->ClearField(base, f);
    else if (f->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE)
      clear_overridden_repeated(base->GetReflection()->MutableMessage(base, f),
                                r->GetMessage(over, f));
  }
}

double numeric_value(const pb::Message& m, const pb::FieldDescriptor* f, int index) {
  const pb::Reflection* r = m.GetReflection();
  bool rep = index >= 0;
  switch (f->cpp_type()) {
    case pb::FieldDescriptor::CPPTYPE_INT32:
      return rep ? r->GetRepeatedInt32(m, f, index) : r->GetInt32(m, f);
    case pb::FieldDescriptor::CPPTYPE_INT64:
      return static_cast<double>(rep ? r->GetRepeatedInt64(m, f, index) : r->GetInt64(m, f));
    case pb::FieldDescriptor::CPPTYPE_UINT32:
      return rep ? r->GetRepeatedUInt32(m, f, index) : r->GetUInt32(m, f);
    case pb::FieldDescriptor::CPPTYPE_UINT64:
      return static_cast<double>(rep ? r->GetRepeatedUInt64(m, f, index) : r->GetUInt64(m, f));
    case pb::FieldDescriptor::CPPTYPE_FLOAT:
      return rep ? r->GetRepeatedFloat(m, f, index) : r->GetFloat(m, f);
    case pb::FieldDescriptor::CPPTYPE_DOUBLE:
      return rep ? r->GetRepeatedDouble(m, f, index) : r->GetDouble(m, f);
    default:
      return 0.0;
  }
}

void validate_message(const pb::Message& m, const std::string& prefix) {
  const pb::Descriptor* d = m.GetDescriptor();
  const pb::Reflection* r = m.GetReflection();
  for (int i = 0; i < d->field_count(); ++i) {
    const pb::FieldDescriptor* f = d->field(i);
    const std::string name = prefix + f->name();
    if (!f->is_repeated() && !r->HasField(m, f)) continue;  // unset: defaults apply
    if (f->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE) {
      if (!f->is_repeated()) validate_message(r->GetMessage(m, f), name + ".");
      continue;
    }
    const pb::FieldOptions& o = f->options();
    const int n = f->is_repeated() ? r->FieldSize(m, f) : 1;
    for (int k = 0; k < n; ++k) {
      const int idx = f->is_repeated() ? k : -1;
      const std::string where = f->is_repeated() ? str(name, "[", k, "]") : name;
      if (f->cpp_type() == pb::FieldDescriptor::CPPTYPE_STRING) {
        if (!o.HasExtension(tessera::choices)) continue;
        std::string v = idx >= 0 ? r->GetRepeatedString(m, f, idx) : r->GetString(m, f);
        std::string allowed = o.GetExtension(tessera::choices);
        std::stringstream ss(allowed);
        std::string c;
        bool ok = false;
        while (std::getline(ss, c, '|')) ok = ok || c == v;
        if (!ok) {
          std::string list = allowed;
          for (auto& ch : list)
            if (ch == '|') ch = ',';
          throw Error(str("config field ", where, " = '", v, "': expected one of ", list));
        }
        continue;
      }
      if (f->cpp_type() == pb::FieldDescriptor::CPPTYPE_BOOL ||
          f->cpp_type() == pb::FieldDescriptor::CPPTYPE_ENUM)
        continue;
      double v = numeric_value(m, f, idx);
      if (o.HasExtension(tessera::min) && v < o.GetExtension(tessera::min))
        throw Error(str("config field ", where, " = ", v, " is below its minimum ",
                        o.GetExtension(tessera::min)));
      if (o.HasExtension(tessera::max) && v > o.GetExtension(tessera::max))
        throw Error(str("config field ", where, " = ", v, " is above its maximum ",
                        o.GetExtension(tessera::max)));
      if (o.HasExtension(tessera::gt) && !(v > o.GetExtension(tessera::gt)))
        throw Error(str("config field ", where, " = ", v, " must be greater than ",
                        o.GetExtension(tessera::gt)));
    }
  }
}

}  // namespace

RunConfig parse_config_text(const std::string& text, const std::string& source) {
  RunConfig c;
  pb::TextFormat::Parser p;
  Collector errors(source);
  p.RecordErrorsTo(&errors);
  if (!p.ParseFromString(text, &c))
    throw Error(str("invalid config ", errors.first().empty() ? source : errors.first()));
  return c;
}

RunConfig load_config_file(const std::string& path) {
  return parse_config_text(read_file(path, "config file"), path);
}

void apply_overrides(RunConfig* cfg, const std::vector<std::string>& overrides) {
  for (const std::string& ov : overrides) {
    size_t eq = ov.find('=');
    if (eq == std::string::npos || eq == 0)
      throw Error(str("override '", ov, "': expected key=value, e.g. optim.lr=3e-4"));
    const std::string key = ov.substr(0, eq), value = ov.substr(eq + 1);
    pb::Message* m = cfg;
    const pb::FieldDescriptor* f = nullptr;
    std::stringstream ks(key);
    std::string part, walked;
    std::vector<std::string> parts;
    while (std::getline(ks, part, '.')) parts.push_back(part);
    for (size_t i = 0; i < parts.size(); ++i) {
      f = m->GetDescriptor()->FindFieldByName(parts[i]);
      walked += (i ? "." : "") + parts[i];
      if (!f) {
        std::string known;
        for (int k = 0; k < m->GetDescriptor()->field_count(); ++k)
          known += (k ? ", " : "") + m->GetDescriptor()->field(k)->name();
        throw Error(str("override '", ov, "': unknown config field '", walked,
                        "' (fields here: ", known, ")"));
      }
      if (i + 1 < parts.size()) {
        if (f->cpp_type() != pb::FieldDescriptor::CPPTYPE_MESSAGE || f->is_repeated())
          throw Error(str("override '", ov, "': '", walked, "' is not a message with sub-fields"));
        m = m->GetReflection()->MutableMessage(m, f);
      }
    }
    if (f->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE)
      throw Error(str("override '", ov, "': '", key, "' is a message; set one of its fields"));
    // Reuse the text-format parser for the value so types are checked exactly.
    std::string text;
    auto quote = [&](const std::string& v) {
      if (f->cpp_type() != pb::FieldDescriptor::CPPTYPE_STRING) return v;
      std::string q = "\"";
      for (char c : v) q += (c == '"' || c == '\\') ? std::string("\\") + c : std::string(1, c);
      return q + "\"";
    };
    if (f->is_repeated()) {
      m->GetReflection()->ClearField(m, f);
      std::stringstream vs(value);
      std::string item;
      while (std::getline(vs, item, ',')) text += f->name() + ": " + quote(item) + "\n";
    } else {
      text = f->name() + ": " + quote(value);
    }
    std::unique_ptr<pb::Message> tmp(m->New());
    pb::TextFormat::Parser p;
    Collector errors("override");
    p.RecordErrorsTo(&errors);
    if (!p.ParseFromString(text, tmp.get()))
      throw Error(str("override '", ov, "': value '", value, "' does not fit field '", key,
                      "' of type ", f->type_name()));
    m->MergeFrom(*tmp);
  }
}

void validate_config(const RunConfig& cfg) {
  validate_message(cfg, "");
}

RunConfig resolve_config(const std::string& path, const std::vector<std::string>& overrides,
                         const std::string& model_if_no_file, RunConfig* user_out) {
  RunConfig user;
  if (!path.empty()) user = load_config_file(path);
  std::string model = user.model().empty() ? model_if_no_file : user.model();
  // The model may also be picked by an override.
  for (const auto& ov : overrides)
    if (ov.rfind("model=", 0) == 0) model = ov.substr(6);
  if (model.empty()) model = "mlp";
  if (model != "mlp" && model != "decoder")
    throw Error(str("config field model = '", model, "': expected one of mlp, decoder"));
  // What the user set (file, then overrides), apart from the defaults: an
  // architecture field of it must agree with a decoder.init_from folder.
  apply_overrides(&user, overrides);
  RunConfig cfg = default_config(model);
  clear_overridden_repeated(&cfg, user);
  cfg.MergeFrom(user);
  validate_config(cfg);
  if (user_out) *user_out = std::move(user);
  return cfg;
}

std::string to_text(const RunConfig& cfg) {
  std::string s;
  pb::TextFormat::PrintToString(cfg, &s);
  return s;
}

}  // namespace tessera::train
