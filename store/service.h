// The adapter library's lookup API over gRPC (proto/tessera/library_service.proto):
// `Server` serves a Library, `RemoteLibrary` is the client and speaks the same
// LibraryApi as the embedded store, so every caller (the CLI, the demo,
// later the router and the federated server) works local or remote alike.
//
// Security and limits, all enforced by the server:
//   - a bearer token (`authorization: Bearer <token>` metadata) on every
//     call, compared in constant time; UNAUTHENTICATED otherwise;
//   - optional TLS (server certificate and key, PEM);
//   - a per-message size limit (gRPC's RESOURCE_EXHAUSTED above it), a
//     per-adapter size limit on Put (RESOURCE_EXHAUSTED naming the sizes)
//     and a per-call time limit (calls running past it are cancelled, so a
//     stalled client cannot hold a server thread);
//   - every request field validated, INVALID_ARGUMENT naming the field; a
//     Put whose stream ends before every tensor byte arrived is refused and
//     stores nothing.
// Status codes travel both ways: NotFound ↔ NOT_FOUND, Corruption ↔
// DATA_LOSS, InvalidArgument ↔ INVALID_ARGUMENT, AlreadyExists ↔
// ALREADY_EXISTS, FailedPrecondition ↔ FAILED_PRECONDITION, ...
#pragma once

#include "store/client.h"
#include "store/server.h"
