// Editing a base Linear's weight in place, in either layout ([out, in], or
// GPT-2's Conv1D [in, out]): what merge and unmerge of every kind do.
#pragma once

#include <cstdint>

#include "runtime/nn/layers.h"

namespace tessera::adapters {

// W[o, i] *= f(o, i), or /= with `divide`.
template <typename F>
void scale_base_weight(const nn::Linear& base, F f, bool divide = false) {
  Tensor w = base.weight();
  const int64_t in = base.in_features(), out = base.out_features();
  float* p = w.data();
  for (int64_t o = 0; o < out; ++o)
    for (int64_t i = 0; i < in; ++i) {
      float& v = p[base.conv1d() ? i * out + o : o * in + i];
      v = divide ? v / f(o, i) : v * f(o, i);
    }
}

// W += sign · d, with d laid out like W.
inline void add_to_base_weight(const nn::Linear& base, const Tensor& d, float sign) {
  Tensor w = base.weight();
  for (int64_t k = 0; k < w.numel(); ++k) w.data()[k] += sign * d.data()[k];
}

}  // namespace tessera::adapters
