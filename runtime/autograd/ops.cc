#include "runtime/autograd/ops.h"

#include "runtime/autograd/tape.h"
#include "runtime/common/error.h"
#include "runtime/kernels/dispatch.h"

namespace tessera::ops {

using autograd::note_inputs;
using autograd::on_backward;
using autograd::on_backward_tensor;
using autograd::Tape;

namespace {

float* grad_ptr(const Tensor& t) {
  return t.requires_grad() ? t.ensure_grad().data() : nullptr;
}

void same_device(const char* op, std::initializer_list<const Tensor*> ts) {
  Device d = Device::CPU;
  bool first = true;
  for (const Tensor* t : ts) {
    if (!t || !t->defined()) continue;
    if (first) {
      d = t->device();
      first = false;
    } else if (t->device() != d) {
      throw Error(str(op, ": tensors on different devices (", device_name(d), " and ",
                      device_name(t->device()), ")"));
    }
  }
}

Tensor result(const Shape& shape, Device device, bool grad) {
  Tensor out = Tensor::empty(shape, device);
  if (grad) out.set_requires_grad(true);
  return out;
}

}  // namespace

Tensor linear(const Tensor& x, const Tensor& w, const Tensor& b, bool conv1d) {
  if (w.ndim() != 2) throw Error(str("linear: weight must be 2-D, got ", shape_str(w.shape())));
  const int64_t in = conv1d ? w.size(0) : w.size(1);
  const int64_t outf = conv1d ? w.size(1) : w.size(0);
  if (x.ndim() < 1 || x.size(-1) != in)
    throw Error(str("linear: input ", shape_str(x.shape()), " does not end in ", in,
                    " features (weight ", shape_str(w.shape()), conv1d ? " [in,out]" : " [out,in]",
                    ")"));
  if (b.defined() && (b.ndim() != 1 || b.size(0) != outf))
    throw Error(str("linear: bias ", shape_str(b.shape()), " does not match ", outf, " outputs"));
  same_device("linear", {&x, &w, &b});
  const int64_t N = x.numel() / in;
  Shape os = x.shape();
  os.back() = outf;
  bool rec = note_inputs({&x, &w, &b});
  Tensor out = result(os, x.device(), rec);
  TESSERA_DISPATCH(x.device(), linear_forward, out.data(), x.data(), w.data(),
                   b.defined() ? b.data() : nullptr, N, in, outf, conv1d);
  if (rec) {
    on_backward(out, [x, w, b, N, in, outf, conv1d](const float* g) mutable {
      TESSERA_DISPATCH(x.device(), linear_backward, grad_ptr(x), grad_ptr(w),
                       b.defined() ? grad_ptr(b) : nullptr, g, x.data(), w.data(), N, in, outf,
                       conv1d);
    });
  }
  return out;
}

Tensor matmul_nt(const Tensor& x, const Tensor& w) {
  return linear(x, w, Tensor());
}

Tensor add(const Tensor& a, const Tensor& b) {
  const Shape& as = a.shape();
  const Shape& bs = b.shape();
  bool suffix = bs.size() <= as.size() && std::equal(bs.begin(), bs.end(), as.end() - bs.size());
  if (!suffix)
    throw Error(str("add: shape ", shape_str(bs), " does not broadcast onto ", shape_str(as)));
  same_device("add", {&a, &b});
  const int64_t n = a.numel(), nb = b.numel();
  bool rec = note_inputs({&a, &b});
  Tensor out = result(as, a.device(), rec);
  if (n > 0) TESSERA_DISPATCH(a.device(), add_forward, out.data(), a.data(), b.data(), n, nb);
  if (rec) {
    if (n == nb && !a.same(b)) {
      // Both gradients are dout: b gets a copy, a the buffer itself.
      on_backward_tensor(out, [a, b, n](Tensor g) mutable {
        if (b.requires_grad())
          TESSERA_DISPATCH(a.device(), add_backward, nullptr, b.ensure_grad().data(), g.data(), n,
                           n);
        autograd::pass_grad(a, std::move(g));
      });
    } else {
      on_backward(out, [a, b, n, nb](const float* g) mutable {
        TESSERA_DISPATCH(a.device(), add_backward, grad_ptr(a), grad_ptr(b), g, n, nb);
      });
    }
  }
  return out;
}

Tensor mul(const Tensor& a, const Tensor& b) {
  const Shape& as = a.shape();
  const Shape& bs = b.shape();
  bool suffix = bs.size() <= as.size() && std::equal(bs.begin(), bs.end(), as.end() - bs.size());
  if (!suffix)
    throw Error(str("mul: shape ", shape_str(bs), " does not broadcast onto ", shape_str(as)));
  same_device("mul", {&a, &b});
  const int64_t n = a.numel(), nb = b.numel();
  bool rec = note_inputs({&a, &b});
  Tensor out = result(as, a.device(), rec);
  if (n == nb) {
    TESSERA_DISPATCH(a.device(), mul_forward, out.data(), a.data(), b.data(), n);
  } else if (n > 0) {
    TESSERA_DISPATCH_CPU_ONLY(a.device(), mul_bcast_forward, out.data(), a.data(), b.data(), n, nb);
  }
  if (rec) {
    on_backward(out, [a, b, n, nb](const float* g) mutable {
      if (n == nb) {
        TESSERA_DISPATCH(a.device(), mul_backward, grad_ptr(a), grad_ptr(b), g, a.data(), b.data(),
                         n);
      } else if (n > 0) {
        TESSERA_DISPATCH_CPU_ONLY(a.device(), mul_bcast_backward, grad_ptr(a), grad_ptr(b), g,
                                  a.data(), b.data(), n, nb);
      }
    });
  }
  return out;
}

Tensor div(const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape())
    throw Error(
        str("div: shapes ", shape_str(a.shape()), " and ", shape_str(b.shape()), " differ"));
  same_device("div", {&a, &b});
  const int64_t n = a.numel();
  bool rec = note_inputs({&a, &b});
  Tensor out = result(a.shape(), a.device(), rec);
  TESSERA_DISPATCH_CPU_ONLY(a.device(), div_forward, out.data(), a.data(), b.data(), n);
  if (rec) {
    on_backward(out, [a, b, n](const float* g) mutable {
      TESSERA_DISPATCH_CPU_ONLY(a.device(), div_backward, grad_ptr(a), grad_ptr(b), g, a.data(),
                                b.data(), n);
    });
  }
  return out;
}

Tensor row_norm(const Tensor& x) {
  if (x.ndim() != 2) throw Error(str("row_norm: x must be 2-D, got ", shape_str(x.shape())));
  const int64_t N = x.size(0), C = x.size(1);
  bool rec = note_inputs({&x});
  Tensor out = result({N}, x.device(), rec);
  TESSERA_DISPATCH_CPU_ONLY(x.device(), row_norm_forward, out.data(), x.data(), N, C);
  if (rec) {
    on_backward(out, [x, out, N, C](const float* g) mutable {
      TESSERA_DISPATCH_CPU_ONLY(x.device(), row_norm_backward, grad_ptr(x), g, x.data(), out.data(),
                                N, C);
    });
  }
  return out;
}

Tensor transpose(const Tensor& x) {
  if (x.ndim() != 2) throw Error(str("transpose: x must be 2-D, got ", shape_str(x.shape())));
  const int64_t R = x.size(0), C = x.size(1);
  bool rec = note_inputs({&x});
  Tensor out = Tensor::zeros({C, R}, x.device());
  if (rec) out.set_requires_grad(true);
  TESSERA_DISPATCH_CPU_ONLY(x.device(), transpose, out.data(), x.data(), R, C);
  if (rec) {
    on_backward(out, [x, R, C](const float* g) mutable {
      TESSERA_DISPATCH_CPU_ONLY(x.device(), transpose, grad_ptr(x), g, C, R);
    });
  }
  return out;
}

Tensor slice_rows(const Tensor& x, int64_t begin, int64_t end) {
  if (x.ndim() < 1 || begin < 0 || end < begin || end > x.size(0))
    throw Error(str("slice_rows: rows [", begin, ", ", end, ") of ", shape_str(x.shape())));
  if (x.device() != Device::CPU)
    throw Error("op slice_rows has no CUDA kernel yet: keep this model on the CPU");
  const int64_t C = x.size(0) ? x.numel() / x.size(0) : 0;
  Shape s = x.shape();
  s[0] = end - begin;
  bool rec = note_inputs({&x});
  Tensor out = result(s, x.device(), rec);
  std::copy_n(x.data() + begin * C, (end - begin) * C, out.data());
  if (rec) {
    on_backward(out, [x, begin, end, C](const float* g) mutable {
      float* d = x.ensure_grad().data() + begin * C;
      for (int64_t i = 0; i < (end - begin) * C; ++i) d[i] += g[i];
    });
  }
  return out;
}

Tensor slice_cols(const Tensor& x, int64_t begin, int64_t end) {
  if (x.ndim() != 2 || begin < 0 || end <= begin || end > x.size(1))
    throw Error(str("slice_cols: columns [", begin, ", ", end, ") of ", shape_str(x.shape())));
  if (x.device() != Device::CPU)
    throw Error("op slice_cols has no CUDA kernel yet: keep this model on the CPU");
  const int64_t N = x.size(0), C = x.size(1), W = end - begin;
  bool rec = note_inputs({&x});
  Tensor out = result({N, W}, x.device(), rec);
  for (int64_t i = 0; i < N; ++i) std::copy_n(x.data() + i * C + begin, W, out.data() + i * W);
  if (rec) {
    on_backward(out, [x, begin, N, C, W](const float* g) mutable {
      float* d = x.ensure_grad().data();
      for (int64_t i = 0; i < N; ++i)
        for (int64_t j = 0; j < W; ++j) d[i * C + begin + j] += g[i * W + j];
    });
  }
  return out;
}

Tensor concat_rows(const std::vector<Tensor>& xs) {
  if (xs.empty()) throw Error("concat_rows: nothing to concatenate");
  Shape s = xs[0].shape();
  if (s.empty()) throw Error("concat_rows: scalars have no rows");
  int64_t rows = 0;
  bool rec = false;
  for (const Tensor& t : xs) {
    if (t.ndim() != static_cast<int>(s.size()) ||
        !std::equal(s.begin() + 1, s.end(), t.shape().begin() + 1))
      throw Error(
          str("concat_rows: ", shape_str(t.shape()), " does not stack onto ", shape_str(s)));
    if (t.device() != Device::CPU)
      throw Error("op concat_rows has no CUDA kernel yet: keep this model on the CPU");
    rows += t.size(0);
    const bool needs = note_inputs({&t});  // every input noted: no short-circuit
    rec = rec || needs;
  }
  s[0] = rows;
  Tensor out = result(s, Device::CPU, rec);
  int64_t off = 0;
  for (const Tensor& t : xs) {
    std::copy_n(t.data(), t.numel(), out.data() + off);
    off += t.numel();
  }
  if (rec) {
    on_backward(out, [xs](const float* g) mutable {
      int64_t off = 0;
      for (const Tensor& t : xs) {
        if (t.requires_grad()) {
          float* d = t.ensure_grad().data();
          for (int64_t i = 0; i < t.numel(); ++i) d[i] += g[off + i];
        }
        off += t.numel();
      }
    });
  }
  return out;
}

Tensor dropout(const Tensor& x, float p, Rng& rng) {
  if (!(p >= 0.0f && p < 1.0f)) throw Error(str("dropout: p = ", p, " is outside [0, 1)"));
  if (p == 0.0f || !Tape::current()) return x;
  if (x.device() != Device::CPU)
    throw Error("op dropout has no CUDA kernel yet: keep this model on the CPU");
  const int64_t n = x.numel();
  Tensor mask = Tensor::empty(x.shape());
  const float keep = 1.0f / (1.0f - p);
  for (int64_t i = 0; i < n; ++i) mask.data()[i] = rng.uniform(0.0f, 1.0f) < p ? 0.0f : keep;
  return mul(x, mask);
}

Tensor scale(const Tensor& a, float s) {
  const int64_t n = a.numel();
  bool rec = note_inputs({&a});
  Tensor out = result(a.shape(), a.device(), rec);
  TESSERA_DISPATCH(a.device(), scale_forward, out.data(), a.data(), s, n);
  if (rec) {
    on_backward(out, [a, s, n](const float* g) mutable {
      TESSERA_DISPATCH(a.device(), scale_backward, grad_ptr(a), g, s, n);
    });
  }
  return out;
}

Tensor sum(const Tensor& a) {
  if (a.device() != Device::CPU)
    throw Error("op sum has no CUDA kernel yet: keep this model on the CPU");
  const int64_t n = a.numel();
  bool rec = note_inputs({&a});
  Tensor out = result({1}, Device::CPU, rec);
  double s = 0.0;
  const float* p = a.data();
  for (int64_t i = 0; i < n; ++i) s += p[i];
  out.data()[0] = static_cast<float>(s);
  if (rec) {
    on_backward(out, [a, n](const float* g) mutable {
      float* d = grad_ptr(a);
      const float gv = g[0];
      for (int64_t i = 0; i < n; ++i) d[i] += gv;
    });
  }
  return out;
}

Tensor activation(const Tensor& x, Act act) {
  const int64_t n = x.numel();
  bool rec = note_inputs({&x});
  Tensor out = result(x.shape(), x.device(), rec);
  TESSERA_DISPATCH(x.device(), act_forward, act, out.data(), x.data(), n);
  if (rec) {
    on_backward(out, [x, act, n](const float* g) mutable {
      TESSERA_DISPATCH(x.device(), act_backward, act, grad_ptr(x), g, x.data(), n);
    });
  }
  return out;
}

Tensor swiglu(const Tensor& gate, const Tensor& up) {
  if (gate.shape() != up.shape())
    throw Error(str("swiglu: gate ", shape_str(gate.shape()), " and up ", shape_str(up.shape()),
                    " differ"));
  same_device("swiglu", {&gate, &up});
  const int64_t n = gate.numel();
  bool rec = note_inputs({&gate, &up});
  Tensor out = result(gate.shape(), gate.device(), rec);
  TESSERA_DISPATCH(gate.device(), swiglu_forward, out.data(), gate.data(), up.data(), n);
  if (rec) {
    on_backward(out, [gate, up, n](const float* g) mutable {
      TESSERA_DISPATCH(gate.device(), swiglu_backward, grad_ptr(gate), grad_ptr(up), g, gate.data(),
                       up.data(), n);
    });
  }
  return out;
}

Tensor layernorm(const Tensor& x, const Tensor& w, const Tensor& b, float eps) {
  const int64_t C = x.size(-1);
  if (w.numel() != C || (b.defined() && b.numel() != C))
    throw Error(str("layernorm: weight/bias of ", w.numel(), " do not match last dim of ",
                    shape_str(x.shape())));
  same_device("layernorm", {&x, &w, &b});
  const int64_t N = x.numel() / C;
  bool rec = note_inputs({&x, &w, &b});
  Tensor out = result(x.shape(), x.device(), rec);
  Tensor mean = Tensor::empty({N}, x.device()), rstd = Tensor::empty({N}, x.device());
  TESSERA_DISPATCH_CPU_ONLY(x.device(), layernorm_forward, out.data(), mean.data(), rstd.data(),
                            x.data(), w.data(), b.defined() ? b.data() : nullptr, N, C, eps);
  if (rec) {
    on_backward(out, [x, w, b, mean, rstd, N, C](const float* g) mutable {
      float* db = b.defined() ? grad_ptr(b) : nullptr;
      TESSERA_DISPATCH_CPU_ONLY(x.device(), layernorm_backward, grad_ptr(x), grad_ptr(w), db, g,
                                x.data(), w.data(), mean.data(), rstd.data(), N, C);
    });
  }
  return out;
}

Tensor rmsnorm(const Tensor& x, const Tensor& w, float eps) {
  const int64_t C = x.size(-1);
  if (w.numel() != C)
    throw Error(str("rmsnorm: weight of ", w.numel(), " does not match last dim of ",
                    shape_str(x.shape())));
  same_device("rmsnorm", {&x, &w});
  const int64_t N = x.numel() / C;
  bool rec = note_inputs({&x, &w});
  Tensor out = result(x.shape(), x.device(), rec);
  Tensor rstd = Tensor::empty({N}, x.device());
  TESSERA_DISPATCH_CPU_ONLY(x.device(), rmsnorm_forward, out.data(), rstd.data(), x.data(),
                            w.data(), N, C, eps);
  if (rec) {
    on_backward(out, [x, w, rstd, N, C](const float* g) mutable {
      TESSERA_DISPATCH_CPU_ONLY(x.device(), rmsnorm_backward, grad_ptr(x), grad_ptr(w), g, x.data(),
                                w.data(), rstd.data(), N, C);
    });
  }
  return out;
}

Tensor lora_gather(const Tensor& x, const Tensor& base_out, const Tensor& A, const Tensor& B,
                   const std::vector<int32_t>& ids, int64_t k, const Tensor& weights,
                   const std::vector<float>& scales, LoraMix mix, bool in_place) {
  if (A.ndim() != 3 || B.ndim() != 3 || A.size(0) != B.size(0) || A.size(1) != B.size(2))
    throw Error(str("lora_gather: A ", shape_str(A.shape()), " and B ", shape_str(B.shape()),
                    " are not [E, r, in] and [E, out, r]"));
  const int64_t E = A.size(0), r = A.size(1), in = A.size(2), out = B.size(1);
  if (x.ndim() != 2 || x.size(1) != in || base_out.ndim() != 2 || base_out.size(1) != out ||
      base_out.size(0) != x.size(0))
    throw Error(str("lora_gather: x ", shape_str(x.shape()), " / base_out ",
                    shape_str(base_out.shape()), " do not fit A ", shape_str(A.shape()), " and B ",
                    shape_str(B.shape())));
  const int64_t N = x.size(0), n_ids = static_cast<int64_t>(ids.size());
  if (k < 1 || n_ids % k != 0)
    throw Error(str("lora_gather: ", n_ids, " expert ids are not k = ", k, " per row group"));
  const int64_t M = n_ids / k;
  if (M == 0 || N % M != 0)
    throw Error(str("lora_gather: ", M, " row groups cannot route ", N, " rows (need a divisor)"));
  if (static_cast<int64_t>(scales.size()) != E)
    throw Error(str("lora_gather: ", scales.size(), " scales for ", E, " experts"));
  if (weights.defined() && (weights.ndim() != 2 || weights.size(0) != M || weights.size(1) != k))
    throw Error(str("lora_gather: weights ", shape_str(weights.shape()), " are not [", M, ", ", k,
                    "] (row groups, experts per group)"));
  for (int64_t i = 0; i < n_ids; ++i)
    if (ids[i] < -1 || ids[i] >= E)
      throw Error(str("lora_gather: expert id ", ids[i], " at row group ", i / k, " slot ", i % k,
                      " is outside [-1, ", E, ")"));
  same_device("lora_gather", {&x, &base_out, &A, &B, &weights});

  auto plan =
      std::make_shared<kernels::cpu::LoraPlan>(kernels::cpu::lora_plan(ids.data(), M, k, N, E));
  const kernels::cpu::LoraDims d{N, in, out, r, E};
  const bool rec = note_inputs({&x, &base_out, &A, &B, &weights});
  Tensor y = in_place ? base_out.view(base_out.shape()) : base_out.clone();
  if (rec) y.set_requires_grad(true);
  // A_e·x of every routed entry (plan order), and z for parameter mixing.
  Tensor h = Tensor::empty({std::max<int64_t>(plan->entries(), 1), r});
  Tensor z = mix == LoraMix::Parameter ? Tensor::empty({N, r}) : Tensor();
  const float* wp = weights.defined() ? weights.data() : nullptr;
  TESSERA_DISPATCH_CPU_ONLY(x.device(), lora_forward, y.data(), h.data(),
                            z.defined() ? z.data() : nullptr, x.data(), A.data(), B.data(), wp,
                            scales.data(), *plan, d, mix);
  if (rec) {
    on_backward_tensor(y, [x, base_out, A, B, weights, h, z, plan, scales, d, mix](Tensor gt) {
      const bool w_grad = weights.defined() && weights.requires_grad();
      TESSERA_DISPATCH_CPU_ONLY(x.device(), lora_backward, grad_ptr(x), grad_ptr(A), grad_ptr(B),
                                w_grad ? grad_ptr(weights) : nullptr, gt.data(), x.data(), A.data(),
                                B.data(), weights.defined() ? weights.data() : nullptr,
                                scales.data(), h.data(), z.defined() ? z.data() : nullptr, *plan, d,
                                mix);
      // d base_out = dy: the buffer itself is handed on (read above, not after).
      autograd::pass_grad(base_out, std::move(gt));
    });
  }
  return y;
}

Tensor reshape(const Tensor& x, const Shape& shape) {
  Tensor out = x.view(shape);
  if (note_inputs({&x})) {
    out.set_requires_grad(true);
    on_backward_tensor(out, [x](Tensor g) { autograd::pass_grad(x, std::move(g)); });
  }
  return out;
}

Tensor embedding(const std::vector<int32_t>& ids, const Tensor& table) {
  if (table.ndim() != 2)
    throw Error(str("embedding: table must be 2-D, got ", shape_str(table.shape())));
  const int64_t V = table.size(0), C = table.size(1), N = static_cast<int64_t>(ids.size());
  for (int64_t i = 0; i < N; ++i)
    if (ids[i] < 0 || ids[i] >= V)
      throw Error(str("embedding: id ", ids[i], " at position ", i,
                      " is outside the vocabulary [0, ", V, ")"));
  bool rec = note_inputs({&table});
  Tensor out = result({N, C}, table.device(), rec);
  TESSERA_DISPATCH_CPU_ONLY(table.device(), embedding_forward, out.data(), ids.data(), table.data(),
                            N, C);
  if (rec) {
    on_backward(out, [ids, table, N, C](const float* g) mutable {
      TESSERA_DISPATCH_CPU_ONLY(table.device(), embedding_backward, grad_ptr(table), ids.data(), g,
                                N, C);
    });
  }
  return out;
}

namespace {

struct AttnView {
  Tensor t;
  int64_t col;  // column offset of the block inside a row
  int64_t ld;   // row stride
};

Tensor attention_impl(const AttnView& q, const AttnView& k, const AttnView& v, int64_t B, int64_t T,
                      int64_t Hq, int64_t Hkv, int64_t D, const AttnOptions& o) {
  if (o.window < 0) throw Error(str("attention: sliding window ", o.window, " (expected >= 0)"));
  kernels::cpu::AttnDims dims{B, T, Hq, Hkv, D, q.ld, k.ld, v.ld, Hq * D, o.scale, o.window};
  bool rec = note_inputs({&q.t, &k.t, &v.t});
  Tensor out = result({B * T, Hq * D}, q.t.device(), rec);
  Tensor att = Tensor::empty({B, Hq, T, T}, q.t.device());
  TESSERA_DISPATCH_CPU_ONLY(q.t.device(), attention_forward, out.data(), att.data(),
                            q.t.data() + q.col, k.t.data() + k.col, v.t.data() + v.col, dims);
  if (rec) {
    on_backward(out, [q, k, v, att, dims](const float* g) mutable {
      auto gp = [](const AttnView& a) {
        return a.t.requires_grad() ? a.t.ensure_grad().data() + a.col : nullptr;
      };
      TESSERA_DISPATCH_CPU_ONLY(q.t.device(), attention_backward, gp(q), gp(k), gp(v), g,
                                q.t.data() + q.col, k.t.data() + k.col, v.t.data() + v.col,
                                att.data(), dims);
    });
  }
  return out;
}

void check_heads(const char* op, int64_t Hq, int64_t Hkv) {
  if (Hq <= 0 || Hkv <= 0 || Hq % Hkv != 0)
    throw Error(str(op, ": ", Hq, " query heads cannot share ", Hkv,
                    " key/value heads (need Hq a positive multiple of Hkv)"));
}

}  // namespace

Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, int64_t B, int64_t T,
                 int64_t Hq, int64_t Hkv, const AttnOptions& o) {
  check_heads("attention", Hq, Hkv);
  if (q.ndim() != 2 || q.size(0) != B * T || q.size(1) % Hq != 0)
    throw Error(
        str("attention: q ", shape_str(q.shape()), " is not [B*T=", B * T, ", Hq*D] with Hq=", Hq));
  const int64_t D = q.size(1) / Hq;
  Shape kv{B * T, Hkv * D};
  if (k.shape() != kv || v.shape() != kv)
    throw Error(str("attention: k ", shape_str(k.shape()), " / v ", shape_str(v.shape()),
                    " must both be ", shape_str(kv)));
  same_device("attention", {&q, &k, &v});
  return attention_impl({q, 0, Hq * D}, {k, 0, Hkv * D}, {v, 0, Hkv * D}, B, T, Hq, Hkv, D, o);
}

Tensor attention_packed(const Tensor& qkv, int64_t B, int64_t T, int64_t Hq, int64_t Hkv,
                        const AttnOptions& o) {
  check_heads("attention_packed", Hq, Hkv);
  const int64_t W = qkv.ndim() == 2 ? qkv.size(1) : -1;
  if (qkv.ndim() != 2 || qkv.size(0) != B * T || W % (Hq + 2 * Hkv) != 0)
    throw Error(str("attention_packed: qkv ", shape_str(qkv.shape()), " is not [B*T=", B * T,
                    ", (Hq+2*Hkv)*D]"));
  const int64_t D = W / (Hq + 2 * Hkv);
  return attention_impl({qkv, 0, W}, {qkv, Hq * D, W}, {qkv, (Hq + Hkv) * D, W}, B, T, Hq, Hkv, D,
                        o);
}

Tensor rope(const Tensor& x, const Tensor& cos, const Tensor& sin, int64_t B, int64_t T, int64_t H,
            int64_t rot) {
  if (x.ndim() != 2 || x.size(0) != B * T || x.size(1) % H != 0)
    throw Error(str("rope: x ", shape_str(x.shape()), " is not [B*T=", B * T, ", H*D]"));
  const int64_t D = x.size(1) / H, R = rot > 0 ? rot : D;
  if (R > D || R % 2 != 0)
    throw Error(str("rope: ", R, " rotated dims of a head of ", D, " (expected an even R <= D)"));
  if (cos.numel() < T * R / 2 || sin.numel() < T * R / 2)
    throw Error(str("rope: tables hold ", cos.numel(), " values, need T*R/2 = ", T * R / 2));
  bool rec = note_inputs({&x});
  Tensor out = result(x.shape(), x.device(), rec);
  TESSERA_DISPATCH_CPU_ONLY(x.device(), rope_forward, out.data(), x.data(), cos.data(), sin.data(),
                            B, T, H, D, R);
  if (rec) {
    on_backward(out, [x, cos, sin, B, T, H, D, R](const float* g) mutable {
      TESSERA_DISPATCH_CPU_ONLY(x.device(), rope_backward, grad_ptr(x), g, cos.data(), sin.data(),
                                B, T, H, D, R);
    });
  }
  return out;
}

Tensor cross_entropy(const Tensor& logits, const std::vector<int32_t>& targets) {
  if (logits.ndim() != 2)
    throw Error(str("cross_entropy: logits must be [N, V], got ", shape_str(logits.shape())));
  const int64_t N = logits.size(0), V = logits.size(1);
  if (static_cast<int64_t>(targets.size()) != N)
    throw Error(str("cross_entropy: ", targets.size(), " targets for ", N, " rows of logits"));
  for (int64_t i = 0; i < N; ++i)
    if (targets[i] >= V || targets[i] < -1)
      throw Error(str("cross_entropy: target ", targets[i], " at row ", i, " is outside [0, ", V,
                      ") (use -1 to ignore a row)"));
  bool rec = note_inputs({&logits});
  Tensor out = result({1}, Device::CPU, rec);
  Tensor lse = Tensor::empty({N}, logits.device());
  int64_t count = 0;
  double total = 0.0;
  if (logits.device() != Device::CPU)
    throw Error("op cross_entropy has no CUDA kernel yet: keep this model on the CPU");
  total =
      kernels::cpu::cross_entropy_forward(lse.data(), logits.data(), targets.data(), N, V, &count);
  out.data()[0] = count > 0 ? static_cast<float>(total / static_cast<double>(count)) : 0.0f;
  if (rec && count > 0) {
    on_backward(out, [logits, targets, lse, N, V, count](const float* g) mutable {
      float s = g[0] / static_cast<float>(count);
      kernels::cpu::cross_entropy_backward(grad_ptr(logits), logits.data(), lse.data(),
                                           targets.data(), s, N, V);
    });
  }
  return out;
}

namespace {

const Tensor& gate_logits(const char* op, const Tensor& logits) {
  if (logits.ndim() != 2 || logits.size(1) < 1)
    throw Error(str(op, ": logits must be [rows, experts], got ", shape_str(logits.shape())));
  if (logits.device() != Device::CPU)
    throw Error(str("op ", op, " has no CUDA kernel yet: keep this model on the CPU"));
  return logits;
}

// A loss of the gate logits computed with its gradient in one pass: the
// value now, the gradient (times the output's) added in the backward.
template <typename Fn>
Tensor gate_loss(const Tensor& logits, Fn fn) {
  const int64_t N = logits.size(0), E = logits.size(1);
  bool rec = note_inputs({&logits});
  Tensor out = result({1}, Device::CPU, rec);
  Tensor grad = rec ? Tensor::empty({N, E}) : Tensor();
  out.data()[0] = static_cast<float>(fn(logits.data(), N, E, rec ? grad.data() : nullptr));
  if (rec) {
    on_backward(out, [logits, grad](const float* g) mutable {
      float* d = grad_ptr(logits);
      if (!d) return;
      const float* src = grad.data();
      for (int64_t i = 0; i < grad.numel(); ++i) d[i] += g[0] * src[i];
    });
  }
  return out;
}

}  // namespace

Gate top_k_gate(const Tensor& logits, int64_t k, GateWeights mode, const std::vector<float>& bias) {
  gate_logits("top_k_gate", logits);
  const int64_t N = logits.size(0), E = logits.size(1);
  if (k < 1 || k > E)
    throw Error(str("top_k_gate: top_k = ", k, " for ", E, " experts (expected 1 to ", E, ")"));
  if (!bias.empty() && static_cast<int64_t>(bias.size()) != E)
    throw Error(str("top_k_gate: a bias of ", bias.size(), " values for ", E, " experts"));
  bool rec = note_inputs({&logits});
  Gate g;
  g.k = k;
  g.ids.resize(static_cast<size_t>(N * k));
  g.weights = result({N, k}, Device::CPU, rec);
  Tensor probs = Tensor::empty({N, E});
  kernels::cpu::top_k_gate_forward(g.weights.data(), g.ids.data(), probs.data(), logits.data(),
                                   bias.empty() ? nullptr : bias.data(), N, E, k, mode);
  if (rec) {
    on_backward(g.weights, [logits, probs, ids = g.ids, N, E, k, mode](const float* d) mutable {
      float* dl = grad_ptr(logits);
      if (dl) kernels::cpu::top_k_gate_backward(dl, d, probs.data(), ids.data(), N, E, k, mode);
    });
  }
  return g;
}

Tensor load_balancing_loss(const Tensor& logits, int64_t k, const std::vector<float>& mask) {
  gate_logits("load_balancing_loss", logits);
  if (!mask.empty() && static_cast<int64_t>(mask.size()) != logits.size(0))
    throw Error(str("load_balancing_loss: a mask of ", mask.size(), " values for ", logits.size(0),
                    " rows"));
  if (k < 1 || k > logits.size(1))
    throw Error(str("load_balancing_loss: top_k = ", k, " for ", logits.size(1),
                    " experts (expected 1 to ", logits.size(1), ")"));
  return gate_loss(logits, [&](const float* z, int64_t N, int64_t E, float* grad) {
    return kernels::cpu::load_balancing_loss(z, N, E, k, mask.empty() ? nullptr : mask.data(),
                                             grad);
  });
}

Tensor router_z_loss(const Tensor& logits) {
  gate_logits("router_z_loss", logits);
  return gate_loss(logits, [](const float* z, int64_t N, int64_t E, float* grad) {
    return kernels::cpu::router_z_loss(z, N, E, grad);
  });
}

Tensor gating_balance_loss(const Tensor& logits, float temperature) {
  gate_logits("gating_balance_loss", logits);
  if (!(temperature > 0))
    throw Error(str("gating_balance_loss: temperature = ", temperature, " (expected above 0)"));
  return gate_loss(logits, [&](const float* z, int64_t N, int64_t E, float* grad) {
    return kernels::cpu::gating_balance_loss(z, N, E, temperature, grad);
  });
}

Tensor poly_weights(const Tensor& logits, int64_t skills, const Tensor& u, float tau) {
  if (logits.ndim() != 2 || skills < 1 || logits.size(1) % skills != 0)
    throw Error(str("poly_weights: logits ", shape_str(logits.shape()),
                    " are not [tasks, splits * skills] for ", skills, " skills"));
  if (!(tau > 0)) throw Error(str("poly_weights: temperature ", tau, " (expected above 0)"));
  if (u.defined()) {
    if (u.shape() != logits.shape())
      throw Error(str("poly_weights: noise ", shape_str(u.shape()), " for logits ",
                      shape_str(logits.shape())));
    for (int64_t i = 0; i < u.numel(); ++i)
      if (!(u.data()[i] > 0 && u.data()[i] < 1))
        throw Error(str("poly_weights: noise ", u.data()[i], " at ", i, " is outside (0, 1)"));
  }
  const int64_t T = logits.size(0), S = skills, q = logits.size(1) / skills;
  bool rec = note_inputs({&logits, &u});
  Tensor out = result({T, q, S}, logits.device(), rec);
  Tensor zhat = Tensor::empty({T, q * S}, logits.device());
  TESSERA_DISPATCH_CPU_ONLY(logits.device(), poly_weights_forward, out.data(), zhat.data(),
                            logits.data(), u.defined() ? u.data() : nullptr, T, q, S, tau);
  if (rec) {
    // Evaluation's σ(z) has no temperature.
    const float t = u.defined() ? tau : 1.0f;
    on_backward(out, [logits, zhat, T, q, S, t](const float* g) mutable {
      TESSERA_DISPATCH_CPU_ONLY(logits.device(), poly_weights_backward, grad_ptr(logits), g,
                                zhat.data(), T, q, S, t);
    });
  }
  return out;
}

Tensor poly_mix(const Tensor& weights, const Tensor& bank, bool split_cols) {
  if (weights.ndim() != 3 || bank.ndim() != 3 || weights.size(2) != bank.size(0))
    throw Error(str("poly_mix: weights ", shape_str(weights.shape()), " and skills ",
                    shape_str(bank.shape()), " are not [tasks, splits, S] and [S, R, C]"));
  const int64_t T = weights.size(0), q = weights.size(1), S = weights.size(2), R = bank.size(1),
                C = bank.size(2);
  const int64_t split_dim = split_cols ? C : R;
  if (q < 1 || split_dim % q != 0)
    throw Error(str("poly_mix: ", q, " splits do not divide ",
                    split_cols ? "in_features " : "out_features ", split_dim));
  same_device("poly_mix", {&weights, &bank});
  bool rec = note_inputs({&weights, &bank});
  Tensor out = result({T, R, C}, bank.device(), rec);
  TESSERA_DISPATCH_CPU_ONLY(bank.device(), poly_mix_forward, out.data(), weights.data(),
                            bank.data(), T, q, S, R, C, split_cols);
  if (rec) {
    on_backward(out, [weights, bank, T, q, S, R, C, split_cols](const float* g) mutable {
      TESSERA_DISPATCH_CPU_ONLY(bank.device(), poly_mix_backward, grad_ptr(weights), grad_ptr(bank),
                                g, weights.data(), bank.data(), T, q, S, R, C, split_cols);
    });
  }
  return out;
}

Tensor poly_lora(const Tensor& x, const Tensor& base_out, const Tensor& A, const Tensor& B,
                 const Tensor& weights, float scale) {
  if (A.ndim() != 3 || B.ndim() != 3 || A.size(0) != B.size(0) || A.size(1) != B.size(2) ||
      weights.ndim() != 3 || weights.size(2) != A.size(0))
    throw Error(str("poly_lora: skills A ", shape_str(A.shape()), ", B ", shape_str(B.shape()),
                    " and weights ", shape_str(weights.shape()),
                    " are not [S, r, in], [S, out, r] and [groups, splits, S]"));
  const int64_t S = A.size(0), r = A.size(1), in = A.size(2), out = B.size(1);
  const int64_t M = weights.size(0), q = weights.size(1);
  if (x.ndim() != 2 || x.size(1) != in || base_out.ndim() != 2 || base_out.size(1) != out ||
      base_out.size(0) != x.size(0))
    throw Error(str("poly_lora: x ", shape_str(x.shape()), " / base_out ",
                    shape_str(base_out.shape()), " do not fit skills A ", shape_str(A.shape()),
                    " and B ", shape_str(B.shape())));
  const int64_t N = x.size(0);
  if (q < 1 || in % q != 0 || out % q != 0)
    throw Error(
        str("poly_lora: ", q, " splits must divide in_features ", in, " and out_features ", out));
  if (M < 1 || N % M != 0)
    throw Error(str("poly_lora: ", M, " row groups cannot mix ", N, " rows (need a divisor)"));
  same_device("poly_lora", {&x, &base_out, &A, &B, &weights});
  const kernels::cpu::PolyLoraDims d{N, M, in, out, r, S, q};
  const bool rec = note_inputs({&x, &base_out, &A, &B, &weights});
  Tensor y = base_out.clone();
  if (rec) y.set_requires_grad(true);
  Tensor P = Tensor::empty({q, std::max<int64_t>(N, 1), S * r});
  Tensor z = Tensor::empty({std::max<int64_t>(N, 1), r});
  Tensor Q = Tensor::empty({std::max<int64_t>(N, 1), S * out});
  TESSERA_DISPATCH_CPU_ONLY(x.device(), poly_lora_forward, y.data(), P.data(), z.data(), Q.data(),
                            x.data(), A.data(), B.data(), weights.data(), scale, d);
  if (rec) {
    on_backward_tensor(y, [x, base_out, A, B, weights, P, z, Q, scale, d](Tensor gt) {
      TESSERA_DISPATCH_CPU_ONLY(x.device(), poly_lora_backward, grad_ptr(x), grad_ptr(A),
                                grad_ptr(B), grad_ptr(weights), gt.data(), x.data(), A.data(),
                                B.data(), weights.data(), P.data(), z.data(), Q.data(), scale, d);
      autograd::pass_grad(base_out, std::move(gt));
    });
  }
  return y;
}

}  // namespace tessera::ops
