#include "runtime/dist/work_queue.h"

#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>

#include "runtime/dist/codec.h"

namespace tessera::dist {

namespace {

// Messages in the one framing (codec.h). Worker → rank 0: {kind, item,
// microseconds, payload (the result, or the error text)}; the first only
// asks for work. Rank 0 → worker: {the next item, or kStop}.
enum Kind : int64_t { kReady = 1, kDone = 2, kFailed = 3 };
constexpr int64_t kStop = -1;

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Runs `work` on one item: ok and its bytes, or the error text.
bool run_item(const std::function<std::string(size_t)>& work, size_t item, std::string* out,
              double* secs) {
  const auto t0 = std::chrono::steady_clock::now();
  bool ok = true;
  try {
    *out = work(item);
  } catch (const std::exception& e) {
    *out = e.what();
    ok = false;
  }
  *secs = seconds_since(t0);
  return ok;
}

// Rank 0's side: the queue, the reports, and a thread per other rank.
class Coordinator {
 public:
  Coordinator(ProcessGroup& g, size_t n, const std::function<std::string(size_t)>& work,
              const std::function<void(size_t, int, const std::string&)>& done,
              const WorkOptions& o)
      : g_(g), work_(work), done_(done), o_(o) {
    for (size_t i = 0; i < n; ++i) queue_.push_back(i);
    sum_.items.resize(n);
    for (size_t i = 0; i < n; ++i) {
      sum_.items[i].item = i;
      sum_.items[i].error = "not run";
    }
  }

  WorkSummary run() {
    std::vector<std::thread> threads;
    for (int r = 1; r < g_.size(); ++r) threads.emplace_back([this, r] { serve(r); });
    // Rank 0 works too, until nothing is queued or out.
    for (;;) {
      size_t item;
      {
        std::unique_lock<std::mutex> l(mu_);
        cv_.wait(l, [&] { return !queue_.empty() || out_ == 0; });
        if (queue_.empty()) break;
        item = queue_.front();
        queue_.pop_front();
        ++out_;
      }
      std::string bytes;
      double secs = 0;
      const bool ok = run_item(work_, item, &bytes, &secs);
      finish(item, 0, ok, bytes, secs);
    }
    for (std::thread& t : threads) t.join();
    return std::move(sum_);
  }

 private:
  // Answers rank r: items while there are any, then kStop.
  void serve(int r) {
    CallOptions co;
    co.tag = o_.tag;
    co.timeout = o_.item_timeout;
    int64_t cur = kStop;
    try {
      const std::string what = str("work queue: rank ", r);
      for (;;) {
        const std::vector<std::string> m = recv_message(g_, r, 4, what, co);
        const int64_t kind = i64_of(m[0], what), item = i64_of(m[1], what);
        if (kind == kDone || kind == kFailed) {
          if (cur == kStop || item != cur)
            throw Error(str("work queue: rank ", r, " sent a malformed result (item ", item,
                            "; it was given item ", cur, ")"));
          finish(static_cast<size_t>(cur), r, kind == kDone, m[3], i64_of(m[2], what) * 1e-6);
          cur = kStop;
        } else if (kind != kReady || cur != kStop) {
          throw Error(str("work queue: rank ", r, " sent a malformed message (kind ", kind, ")"));
        }
        cur = take();
        send_message(g_, r, {i64_field(cur)}, co);
        if (cur == kStop) return;
      }
    } catch (const std::exception& e) {
      lost(r, cur, e.what());
    }
  }

  int64_t take() {
    std::lock_guard<std::mutex> l(mu_);
    if (queue_.empty()) return kStop;
    const size_t item = queue_.front();
    queue_.pop_front();
    ++out_;
    return static_cast<int64_t>(item);
  }

  void finish(size_t item, int rank, bool ok, const std::string& bytes, double secs) {
    std::string error = ok ? "" : bytes;
    if (ok) {
      std::lock_guard<std::mutex> d(done_mu_);
      try {
        done_(item, rank, bytes);
      } catch (const std::exception& e) {
        ok = false;
        error = e.what();
      }
    }
    std::lock_guard<std::mutex> l(mu_);
    sum_.items[item] = WorkReport{item, rank, ok, error, secs};
    --out_;
    cv_.notify_all();
  }

  // Rank r dropped out; its item (if any) goes back to the front of the queue.
  void lost(int r, int64_t item, const std::string& why) {
    std::lock_guard<std::mutex> l(mu_);
    sum_.ranks_lost.push_back(LostRank{r, why, item});
    if (item != kStop) {
      queue_.push_front(static_cast<size_t>(item));
      --out_;
    }
    cv_.notify_all();
  }

  ProcessGroup& g_;
  const std::function<std::string(size_t)>& work_;
  const std::function<void(size_t, int, const std::string&)>& done_;
  const WorkOptions o_;
  std::mutex mu_, done_mu_;
  std::condition_variable cv_;
  std::deque<size_t> queue_;
  size_t out_ = 0;  // items handed out and not finished
  WorkSummary sum_;
};

}  // namespace

bool WorkSummary::all_ok() const {
  for (const WorkReport& r : items)
    if (!r.ok) return false;
  return true;
}

WorkSummary distribute(ProcessGroup& g, size_t n, const std::function<std::string(size_t)>& work,
                       const std::function<void(size_t, int, const std::string&)>& done,
                       const WorkOptions& o) {
  if (g.size() > 2 && !g.concurrent_p2p())
    throw Error(str("work queue over ", g.backend(), ": rank 0 answers ", g.size() - 1,
                    " ranks from as many threads, and this ", g.backend(),
                    " library does not allow concurrent calls (MPI_THREAD_MULTIPLE)"));
  if (g.rank() == 0) return Coordinator(g, n, work, done, o).run();

  // A worker: ask, work, report, until told to stop.
  CallOptions co;
  co.tag = o.tag;
  co.timeout = o.item_timeout;
  WorkSummary mine;
  const std::string what = "work queue: rank 0";
  std::vector<std::string> m = {i64_field(kReady), i64_field(-1), i64_field(0), ""};
  for (;;) {
    send_message(g, 0, m, co);
    const int64_t item = i64_of(recv_message(g, 0, 1, what, co, 16)[0], what);
    if (item == kStop) break;
    if (item < 0 || static_cast<size_t>(item) >= n)
      throw Error(str("work queue: rank 0 handed out item ", item, " of ", n));
    std::string out;
    double secs = 0;
    const bool ok = run_item(work, static_cast<size_t>(item), &out, &secs);
    mine.items.push_back(WorkReport{static_cast<size_t>(item), g.rank(), ok, ok ? "" : out, secs});
    m = {i64_field(ok ? kDone : kFailed), i64_field(item),
         i64_field(static_cast<int64_t>(secs * 1e6)), std::move(out)};
  }
  return mine;
}

}  // namespace tessera::dist
