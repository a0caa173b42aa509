#include "runtime/train/grad_reducer.h"

#include <algorithm>
#include <chrono>
#include <cstring>

#include "runtime/autograd/tape.h"
#include "runtime/common/error.h"
#include "runtime/dist/process_group.h"
#include "runtime/dist/tags.h"

namespace tessera::train {

namespace {
double since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}
}  // namespace

GradReducer::GradReducer(dist::ProcessGroup* group, std::vector<nn::Parameter*> params,
                         size_t bucket_bytes, bool overlap)
    : group_(group), params_(std::move(params)), overlap_(overlap) {
  if (bucket_bytes < 4) throw Error("gradient bucket: at least one float (4 bytes)");
  // Reverse registration order: the output side's gradients finish first.
  bucket_of_.assign(params_.size(), 0);
  for (size_t i = params_.size(); i-- > 0;) {
    const size_t n = static_cast<size_t>(params_[i]->tensor.numel());
    if (buckets_.empty() ||
        (buckets_.back().numel > 0 && (buckets_.back().numel + n) * 4 > bucket_bytes))
      buckets_.emplace_back();
    buckets_.back().params.push_back(i);
    buckets_.back().numel += n;
    bucket_of_[i] = buckets_.size() - 1;
  }
  for (Bucket& b : buckets_) b.flat.resize(b.numel);
  if (overlap_) thread_ = std::thread([this] { loop(); });
}

GradReducer::~GradReducer() {
  if (!thread_.joinable()) return;
  {
    std::lock_guard<std::mutex> l(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void GradReducer::begin(autograd::Tape& tape) {
  for (Bucket& b : buckets_) b.pending = b.params.size();
  next_ = 0;
  {
    std::lock_guard<std::mutex> l(mu_);
    queue_.clear();
    done_ = 0;
    comm_s_ = 0;
    error_ = nullptr;
  }
  if (!overlap_) return;
  std::vector<const Tensor*> watched;
  for (nn::Parameter* p : params_) watched.push_back(&p->tensor);
  tape.watch(watched, [this](size_t k) { ready(k); });
}

void GradReducer::ready(size_t param) {
  Bucket& b = buckets_[bucket_of_[param]];
  if (b.pending > 0) --b.pending;
  // Hand over complete buckets in bucket order (the same calls on every rank).
  size_t first = next_;
  while (next_ < buckets_.size() && buckets_[next_].pending == 0) ++next_;
  if (next_ == first) return;
  {
    std::lock_guard<std::mutex> l(mu_);
    for (size_t i = first; i < next_; ++i) queue_.push_back(i);
  }
  cv_.notify_all();
}

void GradReducer::reduce(size_t bi) {
  Bucket& b = buckets_[bi];
  size_t at = 0;
  for (size_t i : b.params) {
    const Tensor g = params_[i]->tensor.grad();
    const size_t n = static_cast<size_t>(params_[i]->tensor.numel());
    if (g.defined())
      std::memcpy(b.flat.data() + at, g.data(), n * 4);
    else
      std::fill(b.flat.begin() + static_cast<ptrdiff_t>(at),
                b.flat.begin() + static_cast<ptrdiff_t>(at + n), 0.0f);  // not reached: zero
    at += n;
  }
  dist::CallOptions o;  // buckets go one after another: one tag serves
  o.tag = dist::tags::kDefault;
  group_->allreduce(b.flat.data(), b.flat.size(), dist::DType::F32, dist::ReduceOp::kMean, o);
  at = 0;
  for (size_t i : b.params) {
    float* g = params_[i]->tensor.ensure_grad().data();
    const size_t n = static_cast<size_t>(params_[i]->tensor.numel());
    std::memcpy(g, b.flat.data() + at, n * 4);
    at += n;
  }
}

void GradReducer::loop() {
  for (;;) {
    size_t bi;
    {
      std::unique_lock<std::mutex> l(mu_);
      cv_.wait(l, [&] { return stop_ || !queue_.empty(); });
      if (stop_) return;
      bi = queue_.front();
      queue_.erase(queue_.begin());
    }
    const auto t0 = std::chrono::steady_clock::now();
    std::exception_ptr err;
    try {
      reduce(bi);
    } catch (...) {
      err = std::current_exception();
    }
    {
      std::lock_guard<std::mutex> l(mu_);
      comm_s_ += since(t0);
      if (err && !error_) error_ = err;
      ++done_;
    }
    cv_.notify_all();
  }
}

double GradReducer::finish() {
  const auto t0 = std::chrono::steady_clock::now();
  if (!overlap_) {
    for (size_t b = 0; b < buckets_.size(); ++b) reduce(b);
    comm_s_ = since(t0);
    return comm_s_;
  }
  // Backward fired every parameter (unused ones at its end), so every bucket
  // is queued; wait for the last.
  std::unique_lock<std::mutex> l(mu_);
  if (next_ != buckets_.size())
    throw Error(str("gradient sync: ", buckets_.size() - next_,
                    " buckets never became ready (was backward run on the watched tape?)"));
  cv_.wait(l, [&] { return done_ == buckets_.size(); });
  if (error_) std::rethrow_exception(error_);
  return since(t0);
}

}  // namespace tessera::train
