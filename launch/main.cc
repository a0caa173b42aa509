// tessera — the command line. Subcommands wire runtime pieces together; no
// algorithm lives here.
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "launch/commands.h"
#include "runtime/common/error.h"

namespace {

// Levenshtein distance: the nearest command name for a mistyped one.
size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

}  // namespace

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

  // The first word names a command: `help` is --help, and a word that is no
  // command is named with the nearest one (CLI11 alone says "A subcommand is
  // required").
  if (argc >= 2 && argv[1][0] != '-') {
    const std::string word = argv[1];
    if (word == "help") {
      std::printf("%s", app.help().c_str());
      return 0;
    }
    bool known = false;
    std::string nearest;
    size_t best = static_cast<size_t>(-1);
    for (const Command& c : commands) {
      const std::string& name = c.sub->get_name();
      known = known || name == word;
      const size_t d = edit_distance(word, name);
      if (d < best) best = d, nearest = name;
    }
    if (!known) {
      std::fprintf(stderr, "tessera: error: unknown command '%s'%s (tessera --help lists them)\n",
                   word.c_str(),
                   best <= 2 ? (std::string("; did you mean ") + nearest + "?").c_str() : "");
      return 2;
    }
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    // A mistake on the command line: one line, exit 2 like every other
    // mistake (CLI11's own codes 105-115 are its internals).
    std::string sub;
    for (const Command& c : commands)
      if (*c.sub) sub = c.sub->get_name();
    std::fprintf(stderr, "tessera: error: %s%s (tessera %s--help)\n",
                 sub.empty() ? "" : (sub + ": ").c_str(), e.what(),
                 sub.empty() ? "" : (sub + " ").c_str());
    return 2;
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
