#include "launch/base.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/text_format.h>

#include <filesystem>

#include "launch/config.h"
#include "runtime/common/error.h"
#include "runtime/io/hf.h"
#include "runtime/train/trainer.h"

namespace tessera::launch {

namespace fs = std::filesystem;
namespace pb = google::protobuf;

namespace {

// The decoder fields as the model reads them: 0 for n_kv_head and d_ff
// resolved. Left as is when the fields do not describe a valid decoder (the
// model's own validation names the fault later).
void normalise(DecoderConfig* d) {
  try {
    nn::DecoderSpec s = train::decoder_spec(*d);
    s.validate();
    train::set_decoder_config(s, d);
  } catch (const Error&) {
  }
}

std::string field_text(const pb::Message& m, const pb::FieldDescriptor* f) {
  pb::TextFormat::Printer p;
  if (!f->is_repeated()) {
    std::string one;
    p.PrintFieldValueToString(m, f, -1, &one);
    return one;
  }
  std::string out(1, '[');
  for (int i = 0; i < m.GetReflection()->FieldSize(m, f); ++i) {
    std::string v;
    p.PrintFieldValueToString(m, f, i, &v);
    if (i) out += ',';
    out += v;
  }
  out += ']';
  return out;
}

// Fields of `sub` (mlp or decoder) that `user` sets and that change the model
// built from `arch`.
void check_sub(const RunConfig& arch, const RunConfig& user, const char* sub,
               const std::string& source) {
  const pb::FieldDescriptor* sf = RunConfig::descriptor()->FindFieldByName(sub);
  const pb::Reflection* pr = user.GetReflection();
  if (!pr->HasField(user, sf)) return;
  const pb::Message& um = pr->GetMessage(user, sf);
  const bool decoder = std::string(sub) == "decoder";
  RunConfig want = arch;
  if (decoder) normalise(want.mutable_decoder());
  const pb::Message& wm = want.GetReflection()->GetMessage(want, sf);
  std::vector<const pb::FieldDescriptor*> fields;
  um.GetReflection()->ListFields(um, &fields);
  for (const pb::FieldDescriptor* f : fields) {
    if (f->name() == "init_from") continue;
    // `got`: the base's architecture with this one field as the user set it.
    RunConfig got = arch, mine = user;
    pb::Message* gm = got.GetReflection()->MutableMessage(&got, sf);
    pb::Message* mm = mine.GetReflection()->MutableMessage(&mine, sf);
    gm->GetReflection()->SwapFields(gm, mm, {f});
    if (decoder) normalise(got.mutable_decoder());
    if (wm.SerializeAsString() == gm->SerializeAsString()) continue;
    std::string hint;
    if (f->name() == "n_ctx") hint = "; to train on shorter windows set data.seq_len instead";
    throw Error(str(sub, ".", f->name(), " = ", field_text(um, f), " contradicts the base '",
                    source, "', whose architecture has ", sub, ".", f->name(), " = ",
                    field_text(wm, f), " (the architecture comes from the base: drop the setting",
                    hint, ")"));
  }
}

}  // namespace

void check_architecture(const RunConfig& arch, const RunConfig& user, const std::string& source) {
  if (user.has_model() && user.model() != arch.model())
    throw Error(str("model = ", user.model(), " contradicts the base '", source, "', which is a ",
                    arch.model(), " (drop the setting)"));
  check_sub(arch, user, "mlp", source);
  check_sub(arch, user, "decoder", source);
}

void complete_architecture(RunConfig* cfg, const RunConfig& user) {
  const std::string folder = cfg->decoder().init_from();
  if (cfg->model() != "decoder" || folder.empty()) return;
  if (!fs::is_directory(folder) || !fs::exists(folder + "/config.json"))
    throw Error(str("decoder.init_from '", folder,
                    "' is not a Hugging Face folder (expected config.json and model.safetensors "
                    "in it)"));
  RunConfig arch = *cfg;
  train::set_decoder_config(io::read_hf_config(folder), arch.mutable_decoder());
  check_architecture(arch, user, folder);
  *cfg->mutable_decoder() = arch.decoder();
}

BaseModel open_base(const std::string& path, const std::string& flag) {
  if (path.empty())
    throw Error(str(flag, ": name the base model (a tessera checkpoint or a Hugging Face folder)"));
  BaseModel b;
  b.path = path;
  if (fs::is_directory(path)) {
    if (!fs::exists(path + "/config.json"))
      throw Error(
          str(flag, " '", path,
              "' is a folder without config.json: neither a tessera checkpoint (a "
              ".safetensors file) nor a Hugging Face folder",
              fs::exists(path + "/checkpoint.safetensors")
                  ? str(" (a run folder: its checkpoint is ", path, "/checkpoint.safetensors)")
                  : std::string()));
    b.hf_folder = true;
    b.config = default_config("decoder");
    train::set_decoder_config(io::read_hf_config(path), b.config.mutable_decoder());
    b.config.mutable_decoder()->set_init_from(path);
    return b;
  }
  if (!fs::exists(path)) throw Error(str(flag, " '", path, "' does not exist"));
  b.config = train::read_checkpoint_config(path);
  if (b.config.model() == "decoder") {
    DecoderConfig* d = b.config.mutable_decoder();
    if (!d->init_from().empty()) {
      // Written before checkpoints were self-contained: the sizes recorded
      // beside init_from are defaults, the folder's config is the truth.
      const std::string folder = d->init_from();
      if (!fs::exists(folder + "/config.json"))
        throw Error(str(flag, " '", path,
                        "' was written by an older tessera and records its architecture only as "
                        "decoder.init_from = '",
                        folder,
                        "', which no longer exists: put that folder back, or re-run "
                        "pretrain to write a self-contained checkpoint"));
      train::set_decoder_config(io::read_hf_config(folder), d);
      d->clear_init_from();
    }
    normalise(d);
  }
  return b;
}

void apply_base_overrides(RunConfig* cfg, const std::vector<std::string>& overrides,
                          const BaseModel& base) {
  RunConfig user;
  apply_overrides(&user, overrides);
  check_architecture(base.config, user, base.path);
  apply_overrides(cfg, overrides);
}

void load_base_weights(train::Trainer& t, const BaseModel& base) {
  if (!base.hf_folder) t.load_checkpoint(base.path, /*weights_only=*/true);
}

void load_base_weights(train::Trainer& t, const std::string& path) {
  if (!fs::is_directory(path)) t.load_checkpoint(path, /*weights_only=*/true);
}

RunConfig resolve_config(const std::string& path, const std::vector<std::string>& overrides,
                         const std::string& model_if_no_file) {
  RunConfig user;
  RunConfig cfg = train::resolve_config(path, overrides, model_if_no_file, &user);
  complete_architecture(&cfg, user);
  return cfg;
}

}  // namespace tessera::launch
