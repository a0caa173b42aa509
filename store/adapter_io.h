// Adapter files and PEFT folders in and out of any library (embedded or
// remote, through LibraryApi): the store's side of interchange.
//
// An adapter going in takes its kind, spec, target modules and base (name and
// fingerprint, unless the record names them) from the file, the rest (name,
// tags, task, scores, provenance) from the caller's record. Routing
// signatures are data to the store: the record's own (hidden-state centroids
// recorded while training), and what the caller's `signatures` function
// returns for the adapter under names the record does not already carry
// (launch/ passes Arrow's, routing/arrow.h); the store computes none itself.
// A malformed file or folder is InvalidArgument naming it.
#pragma once

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "adapters/adapter_file.h"

#include "store/library.h"

namespace tessera::store {

// (name, vector) signatures of an adapter read from its file. Required on
// every put, so that no caller stores a record without them by forgetting:
// nullptr says "none" explicitly.
using SignatureFn = std::function<std::vector<std::pair<std::string, std::vector<float>>>(
    const adapters::AdapterFile&)>;

Status PutAdapterFile(LibraryApi& lib, const std::string& file, AdapterRecord record,
                      AdapterRecord* stored, const SignatureFn& signatures);
// The same for an adapter value in memory (adapters::AdapterFile with its
// image): no file involved.
Status PutAdapter(LibraryApi& lib, const adapters::AdapterFile& adapter, AdapterRecord record,
                  AdapterRecord* stored, const SignatureFn& signatures);
// Adapter `key` as a value in memory (its tensors and spec; `record` may be null).
Status GetAdapter(LibraryApi& lib, const std::string& key, adapters::AdapterFile* adapter,
                  AdapterRecord* record = nullptr);
// Writes a record and its tensors (as Get returns them) as tessera's adapter file.
Status WriteAdapterFile(const AdapterRecord& r, const std::vector<TensorData>& tensors,
                        const std::string& file);
// Writes adapter `key` as tessera's adapter file; `record` may be null.
Status GetAdapterFile(LibraryApi& lib, const std::string& key, const std::string& file,
                      AdapterRecord* record = nullptr);
// Writes LoRA/DoRA adapter `key` as a PEFT folder (base fingerprint kept in
// its safetensors metadata).
Status ExportPeft(LibraryApi& lib, const std::string& key, const std::string& dir);
// Puts a PEFT LoRA folder (config and tensors checked against each other;
// checking it against a base model is the caller's: tessera library
// import-peft --base does).
Status ImportPeft(LibraryApi& lib, const std::string& dir, AdapterRecord record,
                  AdapterRecord* stored, const SignatureFn& signatures);

}  // namespace tessera::store
