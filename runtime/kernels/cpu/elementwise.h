// Elementwise and gather kernels on the CPU (OpenMP above a size threshold).
// Backward kernels accumulate (+=) into their gradient outputs; a null
// gradient pointer means that input needs no gradient.
#pragma once

#include <cstdint>

namespace tessera::kernels::cpu {

// out[i] = a[i] + b[i % nb]  (b broadcast over leading dims; nb divides n)
void add_forward(float* out, const float* a, const float* b, int64_t n, int64_t nb);
void add_backward(float* da, float* db, const float* dout, int64_t n, int64_t nb);

void mul_forward(float* out, const float* a, const float* b, int64_t n);
void mul_backward(float* da, float* db, const float* dout, const float* a, const float* b,
                  int64_t n);

// out[i] = a[i] * b[i % nb]  (b broadcast over leading dims; nb divides n)
void mul_bcast_forward(float* out, const float* a, const float* b, int64_t n, int64_t nb);
void mul_bcast_backward(float* da, float* db, const float* dout, const float* a, const float* b,
                        int64_t n, int64_t nb);
void div_forward(float* out, const float* a, const float* b, int64_t n);
void div_backward(float* da, float* db, const float* dout, const float* a, const float* b,
                  int64_t n);
// out[i] = ‖x[i,:]‖₂ over C columns.
void row_norm_forward(float* out, const float* x, int64_t N, int64_t C);
void row_norm_backward(float* dx, const float* dout, const float* x, const float* norm, int64_t N,
                       int64_t C);
void transpose(float* out, const float* x, int64_t R, int64_t C);  // out [C, R] += x [R, C]ᵀ

void scale_forward(float* out, const float* a, float s, int64_t n);
void scale_backward(float* da, const float* dout, float s, int64_t n);

enum class Act { Gelu, GeluTanh, Relu, Silu };
void act_forward(Act act, float* out, const float* inp, int64_t n);
void act_backward(Act act, float* dinp, const float* dout, const float* inp, int64_t n);

// SwiGLU: out = silu(gate) * up (fused).
void swiglu_forward(float* out, const float* gate, const float* up, int64_t n);
void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate,
                     const float* up, int64_t n);

// out[i,:] = table[ids[i],:]  (ids in [0, V) — the caller validates)
void embedding_forward(float* out, const int32_t* ids, const float* table, int64_t N, int64_t C);
void embedding_backward(float* dtable, const int32_t* ids, const float* dout, int64_t N, int64_t C);

}  // namespace tessera::kernels::cpu
