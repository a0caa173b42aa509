// Vectorisable float math for elementwise kernels: exp, erf, tanh, sigmoid
// written as straight-line arithmetic so `#pragma omp simd` loops compile to
// AVX instead of calling scalar libm per element. Deterministic, and accurate
// to a few ulp (exp) / 2e-7 absolute (erf, tanh) — well inside fp32 training noise.
#pragma once

#include <cstdint>

namespace tessera::kernels::cpu {

__attribute__((always_inline)) inline float vexp(float x) {
  // e^x = 2^n · e^r with n = round(x·log2 e), |r| <= ln2/2; minimax polynomial for e^r.
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  // Round to nearest by the 1.5·2^23 trick (vectorises; no libm call).
  float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = x - n * 0.693359375f;  // Cody–Waite split of ln 2
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  return p * __builtin_bit_cast(float, bits);
}

__attribute__((always_inline)) inline float vsigmoid(float x) {
  return 1.0f / (1.0f + vexp(-x));
}

__attribute__((always_inline)) inline float vtanh(float x) {
  // tanh x = sign(x)·(1 - 2/(e^{2|x|} + 1)); odd-polynomial branch for small |x|
  // keeps relative accuracy near 0.
  float a = __builtin_fabsf(x);
  float e = vexp(2.0f * a);
  float big = 1.0f - 2.0f / (e + 1.0f);
  float x2 = a * a;
  float small =
      a * (1.0f +
           x2 * (-0.333333333f + x2 * (0.133333333f + x2 * (-0.0539682540f + x2 * 0.0218694885f))));
  float t = a < 0.0625f ? small : big;
  return __builtin_copysignf(t, x);
}

__attribute__((always_inline)) inline float verf(float x) {
  // Abramowitz & Stegun 7.1.26 refined: |error| < 1.5e-7.
  float a = __builtin_fabsf(x);
  float t = 1.0f / (1.0f + 0.3275911f * a);
  float y = t * (0.254829592f +
                 t * (-0.284496736f + t * (1.421413741f + t * (-1.453152027f + t * 1.061405429f))));
  float r = 1.0f - y * vexp(-a * a);
  return __builtin_copysignf(r, x);
}

}  // namespace tessera::kernels::cpu
