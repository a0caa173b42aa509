// tessera merge: LoRA adapters of one base combined into one.
#include "launch/commands.h"
#include "launch/runs.h"

#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>
#include <memory>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <sstream>

#include "adapters/adapter_file.h"
#include "adapters/lora.h"
#include "adapters/merge_methods.h"
#include "adapters/peft.h"
#include "launch/base.h"
#include "launch/config.h"
#include "runtime/common/error.h"
#include "runtime/io/fingerprint.h"
#include "runtime/train/trainer.h"

namespace tessera::launch {

namespace fs = std::filesystem;

std::vector<float> parse_weights(const std::string& csv) {
  std::vector<float> w;
  std::stringstream ss(csv);
  std::string item;
  while (std::getline(ss, item, ',')) {
    try {
      size_t pos = 0;
      w.push_back(std::stof(item, &pos));
      if (pos != item.size()) throw std::invalid_argument(item);
    } catch (const std::logic_error&) {
      throw Error(str("--weights '", csv, "': '", item, "' is not a number"));
    }
  }
  return w;
}

int run_merge(const MergeOptions& o) {
  if (o.inputs.empty()) throw Error("merge: name the adapter folders to combine");
  if (o.out.empty()) throw Error("merge: -o/--out names the folder to write");
  std::vector<float> w = o.weights.empty() ? std::vector<float>(o.inputs.size(), 1.0f) : o.weights;
  if (w.size() != o.inputs.size())
    throw Error(str("merge: ", w.size(), " weights for ", o.inputs.size(), " adapters"));
  const adapters::MergeRecipe recipe = adapters::parse_merge_method(o.method);
  // Each input: a PEFT folder or a tessera adapter file (lora).
  struct Input {
    bool conv1d = false;  // PEFT calls it fan_in_fan_out
    std::string base_model, base_fingerprint;
  };
  std::vector<Input> folders;
  std::vector<std::vector<std::pair<std::string, adapters::LoraFactors>>> per;
  // With --base every input is read against the base model, by the same
  // rules as import-peft and eval (PiSSA/OLoRA converted, targets and shapes
  // checked, the fingerprint compared); without it, from the files alone.
  std::unique_ptr<train::Model> base_model;
  std::string base_fp;
  if (!o.base.empty()) {
    const BaseModel b = open_base(o.base, "--base");
    base_model = std::make_unique<train::Model>(b.config);
    if (!b.hf_folder) base_model->load_weights(b.path);
    base_fp =
        b.hf_folder ? io::params_fingerprint(base_model->params()) : io::base_fingerprint(o.base);
  }
  for (const auto& in : o.inputs) {
    if (base_model) {
      const std::string want = fs::is_directory(in) ? adapters::read_peft(in).base_fingerprint
                                                    : adapters::read_adapter(in).base_fingerprint;
      if (!want.empty()) check_base(in, want, o.base, o.force, base_fp);
      std::unique_ptr<adapters::AdapterSet> set;
      if (fs::is_directory(in)) {
        adapters::PeftImport imp = adapters::import_peft(
            in, base_model->linears(), base_model->params(), base_model->embeddings());
        for (const auto& n : imp.notes) spdlog::info("{}: {}", in, n);
        set = std::move(imp.set);
      } else {
        set = adapters::load_adapter(in, base_model->linears(), base_model->params(), nullptr,
                                     base_model->embeddings());
      }
      if (set->kind() != adapters::Kind::Lora || !set->embedding_modules().empty() ||
          !set->copied_modules().empty())
        throw Error(str("merge: '", in, "' is not LoRA on Linear modules alone (",
                        set->kind() != adapters::Kind::Lora ? adapters::kind_name(set->kind())
                        : !set->embedding_modules().empty() ? "a LoRA on an embedding"
                                                            : "modules_to_save copies",
                        "); these methods combine LoRAs of Linear modules"));
      std::vector<std::pair<std::string, adapters::LoraFactors>> f;
      bool conv = false;
      for (size_t i = 0; i < set->modules().size(); ++i) {
        const adapters::Lora& l = *set->loras()[i];
        f.push_back(
            {set->modules()[i], adapters::LoraFactors{l.A().clone(), l.B().clone(), l.scale()}});
        conv = conv || set->linears()[i]->conv1d();
      }
      set->detach();
      per.push_back(std::move(f));
      folders.push_back({conv, o.base, base_fp});
      continue;
    }
    if (fs::is_directory(in)) {
      adapters::PeftFolder f = adapters::read_peft(in);
      per.push_back(f.factors());
      folders.push_back({f.fan_in_fan_out, f.base_model, f.base_fingerprint});
      for (const auto& n : f.notes) spdlog::warn("{}: {}", in, n);
    } else {
      adapters::AdapterFile f = adapters::read_adapter(in);
      if (f.spec.kind != adapters::Kind::Lora)
        throw Error(str("merge: '", in, "' is a ", adapters::kind_name(f.spec.kind),
                        " adapter; these methods combine LoRAs"));
      per.push_back(f.factors());
      const bool conv = std::find(f.conv1d.begin(), f.conv1d.end(), true) != f.conv1d.end();
      folders.push_back({conv, f.base_model, f.base_fingerprint});
    }
  }
  // Adapters of different bases do not combine; the result keeps the base.
  std::string fingerprint;
  for (size_t i = 0; i < per.size(); ++i) {
    const std::string& fp = folders[i].base_fingerprint;
    if (fp.empty()) continue;
    if (!fingerprint.empty() && fp != fingerprint && !o.force)
      throw Error(str("merge: '", o.inputs[i], "' was trained on base ", fp.substr(0, 16),
                      "…, an earlier input on base ", fingerprint.substr(0, 16),
                      "… (adapters of different bases do not combine; --force merges anyway)"));
    if (fingerprint.empty()) fingerprint = fp;
  }
  for (size_t i = 1; i < per.size(); ++i)
    if (folders[i].conv1d != folders[0].conv1d)
      throw Error(
          str("merge: '", o.inputs[i], "' and '", o.inputs[0], "' disagree on fan_in_fan_out"));
  const auto merged = adapters::merge_adapters(recipe, per, o.inputs, w, o.rank, o.seed);
  const bool file_out =
      o.out.size() > 12 && o.out.compare(o.out.size() - 12, 12, ".safetensors") == 0;
  if (file_out)
    adapters::save_lora_factors(o.out, merged, std::vector<bool>(merged.size(), folders[0].conv1d),
                                folders[0].base_model, fingerprint);
  else
    adapters::write_peft(o.out, merged, folders[0].conv1d, folders[0].base_model, {}, fingerprint);
  std::printf("merged %zu adapters with %s into %s (%zu modules)\n", o.inputs.size(),
              o.method.c_str(), o.out.c_str(), merged.size());
  return 0;
}

Command add_merge_command(CLI::App& app) {
  auto o = std::make_shared<MergeOptions>();
  MergeOptions& mo = *o;
  auto weights = std::make_shared<std::string>();
  std::string& merge_weights = *weights;
  auto* c_merge =
      app.add_subcommand("merge",
                         "Combine LoRA adapters of one base into one (PEFT folders or "
                         "tessera adapter files; -o X.safetensors writes tessera's file)");
  c_merge
      ->add_option("--method", mo.method,
                   "cat | linear[:lambda=L] | svd | ties:density=D | dare_linear:p=P | "
                   "dare_ties:p=P,density=D | magnitude_prune:density=D | lego:k=K | soup")
      ->capture_default_str();
  c_merge->add_option("inputs", mo.inputs, "Adapters: PEFT folders or tessera adapter files")
      ->required();
  c_merge->add_option("-o,--out", mo.out, "Output: a PEFT folder, or a .safetensors adapter file")
      ->required();
  c_merge->add_option("--weights", merge_weights,
                      "Comma-separated weight per adapter (default 1 each)");
  c_merge->add_option("--rank", mo.rank, "Rank of the result (default: the largest input rank)");
  c_merge->add_option("--seed", mo.seed, "Seed for DARE's drops and LEGO's k-means")
      ->capture_default_str();
  c_merge->add_flag("--force", mo.force, "Merge adapters recorded for different bases");
  c_merge->add_option("--base", mo.base,
                      "Read every input against this base (a tessera checkpoint or a Hugging "
                      "Face folder): its modules, shapes and fingerprint; PiSSA/OLoRA converted");
  return {c_merge, [o, weights] {
            o->weights = parse_weights(*weights);
            return run_merge(*o);
          }};
}

}  // namespace tessera::launch
