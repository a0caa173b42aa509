// The CLI subcommands, callable from tests as functions.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace tessera {
class AdapterRecord;
}
namespace tessera::store {
class LibraryApi;
class Status;
}  // namespace tessera::store

namespace CLI {
class App;
}
namespace tessera::nn {
class ParameterSet;
}

namespace tessera::launch {

// A subcommand: its options registered on the app, and what runs it once
// the command line is parsed. One add_*_command per command, in its own file.
struct Command {
  CLI::App* sub = nullptr;
  std::function<int()> run;
};
Command add_demo_command(CLI::App& app);
Command add_pretrain_command(CLI::App& app);
Command add_eval_command(CLI::App& app);
Command add_train_adapter_command(CLI::App& app);
Command add_build_library_command(CLI::App& app);
Command add_merge_command(CLI::App& app);
Command add_export_peft_command(CLI::App& app);
Command add_import_peft_command(CLI::App& app);
Command add_library_command(CLI::App& app);
Command add_serve_command(CLI::App& app);
Command add_launch_command(CLI::App& app);
Command add_route_command(CLI::App& app);
Command add_centroids_command(CLI::App& app);

// Where an adapter library is: a folder (the embedded store), or
// grpc://HOST:PORT for a `tessera serve` lookup service.
struct LibraryTarget {
  std::string where;
  std::string token_file;       // the service's bearer token
  std::string tls_ca;           // PEM roots: talk TLS, trusting these
  std::string tls_server_name;  // the name to expect in the server's certificate
  bool empty() const { return where.empty(); }
  bool remote() const { return where.rfind("grpc://", 0) == 0; }
};
// Opens the folder (created when `create`) or connects to the service; a
// failure is an Error naming the library.
std::unique_ptr<store::LibraryApi> open_library(const LibraryTarget& t, bool create,
                                                bool read_only = false);
// A failed store Status as an Error: "what: Code: message".
void check_store(const store::Status& s, const std::string& what);
// 32 random bytes as hex (OpenSSL's RAND_bytes): a bearer token.
std::string random_token();

struct DemoOptions {
  std::string out_dir = "runs/demo";
  bool quick = false;
  int threads = 0;
  std::string data_dir = "/usr/share/datasets/fashion-mnist";
};
struct PretrainOptions {
  std::string config, model, resume;
  int64_t max_steps = 0;
  bool quiet = false;
  std::vector<std::string> overrides;
};
struct EvalOptions {
  std::string checkpoint;
  std::string adapter;    // tessera adapter file or PEFT folder, applied to the checkpoint
  LibraryTarget library;  // with router: where the router record is
  std::string router;     // a router record (name@version) applied to the checkpoint
  bool force = false;     // load an adapter whose base fingerprint differs
  int64_t max_batches = 0;
  std::vector<std::string> overrides;
};

struct TrainAdapterOptions {
  std::string base;  // base checkpoint
  // permute:seed=N | rotate:deg=D | classes:A,B | text:GLOB[|GLOB]; several
  // (MLP base): one LoRA expert each, trained together in one pass.
  std::vector<std::string> tasks;
  std::string adapter = "lora:r=8,alpha=16,targets=all-linear";
  std::string out_dir;    // default runs/adapter
  LibraryTarget library;  // also put the trained adapter(s) into this library
  std::string name;       // their name there (default: the task)
  bool quiet = false;
  std::vector<std::string> overrides;
};

// One expert per task, the tasks spread over the ranks of the world by a
// work queue on rank 0, each expert committed to the library once.
struct BuildLibraryOptions {
  std::string base;                // base checkpoint
  std::vector<std::string> tasks;  // TASK[;TASK...] | @FILE; {A..B} integer ranges expand
  std::string adapter = "lora:r=8,alpha=16,targets=all-linear";
  LibraryTarget library;              // folder (rank 0 commits) or grpc:// (each rank puts)
  std::string out_dir;                // default runs/library: OUT/K per task, OUT/build.json
  std::string name_prefix;            // expert names: prefix + task
  bool retrain = false;               // train tasks the library already holds for this base
  double task_timeout_minutes = 360;  // a rank silent this long on one task is dropped
  std::string cluster;                // mbc:k=K[,...]: one expert per cluster of tasks
  std::vector<std::string> overrides;
};

struct MergeOptions {
  std::string method = "linear";    // name[:key=value,...], see run_merge
  std::vector<std::string> inputs;  // PEFT LoRA folders or tessera adapter files
  std::string out;
  std::vector<float> weights;  // default: 1 each
  int64_t rank = 0;            // 0: the largest input rank
  uint64_t seed = 0;           // DARE's drops
  bool force = false;          // merge adapters recorded for different bases
  std::string base;            // optional: read every input against this base
};

struct ExportPeftOptions {
  std::string adapter;  // tessera adapter file (lora or dora)
  std::string out;      // PEFT folder
};
struct ImportPeftOptions {
  std::string peft_dir;  // PEFT folder
  std::string base;      // base checkpoint, to check modules and shapes
  std::string out;       // tessera adapter file
  bool force = false;    // import a folder whose recorded base fingerprint differs
};

struct LibraryOptions {
  LibraryTarget library;
  std::string
      command;  // ls | show | put | get | rm | search | verify | gc | export-peft | import-peft
  std::vector<std::string> args;  // keys or files
  std::string name, task, kind, base, out, signature, vector;
  std::vector<std::string> tags;
  int limit = 100;
  bool json = false;
  bool force = false;  // get/export-peft: ignore a base fingerprint mismatch
};
struct ServeOptions {
  std::string library;  // folder
  std::string listen = "127.0.0.1:7433";
  std::string token_file, tls_cert, tls_key;
  double max_adapter_mb = 4096, max_message_mb = 8, max_call_seconds = 120;
  int threads = 64;
};

// tessera route: the library's experts routed on inputs with no task id.
struct RouteOptions {
  std::string base;       // base checkpoint or Hugging Face folder
  LibraryTarget library;  // folder or grpc://
  std::vector<std::string>
      routers;       // routing/spec.h; default base, task, arrow, centroid (if stored)
  std::string eval;  // TASK[;TASK...]: the mixed evaluation tasks
  std::vector<std::string> experts;  // names (default: every LoRA expert for the base)
  int64_t max_batches = 0;           // per task (0: the whole test split)
  std::string json_out;              // also write the results here
  std::string png_out;               // also draw them as heat maps here (PNG)
  std::vector<std::string> overrides;
};
// What run_route measured (also printed as tables).
struct RouteResult {
  std::vector<std::string> tasks, experts, modules;
  std::vector<int> task_expert;  // per task: its expert's index, or -1 (no expert saw it)
  struct Row {
    std::string router;
    std::vector<double> score;       // per task: accuracy, or bits per byte/token (LM)
    double mean = 0;                 // over tasks
    std::vector<double> module_acc;  // per module: routing accuracy (rows of tasks with experts)
    double routing_acc = -1;         // over modules (-1: no task has an expert)
    double correct_mass = -1;        // mean weight on the true expert
    double entropy = 0;              // mean routing entropy (nats)
    std::vector<std::vector<double>> usage;            // [task][expert]: share of routing weight
    std::vector<std::vector<double>> task_module_acc;  // [task][module]; -1: the task has no expert
    // Seconds over all tasks: evaluating (forward with the routed slots),
    // scoring (the router's signature GEMM, top-k and softmax) and, for a
    // library-scale router, retrieving (query, search, expert cache).
    double eval_seconds = 0, score_seconds = 0, retrieve_seconds = 0;
    // Library-scale routers: searches, and experts fetched from the library
    // while this router ran (the cache, shared by a run's routers, held the
    // others; the first expert, read to choose the modules, is not counted).
    int64_t retrievals = 0, cache_misses = 0;
  };
  std::vector<Row> rows;
  bool classifier = true;
};
RouteResult run_route(const RouteOptions& o);
// The table of scores per router and task with routing accuracy, mass on the
// true expert and entropy; with `details` also routing accuracy per module
// and each router's expert usage per task.
void print_route(const RouteResult& r, bool details);
// The heat maps of a routed run: per router, each task's share of routing
// weight per expert (the 40 most used when there are more), and the routing
// accuracy of every router per module. Error naming `path` when it cannot
// be written.
void write_route_png(const RouteResult& r, const std::string& path);
// Stores hidden-state centroids (routing/centroids.h) with every LoRA expert
// of the library trained on `base` that has a task and lacks them.
struct CentroidsOptions {
  std::string base;
  LibraryTarget library;
  int64_t max_rows = 2048;
  bool recompute = false;  // also experts that have them
  std::vector<std::string> overrides;
};
int run_centroids(const CentroidsOptions& o);

// tessera train-router: a router trained over a frozen base (and, for mole,
// frozen library experts) on several tasks, stored as a library record.
struct TrainRouterOptions {
  std::string base;
  LibraryTarget library;
  std::string router = "mole";         // routing/trained.h
  std::vector<std::string> tasks;      // TASK[;TASK...], repeatable
  std::vector<std::string> experts;    // mole: these (default: every LoRA expert for the base)
  std::string targets = "all-linear";  // mixlora, poly: the modules
  std::string name;                    // default: the router's kind
  std::string out_dir;                 // default runs/router
  bool quiet = false;
  std::vector<std::string> overrides;
};
int run_train_router(const TrainRouterOptions& o);
Command add_train_router_command(CLI::App& app);

struct LaunchOptions {
  int nproc = 2;
  std::string backend = "gloo";
  int grace_seconds = 30;            // after a rank fails, how long the others may take to stop
  bool all_output = false;           // every rank's stdout, not only rank 0's
  std::vector<std::string> command;  // the tessera command and its arguments
};
// Starts the command on `nproc` local ranks and waits; the first non-zero
// exit code (after naming the rank) is the result.
int run_launch(const LaunchOptions& o);

int run_demo(const DemoOptions& o);
// Puts a tessera adapter file into the library under `record`'s name, tags,
// task, base, scores and provenance, with its Arrow routing signatures
// (routing/arrow.h: launch/ computes them, the store keeps them); returns
// "name@version id".
std::string put_adapter_file(store::LibraryApi& library, const std::string& file,
                             AdapterRecord record);
// The adapter library (store/), local or through the lookup API.
int run_library(const LibraryOptions& o);
// `tessera serve`: the lookup API over a library folder until SIGINT/SIGTERM.
int run_serve(const ServeOptions& o);
// Base fingerprints: runtime/io/fingerprint.h.
// Refuses (Error naming both) an adapter recorded for base fingerprint `want`
// on `base` unless `force`; `have` is base's fingerprint when already known.
void check_base(const std::string& adapter, const std::string& want, const std::string& base,
                bool force, std::string have = "");
int run_export_peft(const ExportPeftOptions& o);
// Validates the PEFT folder against the base, then writes tessera's adapter file.
int run_import_peft(const ImportPeftOptions& o);
// Combines PEFT LoRA adapters of one base into one PEFT adapter. Methods:
// cat (exact, ranks add up), linear[:lambda=L] / svd (Σ λ wᵢ ΔWᵢ refactored to
// --rank), ties:density=D, dare_linear:p=P, dare_ties:p=P,density=D,
// magnitude_prune:density=D (each pruned, then summed).
int run_merge(const MergeOptions& o);
// "0.5,1,2" → {0.5, 1, 2}; "" → {}. A malformed number is an Error naming it.
std::vector<float> parse_weights(const std::string& csv);
int run_train_adapter(const TrainAdapterOptions& o);
int run_build_library(const BuildLibraryOptions& o);
int run_pretrain(const PretrainOptions& o);
int run_eval(const EvalOptions& o);

}  // namespace tessera::launch
