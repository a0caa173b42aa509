#include "runtime/kernels/cpu/attention.h"

#include <cmath>

#include <vector>
#include "runtime/kernels/cpu/matmul.h"
#include "runtime/kernels/cpu/vmath.h"

namespace tessera::kernels::cpu {

// Each (batch, head) is a handful of small GEMMs through OpenBLAS (single-
// threaded inside the OpenMP loop over heads: OpenBLAS's OpenMP build runs
// sequentially when called in a parallel region) plus a causal softmax in
// between. The GEMMs compute the full T×T score block — twice the causal work —
// but at several times the speed of scalar loops; masked entries have P = 0.

void attention_forward(float* out, float* att, const float* q, const float* k, const float* v,
                       const AttnDims& d) {
  const int64_t B = d.B, T = d.T, Hq = d.Hq, D = d.D, group = d.Hq / d.Hkv;
  const float scale = d.scale != 0.0f ? d.scale : 1.0f / std::sqrt(static_cast<float>(D));
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < Hq; ++h) {
      const int64_t kvh = h / group;
      const float* qb = q + b * T * d.ldq + h * D;
      const float* kb = k + b * T * d.ldk + kvh * D;
      const float* vb = v + b * T * d.ldv + kvh * D;
      float* p = att + (b * Hq + h) * T * T;
      gemm(false, true, T, T, D, scale, qb, d.ldq, kb, d.ldk, 0.0f, p, T);
      for (int64_t t = 0; t < T; ++t) {
        float* __restrict row = p + t * T;
        const int64_t n = t + 1;
        const int64_t j0 = d.window > 0 && t + 1 > d.window ? t + 1 - d.window : 0;
        for (int64_t j = 0; j < j0; ++j) row[j] = 0.0f;
        float mx = -INFINITY;
        for (int64_t j = j0; j < n; ++j) mx = row[j] > mx ? row[j] : mx;
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (int64_t j = j0; j < n; ++j) {
          row[j] = vexp(row[j] - mx);
          sum += row[j];
        }
        const float inv = 1.0f / sum;
#pragma omp simd
        for (int64_t j = j0; j < n; ++j) row[j] *= inv;
        for (int64_t j = n; j < T; ++j) row[j] = 0.0f;
      }
      gemm(false, false, T, D, T, 1.0f, p, T, vb, d.ldv, 0.0f, out + b * T * d.ldo + h * D, d.ldo);
    }
  }
}

void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* q,
                        const float* k, const float* v, const float* att, const AttnDims& d) {
  const int64_t B = d.B, T = d.T, Hq = d.Hq, Hkv = d.Hkv, D = d.D, group = d.Hq / d.Hkv;
  const float scale = d.scale != 0.0f ? d.scale : 1.0f / std::sqrt(static_cast<float>(D));
  // One work item per (batch, kv head): it owns dk/dv of that head and dq of
  // the query heads that share it, so there are no write races.
#pragma omp parallel
  {
    std::vector<float> ds(static_cast<size_t>(T * T));
#pragma omp for collapse(2) schedule(static)
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t kvh = 0; kvh < Hkv; ++kvh) {
        const float* kb = k + b * T * d.ldk + kvh * D;
        const float* vb = v + b * T * d.ldv + kvh * D;
        for (int64_t h = kvh * group; h < (kvh + 1) * group; ++h) {
          const float* p = att + (b * Hq + h) * T * T;
          const float* gob = dout + b * T * d.ldo + h * D;
          const float* qb = q + b * T * d.ldq + h * D;
          float* g = ds.data();
          // dP = dO · Vᵀ, then dS = P ⊙ (dP − rowsum(P ⊙ dP)) · scale (0 where P is masked).
          gemm(false, true, T, T, D, 1.0f, gob, d.ldo, vb, d.ldv, 0.0f, g, T);
          for (int64_t t = 0; t < T; ++t) {
            const float* __restrict pr = p + t * T;
            float* __restrict gr = g + t * T;
            float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
            for (int64_t j = 0; j < T; ++j) dot += pr[j] * gr[j];
#pragma omp simd
            for (int64_t j = 0; j < T; ++j) gr[j] = pr[j] * (gr[j] - dot) * scale;
          }
          if (dv)
            gemm(true, false, T, D, T, 1.0f, p, T, gob, d.ldo, 1.0f, dv + b * T * d.ldv + kvh * D,
                 d.ldv);
          if (dq)
            gemm(false, false, T, D, T, 1.0f, g, T, kb, d.ldk, 1.0f, dq + b * T * d.ldq + h * D,
                 d.ldq);
          if (dk)
            gemm(true, false, T, D, T, 1.0f, g, T, qb, d.ldq, 1.0f, dk + b * T * d.ldk + kvh * D,
                 d.ldk);
        }
      }
    }
  }
}

void rope_tables(float* cos, float* sin, int64_t T, int64_t D, float theta) {
  const int64_t half = D / 2;
  for (int64_t i = 0; i < half; ++i) {
    // Same float32 arithmetic as Hugging Face's inv_freq and outer product.
    float inv_freq = 1.0f / std::pow(theta, static_cast<float>(2 * i) / static_cast<float>(D));
    for (int64_t t = 0; t < T; ++t) {
      float angle = static_cast<float>(t) * inv_freq;
      cos[t * half + i] = std::cos(angle);
      sin[t * half + i] = std::sin(angle);
    }
  }
}

void rope_tables_from(float* cos, float* sin, int64_t T, int64_t half, const float* inv_freq) {
  for (int64_t i = 0; i < half; ++i)
    for (int64_t t = 0; t < T; ++t) {
      const float angle = static_cast<float>(t) * inv_freq[i];
      cos[t * half + i] = std::cos(angle);
      sin[t * half + i] = std::sin(angle);
    }
}

namespace {
// Rotates each (x[i], x[i + D/2]) pair by +angle (forward) or −angle (its
// transpose, the backward); writes or accumulates into out.
template <bool kAccumulate>
void rope_rotate(float* out, const float* inp, const float* cos, const float* sin, float sign,
                 int64_t B, int64_t T, int64_t H, int64_t D, int64_t R) {
  const int64_t half = R / 2;
#pragma omp parallel for collapse(2) if (B * T * H * D > (1 << 15)) schedule(static)
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t = 0; t < T; ++t) {
      const float* c = cos + t * half;
      const float* s = sin + t * half;
      for (int64_t h = 0; h < H; ++h) {
        const float* x = inp + (b * T + t) * H * D + h * D;
        float* o = out + (b * T + t) * H * D + h * D;
#pragma omp simd
        for (int64_t i = 0; i < half; ++i) {
          const float x1 = x[i], x2 = x[i + half], si = sign * s[i];
          const float r1 = x1 * c[i] - x2 * si, r2 = x2 * c[i] + x1 * si;
          o[i] = kAccumulate ? o[i] + r1 : r1;
          o[i + half] = kAccumulate ? o[i + half] + r2 : r2;
        }
        for (int64_t i = R; i < D; ++i) o[i] = kAccumulate ? o[i] + x[i] : x[i];
      }
    }
  }
}
}  // namespace

void rope_forward(float* out, const float* inp, const float* cos, const float* sin, int64_t B,
                  int64_t T, int64_t H, int64_t D, int64_t R) {
  rope_rotate<false>(out, inp, cos, sin, 1.0f, B, T, H, D, R);
}

void rope_backward(float* dinp, const float* dout, const float* cos, const float* sin, int64_t B,
                   int64_t T, int64_t H, int64_t D, int64_t R) {
  rope_rotate<true>(dinp, dout, cos, sin, -1.0f, B, T, H, D, R);
}

}  // namespace tessera::kernels::cpu
