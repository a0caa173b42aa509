#include "runtime/kernels/cpu/attention.h"

#include <cmath>

#include <vector>
#include "runtime/kernels/cpu/vmath.h"

namespace tessera::kernels::cpu {

// Both passes work on one (batch, head) at a time with K (and V) transposed
// into a [D, T] scratch, so every inner loop is a contiguous axpy over keys or
// over the head dim: no horizontal reductions, and it vectorises.

namespace {
void transpose_head(float* dst, const float* src, int64_t ld, int64_t T, int64_t D) {
  for (int64_t j = 0; j < T; ++j)
    for (int64_t i = 0; i < D; ++i) dst[i * T + j] = src[j * ld + i];
}
}  // namespace

void attention_forward(float* out, float* att, const float* q, const float* k, const float* v,
                       const AttnDims& d) {
  const int64_t B = d.B, T = d.T, Hq = d.Hq, D = d.D, group = d.Hq / d.Hkv;
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
#pragma omp parallel
  {
    std::vector<float> kt(static_cast<size_t>(D * T));
#pragma omp for collapse(2) schedule(static)
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t h = 0; h < Hq; ++h) {
        const int64_t kvh = h / group;
        transpose_head(kt.data(), k + b * T * d.ldk + kvh * D, d.ldk, T, D);
        for (int64_t t = 0; t < T; ++t) {
          const float* qt = q + (b * T + t) * d.ldq + h * D;
          float* __restrict p = att + ((b * Hq + h) * T + t) * T;
          const int64_t n = t + 1;
          for (int64_t j = 0; j < T; ++j) p[j] = 0.0f;
          for (int64_t i = 0; i < D; ++i) {
            const float qi = qt[i] * scale;
            const float* __restrict kr = kt.data() + i * T;
#pragma omp simd
            for (int64_t j = 0; j < n; ++j) p[j] += qi * kr[j];
          }
          float mx = -INFINITY;
          for (int64_t j = 0; j < n; ++j) mx = p[j] > mx ? p[j] : mx;
          float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
          for (int64_t j = 0; j < n; ++j) {
            p[j] = vexp(p[j] - mx);
            sum += p[j];
          }
          const float inv = 1.0f / sum;
#pragma omp simd
          for (int64_t j = 0; j < n; ++j) p[j] *= inv;
          float* __restrict o = out + (b * T + t) * d.ldo + h * D;
          for (int64_t i = 0; i < D; ++i) o[i] = 0.0f;
          for (int64_t j = 0; j < n; ++j) {
            const float* __restrict vj = v + (b * T + j) * d.ldv + kvh * D;
            const float pj = p[j];
#pragma omp simd
            for (int64_t i = 0; i < D; ++i) o[i] += pj * vj[i];
          }
        }
      }
    }
  }
}

void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* q,
                        const float* k, const float* v, const float* att, const AttnDims& d) {
  const int64_t B = d.B, T = d.T, Hq = d.Hq, Hkv = d.Hkv, D = d.D, group = d.Hq / d.Hkv;
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  // One work item per (batch, kv head): it owns dk/dv of that head and dq of
  // the query heads that share it, so there are no write races.
#pragma omp parallel
  {
    std::vector<float> vt(static_cast<size_t>(D * T)), dp(static_cast<size_t>(T));
#pragma omp for collapse(2) schedule(static)
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t kvh = 0; kvh < Hkv; ++kvh) {
        transpose_head(vt.data(), v + b * T * d.ldv + kvh * D, d.ldv, T, D);
        for (int64_t h = kvh * group; h < (kvh + 1) * group; ++h) {
          for (int64_t t = 0; t < T; ++t) {
            const float* __restrict p = att + ((b * Hq + h) * T + t) * T;
            const float* __restrict go = dout + (b * T + t) * d.ldo + h * D;
            const float* __restrict qt = q + (b * T + t) * d.ldq + h * D;
            const int64_t n = t + 1;
            float* __restrict g = dp.data();
            for (int64_t j = 0; j < n; ++j) g[j] = 0.0f;
            for (int64_t i = 0; i < D; ++i) {
              const float gi = go[i];
              const float* __restrict vr = vt.data() + i * T;
#pragma omp simd
              for (int64_t j = 0; j < n; ++j) g[j] += gi * vr[j];
            }
            float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
            for (int64_t j = 0; j < n; ++j) dot += g[j] * p[j];
              // g becomes dS (the gradient of the pre-softmax scores, times scale).
#pragma omp simd
            for (int64_t j = 0; j < n; ++j) g[j] = p[j] * (g[j] - dot) * scale;
            if (dv) {
              for (int64_t j = 0; j < n; ++j) {
                float* __restrict dvj = dv + (b * T + j) * d.ldv + kvh * D;
                const float pj = p[j];
#pragma omp simd
                for (int64_t i = 0; i < D; ++i) dvj[i] += pj * go[i];
              }
            }
            if (dq) {
              float* __restrict dqt = dq + (b * T + t) * d.ldq + h * D;
              for (int64_t j = 0; j < n; ++j) {
                const float* __restrict kj = k + (b * T + j) * d.ldk + kvh * D;
                const float gj = g[j];
#pragma omp simd
                for (int64_t i = 0; i < D; ++i) dqt[i] += gj * kj[i];
              }
            }
            if (dk) {
              for (int64_t j = 0; j < n; ++j) {
                float* __restrict dkj = dk + (b * T + j) * d.ldk + kvh * D;
                const float gj = g[j];
#pragma omp simd
                for (int64_t i = 0; i < D; ++i) dkj[i] += gj * qt[i];
              }
            }
          }
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

void rope_forward(float* out, const float* inp, const float* cos, const float* sin, int64_t B,
                  int64_t T, int64_t H, int64_t D) {
  const int64_t half = D / 2;
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
          float x1 = x[i], x2 = x[i + half];
          o[i] = x1 * c[i] - x2 * s[i];
          o[i + half] = x2 * c[i] + x1 * s[i];
        }
      }
    }
  }
}

void rope_backward(float* dinp, const float* dout, const float* cos, const float* sin, int64_t B,
                   int64_t T, int64_t H, int64_t D) {
  const int64_t half = D / 2;
#pragma omp parallel for collapse(2) if (B * T * H * D > (1 << 15)) schedule(static)
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t = 0; t < T; ++t) {
      const float* c = cos + t * half;
      const float* s = sin + t * half;
      for (int64_t h = 0; h < H; ++h) {
        const float* g = dout + (b * T + t) * H * D + h * D;
        float* dx = dinp + (b * T + t) * H * D + h * D;
#pragma omp simd
        for (int64_t i = 0; i < half; ++i) {
          float g1 = g[i], g2 = g[i + half];
          dx[i] += g1 * c[i] + g2 * s[i];
          dx[i + half] += g2 * c[i] - g1 * s[i];
        }
      }
    }
  }
}

}  // namespace tessera::kernels::cpu
