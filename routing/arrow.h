// Arrow routing signatures of LoRA experts (Ostapenko et al., 2024,
// "Towards Modular LLMs by Building and Reusing a Library of LoRAs"; PEFT's
// ArrowConfig and mttl's arrow router): what an Arrow router compares a
// module input with to choose experts, and what the library keeps with each
// record as data (store/ computes none; launch/ computes them when an
// adapter goes in, and a router reads them back).
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "adapters/adapter_file.h"
#include "adapters/merge.h"
#include "routing/router.h"

namespace tessera::routing {

// The Arrow prototype of one LoRA module with A [r, in], B [out, r]: the top
// right singular vector of B·A (the scale does not change it), unit length,
// in the module's input space [in].
//
// Computed exactly, never forming B·A and never iterating: a thin QR of Aᵀ
// (Aᵀ = Q R, Q [in, r]) makes (B·A)ᵀ(B·A) = Q (R BᵀB Rᵀ) Qᵀ, so the
// prototype is Q·u for u the top eigenvector of the r×r matrix R BᵀB Rᵀ
// (LAPACK dgeqrf/dorgqr and dsyev, in double). PEFT instead runs 15 steps
// of power iteration, which is degrees off when σ₂/σ₁ is near 1; we depart
// from it deliberately (its result is the same where it converges).
//
// Sign: a singular vector's sign is arbitrary; the largest-magnitude entry
// (the first, on ties) is made positive, so the same expert always gives
// the same vector and cosine search over stored prototypes is meaningful.
// A zero delta (B·A = 0) gives a zero vector. When σ₁ = σ₂ exactly the top
// direction is not unique; the vector returned is one of them.
std::vector<float> arrow_prototype(const adapters::LoraFactors& f);

// An adapter's signatures: for LoRA and DoRA, ("arrow/<module>", prototype)
// for every Linear module (embedding LoRAs and modules_to_save copies get
// none); for other kinds, none.
std::vector<std::pair<std::string, std::vector<float>>> arrow_signatures(
    const adapters::AdapterFile& adapter);

// GenKnowSub (Belofsky et al., as PEFT's ArrowConfig(use_gks=True) does
// it): the mean A and the mean B of the "general" experts subtracted from
// every task expert's A and B — "forgetting via negation" of what the
// general experts know. Returns new factors (scales kept); PEFT instead
// overwrites the loaded task adapters in place. Error: no general experts,
// or an expert whose A or B shape differs from the first general's (PEFT
// too needs one rank for all).
std::vector<adapters::LoraFactors> gen_know_sub(const std::vector<adapters::LoraFactors>& tasks,
                                                const std::vector<adapters::LoraFactors>& general);

// Arrow's routing of x [N, in] (one row per token) among E experts with
// prototypes [E, in] (arrow_prototype of each expert's factors of this
// module): scores ℓ_e = |x·p_e| / T with x not normalised — as PEFT's code
// does (its docs say cosine) — then the top k per row and softmax over those
// k only (top_k_softmax). Defaults as PEFT: k = 3, T = 1; mttl's T = √in is
// the caller's choice. Error: prototypes not [E, in], k or T out of range.
TopK arrow_route(const Tensor& x, const Tensor& prototypes, int64_t top_k = 3,
                 float temperature = 1.0f);

}  // namespace tessera::routing
