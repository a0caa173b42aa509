// Causal multi-head attention with grouped-query heads, and rotary embeddings.
//
// Rows are tokens: q is [B*T, *] with head h at columns [h*D, (h+1)*D) and a
// row stride ldq (so q, k, v may be column slices of one fused projection);
// k, v have Hkv heads, and q head h reads kv head h / (Hq / Hkv).
// att caches the softmax probabilities, [B, Hq, T, T] (zero above the diagonal).
#pragma once

#include <cstdint>

namespace tessera::kernels::cpu {

struct AttnDims {
  int64_t B, T, Hq, Hkv, D;
  int64_t ldq, ldk, ldv, ldo;
  // Scores are q·k times `scale` (0: 1/sqrt(D)). With window > 0, query t
  // sees keys j with t - window < j <= t (Mistral's sliding window, as
  // transformers' sliding_window_causal mask); 0: every earlier key.
  float scale = 0.0f;
  int64_t window = 0;
};

void attention_forward(float* out, float* att, const float* q, const float* k, const float* v,
                       const AttnDims& d);
// Accumulates into dq, dk, dv (each may be null).
void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* q,
                        const float* k, const float* v, const float* att, const AttnDims& d);

// Rotary embedding in the Hugging Face (rotate_half) layout: for i < D/2 the
// pair (x[i], x[i + D/2]) rotates by angle pos * theta^(-2i/D).
// x is [B*T, H*D]; cos/sin are [T, D/2] for positions 0..T-1.
void rope_tables(float* cos, float* sin, int64_t T, int64_t D, float theta);
// The same from given inverse frequencies inv_freq[D/2] (scaled RoPE).
void rope_tables_from(float* cos, float* sin, int64_t T, int64_t half, const float* inv_freq);
// R <= D: only each head's first R dims rotate (pairs i, i + R/2; tables
// [T, R/2]), the rest pass through — partial rotary (transformers' Phi-3).
void rope_forward(float* out, const float* inp, const float* cos, const float* sin, int64_t B,
                  int64_t T, int64_t H, int64_t D, int64_t R);
void rope_backward(float* dinp, const float* dout, const float* cos, const float* sin, int64_t B,
                   int64_t T, int64_t H, int64_t D, int64_t R);

}  // namespace tessera::kernels::cpu
