#include "runtime/nn/models.h"

#include <cmath>

#include "runtime/common/error.h"
#include "runtime/kernels/cpu/attention.h"

namespace tessera::nn {

MlpClassifier::MlpClassifier(const MlpSpec& spec, Rng& rng) : spec_(spec) {
  if (spec.in_features <= 0 || spec.num_classes <= 1)
    throw Error(str("mlp: in_features (", spec.in_features, ") must be > 0 and num_classes (",
                    spec.num_classes, ") > 1"));
  int64_t in = spec.in_features;
  int i = 0;
  for (int64_t h : spec.hidden) {
    if (h <= 0) throw Error(str("mlp: hidden width ", h, " at position ", i, " must be > 0"));
    layers_.emplace_back(params_, str("layers.", i++), in, h, true, false, rng, Init::TorchDefault);
    in = h;
  }
  layers_.emplace_back(params_, "classifier", in, spec.num_classes, true, false, rng,
                       Init::TorchDefault);
}

Tensor MlpClassifier::forward(const Tensor& x) const {
  Tensor h = x;
  for (size_t i = 0; i + 1 < layers_.size(); ++i)
    h = ops::activation(layers_[i].forward(h), spec_.activation);
  return layers_.back().forward(h);
}

std::vector<Linear*> MlpClassifier::linears() {
  std::vector<Linear*> out;
  for (auto& l : layers_) out.push_back(&l);
  return out;
}

double MlpClassifier::train_flops_per_example() const {
  double f = 0.0;
  for (size_t i = 0; i < layers_.size(); ++i) {
    double mac = static_cast<double>(layers_[i].in_features()) * layers_[i].out_features();
    f += 2 * mac /*fwd*/ + 2 * mac /*dW*/ + (i > 0 ? 2 * mac : 0) /*dX*/;
  }
  return f;
}

const char* flavor_name(Flavor f) {
  return f == Flavor::Gpt2 ? "gpt2" : "llama";
}

int64_t DecoderSpec::ff() const {
  if (d_ff > 0) return d_ff;
  if (flavor == Flavor::Gpt2) return 4 * d_model;
  int64_t h = (8 * d_model + 2) / 3;
  return (h + 31) / 32 * 32;
}

void DecoderSpec::validate() const {
  auto need = [](bool ok, const std::string& msg) {
    if (!ok) throw Error("decoder config: " + msg);
  };
  need(vocab_size >= 2, str("vocab_size = ", vocab_size, ", expected >= 2"));
  need(n_ctx >= 1, str("n_ctx = ", n_ctx, ", expected >= 1"));
  need(n_layer >= 1, str("n_layer = ", n_layer, ", expected >= 1"));
  need(n_head >= 1, str("n_head = ", n_head, ", expected >= 1"));
  need(d_model >= 1 && d_model % n_head == 0,
       str("d_model = ", d_model, " must be a positive multiple of n_head = ", n_head));
  need(n_head % kv_heads() == 0, str("n_kv_head = ", kv_heads(), " must divide n_head = ", n_head));
  need(flavor == Flavor::Gpt2 || head_dim() % 2 == 0,
       str("llama needs an even head dim, d_model/n_head = ", head_dim()));
  need(norm_eps > 0, str("norm_eps = ", norm_eps, ", expected > 0"));
}

Decoder::Decoder(const DecoderSpec& spec, Rng& rng) : spec_(spec) {
  spec.validate();
  const int64_t C = spec.d_model, V = spec.vocab_size, F = spec.ff();
  const int64_t D = spec.head_dim(), Hq = spec.n_head, Hkv = spec.kv_heads();
  const float std = 0.02f;
  const float proj_std = 0.02f / std::sqrt(2.0f * static_cast<float>(spec.n_layer));
  blocks_.resize(static_cast<size_t>(spec.n_layer));
  if (spec.flavor == Flavor::Gpt2) {
    wte_ = Embedding(params_, "transformer.wte.weight", V, C, rng, std);
    wpe_ = Embedding(params_, "transformer.wpe.weight", spec.n_ctx, C, rng, 0.01f);
    for (int64_t l = 0; l < spec.n_layer; ++l) {
      Block& b = blocks_[l];
      std::string p = str("transformer.h.", l, ".");
      b.ln1 = LayerNorm(params_, p + "ln_1", C, spec.norm_eps);
      b.c_attn = Linear(params_, p + "attn.c_attn", C, 3 * C, true, true, rng, Init::Normal, std);
      b.c_proj = Linear(params_, p + "attn.c_proj", C, C, true, true, rng, Init::Normal, proj_std);
      b.ln2 = LayerNorm(params_, p + "ln_2", C, spec.norm_eps);
      b.fc = Linear(params_, p + "mlp.c_fc", C, F, true, true, rng, Init::Normal, std);
      b.fc_proj = Linear(params_, p + "mlp.c_proj", F, C, true, true, rng, Init::Normal, proj_std);
    }
    ln_f_ = LayerNorm(params_, "transformer.ln_f", C, spec.norm_eps);
    if (spec.tie_embeddings)
      params_.alias("lm_head.weight", "transformer.wte.weight");
    else
      lm_head_ = Linear(params_, "lm_head", C, V, false, false, rng, Init::Normal, std);
  } else {
    wte_ = Embedding(params_, "model.embed_tokens.weight", V, C, rng, std);
    for (int64_t l = 0; l < spec.n_layer; ++l) {
      Block& b = blocks_[l];
      std::string p = str("model.layers.", l, ".");
      b.rms1 = RMSNorm(params_, p + "input_layernorm", C, spec.norm_eps);
      b.q =
          Linear(params_, p + "self_attn.q_proj", C, Hq * D, false, false, rng, Init::Normal, std);
      b.k =
          Linear(params_, p + "self_attn.k_proj", C, Hkv * D, false, false, rng, Init::Normal, std);
      b.v =
          Linear(params_, p + "self_attn.v_proj", C, Hkv * D, false, false, rng, Init::Normal, std);
      b.o = Linear(params_, p + "self_attn.o_proj", Hq * D, C, false, false, rng, Init::Normal,
                   proj_std);
      b.rms2 = RMSNorm(params_, p + "post_attention_layernorm", C, spec.norm_eps);
      b.gate = Linear(params_, p + "mlp.gate_proj", C, F, false, false, rng, Init::Normal, std);
      b.up = Linear(params_, p + "mlp.up_proj", C, F, false, false, rng, Init::Normal, std);
      b.down =
          Linear(params_, p + "mlp.down_proj", F, C, false, false, rng, Init::Normal, proj_std);
    }
    norm_f_ = RMSNorm(params_, "model.norm", C, spec.norm_eps);
    if (spec.tie_embeddings)
      params_.alias("lm_head.weight", "model.embed_tokens.weight");
    else
      lm_head_ = Linear(params_, "lm_head", C, V, false, false, rng, Init::Normal, std);
    rope_cos_ = Tensor::empty({spec.n_ctx, D / 2});
    rope_sin_ = Tensor::empty({spec.n_ctx, D / 2});
    kernels::cpu::rope_tables(rope_cos_.data(), rope_sin_.data(), spec.n_ctx, D, spec.rope_theta);
  }
}

Tensor Decoder::block_gpt2(const Block& b, const Tensor& x, int64_t B, int64_t T) const {
  const int64_t H = spec_.n_head;
  Tensor a = ops::attention_packed(b.c_attn.forward(b.ln1.forward(x)), B, T, H, H);
  Tensor h = ops::add(x, b.c_proj.forward(a));
  Tensor m = ops::activation(b.fc.forward(b.ln2.forward(h)), Act::GeluTanh);
  return ops::add(h, b.fc_proj.forward(m));
}

Tensor Decoder::block_llama(const Block& b, const Tensor& x, int64_t B, int64_t T) const {
  const int64_t Hq = spec_.n_head, Hkv = spec_.kv_heads();
  Tensor n = b.rms1.forward(x);
  Tensor q = ops::rope(b.q.forward(n), rope_cos_, rope_sin_, B, T, Hq);
  Tensor k = ops::rope(b.k.forward(n), rope_cos_, rope_sin_, B, T, Hkv);
  Tensor a = ops::attention(q, k, b.v.forward(n), B, T, Hq, Hkv);
  Tensor h = ops::add(x, b.o.forward(a));
  Tensor n2 = b.rms2.forward(h);
  Tensor m = ops::swiglu(b.gate.forward(n2), b.up.forward(n2));
  return ops::add(h, b.down.forward(m));
}

Tensor Decoder::forward(const std::vector<int32_t>& ids, int64_t B, int64_t T) const {
  if (T < 1 || T > spec_.n_ctx)
    throw Error(str("decoder: sequence length ", T, " outside [1, n_ctx=", spec_.n_ctx, "]"));
  if (static_cast<int64_t>(ids.size()) != B * T)
    throw Error(str("decoder: ", ids.size(), " token ids for B=", B, " x T=", T));
  Tensor x = wte_.forward(ids);  // [B*T, C]
  if (spec_.flavor == Flavor::Gpt2) {
    std::vector<int32_t> pos(static_cast<size_t>(T));
    for (int64_t t = 0; t < T; ++t) pos[t] = static_cast<int32_t>(t);
    Tensor pe = wpe_.forward(pos);  // [T, C]
    x = ops::add(ops::reshape(x, {B, T, spec_.d_model}), pe);
    x = ops::reshape(x, {B * T, spec_.d_model});
    for (const Block& b : blocks_) x = block_gpt2(b, x, B, T);
    x = ln_f_.forward(x);
  } else {
    for (const Block& b : blocks_) x = block_llama(b, x, B, T);
    x = norm_f_.forward(x);
  }
  if (spec_.tie_embeddings) return ops::matmul_nt(x, wte_.weight());
  return lm_head_.forward(x);
}

std::vector<Linear*> Decoder::linears() {
  std::vector<Linear*> out;
  for (auto& b : blocks_) {
    for (Linear* l :
         {&b.c_attn, &b.c_proj, &b.fc, &b.fc_proj, &b.q, &b.k, &b.v, &b.o, &b.gate, &b.up, &b.down})
      if (l->weight().defined()) out.push_back(l);
  }
  if (lm_head_.weight().defined()) out.push_back(&lm_head_);
  return out;
}

double Decoder::forward_flops_per_token(int64_t T) const {
  double n_matmul = 0.0;
  for (const auto& p : params_.all()) {
    const std::string& n = p.name;
    bool matrix = p.tensor.ndim() == 2 && n.find("wpe") == std::string::npos &&
                  n.find("embed_tokens") == std::string::npos && n.find("wte") == std::string::npos;
    if (matrix) n_matmul += static_cast<double>(p.tensor.numel());
  }
  n_matmul += static_cast<double>(spec_.vocab_size) * spec_.d_model;  // output projection
  if (!spec_.tie_embeddings) n_matmul -= static_cast<double>(spec_.vocab_size) * spec_.d_model;
  // Causal attention: QKᵀ and PV, on average T/2 keys per query.
  double attn = 2.0 * 2.0 * spec_.n_layer * (T / 2.0) * spec_.d_model;
  return 2.0 * n_matmul + attn;
}

}  // namespace tessera::nn
