// Data-parallel gradient averaging: trainable gradients in buckets of at
// most `bucket_bytes`, each flattened and averaged over the group in one
// allreduce. With `overlap`, a bucket is handed to a communication thread as
// soon as backward has finished every gradient in it (autograd::Tape::watch
// tells), so the reduction of late layers runs while backward still works
// on early ones; otherwise every bucket is reduced after backward.
//
// Buckets hold parameters in reverse registration order (roughly the order
// backward finishes them) and are reduced strictly in bucket order, so every
// rank issues the same calls in the same order. Averaging is exact up to
// float summation order: N ranks with global batch B follow one rank.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include "runtime/nn/parameters.h"

namespace tessera::autograd {
class Tape;
}
namespace tessera::dist {
class ProcessGroup;
}

namespace tessera::train {

class GradReducer {
 public:
  GradReducer(dist::ProcessGroup* group, std::vector<nn::Parameter*> params, size_t bucket_bytes,
              bool overlap);
  ~GradReducer();
  GradReducer(const GradReducer&) = delete;
  GradReducer& operator=(const GradReducer&) = delete;

  // Before the forward of a step: with overlap, watches the parameters on
  // `tape` so buckets leave during its backward.
  void begin(autograd::Tape& tape);
  // After backward: every bucket reduced and its gradients written back.
  // Returns the seconds this call waited (communication not hidden).
  double finish();

  size_t buckets() const { return buckets_.size(); }
  bool overlap() const { return overlap_; }
  double comm_seconds() const { return comm_s_; }  // busy time of the last step's reductions

 private:
  struct Bucket {
    std::vector<size_t> params;  // indices into params_
    size_t numel = 0;
    std::vector<float> flat;
    size_t pending = 0;  // parameters not yet final this step
  };
  void ready(size_t param);  // (backward: this parameter's gradient is final)
  void reduce(size_t b);     // pack, allreduce-mean, unpack
  void loop();               // the communication thread

  dist::ProcessGroup* group_;
  std::vector<nn::Parameter*> params_;
  std::vector<size_t> bucket_of_;
  std::vector<Bucket> buckets_;
  bool overlap_;
  size_t next_ = 0;  // next bucket to hand over (main thread)

  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<size_t> queue_;
  size_t done_ = 0;
  bool stop_ = false;
  std::exception_ptr error_;
  double comm_s_ = 0;
  std::thread thread_;
};

}  // namespace tessera::train
