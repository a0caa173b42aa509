// tessera export-peft / import-peft: PEFT folders in and out.
#include "launch/commands.h"
#include "launch/runs.h"

#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>
#include <memory>

#include <cstdio>
#include <filesystem>

#include "adapters/adapter_file.h"
#include "adapters/peft.h"
#include "launch/base.h"
#include "launch/config.h"
#include "runtime/common/error.h"
#include "runtime/io/fingerprint.h"
#include "runtime/train/trainer.h"

namespace tessera::launch {

namespace fs = std::filesystem;

int run_export_peft(const ExportPeftOptions& o) {
  adapters::AdapterFile f = adapters::read_adapter(o.adapter);
  if (f.spec.dropout > 0)
    spdlog::info("note: dropout {} is a training setting; written as lora_dropout 0",
                 f.spec.dropout);
  adapters::adapter_file_to_peft(o.adapter, o.out);
  std::printf("%s (%s, %zu modules) → PEFT folder %s\n", o.adapter.c_str(),
              adapters::kind_name(f.spec.kind), f.modules.size(), o.out.c_str());
  return 0;
}

int run_import_peft(const ImportPeftOptions& o) {
  if (o.base.empty())
    throw Error(
        "--base: name the base the PEFT adapter belongs to (a tessera checkpoint or a "
        "Hugging Face folder)");
  // The base model alone: an import reads no data.
  const BaseModel base = open_base(o.base, "--base");
  train::Model model(base.config);
  if (!base.hf_folder) model.load_weights(base.path);
  const std::string fingerprint =
      base.hf_folder ? io::params_fingerprint(model.params()) : io::base_fingerprint(o.base);
  const std::string want = adapters::read_peft(o.peft_dir).base_fingerprint;
  if (!want.empty()) check_base(o.peft_dir, want, o.base, o.force, fingerprint);
  adapters::PeftImport imp =
      adapters::import_peft(o.peft_dir, model.linears(), model.params(), model.embeddings());
  for (const auto& n : imp.notes) spdlog::info("note: {}", n);
  adapters::save_adapter(*imp.set, o.out, imp.base_model.empty() ? o.base : imp.base_model,
                         fingerprint);
  std::printf("PEFT %s (%s, %zu modules%s, checked against %s) → %s\n", o.peft_dir.c_str(),
              adapters::kind_name(imp.set->kind()), imp.set->modules().size(),
              str(imp.set->embedding_modules().empty()
                      ? std::string()
                      : str(" + ", imp.set->embedding_modules().size(), " embedding(s)"),
                  imp.set->copied_modules().empty()
                      ? std::string()
                      : str(" + ", imp.set->copied_modules().size(), " saved module copies"))
                  .c_str(),
              o.base.c_str(), o.out.c_str());
  return 0;
}

Command add_export_peft_command(CLI::App& app) {
  auto o = std::make_shared<ExportPeftOptions>();
  ExportPeftOptions& ep = *o;
  auto* c_ep =
      app.add_subcommand("export-peft", "Write a tessera LoRA/DoRA adapter file as a PEFT folder");
  c_ep->add_option("adapter", ep.adapter, "tessera adapter file (.safetensors)")->required();
  c_ep->add_option("-o,--out", ep.out, "PEFT folder to write")->required();
  return {c_ep, [o] { return run_export_peft(*o); }};
}

Command add_import_peft_command(CLI::App& app) {
  auto o = std::make_shared<ImportPeftOptions>();
  ImportPeftOptions& ip = *o;
  auto* c_ip = app.add_subcommand(
      "import-peft",
      "Check a PEFT LoRA/DoRA folder against a base and write a tessera adapter file");
  c_ip->add_option("peft_dir", ip.peft_dir, "PEFT adapter folder")->required();
  c_ip->add_option("--base", ip.base,
                   "Base the adapter belongs to: a tessera checkpoint or a Hugging Face folder")
      ->required();
  c_ip->add_option("-o,--out", ip.out, "tessera adapter file to write")->required();
  c_ip->add_flag("--force", ip.force,
                 "Import even if the folder records another base's fingerprint");
  return {c_ip, [o] { return run_import_peft(*o); }};
}

}  // namespace tessera::launch
