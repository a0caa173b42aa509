// `tessera serve`: the gRPC lookup API over a library folder until SIGINT/SIGTERM.
#include <signal.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <memory>

#include "launch/commands.h"
#include "runtime/common/error.h"
#include "store/library.h"
#include "store/service.h"

namespace tessera::launch {

int run_serve(const ServeOptions& o) {
  if (o.library.empty()) throw Error("serve: --library names the library folder to serve");
  if (o.library.rfind("grpc://", 0) == 0)
    throw Error("serve: --library is a folder on this machine, not grpc://");
  store::ServerOptions so;
  so.listen = o.listen;
  if (!o.token_file.empty())
    check_store(store::ReadTokenFile(o.token_file, &so.token), "--token-file");
  so.tls_cert_file = o.tls_cert;
  so.tls_key_file = o.tls_key;
  auto mb = [](double v, const char* flag) {
    if (!(v > 0) || v > 1 << 20) throw Error(str(flag, " ", v, ": expected a size in MB > 0"));
    return static_cast<uint64_t>(v * (1 << 20));
  };
  so.max_adapter_bytes = mb(o.max_adapter_mb, "--max-adapter-mb");
  so.max_message_bytes = mb(o.max_message_mb, "--max-message-mb");
  so.chunk_bytes = static_cast<uint32_t>(std::min<uint64_t>(4u << 20, so.max_message_bytes / 2));
  if (!(o.max_call_seconds > 0))
    throw Error(str("--max-call-seconds ", o.max_call_seconds, ": expected > 0"));
  so.max_call_ms = static_cast<int64_t>(o.max_call_seconds * 1000);
  if (o.threads < 2 || o.threads > 4096) throw Error("--threads: expected 2..4096");
  so.max_threads = o.threads;
  // Signals are taken by sigwait below: block them before gRPC starts its threads.
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
  store::Options lo;
  lo.create_if_missing = true;
  // A library that does not exist yet is created, and said so: a mistyped
  // path must not look like the library the user meant.
  const bool created = !std::filesystem::exists(std::filesystem::path(o.library) / "CURRENT");
  std::unique_ptr<store::Library> lib;
  check_store(store::Library::Open(lo, o.library, &lib), str("library '", o.library, "'"));
  std::unique_ptr<store::Server> server;
  check_store(store::Server::Start(lib.get(), so, &server), "serve");
  const std::string host = o.listen.substr(0, o.listen.rfind(':'));
  std::printf("serving %slibrary %s on %s:%d (%s%s); Ctrl-C stops\n",
              created ? "a NEW, EMPTY " : "", o.library.c_str(), host.c_str(), server->port(),
              so.token.empty() ? "no token" : "bearer token",
              so.tls_cert_file.empty() ? ", plaintext" : ", TLS");
  std::fflush(stdout);  // the banner first: scripts read it as the first line
  if (created)
    std::fprintf(stderr,
                 "tessera serve: %s held no library; it was created now (check the path if you "
                 "meant an existing one)\n",
                 o.library.c_str());
  int sig = 0;
  sigwait(&sigs, &sig);
  std::printf("signal %d: finishing running calls\n", sig);
  std::fflush(stdout);
  server->Shutdown(5000);
  return 0;
}

Command add_serve_command(CLI::App& app) {
  auto o = std::make_shared<ServeOptions>();
  ServeOptions& so = *o;
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
  return {c_serve, [o] { return run_serve(*o); }};
}

}  // namespace tessera::launch
