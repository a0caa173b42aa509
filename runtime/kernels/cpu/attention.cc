#include "runtime/kernels/cpu/attention.h"

#include <cmath>

#include "runtime/kernels/cpu/vmath.h"
#include <vector>

namespace tessera::kernels::cpu {

void attention_forward(float* out, float* att, const float* q, const float* k, const float* v,
                       const AttnDims& d) {
  const int64_t B = d.B, T = d.T, Hq = d.Hq, D = d.D, group = d.Hq / d.Hkv;
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
#pragma omp parallel for collapse(2) schedule(dynamic, 1)
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < Hq; ++h) {
      const int64_t kvh = h / group;
      for (int64_t t = 0; t < T; ++t) {
        const float* qt = q + (b * T + t) * d.ldq + h * D;
        float* p = att + ((b * Hq + h) * T + t) * T;
        float mx = -INFINITY;
        for (int64_t j = 0; j <= t; ++j) {
          const float* kj = k + (b * T + j) * d.ldk + kvh * D;
          float s = 0.0f;
#pragma omp simd reduction(+ : s)
          for (int64_t i = 0; i < D; ++i) s += qt[i] * kj[i];
          s *= scale;
          p[j] = s;
          mx = s > mx ? s : mx;
        }
        float sum = 0.0f;
        for (int64_t j = 0; j <= t; ++j) {
          p[j] = vexp(p[j] - mx);
          sum += p[j];
        }
        float inv = 1.0f / sum;
        for (int64_t j = 0; j <= t; ++j) p[j] *= inv;
        for (int64_t j = t + 1; j < T; ++j) p[j] = 0.0f;
        float* o = out + (b * T + t) * d.ldo + h * D;
#pragma omp simd
        for (int64_t i = 0; i < D; ++i) o[i] = 0.0f;
        for (int64_t j = 0; j <= t; ++j) {
          const float* vj = v + (b * T + j) * d.ldv + kvh * D;
          const float pj = p[j];
#pragma omp simd
          for (int64_t i = 0; i < D; ++i) o[i] += pj * vj[i];
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
    std::vector<float> dp(static_cast<size_t>(T));
#pragma omp for collapse(2) schedule(dynamic, 1)
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t kvh = 0; kvh < Hkv; ++kvh) {
        for (int64_t h = kvh * group; h < (kvh + 1) * group; ++h) {
          for (int64_t t = 0; t < T; ++t) {
            const float* p = att + ((b * Hq + h) * T + t) * T;
            const float* go = dout + (b * T + t) * d.ldo + h * D;
            const float* qt = q + (b * T + t) * d.ldq + h * D;
            float dot = 0.0f;
            for (int64_t j = 0; j <= t; ++j) {
              const float* vj = v + (b * T + j) * d.ldv + kvh * D;
              float s = 0.0f;
#pragma omp simd reduction(+ : s)
              for (int64_t i = 0; i < D; ++i) s += go[i] * vj[i];
              dp[j] = s;
              dot += s * p[j];
              if (dv) {
                float* dvj = dv + (b * T + j) * d.ldv + kvh * D;
                const float pj = p[j];
#pragma omp simd
                for (int64_t i = 0; i < D; ++i) dvj[i] += pj * go[i];
              }
            }
            float* dqt = dq ? dq + (b * T + t) * d.ldq + h * D : nullptr;
            for (int64_t j = 0; j <= t; ++j) {
              const float ds = p[j] * (dp[j] - dot) * scale;
              if (dqt) {
                const float* kj = k + (b * T + j) * d.ldk + kvh * D;
#pragma omp simd
                for (int64_t i = 0; i < D; ++i) dqt[i] += ds * kj[i];
              }
              if (dk) {
                float* dkj = dk + (b * T + j) * d.ldk + kvh * D;
#pragma omp simd
                for (int64_t i = 0; i < D; ++i) dkj[i] += ds * qt[i];
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
