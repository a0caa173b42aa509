#include "runtime/autograd/tape.h"

#include "runtime/common/error.h"

namespace tessera::autograd {

namespace {
thread_local Tape* t_current = nullptr;
}

Tape::Tape() : prev_(t_current) {
  t_current = this;
}
Tape::~Tape() {
  t_current = prev_;
}
Tape* Tape::current() {
  return t_current;
}

NoGrad::NoGrad() : saved_(t_current) {
  t_current = nullptr;
}
NoGrad::~NoGrad() {
  t_current = saved_;
}

void Tape::backward(const Tensor& loss) {
  if (loss.numel() != 1)
    throw Error(str("backward() needs a scalar loss, got shape ", shape_str(loss.shape())));
  if (!loss.requires_grad())
    throw Error("backward(): the loss does not depend on any tensor that requires a gradient");
  backward(loss, Tensor::full(loss.shape(), 1.0f, loss.device()));
}

void Tape::backward(const Tensor& out, const Tensor& grad_out) {
  if (out.shape() != grad_out.shape() || out.device() != grad_out.device())
    throw Error(
        str("backward(): gradient ", grad_out.desc(), " does not match output ", out.desc()));
  if (!out.requires_grad())
    throw Error("backward(): the output does not depend on any tensor that requires a gradient");
  out.ensure_grad().copy_from(grad_out);
  // Run in reverse; pop as we go so activations are released early.
  while (!nodes_.empty()) {
    auto fn = std::move(nodes_.back());
    nodes_.pop_back();
    fn();
  }
}

bool should_record(std::initializer_list<const Tensor*> inputs) {
  if (!t_current) return false;
  for (const Tensor* t : inputs)
    if (t && t->defined() && t->requires_grad()) return true;
  return false;
}

}  // namespace tessera::autograd
