// The base models: an MLP classifier and a decoder-only LM in two flavours.
//
// Decoder, GPT-2 flavour: learned positions, LayerNorm, GELU (tanh), fused
//   c_attn in the Conv1D [in, out] layout, biases; names transformer.h.N.*.
// Decoder, Llama flavour and its relatives (names model.layers.N.*, as in
//   transformers): RoPE, RMSNorm, SwiGLU, grouped-query attention, and per
//   family what transformers' modeling_<family>.py adds —
//   llama    optional attention_bias (q/k/v/o) and mlp_bias, head_dim apart
//            from d_model/n_head, RoPE scaling (linear, llama3)
//   mistral  a sliding attention window
//   qwen2    q/k/v biases; a sliding window from layer max_window_layers on
//   qwen3    per-head RMSNorm of q and k (q_norm, k_norm) before RoPE
//   phi3     fused self_attn.qkv_proj and mlp.gate_up_proj (gate first)
//   gemma    embeddings times sqrt(d_model), RMSNorm with (1 + w), GeGLU
//            (gelu tanh), tied embeddings
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "runtime/autograd/ops.h"
#include "runtime/common/names.h"
#include "runtime/common/rng.h"
#include "runtime/nn/layers.h"
#include "runtime/nn/parameters.h"

namespace tessera::nn {

using kernels::cpu::Act;
// gelu, gelu_tanh, relu, silu (transformers' ACT2FN names).
const NameTable<Act>& act_names();

struct MlpSpec {
  int64_t in_features = 784;
  std::vector<int64_t> hidden = {512, 512};
  int64_t num_classes = 10;
  Act activation = Act::Gelu;
};

class MlpClassifier {
 public:
  MlpClassifier(const MlpSpec& spec, Rng& rng);
  // x [N, in_features] → logits [N, num_classes]
  Tensor forward(const Tensor& x) const;
  ParameterSet& params() { return params_; }
  const ParameterSet& params() const { return params_; }
  const MlpSpec& spec() const { return spec_; }
  std::vector<Linear*> linears();
  // Training FLOPs per example (forward + backward, no dX for the input layer).
  double train_flops_per_example() const;

 private:
  MlpSpec spec_;
  ParameterSet params_;
  std::vector<Linear> layers_;
};

enum class Flavor { Gpt2, Llama, Mistral, Qwen2, Qwen3, Phi3, Gemma };
// transformers' model_type of the flavour ("gpt2", "llama", "qwen2", ...).
const NameTable<Flavor>& flavor_names();
const char* flavor_name(Flavor f);
// The flavour of a model_type; throws Error listing the supported ones.
Flavor flavor_of(const std::string& model_type);

// RoPE scaling as transformers' rope_parameters: "default", "linear"
// (inv_freq / factor) or "llama3" (modeling_rope_utils._compute_llama3_parameters).
struct RopeScaling {
  std::string type = "default";
  float factor = 1.0f;
  float low_freq_factor = 1.0f, high_freq_factor = 4.0f;  // llama3
  int64_t original_max_position_embeddings = 0;           // llama3
};

struct DecoderSpec {
  Flavor flavor = Flavor::Gpt2;
  int64_t vocab_size = 256;
  int64_t n_ctx = 128;
  int64_t d_model = 256;
  int64_t n_layer = 4;
  int64_t n_head = 4;
  int64_t n_kv_head = 0;  // 0: n_head
  int64_t d_ff = 0;       // 0: 4*d_model (gpt2), or Llama's 8/3·d rounded up to 32
  float norm_eps = 1e-5f;
  float rope_theta = 10000.0f;
  bool tie_embeddings = true;
  int64_t d_head = 0;             // 0: d_model / n_head (transformers' head_dim)
  bool attention_bias = false;    // llama family: q/k/v/o biases (qwen2 has q/k/v always)
  bool mlp_bias = false;          // llama family: gate/up/down biases
  int64_t sliding_window = 0;     // 0: none; W: a query sees its W latest keys
  int64_t max_window_layers = 0;  // the first layer with the window (qwen2; else 0)
  RopeScaling rope_scaling;
  float partial_rotary_factor = 1.0f;            // phi3: RoPE on the first int(D·f) dims of a head
  bool scale_attn_weights = true;                // gpt2: scores / sqrt(D)
  bool scale_attn_by_inverse_layer_idx = false;  // gpt2: scores / (layer + 1) too

  int64_t kv_heads() const { return n_kv_head > 0 ? n_kv_head : n_head; }
  int64_t head_dim() const { return d_head > 0 ? d_head : d_model / n_head; }
  // Dims of a head that RoPE rotates: int(head_dim · partial_rotary_factor), as Python's int().
  int64_t rotary_dim() const {
    return static_cast<int64_t>(static_cast<double>(head_dim()) * partial_rotary_factor);
  }
  bool qkv_bias() const { return attention_bias || flavor == Flavor::Qwen2; }
  bool o_bias() const { return attention_bias; }
  bool qk_norm() const { return flavor == Flavor::Qwen3; }
  bool fused() const { return flavor == Flavor::Phi3; }
  bool gemma() const { return flavor == Flavor::Gemma; }
  // The inverse RoPE frequencies [rotary_dim / 2], as transformers computes them.
  std::vector<float> rope_inv_freq() const;
  int64_t ff() const;
  void validate() const;  // throws Error naming the field
};

class Decoder {
 public:
  Decoder(const DecoderSpec& spec, Rng& rng);
  // ids: B*T token ids (row-major [B, T]), T <= n_ctx → logits [B*T, vocab].
  Tensor forward(const std::vector<int32_t>& ids, int64_t B, int64_t T) const;
  ParameterSet& params() { return params_; }
  const ParameterSet& params() const { return params_; }
  const DecoderSpec& spec() const { return spec_; }
  std::vector<Linear*> linears();
  // The token (and, for gpt2, position) embeddings: LoRA can target them.
  std::vector<Embedding*> embeddings();
  // FLOPs of one token, forward only and forward+backward (llm.c/PaLM style:
  // 2·N_matmul per token forward plus attention 2·2·T·d per layer, ×3 for training).
  double forward_flops_per_token(int64_t T) const;
  double train_flops_per_token(int64_t T) const { return 3.0 * forward_flops_per_token(T); }

 private:
  struct Block {
    LayerNorm ln1, ln2;      // gpt2
    RMSNorm rms1, rms2;      // llama
    Linear c_attn, c_proj;   // gpt2 attention
    Linear q, k, v, o;       // llama attention
    Linear qkv;              // phi3: q, k, v fused
    RMSNorm q_norm, k_norm;  // qwen3
    Linear fc, fc_proj;      // gpt2 MLP
    Linear gate, up, down;   // llama MLP
    Linear gate_up;          // phi3: gate, up fused
    ops::AttnOptions attn;   // scale and window of this layer
  };
  Tensor block_gpt2(const Block& b, const Tensor& x, int64_t B, int64_t T) const;
  Tensor block_llama(const Block& b, const Tensor& x, int64_t B, int64_t T) const;

  DecoderSpec spec_;
  ParameterSet params_;
  Embedding wte_, wpe_;
  std::vector<Block> blocks_;
  LayerNorm ln_f_;
  RMSNorm norm_f_;
  Linear lm_head_;  // tied: a Linear over the embeddings' weight (Linear::tied)
  Tensor rope_cos_, rope_sin_;
};

}  // namespace tessera::nn
