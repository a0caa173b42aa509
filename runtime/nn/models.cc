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

namespace {}

const NameTable<Act>& act_names() {
  static const NameTable<Act> t = {
      {Act::Gelu, "gelu"}, {Act::GeluTanh, "gelu_tanh"}, {Act::Relu, "relu"}, {Act::Silu, "silu"}};
  return t;
}

const NameTable<Flavor>& flavor_names() {
  static const NameTable<Flavor> t = {{Flavor::Gpt2, "gpt2"},       {Flavor::Llama, "llama"},
                                      {Flavor::Mistral, "mistral"}, {Flavor::Qwen2, "qwen2"},
                                      {Flavor::Qwen3, "qwen3"},     {Flavor::Phi3, "phi3"},
                                      {Flavor::Gemma, "gemma"}};
  return t;
}

const char* flavor_name(Flavor f) {
  return flavor_names().name(f);
}

Flavor flavor_of(const std::string& model_type) {
  Flavor f{};
  if (flavor_names().find(model_type, &f)) return f;
  throw Error(
      str("model_type '", model_type, "' is not supported (expected ", flavor_names().list(), ")"));
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
  need(d_head >= 0, str("head_dim = ", d_head, ", expected >= 0 (0: d_model / n_head)"));
  need(d_model >= 1 && (d_head > 0 || d_model % n_head == 0),
       str("d_model = ", d_model, " must be a positive multiple of n_head = ", n_head,
           " (or set head_dim)"));
  need(n_head % kv_heads() == 0, str("n_kv_head = ", kv_heads(), " must divide n_head = ", n_head));
  need(partial_rotary_factor > 0.0f && partial_rotary_factor <= 1.0f,
       str("partial_rotary_factor = ", partial_rotary_factor, ", expected (0, 1]"));
  need(partial_rotary_factor == 1.0f || flavor == Flavor::Phi3,
       str("partial_rotary_factor < 1 is not a ", flavor_name(flavor), " setting (phi3 has it)"));
  need(
      flavor == Flavor::Gpt2 || (rotary_dim() % 2 == 0 && rotary_dim() >= 2),
      str(flavor_name(flavor), " needs an even number of rotated dims (RoPE), got ", rotary_dim()));
  need(norm_eps > 0, str("norm_eps = ", norm_eps, ", expected > 0"));
  need(sliding_window >= 0, str("sliding_window = ", sliding_window, ", expected >= 0"));
  // Each family takes exactly the settings its transformers configuration
  // has (what read_hf_config reads and save_hf_decoder writes), so a model
  // built here is one transformers builds from the saved folder.
  const char* fam = flavor_name(flavor);
  const bool llama = flavor == Flavor::Llama,
             qwen = flavor == Flavor::Qwen2 || flavor == Flavor::Qwen3;
  if (flavor == Flavor::Gpt2) {
    need(d_head == 0 || d_head * n_head == d_model,
         "gpt2's head dim is d_model / n_head (head_dim cannot differ)");
  } else {
    need(scale_attn_weights && !scale_attn_by_inverse_layer_idx,
         "scale_attn_weights / scale_attn_by_inverse_layer_idx are gpt2 settings");
  }
  need(!attention_bias || llama || flavor == Flavor::Qwen3 || flavor == Flavor::Gemma,
       str("attention_bias is not a ", fam, " setting (llama, qwen3 and gemma have it)"));
  need(!mlp_bias || llama, str("mlp_bias is not a ", fam, " setting (llama has it)"));
  need(sliding_window == 0 || qwen || flavor == Flavor::Mistral || flavor == Flavor::Phi3,
       str("sliding_window is not a ", fam, " setting (mistral, phi3, qwen2 and qwen3 have it)"));
  need(max_window_layers == 0 || qwen,
       str("max_window_layers is not a ", fam, " setting (qwen2 and qwen3 have it)"));
  need(rope_scaling.type == "default" || (flavor != Flavor::Gpt2 && flavor != Flavor::Phi3),
       str("rope scaling '", rope_scaling.type, "' is not a ", fam, " setting"));
  const RopeScaling& r = rope_scaling;
  need(r.type == "default" || r.type == "linear" || r.type == "llama3",
       str("rope scaling '", r.type, "' is not supported (default, linear or llama3)"));
  if (r.type != "default")
    need(r.factor > 0, str("rope scaling factor ", r.factor, " must be > 0"));
  if (r.type == "llama3")
    need(r.original_max_position_embeddings > 0 && r.high_freq_factor != r.low_freq_factor,
         "llama3 rope scaling needs original_max_position_embeddings > 0 and "
         "high_freq_factor != low_freq_factor");
}

std::vector<float> DecoderSpec::rope_inv_freq() const {
  const int64_t D = rotary_dim(), half = D / 2;
  std::vector<float> f(static_cast<size_t>(half));
  // float32 arithmetic as transformers' modeling_rope_utils: base ** (2i / dim).
  for (int64_t i = 0; i < half; ++i)
    f[i] = 1.0f / std::pow(rope_theta, static_cast<float>(2 * i) / static_cast<float>(D));
  const RopeScaling& r = rope_scaling;
  if (r.type == "linear") {
    for (float& x : f) x /= r.factor;
  } else if (r.type == "llama3") {
    const float old_len = static_cast<float>(r.original_max_position_embeddings);
    const float low_wavelen = old_len / r.low_freq_factor,
                high_wavelen = old_len / r.high_freq_factor;
    for (float& x : f) {
      const float wavelen = static_cast<float>(2.0 * M_PI) / x;
      float y = wavelen > low_wavelen ? x / r.factor : x;
      const float smooth =
          (old_len / wavelen - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor);
      const float smoothed = (1.0f - smooth) * y / r.factor + smooth * y;
      if (!(wavelen < high_wavelen) && !(wavelen > low_wavelen)) y = smoothed;
      x = y;
    }
  }
  return f;
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
      // transformers' GPT2Attention: / sqrt(D) when scale_attn_weights, / (layer + 1) too
      // when scale_attn_by_inverse_layer_idx.
      float scale = spec.scale_attn_weights ? 1.0f / std::sqrt(static_cast<float>(D)) : 1.0f;
      if (spec.scale_attn_by_inverse_layer_idx) scale /= static_cast<float>(l + 1);
      b.attn.scale = scale;
    }
    ln_f_ = LayerNorm(params_, "transformer.ln_f", C, spec.norm_eps);
    if (spec.tie_embeddings) {
      params_.alias("lm_head.weight", "transformer.wte.weight");
      lm_head_ = Linear::tied("lm_head", wte_.weight());
      wte_.set_tied(true);
    } else
      lm_head_ = Linear(params_, "lm_head", C, V, false, false, rng, Init::Normal, std);
  } else {
    const bool unit = spec.gemma();
    wte_ = Embedding(params_, "model.embed_tokens.weight", V, C, rng, std);
    for (int64_t l = 0; l < spec.n_layer; ++l) {
      Block& b = blocks_[l];
      std::string p = str("model.layers.", l, ".");
      b.rms1 = RMSNorm(params_, p + "input_layernorm", C, spec.norm_eps, unit);
      if (spec.fused()) {
        b.qkv = Linear(params_, p + "self_attn.qkv_proj", C, (Hq + 2 * Hkv) * D, false, false, rng,
                       Init::Normal, std);
      } else {
        const bool qb = spec.qkv_bias();
        b.q = Linear(params_, p + "self_attn.q_proj", C, Hq * D, qb, false, rng, Init::Normal, std);
        b.k =
            Linear(params_, p + "self_attn.k_proj", C, Hkv * D, qb, false, rng, Init::Normal, std);
        b.v =
            Linear(params_, p + "self_attn.v_proj", C, Hkv * D, qb, false, rng, Init::Normal, std);
      }
      if (spec.qk_norm()) {
        b.q_norm = RMSNorm(params_, p + "self_attn.q_norm", D, spec.norm_eps);
        b.k_norm = RMSNorm(params_, p + "self_attn.k_norm", D, spec.norm_eps);
      }
      b.o = Linear(params_, p + "self_attn.o_proj", Hq * D, C, spec.o_bias(), false, rng,
                   Init::Normal, proj_std);
      b.rms2 = RMSNorm(params_, p + "post_attention_layernorm", C, spec.norm_eps, unit);
      const bool mb = spec.mlp_bias;
      if (spec.fused()) {
        b.gate_up =
            Linear(params_, p + "mlp.gate_up_proj", C, 2 * F, false, false, rng, Init::Normal, std);
      } else {
        b.gate = Linear(params_, p + "mlp.gate_proj", C, F, mb, false, rng, Init::Normal, std);
        b.up = Linear(params_, p + "mlp.up_proj", C, F, mb, false, rng, Init::Normal, std);
      }
      b.down = Linear(params_, p + "mlp.down_proj", F, C, mb, false, rng, Init::Normal, proj_std);
      if (spec.sliding_window > 0 && l >= spec.max_window_layers)
        b.attn.window = spec.sliding_window;
    }
    norm_f_ = RMSNorm(params_, "model.norm", C, spec.norm_eps, unit);
    if (spec.tie_embeddings) {
      params_.alias("lm_head.weight", "model.embed_tokens.weight");
      lm_head_ = Linear::tied("lm_head", wte_.weight());
      wte_.set_tied(true);
    } else
      lm_head_ = Linear(params_, "lm_head", C, V, false, false, rng, Init::Normal, std);
    const int64_t R = spec.rotary_dim();
    rope_cos_ = Tensor::empty({spec.n_ctx, R / 2});
    rope_sin_ = Tensor::empty({spec.n_ctx, R / 2});
    const std::vector<float> inv_freq = spec.rope_inv_freq();
    kernels::cpu::rope_tables_from(rope_cos_.data(), rope_sin_.data(), spec.n_ctx, R / 2,
                                   inv_freq.data());
  }
}

Tensor Decoder::block_gpt2(const Block& b, const Tensor& x, int64_t B, int64_t T) const {
  const int64_t H = spec_.n_head;
  Tensor a = ops::attention_packed(b.c_attn.forward(b.ln1.forward(x)), B, T, H, H, b.attn);
  Tensor h = ops::add(x, b.c_proj.forward(a));
  Tensor m = ops::activation(b.fc.forward(b.ln2.forward(h)), Act::GeluTanh);
  return ops::add(h, b.fc_proj.forward(m));
}

Tensor Decoder::block_llama(const Block& b, const Tensor& x, int64_t B, int64_t T) const {
  const int64_t Hq = spec_.n_head, Hkv = spec_.kv_heads(), D = spec_.head_dim();
  Tensor n = b.rms1.forward(x);
  Tensor q, k, v;
  if (spec_.fused()) {
    Tensor qkv = b.qkv.forward(n);  // [q | k | v] columns, as Phi3Attention splits them
    q = ops::slice_cols(qkv, 0, Hq * D);
    k = ops::slice_cols(qkv, Hq * D, (Hq + Hkv) * D);
    v = ops::slice_cols(qkv, (Hq + Hkv) * D, (Hq + 2 * Hkv) * D);
  } else {
    q = b.q.forward(n);
    k = b.k.forward(n);
    v = b.v.forward(n);
  }
  if (spec_.qk_norm()) {  // Qwen3: RMSNorm over each head's D values, before RoPE
    q = ops::reshape(b.q_norm.forward(ops::reshape(q, {B * T * Hq, D})), {B * T, Hq * D});
    k = ops::reshape(b.k_norm.forward(ops::reshape(k, {B * T * Hkv, D})), {B * T, Hkv * D});
  }
  q = ops::rope(q, rope_cos_, rope_sin_, B, T, Hq, spec_.rotary_dim());
  k = ops::rope(k, rope_cos_, rope_sin_, B, T, Hkv, spec_.rotary_dim());
  Tensor a = ops::attention(q, k, v, B, T, Hq, Hkv, b.attn);
  Tensor h = ops::add(x, b.o.forward(a));
  Tensor n2 = b.rms2.forward(h);
  Tensor m;
  if (spec_.fused()) {
    const int64_t F = spec_.ff();
    Tensor gu = b.gate_up.forward(n2);  // Phi3MLP: gate, up = chunk(2)
    m = ops::swiglu(ops::slice_cols(gu, 0, F), ops::slice_cols(gu, F, 2 * F));
  } else if (spec_.gemma()) {
    m = ops::mul(ops::activation(b.gate.forward(n2), Act::GeluTanh), b.up.forward(n2));
  } else {
    m = ops::swiglu(b.gate.forward(n2), b.up.forward(n2));
  }
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
    // Gemma: embeddings times sqrt(hidden_size), rounded to float32 first.
    if (spec_.gemma())
      x = ops::scale(x, static_cast<float>(std::sqrt(static_cast<double>(spec_.d_model))));
    for (const Block& b : blocks_) x = block_llama(b, x, B, T);
    x = norm_f_.forward(x);
  }
  return lm_head_.forward(x);  // (tied: over the embeddings' weight)
}

std::vector<Linear*> Decoder::linears() {
  std::vector<Linear*> out;
  for (auto& b : blocks_) {
    for (Linear* l : {&b.c_attn, &b.c_proj, &b.fc, &b.fc_proj, &b.q, &b.k, &b.v, &b.qkv, &b.o,
                      &b.gate, &b.up, &b.gate_up, &b.down})
      if (l->weight().defined()) out.push_back(l);
  }
  if (lm_head_.weight().defined()) out.push_back(&lm_head_);
  return out;
}

std::vector<Embedding*> Decoder::embeddings() {
  std::vector<Embedding*> out = {&wte_};
  if (spec_.flavor == Flavor::Gpt2) out.push_back(&wpe_);
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
  // Causal attention: QKᵀ and PV, on average T/2 keys per query, over n_head · head_dim.
  double attn =
      2.0 * 2.0 * spec_.n_layer * (T / 2.0) * static_cast<double>(spec_.n_head * spec_.head_dim());
  return 2.0 * n_matmul + attn;
}

}  // namespace tessera::nn
