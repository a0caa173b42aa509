// The base models: an MLP classifier and a decoder-only LM in two flavours.
//
// Decoder, GPT-2 flavour: learned positions, LayerNorm, GELU (tanh), fused
//   c_attn in the Conv1D [in, out] layout, biases; names transformer.h.N.*.
// Decoder, Llama flavour: RoPE, RMSNorm, SwiGLU, grouped-query attention, no
//   biases; names model.layers.N.*.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "runtime/autograd/ops.h"
#include "runtime/common/rng.h"
#include "runtime/nn/layers.h"
#include "runtime/nn/parameters.h"

namespace tessera::nn {

using kernels::cpu::Act;

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

enum class Flavor { Gpt2, Llama };
const char* flavor_name(Flavor f);

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

  int64_t kv_heads() const { return n_kv_head > 0 ? n_kv_head : n_head; }
  int64_t head_dim() const { return d_model / n_head; }
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
  // FLOPs of one token, forward only and forward+backward (llm.c/PaLM style:
  // 2·N_matmul per token forward plus attention 2·2·T·d per layer, ×3 for training).
  double forward_flops_per_token(int64_t T) const;
  double train_flops_per_token(int64_t T) const { return 3.0 * forward_flops_per_token(T); }

 private:
  struct Block {
    LayerNorm ln1, ln2;     // gpt2
    RMSNorm rms1, rms2;     // llama
    Linear c_attn, c_proj;  // gpt2 attention
    Linear q, k, v, o;      // llama attention
    Linear fc, fc_proj;     // gpt2 MLP
    Linear gate, up, down;  // llama MLP
  };
  Tensor block_gpt2(const Block& b, const Tensor& x, int64_t B, int64_t T) const;
  Tensor block_llama(const Block& b, const Tensor& x, int64_t B, int64_t T) const;

  DecoderSpec spec_;
  ParameterSet params_;
  Embedding wte_, wpe_;
  std::vector<Block> blocks_;
  LayerNorm ln_f_;
  RMSNorm norm_f_;
  Linear lm_head_;  // only when embeddings are not tied
  Tensor rope_cos_, rope_sin_;
};

}  // namespace tessera::nn
