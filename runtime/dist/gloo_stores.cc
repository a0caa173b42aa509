#include "runtime/dist/gloo_stores.h"

#include <mpi.h>

#include <cstring>
#include <map>
#include <thread>

#include "runtime/dist/process_group.h"

namespace tessera::dist {

namespace {

// Gloo's rendezvous Store over MPI, for Gloo launched by mpirun (Debian's
// Gloo is built without its own MPI support): rank 0 keeps the keys in a
// service thread; every rank's set/get/wait is a request to it on a
// communicator of its own. A get or wait is answered once the key is set, or
// fails at the timeout naming the key. The store lives only while Gloo
// connects; each rank says goodbye and rank 0's service ends when all have.
class MpiStore final : public gloo::rendezvous::Store {
 public:
  explicit MpiStore(std::chrono::milliseconds timeout)
      : mpi_(make_mpi()), timeout_(timeout) {  // make_mpi initialises MPI
    MPI_Comm_dup(MPI_COMM_WORLD, &comm_);
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
    if (rank_ == 0) service_ = std::thread([this] { Serve(); });
  }
  ~MpiStore() override {
    try {
      Request(kBye, "", {});
    } catch (const std::exception&) {
    }
    if (service_.joinable()) service_.join();
    MPI_Comm_free(&comm_);
  }
  void set(const std::string& key, const std::vector<char>& data) override {
    Request(kSet, key, data);
  }
  std::vector<char> get(const std::string& key) override { return Request(kGet, key, {}); }
  void wait(const std::vector<std::string>& keys) override {
    for (const auto& k : keys) Request(kWait, k, {});
  }
  void wait(const std::vector<std::string>& keys, const std::chrono::milliseconds&) override {
    wait(keys);
  }

 private:
  enum Op : char { kSet = 'S', kGet = 'G', kWait = 'W', kBye = 'B' };
  static constexpr int kAsk = 1, kAnswer = 2;

  // Sends one request to rank 0 and waits for its answer (polled, so the
  // timeout holds even when rank 0 is gone).
  std::vector<char> Request(Op op, const std::string& key, const std::vector<char>& data) {
    std::string msg(1, static_cast<char>(op));
    const uint32_t kl = static_cast<uint32_t>(key.size());
    msg.append(reinterpret_cast<const char*>(&kl), 4).append(key).append(data.data(), data.size());
    MPI_Request sreq;
    MPI_Isend(msg.data(), static_cast<int>(msg.size()), MPI_BYTE, 0, kAsk, comm_, &sreq);
    const auto deadline = std::chrono::steady_clock::now() + timeout_;
    Poll(&sreq, deadline, key);
    // The answer: its size first (probe), then the bytes.
    MPI_Status st;
    for (int flag = 0;;) {
      MPI_Iprobe(0, kAnswer, comm_, &flag, &st);
      if (flag) break;
      if (std::chrono::steady_clock::now() > deadline)
        throw Error(str("gloo rendezvous over MPI: no answer for key '", key,
                        "' from rank 0 within ", timeout_.count(), " ms"));
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    int n = 0;
    MPI_Get_count(&st, MPI_BYTE, &n);
    std::vector<char> out(static_cast<size_t>(n));
    MPI_Recv(out.data(), n, MPI_BYTE, 0, kAnswer, comm_, MPI_STATUS_IGNORE);
    return out;
  }

  void Poll(MPI_Request* req, std::chrono::steady_clock::time_point deadline,
            const std::string& key) {
    for (int done = 0;;) {
      MPI_Test(req, &done, MPI_STATUS_IGNORE);
      if (done) return;
      if (std::chrono::steady_clock::now() > deadline)
        throw Error(str("gloo rendezvous over MPI: rank 0 did not take the request for key '", key,
                        "' within ", timeout_.count(), " ms"));
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  }

  // Rank 0's service: answers set/get/wait until every rank said goodbye (or
  // the timeout passed since the last request).
  void Serve() {
    std::map<std::string, std::vector<char>> kv;
    std::vector<std::pair<int, std::string>> waiting;  // (rank, key) of unanswered get/wait
    std::vector<std::pair<int, Op>> waiting_op;
    std::vector<std::unique_ptr<std::vector<char>>> sent;
    std::vector<MPI_Request> sends;
    int byes = 0;
    auto last = std::chrono::steady_clock::now();
    auto answer = [&](int to, std::vector<char> bytes) {
      sent.push_back(std::make_unique<std::vector<char>>(std::move(bytes)));
      MPI_Request r;
      MPI_Isend(sent.back()->data(), static_cast<int>(sent.back()->size()), MPI_BYTE, to, kAnswer,
                comm_, &r);
      sends.push_back(r);
    };
    while (byes < size_ && std::chrono::steady_clock::now() - last < timeout_) {
      int flag = 0;
      MPI_Status st;
      MPI_Iprobe(MPI_ANY_SOURCE, kAsk, comm_, &flag, &st);
      if (!flag) {
        std::this_thread::sleep_for(std::chrono::microseconds(200));
        continue;
      }
      last = std::chrono::steady_clock::now();
      int n = 0;
      MPI_Get_count(&st, MPI_BYTE, &n);
      std::vector<char> msg(static_cast<size_t>(n));
      MPI_Recv(msg.data(), n, MPI_BYTE, st.MPI_SOURCE, kAsk, comm_, MPI_STATUS_IGNORE);
      if (n < 5) continue;  // not a request of ours
      const Op op = static_cast<Op>(msg[0]);
      uint32_t kl = 0;
      std::memcpy(&kl, msg.data() + 1, 4);
      if (5 + static_cast<size_t>(kl) > msg.size()) continue;
      const std::string key(msg.data() + 5, kl);
      if (op == kSet) {
        kv[key].assign(msg.begin() + 5 + kl, msg.end());
        answer(st.MPI_SOURCE, {});
        for (size_t i = 0; i < waiting.size();) {
          if (waiting[i].second == key) {
            answer(waiting[i].first, waiting_op[i].second == kGet ? kv[key] : std::vector<char>{});
            waiting.erase(waiting.begin() + static_cast<long>(i));
            waiting_op.erase(waiting_op.begin() + static_cast<long>(i));
          } else {
            ++i;
          }
        }
      } else if (op == kGet || op == kWait) {
        auto it = kv.find(key);
        if (it != kv.end()) {
          answer(st.MPI_SOURCE, op == kGet ? it->second : std::vector<char>{});
        } else {
          waiting.emplace_back(st.MPI_SOURCE, key);
          waiting_op.emplace_back(st.MPI_SOURCE, op);
        }
      } else if (op == kBye) {
        ++byes;
        answer(st.MPI_SOURCE, {});
      }
    }
    MPI_Waitall(static_cast<int>(sends.size()), sends.data(), MPI_STATUSES_IGNORE);
  }

  std::unique_ptr<ProcessGroup> mpi_;
  std::chrono::milliseconds timeout_;
  MPI_Comm comm_;
  int rank_ = 0, size_ = 1;
  std::thread service_;
};

}  // namespace

std::unique_ptr<gloo::rendezvous::Store> make_mpi_store(std::chrono::milliseconds timeout) {
  return std::make_unique<MpiStore>(timeout);
}

void SplitStore::set(const std::string& key, const std::vector<char>& data) {
  // Every rank's part: [round][color][key length][key][data] (a rank of no
  // sub-group keeps its key to itself and sends the header alone).
  const int32_t round = rounds_++;
  const int32_t c = color_;
  const uint32_t kl = color_ == ProcessGroup::kNoColor ? 0 : static_cast<uint32_t>(key.size());
  std::string mine;
  mine.append(reinterpret_cast<const char*>(&round), 4);
  mine.append(reinterpret_cast<const char*>(&c), 4);
  mine.append(reinterpret_cast<const char*>(&kl), 4);
  if (color_ == ProcessGroup::kNoColor)
    keys_[key] = data;
  else
    mine.append(key).append(data.data(), data.size());
  const int W = parent_.size();
  int64_t n = static_cast<int64_t>(mine.size());
  std::vector<int64_t> sizes(static_cast<size_t>(W));
  parent_.allgather(&n, sizes.data(), 1, DType::I64, o_);
  std::vector<size_t> counts(sizes.begin(), sizes.end());
  size_t total = 0;
  for (size_t k : counts) total += k;
  std::string all(total, '\0');
  parent_.allgatherv(mine.data(), all.data(), counts, DType::U8, o_);
  size_t at = 0;
  for (size_t r = 0; r < counts.size(); ++r) {
    const size_t k = counts[r];
    int32_t their_round = -1, color = ProcessGroup::kNoColor;
    uint32_t their_kl = 0;
    if (k >= 12) {
      std::memcpy(&their_round, all.data() + at, 4);
      std::memcpy(&color, all.data() + at + 4, 4);
      std::memcpy(&their_kl, all.data() + at + 8, 4);
    }
    // The ranks of one split must meet in step: Gloo's connectFullMesh sets
    // the same number of keys on every rank (this Gloo: a host name, then the
    // pair addresses). A Gloo whose count depended on the group's size would
    // show here rather than as crossed collectives.
    if (their_round != round || 12 + static_cast<size_t>(their_kl) > k)
      throw Error(str("gloo split: rank ", r, " is in rendezvous round ", their_round,
                      ", this rank in round ", round,
                      " (this version of Gloo meets in a way split() does not follow)"));
    if (color == color_ && color_ != ProcessGroup::kNoColor)
      keys_[all.substr(at + 12, their_kl)] =
          std::vector<char>(all.begin() + static_cast<std::ptrdiff_t>(at + 12 + their_kl),
                            all.begin() + static_cast<std::ptrdiff_t>(at + k));
    at += k;
  }
}

std::vector<char> SplitStore::get(const std::string& key) {
  auto it = keys_.find(key);
  if (it == keys_.end())
    throw Error(
        str("gloo split: no member of sub-group ", color_, " set key '", key, "' in this round"));
  return it->second;
}

void SplitStore::wait(const std::vector<std::string>& keys) {
  for (const auto& k : keys) (void)get(k);
}

}  // namespace tessera::dist
