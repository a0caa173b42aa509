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

  // Each command registers its own options (launch/<command>_cmd.cc), in
  // the order --help lists them.
  using namespace tessera::launch;
  const std::vector<Command> commands = {
      add_demo_command(app),          add_pretrain_command(app),      add_eval_command(app),
      add_train_adapter_command(app), add_build_library_command(app), add_merge_command(app),
      add_export_peft_command(app),   add_import_peft_command(app),   add_library_command(app),
      add_serve_command(app),         add_launch_command(app),        add_route_command(app),
      add_centroids_command(app),     add_train_router_command(app)};

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  spdlog::set_pattern("[%H:%M:%S] %v");
  try {
    for (const Command& c : commands)
      if (*c.sub) return c.run();
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
