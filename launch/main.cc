// tessera — the command line. Subcommands wire runtime pieces together; no
// algorithm lives here.
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "launch/commands.h"
#include "runtime/common/error.h"

int main(int argc, char** argv) {
  CLI::App app{"tessera: modular deep learning — a frozen base, a library of adapter experts"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("tessera ") + TESSERA_VERSION);

  tessera::launch::DemoOptions demo;
  auto* c_demo = app.add_subcommand("demo",
                                    "Pretrain the demo base models (Fashion-MNIST MLP and a "
                                    "byte-level LM), evaluate and save them");
  c_demo->add_option("--out", demo.out_dir, "Run folder")->capture_default_str();
  c_demo->add_flag("--quick", demo.quick, "A few steps of each model (smoke test)");
  c_demo->add_option("--threads", demo.threads, "Threads (0: cores available)")
      ->capture_default_str();
  c_demo->add_option("--data-dir", demo.data_dir, "Fashion-MNIST folder")->capture_default_str();

  tessera::launch::PretrainOptions pre;
  auto* c_pre =
      app.add_subcommand("pretrain", "Train a base model from a config (protobuf text format)");
  c_pre->add_option("--config", pre.config, "Config file (.pbtxt); see configs/");
  c_pre->add_option("--model", pre.model, "mlp or decoder, when no config file names it");
  c_pre->add_option("--resume", pre.resume, "Checkpoint to resume from");
  c_pre->add_option("--max-steps", pre.max_steps,
                    "Stop after this many steps of this invocation (0: run to the end)");
  c_pre->add_flag("--quiet", pre.quiet, "No progress line");
  c_pre->add_option("overrides", pre.overrides, "key=value config overrides, e.g. optim.lr=3e-4");

  tessera::launch::EvalOptions ev;
  auto* c_eval = app.add_subcommand("eval", "Evaluate a checkpoint on its test split");
  c_eval
      ->add_option("--checkpoint", ev.checkpoint,
                   "tessera checkpoint (.safetensors) or Hugging Face folder")
      ->required();
  c_eval->add_option("--adapter", ev.adapter,
                     "Evaluate with this adapter attached (tessera adapter file or PEFT folder; "
                     "one recorded for another base is refused)");
  c_eval->add_flag("--force", ev.force,
                   "Load the adapter even if it was trained on a base with another fingerprint");
  c_eval->add_option("--max-batches", ev.max_batches,
                     "Evaluate at most this many batches (0: all)");
  c_eval->add_option("overrides", ev.overrides, "key=value config overrides, e.g. data.dir=/path");

  tessera::launch::TrainAdapterOptions ta;
  auto* c_ta = app.add_subcommand("train-adapter", "Train an adapter on a frozen base model");
  c_ta->add_option("--base", ta.base,
                   "Base model: a tessera checkpoint (.safetensors) or a Hugging Face folder")
      ->required();
  c_ta->add_option(
          "--task", ta.tasks,
          "permute:seed=N | rotate:deg=D | classes:A,B,... (MLP base) or text:GLOB[|GLOB] or "
          "tokens:GLOB[|GLOB] "
          "(decoder base); repeat --task to train one LoRA expert per task together")
      // One value per --task, so key=value overrides after it stay overrides.
      ->allow_extra_args(false);
  c_ta->add_option("--adapter", ta.adapter,
                   "KIND[:key=value,...], KIND lora|dora|vera|ia3|bottleneck; keys r, alpha, "
                   "rslora, dropout, targets=a|b|re:..., placement=houlsby|pfeiffer, act, "
                   "d_init, feedforward, exact_grad")
      ->capture_default_str();
  c_ta->add_option("--out", ta.out_dir, "Run folder (default runs/adapter)");
  c_ta->add_option("--library", ta.library.where,
                   "Also put the trained adapter(s) into this adapter library (a folder, or "
                   "grpc://HOST:PORT for a tessera serve)");
  c_ta->add_option("--token-file", ta.library.token_file,
                   "grpc:// library: file holding the service's bearer token");
  c_ta->add_option("--tls-ca", ta.library.tls_ca,
                   "grpc:// library: PEM roots to trust (turns TLS on)");
  c_ta->add_option("--name", ta.name, "Name in the library (default: the task)");
  c_ta->add_flag("--quiet", ta.quiet, "No progress line");
  c_ta->add_option("overrides", ta.overrides,
                   "key=value config overrides, e.g. epochs=1 optim.lr=3e-3");

  tessera::launch::BuildLibraryOptions bl;
  auto* c_bl = app.add_subcommand(
      "build-library",
      "Train one expert per task and commit each to the library once; under mpirun or "
      "tessera launch the tasks are spread over the ranks by a work queue on rank 0");
  c_bl->add_option("--base", bl.base,
                   "Base model: a tessera checkpoint (.safetensors) or a Hugging Face folder")
      ->required();
  c_bl->add_option("--tasks", bl.tasks,
                   "TASK[;TASK...] or @FILE (a task a line); {A..B} ranges expand, e.g. "
                   "'permute:seed={1..6}'; repeatable")
      ->required()
      ->allow_extra_args(false);
  c_bl->add_option("--adapter", bl.adapter, "KIND[:key=value,...] as for train-adapter")
      ->capture_default_str();
  c_bl->add_option("--library", bl.library.where,
                   "The library: a folder (rank 0 commits) or grpc://HOST:PORT (every rank "
                   "puts its experts through the lookup service)")
      ->required();
  c_bl->add_option("--token-file", bl.library.token_file,
                   "grpc:// library: file holding the service's bearer token");
  c_bl->add_option("--tls-ca", bl.library.tls_ca,
                   "grpc:// library: PEM roots to trust (turns TLS on)");
  c_bl->add_option("--out", bl.out_dir,
                   "Run folder: OUT/K per task, OUT/build.json (default "
                   "runs/library)");
  c_bl->add_option("--name-prefix", bl.name_prefix, "Expert names: PREFIX + task");
  c_bl->add_flag("--retrain", bl.retrain,
                 "Train tasks whose expert the library already holds for this base");
  c_bl->add_option("--task-timeout", bl.task_timeout_minutes,
                   "Minutes: a rank silent this long on one task is dropped, its task requeued")
      ->capture_default_str();
  c_bl->add_option("overrides", bl.overrides, "key=value config overrides for every task");

  tessera::launch::MergeOptions mo;
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
  std::string merge_weights;
  c_merge->add_option("--weights", merge_weights,
                      "Comma-separated weight per adapter (default 1 each)");
  c_merge->add_option("--rank", mo.rank, "Rank of the result (default: the largest input rank)");
  c_merge->add_option("--seed", mo.seed, "Seed for DARE's drops and LEGO's k-means")
      ->capture_default_str();
  c_merge->add_flag("--force", mo.force, "Merge adapters recorded for different bases");
  c_merge->add_option("--base", mo.base,
                      "Read every input against this base (a tessera checkpoint or a Hugging "
                      "Face folder): its modules, shapes and fingerprint; PiSSA/OLoRA converted");

  tessera::launch::ExportPeftOptions ep;
  auto* c_ep =
      app.add_subcommand("export-peft", "Write a tessera LoRA/DoRA adapter file as a PEFT folder");
  c_ep->add_option("adapter", ep.adapter, "tessera adapter file (.safetensors)")->required();
  c_ep->add_option("-o,--out", ep.out, "PEFT folder to write")->required();

  tessera::launch::ImportPeftOptions ip;
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

  tessera::launch::LibraryOptions lo;
  auto* c_lib = app.add_subcommand("library",
                                   "The adapter library, a folder or a tessera serve: ls, show, "
                                   "put, get, rm, search, stat, verify, gc, export-peft, "
                                   "import-peft");
  c_lib->add_option("--library", lo.library.where,
                    "Library folder (or grpc://HOST:PORT, the same as --remote)");
  std::string remote;
  c_lib->add_option("--remote", remote, "HOST:PORT of a tessera serve lookup service");
  c_lib->add_option("--token-file", lo.library.token_file,
                    "remote: file holding the service's bearer token");
  c_lib->add_option("--tls-ca", lo.library.tls_ca, "remote: PEM roots to trust (turns TLS on)");
  c_lib->add_option("--tls-server-name", lo.library.tls_server_name,
                    "remote: the name the server's certificate carries (default: HOST)");
  c_lib
      ->add_option("command", lo.command,
                   "ls | show | put | get | rm | search | stat | verify | gc | export-peft | "
                   "import-peft")
      ->required();
  c_lib->add_option("args", lo.args, "An adapter key (id, name, name@N) or, for put, a file");
  c_lib->add_option("--name", lo.name, "put: the adapter's name; ls: a name prefix");
  c_lib->add_option("--tag", lo.tags, "put: tags; ls/search: required tags");
  c_lib->add_option("--task", lo.task, "put: the task; ls/search: filter");
  c_lib->add_option("--kind", lo.kind, "ls/search: filter by kind");
  c_lib->add_option("--base", lo.base,
                    "put: the base, a checkpoint or a Hugging Face folder (its fingerprint is "
                    "stored); ls: filter by it; "
                    "get/export-peft: refuse an adapter of another base");
  c_lib->add_flag("--force", lo.force, "get/export-peft: ignore a --base fingerprint mismatch");
  c_lib->add_option("-o,--out", lo.out,
                    "get: the adapter file to write; export-peft: the PEFT folder");
  c_lib->add_option("--vector", lo.vector, "search: the query, comma-separated");
  c_lib->add_option("--signature", lo.signature, "search: which signature (default: the first)");
  c_lib->add_option("--limit,-k", lo.limit, "ls: rows; search: k")->capture_default_str();
  c_lib->add_flag("--json", lo.json, "JSON lines instead of a table");

  tessera::launch::ServeOptions so;
  auto* c_serve = app.add_subcommand(
      "serve", "Serve an adapter library folder through the gRPC lookup API until Ctrl-C");
  c_serve->add_option("--library", so.library, "Library folder")->required();
  c_serve->add_option("--listen", so.listen, "HOST:PORT (port 0: any free port)")
      ->capture_default_str();
  c_serve->add_option("--token-file", so.token_file,
                      "File holding the bearer token every call must carry (required unless "
                      "listening on loopback)");
  c_serve->add_option("--tls-cert", so.tls_cert, "Server certificate chain (PEM): serve TLS");
  c_serve->add_option("--tls-key", so.tls_key, "Server private key (PEM)");
  c_serve->add_option("--max-adapter-mb", so.max_adapter_mb, "Largest adapter a Put may send")
      ->capture_default_str();
  c_serve->add_option("--max-message-mb", so.max_message_mb, "Largest single gRPC message")
      ->capture_default_str();
  c_serve
      ->add_option("--max-call-seconds", so.max_call_seconds, "Calls running longer are cancelled")
      ->capture_default_str();
  c_serve->add_option("--threads", so.threads, "Most server threads")->capture_default_str();

  tessera::launch::LaunchOptions lc;
  auto* c_launch =
      app.add_subcommand("launch",
                         "Run a tessera command on N local ranks (Gloo over loopback), e.g. "
                         "tessera launch --nproc 2 pretrain --model mlp");
  c_launch->add_option("--nproc", lc.nproc, "Ranks")->capture_default_str();
  c_launch->add_option("--backend", lc.backend, "gloo (for MPI use mpirun)")->capture_default_str();
  c_launch
      ->add_option("--grace", lc.grace_seconds,
                   "Seconds the other ranks may take to stop after one fails")
      ->capture_default_str();
  c_launch->add_flag("--all-output", lc.all_output, "Show every rank's output, not only rank 0's");
  // Everything from the first word that is not a launch option on is the
  // command, in order: tessera launch --nproc 2 pretrain --model mlp steps=5
  c_launch->prefix_command();

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  spdlog::set_pattern("[%H:%M:%S] %v");
  try {
    if (*c_demo) return tessera::launch::run_demo(demo);
    if (*c_pre) return tessera::launch::run_pretrain(pre);
    if (*c_eval) return tessera::launch::run_eval(ev);
    if (*c_ta) return tessera::launch::run_train_adapter(ta);
    if (*c_ep) return tessera::launch::run_export_peft(ep);
    if (*c_bl) return tessera::launch::run_build_library(bl);
    if (*c_lib) {
      if (!remote.empty()) {
        if (!lo.library.where.empty())
          throw tessera::Error("library: give --library or --remote, not both");
        lo.library.where = "grpc://" + remote;
      }
      return tessera::launch::run_library(lo);
    }
    if (*c_serve) return tessera::launch::run_serve(so);
    if (*c_launch) {
      lc.command = c_launch->remaining();
      return tessera::launch::run_launch(lc);
    }
    if (*c_ip) return tessera::launch::run_import_peft(ip);
    if (*c_merge) {
      mo.weights = tessera::launch::parse_weights(merge_weights);
      return tessera::launch::run_merge(mo);
    }
  } catch (const tessera::Error& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "\ntessera: error: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "\ntessera: internal error (please report): %s\n", e.what());
    return 3;
  }
  return 0;
}
