#include "runtime/kernels/cpu/lora.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cstring>

namespace tessera::kernels::cpu {

namespace {

// Entries are cut into blocks of at most this many, so one expert with many
// rows still spreads over the threads; each block's thin rank-r GEMMs run on
// one thread (OpenBLAS inside an OpenMP region), where they are fastest.
constexpr int64_t kBlock = 64;

void gather_rows(float* dst, const float* src, const int64_t* rows, int64_t n, int64_t C) {
  for (int64_t i = 0; i < n; ++i) std::memcpy(dst + i * C, src + rows[i] * C, C * sizeof(float));
}

void scatter_add_rows(float* dst, const float* src, const int64_t* rows, int64_t n, int64_t C) {
  for (int64_t i = 0; i < n; ++i) {
    float* d = dst + rows[i] * C;
    const float* s = src + i * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) d[c] += s[c];
  }
}

// dst[i, :] = src[i, :] · f_i with f_i = w[slot_i] (w null: 1) times `s`.
void scale_rows(float* dst, const float* src, const float* w, const int64_t* slot, float s,
                int64_t n, int64_t C) {
  for (int64_t i = 0; i < n; ++i) {
    const float f = (w ? w[slot[i]] : 1.0f) * s;
    const float* a = src + i * C;
    float* o = dst + i * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) o[c] = a[c] * f;
  }
}

float dot(const float* a, const float* b, int64_t n) {
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

// Rows of block `b` of a [N, C] matrix: a pointer to them in place when they
// are one run, else gathered into `buf`.
const float* rows_of(const LoraPlan& p, const LoraPlan::Block& b, const float* m, int64_t C,
                     std::vector<float>& buf) {
  const int64_t* rows = p.row.data() + b.begin;
  if (b.contiguous) return m + rows[0] * C;
  const int64_t n = b.end - b.begin;
  buf.resize(static_cast<size_t>(n * C));
  gather_rows(buf.data(), m, rows, n, C);
  return buf.data();
}

// m[rows of block] += src (n × C).
void add_to_rows(const LoraPlan& p, const LoraPlan::Block& b, float* m, const float* src,
                 int64_t C) {
  const int64_t* rows = p.row.data() + b.begin;
  scatter_add_rows(m, src, rows, b.end - b.begin, C);
}

// m[rows of block] (n × C) += alpha · a (n × K) · op(bm), op(bm) = bmᵀ of a
// row-major [C, K] when trans_b, else bm itself, [K, C]: one GEMM straight
// into the rows when they are one run, else into `buf` and added row by row.
void gemm_into_rows(const LoraPlan& p, const LoraPlan::Block& b, float* m, int64_t C, int64_t K,
                    float alpha, const float* a, const float* bm, bool trans_b,
                    std::vector<float>& buf) {
  const int64_t n = b.end - b.begin;
  const CBLAS_TRANSPOSE tb = trans_b ? CblasTrans : CblasNoTrans;
  const int64_t ldb = trans_b ? K : C;
  if (b.contiguous) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, tb, n, C, K, alpha, a, K, bm, ldb, 1.0f,
                m + p.row[b.begin] * C, C);
    return;
  }
  buf.resize(static_cast<size_t>(n * C));
  cblas_sgemm(CblasRowMajor, CblasNoTrans, tb, n, C, K, alpha, a, K, bm, ldb, 0.0f, buf.data(), C);
  add_to_rows(p, b, m, buf.data(), C);
}

int64_t block_count(const LoraPlan& p) {
  int64_t n = 0;
  for (const auto& ph : p.phases) n += static_cast<int64_t>(ph.size());
  return n;
}

}  // namespace

LoraPlan lora_plan(const int32_t* ids, int64_t M, int64_t k, int64_t N, int64_t E) {
  LoraPlan p;
  p.N = N, p.M = M, p.k = k, p.E = E;
  const int64_t G = N / M;
  p.phases.resize(static_cast<size_t>(k));
  std::vector<int64_t> start(static_cast<size_t>(E + 1));
  for (int64_t j = 0; j < k; ++j) {
    std::fill(start.begin(), start.end(), 0);
    for (int64_t g = 0; g < M; ++g)
      if (ids[g * k + j] >= 0) start[ids[g * k + j] + 1] += G;
    for (int64_t e = 0; e < E; ++e) start[e + 1] += start[e];
    const int64_t base = p.entries(), n = start[E];
    p.row.resize(static_cast<size_t>(base + n));
    p.slot.resize(static_cast<size_t>(base + n));
    std::vector<int64_t> fill(start.begin(), start.end() - 1);
    for (int64_t g = 0; g < M; ++g) {
      const int32_t e = ids[g * k + j];
      if (e < 0) continue;
      for (int64_t t = 0; t < G; ++t) {
        const int64_t i = base + fill[e]++;
        p.row[i] = g * G + t;
        p.slot[i] = g * k + j;
      }
    }
    for (int64_t e = 0; e < E; ++e)
      for (int64_t b = base + start[e]; b < base + start[e + 1]; b += kBlock) {
        const int64_t end = std::min(b + kBlock, base + start[e + 1]);
        p.phases[j].push_back({e, b, end, p.row[end - 1] - p.row[b] == end - 1 - b});
      }
  }
  return p;
}

void lora_forward(float* y, float* h, float* z, const float* x, const float* A, const float* B,
                  const float* w, const float* scales, const LoraPlan& p, const LoraDims& d,
                  LoraMix mix) {
  const int64_t in = d.in, out = d.out, r = d.r;
  const bool param = mix == LoraMix::Parameter;
  if (param) std::fill_n(z, d.N * r, 0.0f);
#pragma omp parallel if (block_count(p) > 1)
  {
    std::vector<float> xg, yg, hw;
    // h = A_e x per entry; for parameter mixing z += w h (one writer per row per slot).
    for (const auto& phase : p.phases) {
      const int64_t J = static_cast<int64_t>(phase.size());
#pragma omp for schedule(static)
      for (int64_t jb = 0; jb < J; ++jb) {
        const LoraPlan::Block& b = phase[jb];
        const int64_t n = b.end - b.begin;
        const int64_t* slot = p.slot.data() + b.begin;
        const float* xs = rows_of(p, b, x, in, xg);
        float* hb = h + b.begin * r;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, r, in, 1.0f, xs, in,
                    A + b.expert * r * in, in, 0.0f, hb, r);
        if (param) {
          hw.resize(static_cast<size_t>(n * r));
          scale_rows(hw.data(), hb, w, slot, 1.0f, n, r);
          add_to_rows(p, b, z, hw.data(), r);
          continue;
        }
        // y += s_e (w ⊙ h) B_eᵀ
        const float* hs = hb;
        if (w) {
          hw.resize(static_cast<size_t>(n * r));
          scale_rows(hw.data(), hb, w, slot, 1.0f, n, r);
          hs = hw.data();
        }
        gemm_into_rows(p, b, y, out, r, scales[b.expert], hs, B + b.expert * out * r, true, yg);
      }
    }
    if (param) {
      // y += s_e (w ⊙ z) B_eᵀ, once z is complete (the loops above end in a barrier).
      for (const auto& phase : p.phases) {
        const int64_t J = static_cast<int64_t>(phase.size());
#pragma omp for schedule(static)
        for (int64_t jb = 0; jb < J; ++jb) {
          const LoraPlan::Block& b = phase[jb];
          const int64_t n = b.end - b.begin;
          hw.resize(static_cast<size_t>(n * r));
          const float* zs = rows_of(p, b, z, r, xg);
          scale_rows(hw.data(), zs, w, p.slot.data() + b.begin, 1.0f, n, r);
          gemm_into_rows(p, b, y, out, r, scales[b.expert], hw.data(), B + b.expert * out * r, true,
                         yg);
        }
      }
    }
  }
}

void lora_backward(float* dx, float* dA, float* dB, float* dw, const float* dy, const float* x,
                   const float* A, const float* B, const float* w, const float* scales,
                   const float* h, const float* z, const LoraPlan& p, const LoraDims& d,
                   LoraMix mix) {
  const int64_t in = d.in, out = d.out, r = d.r, E = d.E;
  const bool param = mix == LoraMix::Parameter;
  // dA and dB of an expert collect its blocks in thread-private buffers, summed
  // in a fixed order after (static schedule: bit-identical for a thread count).
  std::vector<int64_t> active(static_cast<size_t>(E), -1);
  int64_t P = 0;
  for (const auto& ph : p.phases)
    for (const auto& b : ph)
      if (active[b.expert] < 0) active[b.expert] = P++;
  const int64_t J = block_count(p);
  const int threads = J > 1 ? std::max(1, omp_get_max_threads()) : 1;
  const int64_t da_n = r * in, db_n = out * r, per = da_n + db_n;
  const bool params = dA || dB;
  std::vector<float> acc(params ? static_cast<size_t>(threads * P * per) : 0, 0.0f);
  std::vector<float> dw_entry(dw ? static_cast<size_t>(p.entries()) : 0, 0.0f);
  std::vector<float> dz(param ? static_cast<size_t>(d.N * r) : 0, 0.0f);
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    float* mine =
        params ? acc.data() + static_cast<size_t>(omp_get_thread_num()) * P * per : nullptr;
    std::vector<float> xg, gg, zg, gb, hw, tmp;
    // Pass 1, from dy: gb = dy B_e; the B side of dw; dB; for parameter mixing dz.
    // For output mixing this pass also carries the A side (dh = w s gb).
    for (const auto& phase : p.phases) {
      const int64_t Jp = static_cast<int64_t>(phase.size());
#pragma omp for schedule(static)
      for (int64_t jb = 0; jb < Jp; ++jb) {
        const LoraPlan::Block& b = phase[jb];
        const int64_t n = b.end - b.begin, e = b.expert;
        const int64_t* slot = p.slot.data() + b.begin;
        const float s = scales[e];
        const float* Be = B + e * out * r;
        const float* gs = rows_of(p, b, dy, out, gg);
        // The rank-r input of B for these entries: h (output mixing) or z.
        const float* hb = param ? rows_of(p, b, z, r, zg) : h + b.begin * r;
        gb.resize(static_cast<size_t>(n * r));
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, r, out, 1.0f, gs, out, Be, r,
                    0.0f, gb.data(), r);
        if (dw)
          for (int64_t i = 0; i < n; ++i)
            dw_entry[b.begin + i] += s * dot(gb.data() + i * r, hb + i * r, r);
        if (dB) {
          const float* hs = hb;  // w ⊙ h' (h' itself when unweighted)
          if (w) {
            hw.resize(static_cast<size_t>(n * r));
            scale_rows(hw.data(), hb, w, slot, 1.0f, n, r);
            hs = hw.data();
          }
          cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, out, r, n, s, gs, out, hs, r, 1.0f,
                      mine + active[e] * per + da_n, r);
        }
        // dh = w s gb: the gradient of this entry's rank-r term.
        scale_rows(gb.data(), gb.data(), w, slot, s, n, r);
        if (param) {
          add_to_rows(p, b, dz.data(), gb.data(), r);
          continue;
        }
        const float* xs = dA ? rows_of(p, b, x, in, xg) : nullptr;
        if (dA)
          cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, r, in, n, 1.0f, gb.data(), r, xs, in,
                      1.0f, mine + active[e] * per, in);
        if (dx) gemm_into_rows(p, b, dx, in, r, 1.0f, gb.data(), A + e * r * in, false, tmp);
      }
    }
    if (param) {
      // Pass 2, from dz (complete after the barrier): the A side of dw; dh = w dz; dA; dx.
      for (const auto& phase : p.phases) {
        const int64_t Jp = static_cast<int64_t>(phase.size());
#pragma omp for schedule(static)
        for (int64_t jb = 0; jb < Jp; ++jb) {
          const LoraPlan::Block& b = phase[jb];
          const int64_t n = b.end - b.begin, e = b.expert;
          const int64_t* slot = p.slot.data() + b.begin;
          const float* dzs = rows_of(p, b, dz.data(), r, zg);
          const float* hb = h + b.begin * r;
          if (dw)
            for (int64_t i = 0; i < n; ++i)
              dw_entry[b.begin + i] += dot(dzs + i * r, hb + i * r, r);
          gb.resize(static_cast<size_t>(n * r));
          scale_rows(gb.data(), dzs, w, slot, 1.0f, n, r);
          if (dA) {
            const float* xs = rows_of(p, b, x, in, xg);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, r, in, n, 1.0f, gb.data(), r, xs,
                        in, 1.0f, mine + active[e] * per, in);
          }
          if (dx) gemm_into_rows(p, b, dx, in, r, 1.0f, gb.data(), A + e * r * in, false, tmp);
        }
      }
    }
  }
  if (params)
    for (int64_t e = 0; e < E; ++e) {
      if (active[e] < 0) continue;
      for (int t = 0; t < threads; ++t) {
        const float* src = acc.data() + (static_cast<size_t>(t) * P + active[e]) * per;
        if (dA) {
          float* o = dA + e * da_n;
#pragma omp simd
          for (int64_t i = 0; i < da_n; ++i) o[i] += src[i];
        }
        if (dB) {
          float* o = dB + e * db_n;
#pragma omp simd
          for (int64_t i = 0; i < db_n; ++i) o[i] += src[da_n + i];
        }
      }
    }
  if (dw)
    for (int64_t i = 0; i < p.entries(); ++i) dw[p.slot[i]] += dw_entry[i];
}

}  // namespace tessera::kernels::cpu
