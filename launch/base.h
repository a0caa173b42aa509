// The base model a command runs on (--base, --checkpoint): a tessera
// checkpoint (one .safetensors file holding the training config, with the
// model's whole architecture, and the weights) or a Hugging Face folder
// (config.json + model.safetensors or a sharded index). Every command that
// takes a base goes through open_base, so each accepts both alike.
#pragma once

#include <string>
#include <vector>

#include "tessera/config.pb.h"

namespace tessera::train {
class Trainer;
}

namespace tessera::launch {

struct BaseModel {
  std::string path;
  bool hf_folder = false;
  // The complete architecture (decoder fields resolved: n_kv_head, d_ff); for
  // a folder, the decoder defaults around it with decoder.init_from = path,
  // so a Trainer built on it loads the folder's weights.
  RunConfig config;
};

// Reads what `path` is and its architecture. `flag` names the option in
// messages ("--base"). A checkpoint written by an older tessera that records
// its architecture only as decoder.init_from takes it from that folder while
// it exists, and is refused naming it once it does not.
BaseModel open_base(const std::string& path, const std::string& flag);

// Applies key=value overrides to `cfg` (a config built on `base`), first
// refusing any that contradicts the base's architecture, naming both values.
void apply_base_overrides(RunConfig* cfg, const std::vector<std::string>& overrides,
                          const BaseModel& base);

// Puts the base's weights into a Trainer built on a config from `base` (a
// folder's are already in: the Trainer loaded decoder.init_from).
void load_base_weights(train::Trainer& t, const BaseModel& base);
void load_base_weights(train::Trainer& t, const std::string& path);

// Refuses every architecture field `user` sets (model, mlp.*, decoder.*
// other than init_from) that differs from `arch`, naming the field, both
// values and `source`. Values are compared as the model reads them
// (n_kv_head 0 is n_head, d_ff 0 the flavour's default).
void check_architecture(const RunConfig& arch, const RunConfig& user, const std::string& source);

// pretrain with decoder.init_from = FOLDER: the folder's architecture goes
// into `cfg`; a field `user` set that contradicts it is refused.
void complete_architecture(RunConfig* cfg, const RunConfig& user);

}  // namespace tessera::launch
