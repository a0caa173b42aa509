// Elementwise kernels on CUDA, one thread per element (grid-stride loops).
#include <cuda_runtime.h>

#include "runtime/kernels/cuda/kernels.h"

namespace tessera::kernels::cuda {

namespace {
constexpr int kThreads = 256;
unsigned blocks(int64_t n) {
  return static_cast<unsigned>(
      (n + kThreads - 1) / kThreads > 65535 ? 65535 : (n + kThreads - 1) / kThreads);
}

#define GRID_LOOP(i, n)                                                                  \
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)

__device__ float sigmoidf(float x) {
  return 1.0f / (1.0f + expf(-x));
}

__global__ void k_add(float* out, const float* a, const float* b, int64_t n, int64_t nb) {
  GRID_LOOP(i, n) out[i] = a[i] + b[i % nb];
}
__global__ void k_add_da(float* da, const float* d, int64_t n) {
  GRID_LOOP(i, n) da[i] += d[i];
}
__global__ void k_add_db(float* db, const float* d, int64_t rows, int64_t nb) {
  GRID_LOOP(j, nb) {
    float s = 0.0f;
    for (int64_t r = 0; r < rows; ++r) s += d[r * nb + j];
    db[j] += s;
  }
}
__global__ void k_mul(float* out, const float* a, const float* b, int64_t n) {
  GRID_LOOP(i, n) out[i] = a[i] * b[i];
}
__global__ void k_mul_b(float* da, float* db, const float* d, const float* a, const float* b,
                        int64_t n) {
  GRID_LOOP(i, n) {
    if (da) da[i] += d[i] * b[i];
    if (db) db[i] += d[i] * a[i];
  }
}
__global__ void k_scale(float* out, const float* a, float s, int64_t n) {
  GRID_LOOP(i, n) out[i] = a[i] * s;
}
__global__ void k_scale_b(float* da, const float* d, float s, int64_t n) {
  GRID_LOOP(i, n) da[i] += d[i] * s;
}

__global__ void k_act(int act, float* out, const float* x, int64_t n) {
  GRID_LOOP(i, n) {
    float v = x[i];
    switch (act) {
      case 0:
        out[i] = 0.5f * v * (1.0f + erff(v * 0.70710678f));
        break;
      case 1:
        out[i] = 0.5f * v * (1.0f + tanhf(0.7978845608f * (v + 0.044715f * v * v * v)));
        break;
      case 2:
        out[i] = v > 0.0f ? v : 0.0f;
        break;
      default:
        out[i] = v * sigmoidf(v);
        break;
    }
  }
}
__global__ void k_act_b(int act, float* dx, const float* d, const float* x, int64_t n) {
  GRID_LOOP(i, n) {
    float v = x[i], g;
    switch (act) {
      case 0:
        g = 0.5f * (1.0f + erff(v * 0.70710678f)) + v * 0.39894228f * expf(-0.5f * v * v);
        break;
      case 1: {
        float t = tanhf(0.7978845608f * (v + 0.044715f * v * v * v));
        g = 0.5f * (1.0f + t) +
            0.5f * v * (1.0f - t * t) * 0.7978845608f * (1.0f + 3.0f * 0.044715f * v * v);
        break;
      }
      case 2:
        g = v > 0.0f ? 1.0f : 0.0f;
        break;
      default: {
        float s = sigmoidf(v);
        g = s * (1.0f + v * (1.0f - s));
        break;
      }
    }
    dx[i] += d[i] * g;
  }
}
__global__ void k_swiglu(float* out, const float* g, const float* u, int64_t n) {
  GRID_LOOP(i, n) out[i] = g[i] * sigmoidf(g[i]) * u[i];
}
__global__ void k_swiglu_b(float* dg, float* du, const float* d, const float* g, const float* u,
                           int64_t n) {
  GRID_LOOP(i, n) {
    float s = sigmoidf(g[i]);
    if (du) du[i] += d[i] * g[i] * s;
    if (dg) dg[i] += d[i] * u[i] * s * (1.0f + g[i] * (1.0f - s));
  }
}
}  // namespace

void add_forward(float* out, const float* a, const float* b, int64_t n, int64_t nb) {
  k_add<<<blocks(n), kThreads>>>(out, a, b, n, nb);
}
void add_backward(float* da, float* db, const float* dout, int64_t n, int64_t nb) {
  if (da) k_add_da<<<blocks(n), kThreads>>>(da, dout, n);
  if (db) k_add_db<<<blocks(nb), kThreads>>>(db, dout, n / nb, nb);
}
void mul_forward(float* out, const float* a, const float* b, int64_t n) {
  k_mul<<<blocks(n), kThreads>>>(out, a, b, n);
}
void mul_backward(float* da, float* db, const float* dout, const float* a, const float* b,
                  int64_t n) {
  k_mul_b<<<blocks(n), kThreads>>>(da, db, dout, a, b, n);
}
void scale_forward(float* out, const float* a, float s, int64_t n) {
  k_scale<<<blocks(n), kThreads>>>(out, a, s, n);
}
void scale_backward(float* da, const float* dout, float s, int64_t n) {
  k_scale_b<<<blocks(n), kThreads>>>(da, dout, s, n);
}
void act_forward(Act act, float* out, const float* inp, int64_t n) {
  k_act<<<blocks(n), kThreads>>>(static_cast<int>(act), out, inp, n);
}
void act_backward(Act act, float* dinp, const float* dout, const float* inp, int64_t n) {
  k_act_b<<<blocks(n), kThreads>>>(static_cast<int>(act), dinp, dout, inp, n);
}
void swiglu_forward(float* out, const float* gate, const float* up, int64_t n) {
  k_swiglu<<<blocks(n), kThreads>>>(out, gate, up, n);
}
void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate,
                     const float* up, int64_t n) {
  k_swiglu_b<<<blocks(n), kThreads>>>(dgate, dup, dout, gate, up, n);
}

}  // namespace tessera::kernels::cuda
