// A work queue over a process group: items 0..n-1 handed out one at a time
// by rank 0, so a rank that finishes early takes the next item instead of
// idling behind a slow one. Rank 0 works too (its main thread), while a
// thread per other rank answers that rank's requests.
//
// Every rank calls distribute() with the same item count. `work(i)` runs on
// whichever rank is handed item i and returns bytes for rank 0 (a trained
// adapter, say); `done(i, rank, bytes)` runs on rank 0, once per finished
// item, one call at a time. A `work` that throws fails its item (the message
// goes to rank 0; the item is not retried: the same input fails the same
// way). A rank that dies or stops answering within `item_timeout` loses its
// item back to the queue, and the rest of the world finishes the work; its
// failure is reported. A `done` that throws fails its item.
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <string>
#include <vector>

#include "runtime/dist/process_group.h"
#include "runtime/dist/tags.h"

namespace tessera::dist {

struct WorkOptions {
  uint32_t tag = tags::kWorkQueue;  // the messages of the queue
  std::chrono::milliseconds item_timeout{std::chrono::hours(6)};
};

struct WorkReport {
  size_t item = 0;
  int rank = -1;  // the rank that finished (or failed) it
  bool ok = false;
  std::string error;   // why it failed
  double seconds = 0;  // time `work` took on that rank
};

struct LostRank {
  int rank = -1;
  std::string why;
  int64_t item = -1;  // the item it held, back in the queue (-1: none)
};

struct WorkSummary {
  std::vector<WorkReport> items;     // rank 0: one per item, in item order; others: their own
  std::vector<LostRank> ranks_lost;  // rank 0: every rank that dropped out
  bool all_ok() const;
};

WorkSummary distribute(
    ProcessGroup& group, size_t items, const std::function<std::string(size_t item)>& work,
    const std::function<void(size_t item, int rank, const std::string& bytes)>& done,
    const WorkOptions& o = {});

}  // namespace tessera::dist
