// Define-by-run reverse-mode autodiff. While a Tape is alive on a thread, ops
// whose inputs require a gradient append a backward closure to it; ops on
// tensors that need no gradient (the frozen base, data) record nothing.
//
//   autograd::Tape tape;
//   Tensor loss = model.loss(batch);
//   tape.backward(loss);  // fills .grad() of every parameter that requires one
//
// Without a live tape nothing is recorded (evaluation). Gradients of
// intermediate results are freed as soon as their backward has run.
#pragma once

#include <functional>
#include <vector>

#include "runtime/tensor/tensor.h"

namespace tessera::autograd {

class Tape {
 public:
  Tape();
  ~Tape();
  Tape(const Tape&) = delete;
  Tape& operator=(const Tape&) = delete;

  static Tape* current();  // innermost live tape of this thread, or null

  void record(std::function<void()> backward) { nodes_.push_back(std::move(backward)); }
  size_t size() const { return nodes_.size(); }

  // Seeds d(loss)/d(loss) = 1 (loss must have one element), runs every
  // recorded closure in reverse, then forgets them.
  void backward(const Tensor& loss);
  // Vector-Jacobian product: seeds d(out) = grad_out (same shape and device).
  void backward(const Tensor& out, const Tensor& grad_out);
  void clear() { nodes_.clear(); }

  // Gradient readiness, for reducing gradients while backward still runs:
  // during backward, ready(k) is called (on this thread) as soon as no node
  // left to run can add to the gradient of `watched[k]`, i.e. that gradient
  // is final; tensors no recorded op used are ready at the end. Call before
  // the forward: a tensor's uses are noted as ops record (every op asks
  // note_inputs() with its inputs first), the earliest use bounding it.
  void watch(const std::vector<const Tensor*>& watched, std::function<void(size_t)> ready);
  // (note_inputs's side: note uses of watched tensors by the next node)
  void note_uses(std::initializer_list<const Tensor*> inputs);
  bool watched_empty() const { return watched_.empty(); }

 private:
  void fire_ready(size_t remaining);
  std::vector<std::function<void()>> nodes_;
  Tape* prev_;
  // watch(): tensor → index; earliest node index that uses it (-1: none yet);
  // indices by first use, latest first, and how many have fired.
  std::vector<std::pair<const TensorImpl*, size_t>> watched_;
  std::vector<int64_t> first_use_;
  std::vector<size_t> order_;
  size_t fired_ = 0;
  std::function<void(size_t)> ready_;
};

// Suspends recording on this thread for its lifetime (a detached computation
// inside a recorded forward, e.g. DoRA's weight norm).
class NoGrad {
 public:
  NoGrad();
  ~NoGrad();
  NoGrad(const NoGrad&) = delete;
  NoGrad& operator=(const NoGrad&) = delete;

 private:
  Tape* saved_;
};

// Records `fn(dout)` on the current tape, to run once `out`'s gradient is
// known (skipped when nothing reached it); `out`'s gradient buffer is released
// right after. For ops written outside runtime/autograd/ops.cc.
template <typename Fn>
void on_backward(Tensor out, Fn fn) {
  Tape::current()->record([out, fn]() mutable {
    Tensor g = out.grad();
    if (!g.defined()) return;
    fn(static_cast<const float*>(g.data()));
    out.clear_grad();
  });
}

// As on_backward, with the gradient as a Tensor, for ops whose backward passes
// the gradient through unchanged to an input (reshape, add, the LoRA gather's
// base output): pass_grad can then hand the buffer over instead of copying it.
template <typename Fn>
void on_backward_tensor(Tensor out, Fn fn) {
  Tape::current()->record([out, fn]() mutable {
    Tensor g = out.grad();
    if (!g.defined()) return;
    out.clear_grad();
    fn(std::move(g));
  });
}

// x.grad += g for an x that requires a gradient (g: x's numel, x's device).
// When x has no gradient yet and g is the only handle on its buffer, x takes
// the buffer (a view in x's shape) instead of a zeroed copy plus an add. Call
// it with an op's own output gradient, once per input at most.
void pass_grad(const Tensor& x, Tensor g);

// Every op calls this once, with every tensor it reads, before it records:
// it notes that the node about to be recorded uses those inputs (what
// Tape::watch's gradient readiness is built on: an input left out would be
// declared final too early, and an overlapped gradient bucket would leave
// without this op's share), and returns true when a tape is recording and
// any input requires a gradient (undefined tensors are skipped).
// runtime/autograd/ADDING_AN_OP.md has the whole contract.
bool note_inputs(std::initializer_list<const Tensor*> inputs);

}  // namespace tessera::autograd
