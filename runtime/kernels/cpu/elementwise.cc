#include "runtime/kernels/cpu/elementwise.h"

#include <cmath>

#include "runtime/kernels/cpu/vmath.h"

namespace tessera::kernels::cpu {

namespace {
constexpr int64_t kPar = 1 << 15;  // below this many elements a loop stays on one thread
constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kInvSqrt2 = 0.7071067811865476f;
constexpr float kInvSqrt2Pi = 0.3989422804014327f;
}  // namespace

void add_forward(float* out, const float* a, const float* b, int64_t n, int64_t nb) {
  if (nb == n) {
#pragma omp parallel for simd if (n > kPar) schedule(static)
    for (int64_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
    return;
  }
  int64_t rows = n / nb;
#pragma omp parallel for if (n > kPar) schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const float* ar = a + r * nb;
    float* o = out + r * nb;
#pragma omp simd
    for (int64_t j = 0; j < nb; ++j) o[j] = ar[j] + b[j];
  }
}

void add_backward(float* da, float* db, const float* dout, int64_t n, int64_t nb) {
  if (da) {
#pragma omp parallel for simd if (n > kPar) schedule(static)
    for (int64_t i = 0; i < n; ++i) da[i] += dout[i];
  }
  if (db) {
    int64_t rows = n / nb;
#pragma omp parallel for if (n > kPar) schedule(static)
    for (int64_t j0 = 0; j0 < nb; j0 += 64) {
      int64_t j1 = j0 + 64 < nb ? j0 + 64 : nb;
      for (int64_t r = 0; r < rows; ++r) {
        const float* d = dout + r * nb;
#pragma omp simd
        for (int64_t j = j0; j < j1; ++j) db[j] += d[j];
      }
    }
  }
}

void mul_forward(float* out, const float* a, const float* b, int64_t n) {
#pragma omp parallel for simd if (n > kPar) schedule(static)
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] * b[i];
}

void mul_backward(float* da, float* db, const float* dout, const float* a, const float* b,
                  int64_t n) {
#pragma omp parallel for simd if (n > kPar) schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    if (da) da[i] += dout[i] * b[i];
    if (db) db[i] += dout[i] * a[i];
  }
}

void mul_bcast_forward(float* out, const float* a, const float* b, int64_t n, int64_t nb) {
  const int64_t rows = n / nb;
#pragma omp parallel for if (n > kPar) schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
#pragma omp simd
    for (int64_t j = 0; j < nb; ++j) out[r * nb + j] = a[r * nb + j] * b[j];
  }
}

void mul_bcast_backward(float* da, float* db, const float* dout, const float* a, const float* b,
                        int64_t n, int64_t nb) {
  const int64_t rows = n / nb;
  if (da) {
#pragma omp parallel for if (n > kPar) schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
#pragma omp simd
      for (int64_t j = 0; j < nb; ++j) da[r * nb + j] += dout[r * nb + j] * b[j];
    }
  }
  if (db) {
    // Rows summed in a fixed order: the result does not depend on the thread count.
    for (int64_t r = 0; r < rows; ++r) {
#pragma omp simd
      for (int64_t j = 0; j < nb; ++j) db[j] += dout[r * nb + j] * a[r * nb + j];
    }
  }
}

void div_forward(float* out, const float* a, const float* b, int64_t n) {
#pragma omp parallel for simd if (n > kPar) schedule(static)
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] / b[i];
}

void div_backward(float* da, float* db, const float* dout, const float* a, const float* b,
                  int64_t n) {
#pragma omp parallel for simd if (n > kPar) schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    if (da) da[i] += dout[i] / b[i];
    if (db) db[i] -= dout[i] * a[i] / (b[i] * b[i]);
  }
}

void row_norm_forward(float* out, const float* x, int64_t N, int64_t C) {
#pragma omp parallel for if (N * C > kPar) schedule(static)
  for (int64_t i = 0; i < N; ++i) {
    double s = 0.0;
    for (int64_t j = 0; j < C; ++j) s += static_cast<double>(x[i * C + j]) * x[i * C + j];
    out[i] = static_cast<float>(std::sqrt(s));
  }
}

void row_norm_backward(float* dx, const float* dout, const float* x, const float* norm, int64_t N,
                       int64_t C) {
#pragma omp parallel for if (N * C > kPar) schedule(static)
  for (int64_t i = 0; i < N; ++i) {
    if (norm[i] == 0.0f) continue;  // subgradient 0 at the origin
    const float g = dout[i] / norm[i];
#pragma omp simd
    for (int64_t j = 0; j < C; ++j) dx[i * C + j] += g * x[i * C + j];
  }
}

void transpose(float* out, const float* x, int64_t R, int64_t C) {
#pragma omp parallel for if (R * C > kPar) schedule(static)
  for (int64_t c = 0; c < C; ++c)
    for (int64_t r = 0; r < R; ++r) out[c * R + r] += x[r * C + c];
}

void scale_forward(float* out, const float* a, float s, int64_t n) {
#pragma omp parallel for simd if (n > kPar) schedule(static)
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] * s;
}

void scale_backward(float* da, const float* dout, float s, int64_t n) {
#pragma omp parallel for simd if (n > kPar) schedule(static)
  for (int64_t i = 0; i < n; ++i) da[i] += dout[i] * s;
}

namespace {
inline float sigmoid(float x) {
  return vsigmoid(x);
}
}  // namespace

void act_forward(Act act, float* out, const float* inp, int64_t n) {
  switch (act) {
    case Act::Gelu:
#pragma omp parallel for simd if (n > kPar) schedule(static)
      for (int64_t i = 0; i < n; ++i) out[i] = 0.5f * inp[i] * (1.0f + verf(inp[i] * kInvSqrt2));
      break;
    case Act::GeluTanh:
#pragma omp parallel for simd if (n > kPar) schedule(static)
      for (int64_t i = 0; i < n; ++i) {
        float x = inp[i];
        float u = kSqrt2OverPi * (x + 0.044715f * x * x * x);
        out[i] = 0.5f * x * (1.0f + vtanh(u));
      }
      break;
    case Act::Relu:
#pragma omp parallel for simd if (n > kPar) schedule(static)
      for (int64_t i = 0; i < n; ++i) out[i] = inp[i] > 0.0f ? inp[i] : 0.0f;
      break;
    case Act::Silu:
#pragma omp parallel for simd if (n > kPar) schedule(static)
      for (int64_t i = 0; i < n; ++i) out[i] = inp[i] * sigmoid(inp[i]);
      break;
  }
}

void act_backward(Act act, float* dinp, const float* dout, const float* inp, int64_t n) {
  switch (act) {
    case Act::Gelu:
#pragma omp parallel for simd if (n > kPar) schedule(static)
      for (int64_t i = 0; i < n; ++i) {
        float x = inp[i];
        float cdf = 0.5f * (1.0f + verf(x * kInvSqrt2));
        float pdf = kInvSqrt2Pi * vexp(-0.5f * x * x);
        dinp[i] += dout[i] * (cdf + x * pdf);
      }
      break;
    case Act::GeluTanh:
#pragma omp parallel for simd if (n > kPar) schedule(static)
      for (int64_t i = 0; i < n; ++i) {
        float x = inp[i];
        float u = kSqrt2OverPi * (x + 0.044715f * x * x * x);
        float t = vtanh(u);
        float du = kSqrt2OverPi * (1.0f + 3.0f * 0.044715f * x * x);
        dinp[i] += dout[i] * (0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * du);
      }
      break;
    case Act::Relu:
#pragma omp parallel for simd if (n > kPar) schedule(static)
      for (int64_t i = 0; i < n; ++i) dinp[i] += inp[i] > 0.0f ? dout[i] : 0.0f;
      break;
    case Act::Silu:
#pragma omp parallel for simd if (n > kPar) schedule(static)
      for (int64_t i = 0; i < n; ++i) {
        float s = sigmoid(inp[i]);
        dinp[i] += dout[i] * s * (1.0f + inp[i] * (1.0f - s));
      }
      break;
  }
}

void swiglu_forward(float* out, const float* gate, const float* up, int64_t n) {
#pragma omp parallel for simd if (n > kPar) schedule(static)
  for (int64_t i = 0; i < n; ++i) out[i] = gate[i] * sigmoid(gate[i]) * up[i];
}

void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate,
                     const float* up, int64_t n) {
#pragma omp parallel for simd if (n > kPar) schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    float g = gate[i];
    float s = sigmoid(g);
    float silu = g * s;
    if (dup) dup[i] += dout[i] * silu;
    if (dgate) dgate[i] += dout[i] * up[i] * s * (1.0f + g * (1.0f - s));
  }
}

void embedding_forward(float* out, const int32_t* ids, const float* table, int64_t N, int64_t C) {
#pragma omp parallel for if (N * C > kPar) schedule(static)
  for (int64_t i = 0; i < N; ++i) {
    const float* src = table + static_cast<int64_t>(ids[i]) * C;
    float* dst = out + i * C;
#pragma omp simd
    for (int64_t j = 0; j < C; ++j) dst[j] = src[j];
  }
}

void embedding_backward(float* dtable, const int32_t* ids, const float* dout, int64_t N,
                        int64_t C) {
  // Rows may repeat, so split the work over columns: no two threads touch one float.
#pragma omp parallel for if (N * C > kPar) schedule(static)
  for (int64_t j0 = 0; j0 < C; j0 += 64) {
    int64_t j1 = j0 + 64 < C ? j0 + 64 : C;
    for (int64_t i = 0; i < N; ++i) {
      float* dst = dtable + static_cast<int64_t>(ids[i]) * C;
      const float* src = dout + i * C;
#pragma omp simd
      for (int64_t j = j0; j < j1; ++j) dst[j] += src[j];
    }
  }
}

}  // namespace tessera::kernels::cpu
