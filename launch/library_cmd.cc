// `tessera library ...` (a folder or grpc://) and putting trained adapters into a library:
// tessera adapter files in and out, records printed as tables or JSON.
#include <google/protobuf/util/json_util.h>
#include <CLI/CLI.hpp>
#include <memory>

#include <openssl/rand.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <sstream>
#include <tuple>

#include "adapters/adapter_file.h"
#include "launch/commands.h"
#include "routing/arrow.h"
#include "runtime/common/error.h"
#include "runtime/io/fingerprint.h"
#include "runtime/io/hf.h"
#include "runtime/io/safetensors.h"
#include "store/adapter_io.h"
#include "store/library.h"
#include "store/service.h"

namespace tessera::launch {

namespace fs = std::filesystem;

namespace {

void check(const store::Status& s, const std::string& what) {
  check_store(s, what);
}

std::string record_json(const AdapterRecord& r) {
  std::string out;
  google::protobuf::util::JsonPrintOptions o;
  o.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(r, &out, o);
  return out;
}

}  // namespace

void check_store(const store::Status& s, const std::string& what) {
  if (!s.ok()) throw Error(str(what, ": ", s.ToString()));
}

std::string random_token() {
  unsigned char b[32];
  if (RAND_bytes(b, sizeof b) != 1) throw Error("no randomness for a token (OpenSSL RAND_bytes)");
  static const char* hex = "0123456789abcdef";
  std::string t;
  for (unsigned char c : b) {
    t.push_back(hex[c >> 4]);
    t.push_back(hex[c & 15]);
  }
  return t;
}

std::unique_ptr<store::LibraryApi> open_library(const LibraryTarget& t, bool create,
                                                bool read_only) {
  if (t.where.empty()) throw Error("--library: name the library folder (or grpc://HOST:PORT)");
  if (t.remote()) {
    store::ClientOptions co;
    co.target = t.where.substr(7);
    if (!t.token_file.empty())
      check_store(store::ReadTokenFile(t.token_file, &co.token), "--token-file");
    co.tls_ca_file = t.tls_ca;
    co.tls_server_name = t.tls_server_name;
    std::unique_ptr<store::RemoteLibrary> lib;
    check_store(store::RemoteLibrary::Connect(co, &lib), str("library '", t.where, "'"));
    return lib;
  }
  if (!t.token_file.empty() || !t.tls_ca.empty())
    throw Error(str("--library '", t.where,
                    "' is a folder; --token-file and --tls-ca are for grpc://HOST:PORT"));
  store::Options o;
  o.create_if_missing = create;
  o.read_only = read_only;
  std::unique_ptr<store::Library> lib;
  // Opening's messages name the folder and say what is wrong with it.
  const store::Status s = store::Library::Open(o, t.where, &lib);
  if (!s.ok()) throw Error(s.message());
  return lib;
}

void check_base(const std::string& adapter, const std::string& want, const std::string& base,
                bool force, std::string have) {
  if (have.empty()) have = io::base_fingerprint(base);
  if (have == want || force) return;
  throw Error(str("adapter '", adapter, "' was trained on a base with fingerprint ",
                  want.substr(0, 16), "…, but '", base, "' has ", have.substr(0, 16),
                  "… (another base, or other weights); pass --force to load it anyway"));
}

std::string put_adapter_file(store::LibraryApi& lib, const std::string& file,
                             AdapterRecord record) {
  AdapterRecord stored;
  check(store::PutAdapterFile(lib, file, std::move(record), &stored, routing::arrow_signatures),
        str("putting '", file, "' into the library"));
  return stored.name() + "@" + std::to_string(stored.version()) + " " + stored.id();
}

int run_library(const LibraryOptions& o) {
  const std::string& cmd = o.command;
  if (cmd == "import-peft") {
    if (o.args.size() != 1) throw Error("library import-peft: name one PEFT folder");
    if (o.name.empty()) throw Error("library import-peft: --name names the adapter");
    AdapterRecord r;
    r.set_name(o.name);
    for (const auto& t : o.tags) r.add_tags(t);
    r.set_task(o.task);
    AdapterRecord stored;
    auto lib = open_library(o.library, true);
    if (o.base.empty()) {
      // No base to check against: the folder's config and tensors are checked
      // against each other (LoRA only; DoRA's magnitudes need the base).
      check(store::ImportPeft(*lib, o.args[0], r, &stored, routing::arrow_signatures),
            "library import-peft");
    } else {
      // Checked against the base's modules and shapes, through an adapter file.
      const std::string tmp = (fs::temp_directory_path() /
                               ("tessera_import_" + std::to_string(::getpid()) + ".safetensors"))
                                  .string();
      ImportPeftOptions io{o.args[0], o.base, tmp};
      io.force = o.force;
      run_import_peft(io);
      r.mutable_base()->set_name(o.base);
      store::Status s = store::PutAdapterFile(*lib, tmp, r, &stored, routing::arrow_signatures);
      fs::remove(tmp);
      check(s, "library import-peft");
    }
    std::printf("%s@%ld %s\n", stored.name().c_str(), static_cast<long>(stored.version()),
                stored.id().c_str());
    return 0;
  }
  if (cmd == "put") {
    if (o.args.size() != 1) throw Error("library put: name one adapter file");
    if (o.name.empty()) throw Error("library put: --name names the adapter");
    AdapterRecord r;
    r.set_name(o.name);
    for (const auto& t : o.tags) r.add_tags(t);
    r.set_task(o.task);
    if (!o.base.empty()) {
      const std::string fp = io::base_fingerprint(o.base);
      const std::string recorded = adapters::read_adapter(o.args[0]).base_fingerprint;
      if (!recorded.empty()) check_base(o.args[0], recorded, o.base, o.force, fp);
      r.mutable_base()->set_name(o.base);
      r.mutable_base()->set_fingerprint(fp);
    }
    std::printf("%s\n", put_adapter_file(*open_library(o.library, true), o.args[0], r).c_str());
    return 0;
  }
  // Commands that take no words refuse stray ones rather than ignore them.
  if ((cmd == "ls" || cmd == "verify" || cmd == "stat" || cmd == "gc") && !o.args.empty())
    throw Error(str("library ", cmd, " takes no arguments; got '", o.args[0], "'",
                    o.args.size() > 1 ? str(" and ", o.args.size() - 1, " more") : std::string()));
  // Commands that only read open the folder read-only: no lock, nothing written.
  const bool reads = cmd == "ls" || cmd == "show" || cmd == "get" || cmd == "verify" ||
                     cmd == "stat" || cmd == "search" || cmd == "export-peft";
  auto lib = open_library(o.library, false, reads);
  if (cmd == "ls") {
    store::ListFilter f;
    f.tags = o.tags;
    f.kind = o.kind;
    f.task = o.task;
    f.name_prefix = o.name;
    if (!o.base.empty()) f.base_fingerprint = io::base_fingerprint(o.base);
    std::string token;
    int shown = 0;
    if (!o.json)
      std::printf("%-24s %4s %-10s %-16s %-10s %s\n", "name", "ver", "kind", "task", "tensors",
                  "id");
    do {
      store::ListPage page;
      check(lib->List(f, std::min(o.limit - shown, 1000), token, &page), "library ls");
      for (const auto& r : page.records) {
        uint64_t bytes = 0;
        for (const auto& t : r.tensors()) bytes += t.bytes();
        if (o.json)
          std::printf("%s\n", record_json(r).c_str());
        else
          std::printf("%-24s %4ld %-10s %-16s %7.1f KB %.16s\n", r.name().c_str(),
                      static_cast<long>(r.version()), r.kind().c_str(), r.task().c_str(),
                      bytes / 1024.0, r.id().c_str());
        ++shown;
      }
      token = page.next_token;
    } while (!token.empty() && shown < o.limit);
    return 0;
  }
  if (cmd == "show" || cmd == "get") {
    if (o.args.size() != 1)
      throw Error(str("library ", cmd, ": name one adapter (id, name, name@N)"));
    AdapterRecord r;
    std::vector<store::TensorData> ts;
    check(lib->Get(o.args[0], &r, cmd == "get" ? &ts : nullptr), str("library ", cmd));
    if (cmd == "get" && !o.base.empty() && !o.force)
      check(store::CheckBase(r, io::base_fingerprint(o.base)), str("library get --base ", o.base));
    if (cmd == "show") {
      std::printf("%s\n", record_json(r).c_str());
      return 0;
    }
    if (o.out.empty()) throw Error("library get: -o names the adapter file to write");
    check(store::WriteAdapterFile(r, ts, o.out), "library get");
    std::printf("%s@%ld → %s\n", r.name().c_str(), static_cast<long>(r.version()), o.out.c_str());
    return 0;
  }
  if (cmd == "export-peft") {
    if (o.args.size() != 1 || o.out.empty())
      throw Error("library export-peft: name one adapter and the PEFT folder (-o)");
    AdapterRecord r;
    check(lib->Get(o.args[0], &r), "library export-peft");
    if (!o.base.empty() && !o.force)
      check(store::CheckBase(r, io::base_fingerprint(o.base)),
            str("library export-peft --base ", o.base));
    check(store::ExportPeft(*lib, r.id(), o.out), "library export-peft");
    std::printf("%s@%ld → PEFT folder %s\n", r.name().c_str(), static_cast<long>(r.version()),
                o.out.c_str());
    return 0;
  }
  if (cmd == "rm") {
    if (o.args.size() != 1) throw Error("library rm: name one adapter");
    check(lib->Delete(o.args[0]), "library rm");
    std::printf("deleted %s (tessera library gc reclaims the space)\n", o.args[0].c_str());
    return 0;
  }
  if (cmd == "verify") {
    int64_t n = 0;
    check(lib->Verify(&n), "library verify");
    std::printf("%ld records verified\n", static_cast<long>(n));
    return 0;
  }
  if (cmd == "stat") {
    store::LibraryStats st;
    check(lib->Stat(&st), "library stat");
    if (o.json)
      std::printf(
          "{\"records\":%ld,\"deleted\":%ld,\"signatures\":%ld,\"tensor_bytes\":%lu,"
          "\"disk_bytes\":%lu}\n",
          static_cast<long>(st.records), static_cast<long>(st.deleted),
          static_cast<long>(st.signatures), static_cast<unsigned long>(st.tensor_bytes),
          static_cast<unsigned long>(st.disk_bytes));
    else
      std::printf(
          "%ld records (%ld deleted, awaiting gc), %ld signatures, %.1f KB of tensors, "
          "%.1f KB on disk\n",
          static_cast<long>(st.records), static_cast<long>(st.deleted),
          static_cast<long>(st.signatures), st.tensor_bytes / 1024.0, st.disk_bytes / 1024.0);
    return 0;
  }
  if (cmd == "gc") {
    int64_t n = 0;
    check(lib->Gc(&n), "library gc");
    std::printf("%ld deleted records removed\n", static_cast<long>(n));
    return 0;
  }
  if (cmd == "search") {
    std::vector<float> q;
    std::stringstream ss(o.vector);
    std::string item;
    while (std::getline(ss, item, ',')) {
      try {
        q.push_back(std::stof(item));
      } catch (const std::logic_error&) {
        throw Error(str("--vector '", o.vector, "': '", item, "' is not a number"));
      }
    }
    if (q.empty()) throw Error("library search: --vector gives the query, e.g. 0.1,0.3,-2");
    store::ListFilter f;
    f.tags = o.tags;
    f.kind = o.kind;
    f.task = o.task;
    std::vector<store::SearchHit> hits;
    check(lib->Search(o.signature, q, std::min(o.limit, 1000), f, &hits), "library search");
    for (const auto& h : hits)
      std::printf(o.json ? "{\"id\":\"%s\",\"name\":\"%s\",\"version\":%ld,\"score\":%.6f}\n"
                         : "%.16s  %s@%ld  %.4f\n",
                  h.id.c_str(), h.name.c_str(), static_cast<long>(h.version), h.score);
    return 0;
  }
  throw Error(str("library command '", cmd,
                  "': expected ls, show, put, get, rm, search, stat, verify, gc, export-peft or "
                  "import-peft"));
}

Command add_library_command(CLI::App& app) {
  auto o = std::make_shared<LibraryOptions>();
  LibraryOptions& lo = *o;
  auto remote_ptr = std::make_shared<std::string>();
  std::string& remote = *remote_ptr;
  auto* c_lib = app.add_subcommand("library",
                                   "The adapter library, a folder or a tessera serve: ls, show, "
                                   "put, get, rm, search, stat, verify, gc, export-peft, "
                                   "import-peft");
  c_lib->add_option("--library", lo.library.where,
                    "Library folder (or grpc://HOST:PORT, the same as --remote)");
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
  return {c_lib, [o, remote_ptr] {
            if (!remote_ptr->empty()) {
              if (!o->library.where.empty())
                throw Error("library: give --library or --remote, not both");
              o->library.where = "grpc://" + *remote_ptr;
            }
            return run_library(*o);
          }};
}

}  // namespace tessera::launch
