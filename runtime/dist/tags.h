// Message tags: every call of a ProcessGroup carries one (CallOptions::tag),
// and calls with different tags never match each other. Each user of the
// process groups takes its tag from here, so two users can never collide.
// Under MPI each tag has its own communicator, created on first use by every
// rank in the same order: keep the set small and fixed.
#pragma once

#include <cstdint>

namespace tessera::dist::tags {

// One training step's collectives: the gradient buckets (GradReducer) and
// the step's loss and metrics. They run one after another, so one tag serves.
constexpr uint32_t kTrainStep = 0;
// The work queue (work_queue.h): requests, results and stops.
constexpr uint32_t kWorkQueue = 4000;
// Reserved for federated rounds (federated/): [first, last].
constexpr uint32_t kFederatedFirst = 10000;
constexpr uint32_t kFederatedLast = 19999;

}  // namespace tessera::dist::tags
