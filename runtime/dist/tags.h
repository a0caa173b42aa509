// Message tags: every call of a ProcessGroup carries one (CallOptions::tag),
// and calls with different tags never match each other. Every tag in use is
// named here, so a user that runs beside others (a thread of its own, a
// federated round) takes one nobody else uses.
// Under MPI each tag has its own communicator, created on first use by every
// rank in the same order: keep the set small and fixed.
#pragma once

#include <cstdint>

namespace tessera::dist::tags {

// The default tag (CallOptions' own): calls made one after another in
// program order — the training step's gradient buckets (GradReducer), then
// its loss and loss terms, and launch's barriers. Never two at once.
constexpr uint32_t kDefault = 0;
// The work queue (work_queue.h): requests, results and stops.
constexpr uint32_t kWorkQueue = 4000;
// Reserved for federated rounds (federated/): [first, last].
constexpr uint32_t kFederatedFirst = 10000;
constexpr uint32_t kFederatedLast = 19999;

}  // namespace tessera::dist::tags
