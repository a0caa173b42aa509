// Arrow routing signatures of LoRA adapters: what a router compares an input
// with to choose experts, and what the library keeps with each record as data
// (store/ computes none; launch/ computes them when an adapter goes in).
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "adapters/adapter_file.h"
#include "adapters/merge.h"

namespace tessera::adapters {

// The Arrow routing prototype of a LoRA module (Ostapenko et al., 2024, as in
// mttl): the top right singular vector of s·B·A, unit length, in the module's
// input space, signed so that its largest-magnitude entry is positive (a
// singular vector's sign is arbitrary; a fixed one makes cosine search
// meaningful). Power iteration through the rank-r factors, never forming
// B·A. A zero delta gives a zero vector.
std::vector<float> arrow_prototype(const LoraFactors& f);

// An adapter's signatures: for LoRA and DoRA, ("arrow/<module>", prototype)
// for every Linear module (embedding LoRAs and modules_to_save copies get
// none); for other kinds, none.
std::vector<std::pair<std::string, std::vector<float>>> arrow_signatures(
    const AdapterFile& adapter);

}  // namespace tessera::adapters
