#include "adapters/bank.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "runtime/autograd/ops.h"
#include "runtime/autograd/tape.h"
#include "runtime/common/error.h"

namespace tessera::adapters {

namespace {

// Rows of each expert, gathered: rows[start[e] .. start[e+1]) belong to expert e.
struct Plan {
  std::vector<int64_t> rows;
  std::vector<int64_t> start;
  std::vector<int64_t> active;  // experts with rows
};

Plan make_plan(const std::vector<int32_t>& ids, int64_t N, int64_t E) {
  const int64_t M = static_cast<int64_t>(ids.size()), G = N / M;
  Plan p;
  p.start.assign(E + 1, 0);
  for (int32_t e : ids)
    if (e >= 0) p.start[e + 1] += G;
  for (int64_t e = 0; e < E; ++e) p.start[e + 1] += p.start[e];
  p.rows.resize(p.start[E]);
  std::vector<int64_t> fill(p.start.begin(), p.start.end() - 1);
  for (int64_t g = 0; g < M; ++g)
    if (ids[g] >= 0)
      for (int64_t t = 0; t < G; ++t) p.rows[fill[ids[g]]++] = g * G + t;
  for (int64_t e = 0; e < E; ++e)
    if (p.start[e + 1] > p.start[e]) p.active.push_back(e);
  return p;
}

void gather_rows(float* dst, const float* src, const int64_t* rows, int64_t n, int64_t C) {
  for (int64_t i = 0; i < n; ++i) std::memcpy(dst + i * C, src + rows[i] * C, C * sizeof(float));
}

// Rows are cut into blocks of at most this many, so one expert with many rows
// still spreads over the threads; each block's thin rank-r GEMMs run on one
// thread (OpenBLAS inside an OpenMP region), where they are fastest.
constexpr int64_t kBlock = 64;

struct Job {
  int64_t e, begin, end;  // expert; range in plan order
  bool contiguous;        // the block's rows form one run
};

std::vector<Job> make_jobs(const Plan& p) {
  std::vector<Job> jobs;
  for (int64_t e : p.active)
    for (int64_t b = p.start[e]; b < p.start[e + 1]; b += kBlock) {
      const int64_t end = std::min(b + kBlock, p.start[e + 1]);
      jobs.push_back({e, b, end, p.rows[end - 1] - p.rows[b] == end - 1 - b});
    }
  return jobs;
}

}  // namespace

Tensor lora_gather(const Tensor& x, const Tensor& base_out, const Tensor& A, const Tensor& B,
                   const std::vector<int32_t>& ids, const std::vector<float>& scales) {
  if (A.ndim() != 3 || B.ndim() != 3 || A.size(0) != B.size(0) || A.size(1) != B.size(2))
    throw Error(str("lora_gather: A ", shape_str(A.shape()), " and B ", shape_str(B.shape()),
                    " are not [E, r, in] and [E, out, r]"));
  const int64_t E = A.size(0), r = A.size(1), in = A.size(2), out = B.size(1);
  if (x.ndim() != 2 || x.size(1) != in || base_out.ndim() != 2 || base_out.size(1) != out ||
      base_out.size(0) != x.size(0))
    throw Error(str("lora_gather: x ", shape_str(x.shape()), " / base_out ",
                    shape_str(base_out.shape()), " do not fit A ", shape_str(A.shape()), " and B ",
                    shape_str(B.shape())));
  const int64_t N = x.size(0), M = static_cast<int64_t>(ids.size());
  if (M == 0 || N % M != 0)
    throw Error(str("lora_gather: ", M, " expert ids cannot route ", N, " rows (need a divisor)"));
  if (static_cast<int64_t>(scales.size()) != E)
    throw Error(str("lora_gather: ", scales.size(), " scales for ", E, " experts"));
  for (int64_t i = 0; i < M; ++i)
    if (ids[i] < -1 || ids[i] >= E)
      throw Error(
          str("lora_gather: expert id ", ids[i], " at row group ", i, " is outside [-1, ", E, ")"));
  for (const Tensor* t : {&x, &base_out, &A, &B})
    if (t->device() != Device::CPU)
      throw Error("op lora_gather has no CUDA kernel yet: keep this model on the CPU");

  auto plan = std::make_shared<Plan>(make_plan(ids, N, E));
  const int64_t R = static_cast<int64_t>(plan->rows.size());
  bool rec = autograd::should_record({&x, &base_out, &A, &B});
  Tensor y = base_out.clone();
  if (rec) y.set_requires_grad(true);
  Tensor H = Tensor::empty({std::max<int64_t>(R, 1), r});  // A_e·x of every routed row, plan order

  auto jobs = std::make_shared<std::vector<Job>>(make_jobs(*plan));
  const float* xp = x.data();
  const float* ap = A.data();
  const float* bp = B.data();
  float* hp = H.data();
  float* yp = y.data();
  const int64_t J = static_cast<int64_t>(jobs->size());
#pragma omp parallel if (J > 1)
  {
    std::vector<float> xg, yg;
#pragma omp for schedule(static)
    for (int64_t j = 0; j < J; ++j) {
      const Job& jb = (*jobs)[j];
      const int64_t n = jb.end - jb.begin;
      const int64_t* rows = plan->rows.data() + jb.begin;
      float* h = hp + jb.begin * r;
      const float* a = ap + jb.e * r * in;
      const float* b = bp + jb.e * out * r;
      if (jb.contiguous) {
        // Rows in one run (one adapter for the batch, or a batch split): read x
        // and accumulate into y in place.
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, r, in, 1.0f, xp + rows[0] * in, in,
                    a, in, 0.0f, h, r);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, out, r, scales[jb.e], h, r, b, r,
                    1.0f, yp + rows[0] * out, out);
        continue;
      }
      xg.resize(n * in);
      yg.resize(n * out);
      gather_rows(xg.data(), xp, rows, n, in);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, r, in, 1.0f, xg.data(), in, a, in,
                  0.0f, h, r);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, out, r, scales[jb.e], h, r, b, r,
                  0.0f, yg.data(), out);
      for (int64_t i = 0; i < n; ++i) {
        float* dst = yp + rows[i] * out;
        const float* src = yg.data() + i * out;
#pragma omp simd
        for (int64_t c = 0; c < out; ++c) dst[c] += src[c];
      }
    }
  }

  if (rec) {
    autograd::on_backward(
        y, [x, base_out, A, B, H, plan, jobs, scales, r, in, out, N](const float* g) mutable {
          if (base_out.requires_grad()) {
            float* d = base_out.ensure_grad().data();
            const int64_t n = N * out;
#pragma omp parallel for simd if (n > 65536) schedule(static)
            for (int64_t i = 0; i < n; ++i) d[i] += g[i];
          }
          float* dA = A.requires_grad() ? A.ensure_grad().data() : nullptr;
          float* dB = B.requires_grad() ? B.ensure_grad().data() : nullptr;
          float* dx = x.requires_grad() ? x.ensure_grad().data() : nullptr;
          const float* xp = x.data();
          const float* ap = A.data();
          const float* bp = B.data();
          const float* hp = H.data();
          // Every block writes its own rows of dx. dA and dB of an expert collect
          // its blocks into thread-private buffers, summed in a fixed order after
          // (static schedule: the same thread count gives bit-identical gradients).
          const int64_t J = static_cast<int64_t>(jobs->size());
          const int64_t P = static_cast<int64_t>(plan->active.size());
          std::vector<int64_t> slot(static_cast<size_t>(A.size(0)), -1);
          for (int64_t k = 0; k < P; ++k) slot[plan->active[k]] = k;
          const int threads = J > 1 ? std::max(1, omp_get_max_threads()) : 1;
          const int64_t da_n = r * in, db_n = out * r, per = da_n + db_n;
          std::vector<float> acc(static_cast<size_t>(threads * P * per), 0.0f);
#pragma omp parallel num_threads(threads) if (threads > 1)
          {
            float* mine = acc.data() + static_cast<size_t>(omp_get_thread_num()) * P * per;
            std::vector<float> xg, gg, dh(kBlock * r), dxg;
#pragma omp for schedule(static)
            for (int64_t j = 0; j < J; ++j) {
              const Job& jb = (*jobs)[j];
              const int64_t e = jb.e, n = jb.end - jb.begin;
              const float s = scales[e];
              const int64_t* rows = plan->rows.data() + jb.begin;
              const float* gs = g + rows[0] * out;
              const float* xs = xp + rows[0] * in;
              if (!jb.contiguous) {
                gg.resize(n * out);
                gather_rows(gg.data(), g, rows, n, out);
                gs = gg.data();
                if (dA) {
                  xg.resize(n * in);
                  gather_rows(xg.data(), xp, rows, n, in);
                  xs = xg.data();
                }
              }
              const float* h = hp + jb.begin * r;
              float* da = mine + slot[e] * per;
              float* db = da + da_n;
              if (dB)
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, out, r, n, s, gs, out, h, r,
                            1.0f, db, r);
              cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, r, out, s, gs, out,
                          bp + e * out * r, r, 0.0f, dh.data(), r);
              if (dA)
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, r, in, n, 1.0f, dh.data(), r,
                            xs, in, 1.0f, da, in);
              if (!dx) continue;
              if (jb.contiguous) {
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, in, r, 1.0f, dh.data(), r,
                            ap + e * r * in, in, 1.0f, dx + rows[0] * in, in);
                continue;
              }
              dxg.resize(n * in);
              cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, in, r, 1.0f, dh.data(), r,
                          ap + e * r * in, in, 0.0f, dxg.data(), in);
              for (int64_t i = 0; i < n; ++i) {
                float* dst = dx + rows[i] * in;
                const float* src = dxg.data() + i * in;
#pragma omp simd
                for (int64_t c = 0; c < in; ++c) dst[c] += src[c];
              }
            }
          }
          for (int64_t k = 0; k < P; ++k) {
            const int64_t e = plan->active[k];
            for (int t = 0; t < threads; ++t) {
              const float* src = acc.data() + (static_cast<size_t>(t) * P + k) * per;
              if (dA)
                for (int64_t i = 0; i < da_n; ++i) dA[e * da_n + i] += src[i];
              if (dB)
                for (int64_t i = 0; i < db_n; ++i) dB[e * db_n + i] += src[da_n + i];
            }
          }
        });
  }
  return y;
}

// ---- LoraBank ----

LoraBank::LoraBank(const nn::Linear& base, int64_t experts, const LoraConfig& cfg,
                   nn::ParameterSet& ps, Rng& rng, std::shared_ptr<const Routing> routing)
    : scales_(experts, cfg.scale()), routing_(std::move(routing)) {
  if (experts < 1) throw Error(str("LoRA bank of ", experts, " experts: expected >= 1"));
  if (cfg.r < 1) throw Error(str("LoRA rank r = ", cfg.r, " for ", base.name(), ": expected >= 1"));
  const int64_t in = base.in_features(), out = base.out_features();
  Tensor a = Tensor::empty({experts, cfg.r, in});
  const float bound = 1.0f / std::sqrt(static_cast<float>(in));  // as Lora: kaiming_uniform(√5)
  for (int64_t i = 0; i < a.numel(); ++i) a.data()[i] = rng.uniform(-bound, bound);
  A_ = ps.add(base.name() + ".lora_A.bank", a);
  B_ = ps.add(base.name() + ".lora_B.bank", Tensor::zeros({experts, out, cfg.r}));
}

Tensor LoraBank::forward(const Tensor& x, const Tensor& base_out, const nn::Linear& base) {
  if (routing_->ids.empty()) return base_out;
  const int64_t in = base.in_features(), out = base.out_features();
  Tensor x2 = ops::reshape(x, {x.numel() / in, in});
  Tensor b2 = ops::reshape(base_out, {base_out.numel() / out, out});
  return ops::reshape(lora_gather(x2, b2, A_, B_, routing_->ids, scales_), base_out.shape());
}

void LoraBank::shift_base(nn::Linear& base, bool merge) {
  if (merge)
    throw Error(str("the LoRA bank on ", base.name(),
                    " serves a different expert per row and has no single merged weight; merge "
                    "one expert (BankSet::expert) instead"));
}

// ---- BankSet ----

BankSet::BankSet(std::vector<nn::Linear*> linears, nn::ParameterSet& base,
                 const std::vector<std::string>& targets, int64_t experts, const LoraSpec& spec,
                 uint64_t seed)
    : routing_(std::make_shared<Routing>()), experts_(experts) {
  std::vector<std::string> chosen = select_modules(linears, targets);
  for (nn::Linear* l : linears)
    if (std::find(chosen.begin(), chosen.end(), l->name()) != chosen.end() && l->adapter())
      throw Error(str("module ", l->name(), " already has an adapter attached"));
  base.set_trainable("*", false);
  Rng rng(seed);
  for (nn::Linear* l : linears) {
    if (std::find(chosen.begin(), chosen.end(), l->name()) == chosen.end()) continue;
    auto b =
        std::make_shared<LoraBank>(*l, experts, spec.for_module(l->name()), params_, rng, routing_);
    l->set_adapter(b);
    linears_.push_back(l);
    banks_.push_back(b);
    names_.push_back(l->name());
  }
}

BankSet::~BankSet() {
  if (attached_) detach();
}

void BankSet::route(std::vector<int32_t> ids) {
  for (size_t i = 0; i < ids.size(); ++i)
    if (ids[i] < -1 || ids[i] >= experts_)
      throw Error(str("expert id ", ids[i], " for example ", i, " is outside [-1, ", experts_,
                      ") (-1: the base alone)"));
  routing_->ids = std::move(ids);
}

std::vector<std::pair<std::string, LoraFactors>> BankSet::expert(int64_t e) const {
  if (e < 0 || e >= experts_) throw Error(str("expert ", e, " is outside [0, ", experts_, ")"));
  std::vector<std::pair<std::string, LoraFactors>> out;
  for (size_t i = 0; i < banks_.size(); ++i) {
    const LoraBank& b = *banks_[i];
    const int64_t r = b.rank(), in = b.A().size(2), o = b.B().size(1);
    Tensor a = Tensor::empty({r, in}), bb = Tensor::empty({o, r});
    std::copy_n(b.A().data() + e * r * in, r * in, a.data());
    std::copy_n(b.B().data() + e * o * r, o * r, bb.data());
    out.push_back({names_[i], LoraFactors{a, bb, b.scales()[e]}});
  }
  return out;
}

void BankSet::load_expert(int64_t e,
                          const std::vector<std::pair<std::string, LoraFactors>>& factors) {
  if (e < 0 || e >= experts_) throw Error(str("expert ", e, " is outside [0, ", experts_, ")"));
  if (factors.size() != banks_.size())
    throw Error(
        str("expert ", e, ": ", factors.size(), " modules given, the bank has ", banks_.size()));
  for (size_t i = 0; i < banks_.size(); ++i) {
    const auto& [name, f] = factors[i];
    LoraBank& b = *banks_[i];
    const int64_t R = b.rank(), in = b.A().size(2), o = b.B().size(1), r = f.rank();
    if (name != names_[i] || f.A.ndim() != 2 || f.A.size(1) != in || f.B.ndim() != 2 ||
        f.B.size(0) != o || f.B.size(1) != r || r > R)
      throw Error(str("expert ", e, ": module ", name, " with A ", shape_str(f.A.shape()), " B ",
                      shape_str(f.B.shape()), " does not fit bank ", names_[i], " (rank <= ", R,
                      ", in ", in, ", out ", o, ")"));
    float* a = Tensor(b.A()).data() + e * R * in;
    float* bb = Tensor(b.B()).data() + e * o * R;
    std::fill_n(a, R * in, 0.0f);
    std::fill_n(bb, o * R, 0.0f);
    std::copy_n(f.A.data(), r * in, a);
    for (int64_t row = 0; row < o; ++row) std::copy_n(f.B.data() + row * r, r, bb + row * R);
    b.scales()[e] = f.scale;
  }
}

void BankSet::detach() {
  for (size_t i = 0; i < linears_.size(); ++i)
    if (linears_[i]->adapter() == banks_[i]) linears_[i]->set_adapter(nullptr);
  attached_ = false;
}

}  // namespace tessera::adapters
