#include "runtime/autograd/tape.h"

#include "runtime/kernels/dispatch.h"

#include "runtime/common/error.h"

#include <algorithm>

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
  if (ready_) {
    // Latest first use first: that is the order they become final.
    order_.clear();
    for (size_t k = 0; k < first_use_.size(); ++k) order_.push_back(k);
    std::stable_sort(order_.begin(), order_.end(),
                     [&](size_t a, size_t b) { return first_use_[a] > first_use_[b]; });
    fired_ = 0;
  }
  // Run in reverse; pop as we go so activations are released early.
  while (!nodes_.empty()) {
    auto fn = std::move(nodes_.back());
    nodes_.pop_back();
    fn();
    if (ready_) fire_ready(nodes_.size());
  }
  // What is left: watched tensors no recorded op used (first use -1, last).
  if (ready_)
    while (fired_ < order_.size()) ready_(order_[fired_++]);
}

void Tape::fire_ready(size_t remaining) {
  // Every node at index >= remaining has run.
  while (fired_ < order_.size() && first_use_[order_[fired_]] >= 0 &&
         static_cast<size_t>(first_use_[order_[fired_]]) >= remaining)
    ready_(order_[fired_++]);
}

void Tape::watch(const std::vector<const Tensor*>& watched, std::function<void(size_t)> ready) {
  if (!nodes_.empty()) throw Error("Tape::watch: call it before the forward records anything");
  watched_.clear();
  for (size_t k = 0; k < watched.size(); ++k) watched_.emplace_back(watched[k]->impl(), k);
  std::sort(watched_.begin(), watched_.end());
  first_use_.assign(watched.size(), -1);
  ready_ = std::move(ready);
}

void Tape::note_uses(std::initializer_list<const Tensor*> inputs) {
  for (const Tensor* t : inputs) {
    if (!t || !t->defined()) continue;
    auto it =
        std::lower_bound(watched_.begin(), watched_.end(),
                         std::make_pair(static_cast<const TensorImpl*>(t->impl()), size_t{0}));
    if (it != watched_.end() && it->first == t->impl() && first_use_[it->second] < 0)
      first_use_[it->second] = static_cast<int64_t>(nodes_.size());
  }
}

void pass_grad(const Tensor& x, Tensor g) {
  if (!x.requires_grad()) return;
  // use_count 1: no other tensor (the op's output, another input) holds the buffer.
  if (!x.grad().defined() && g.impl_ptr().use_count() == 1 && g.impl()->storage.use_count() == 1) {
    x.impl()->grad = g.view(x.shape());
    return;
  }
  Tensor& gx = x.ensure_grad();
  const int64_t n = x.numel();
  TESSERA_DISPATCH(x.device(), add_backward, gx.data(), nullptr, g.data(), n, n);
}

bool note_inputs(std::initializer_list<const Tensor*> inputs) {
  if (!t_current) return false;
  if (!t_current->watched_empty()) t_current->note_uses(inputs);
  for (const Tensor* t : inputs)
    if (t && t->defined() && t->requires_grad()) return true;
  return false;
}

}  // namespace tessera::autograd
