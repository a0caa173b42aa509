#include "runtime/train/lm_workload.h"

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "runtime/autograd/ops.h"
#include "runtime/common/error.h"
#include "runtime/data/data.h"
#include "runtime/io/hf.h"
#include "runtime/io/safetensors.h"

namespace tessera::train {

namespace {

constexpr int64_t kDefaultMaxWindow = 1024;

class LmWorkload : public Workload {
 public:
  LmWorkload(const RunConfig& cfg, Rng& rng) {
    const DecoderConfig& d = cfg.decoder();
    if (cfg.data().files().empty())
      throw Error("data.files is empty: name the text files or globs");
    data::TokenCorpus all;
    if (cfg.data().kind() == "text")
      all = data::load_text({cfg.data().files().begin(), cfg.data().files().end()});
    else if (cfg.data().kind() == "tokens")
      all = data::load_token_bins({cfg.data().files().begin(), cfg.data().files().end()},
                                  cfg.data().token_bytes());
    else
      throw Error(str("model 'decoder' trains on data.kind 'text' or 'tokens', got '",
                      cfg.data().kind(), "'"));
    data::split_holdout(all, cfg.data().holdout(), &train_, &test_);
    if (!d.init_from().empty())
      model_ = io::load_hf_decoder(d.init_from());
    else
      model_ = std::make_unique<nn::Decoder>(decoder_spec(d), rng);
    if (all.vocab > model_->spec().vocab_size)
      throw Error(str("the corpus (data.files ", cfg.data().files(0),
                      cfg.data().files_size() > 1 ? ", ..." : "", ") uses token ids up to ",
                      all.vocab - 1, " but decoder.vocab_size is ", model_->spec().vocab_size,
                      " (text is read as bytes 0..255; a model with a smaller vocabulary needs "
                      "data.kind=tokens files of its own ids)"));
    // Windows of the whole context up to 1024 tokens: a real checkpoint's
    // context (max_position_embeddings, 2048 to 131072) would make one
    // window's attention scores alone gigabytes. data.seq_len chooses.
    T_ = std::min<int64_t>(model_->spec().n_ctx, kDefaultMaxWindow);
    if (cfg.data().seq_len() > 0) {
      if (cfg.data().seq_len() > T_)
        throw Error(str("data.seq_len = ", cfg.data().seq_len(),
                        " is longer than the model's context (decoder.n_ctx = ", T_, ")"));
      T_ = cfg.data().seq_len();
    }
    windows_ = std::make_unique<data::LmWindows>(&train_, T_);
  }
  const std::string& kind() const override { return kind_; }
  nn::ParameterSet& params() override { return model_->params(); }
  std::vector<nn::Linear*> linears() override { return model_->linears(); }
  std::vector<nn::Embedding*> embeddings() override { return model_->embeddings(); }
  int64_t train_examples() const override { return windows_->count(); }
  double units_per_example() const override { return static_cast<double>(T_); }
  int64_t rows_per_example() const override { return T_; }
  double flops_per_example() const override { return model_->train_flops_per_token(T_) * T_; }

  void set_row_task_hook(RowTaskFn fn) override { row_task_ = std::move(fn); }

  Tensor loss(const std::vector<int64_t>& idx, int64_t epoch) override {
    std::vector<int32_t> ids, tgt;
    windows_->fill(idx, epoch, &ids, &tgt);
    if (row_task_) row_task_(std::vector<int32_t>(idx.size(), 0));
    return ops::cross_entropy(model_->forward(ids, static_cast<int64_t>(idx.size()), T_), tgt);
  }

  EvalResult evaluate(int64_t batch, int64_t max_batches, int) override {
    EvalResult r;
    const int64_t n = static_cast<int64_t>(test_.tokens.size());
    const int64_t T = std::min<int64_t>(T_, n - 1);
    if (T < 1) throw Error("held-out split is too short to evaluate (raise data.holdout)");
    const int64_t windows = (n - 1) / T;
    double loss_sum = 0.0;
    int64_t tokens = 0;
    for (int64_t w = 0, b = 0; w < windows && (max_batches <= 0 || b < max_batches);
         w += batch, ++b) {
      const int64_t B = std::min(batch, windows - w);
      std::vector<int32_t> ids(B * T), tgt(B * T);
      for (int64_t i = 0; i < B; ++i) {
        const int32_t* src = test_.tokens.data() + (w + i) * T;
        std::copy(src, src + T, ids.begin() + i * T);
        std::copy(src + 1, src + T + 1, tgt.begin() + i * T);
      }
      if (row_task_) row_task_(std::vector<int32_t>(static_cast<size_t>(B), 0));
      float l = ops::cross_entropy(model_->forward(ids, B, T), tgt).item();
      loss_sum += static_cast<double>(l) * static_cast<double>(B * T);
      tokens += B * T;
    }
    r.count = tokens;
    r.loss = tokens ? loss_sum / static_cast<double>(tokens) : 0.0;
    r.bits_per_token = r.loss / std::log(2.0);
    return r;
  }

  void export_model(const std::string& dir) const override { io::save_hf_decoder(dir, *model_); }
  void record_architecture(RunConfig* cfg) const override {
    set_decoder_config(model_->spec(), cfg->mutable_decoder());
  }

 private:
  std::string kind_ = "decoder";
  data::TokenCorpus train_, test_;
  std::unique_ptr<nn::Decoder> model_;
  std::unique_ptr<data::LmWindows> windows_;
  int64_t T_ = 0;
  RowTaskFn row_task_;
};

}  // namespace

nn::DecoderSpec decoder_spec(const DecoderConfig& d) {
  nn::DecoderSpec s;
  s.flavor = nn::flavor_of(d.flavor().empty() ? "gpt2" : d.flavor());
  s.vocab_size = d.vocab_size();
  s.n_ctx = d.n_ctx();
  s.d_model = d.d_model();
  s.n_layer = d.n_layer();
  s.n_head = d.n_head();
  s.n_kv_head = d.n_kv_head();
  s.d_ff = d.d_ff();
  s.norm_eps = d.norm_eps();
  s.rope_theta = d.rope_theta();
  s.tie_embeddings = d.tie_embeddings();
  s.d_head = d.head_dim();
  s.attention_bias = d.attention_bias();
  s.mlp_bias = d.mlp_bias();
  s.sliding_window = d.sliding_window();
  s.max_window_layers = d.max_window_layers();
  s.rope_scaling.type = d.rope_type().empty() ? "default" : d.rope_type();
  if (d.has_rope_factor()) s.rope_scaling.factor = d.rope_factor();
  if (d.has_rope_low_freq_factor()) s.rope_scaling.low_freq_factor = d.rope_low_freq_factor();
  if (d.has_rope_high_freq_factor()) s.rope_scaling.high_freq_factor = d.rope_high_freq_factor();
  s.rope_scaling.original_max_position_embeddings = d.rope_original_max_position_embeddings();
  s.scale_attn_weights = !d.has_scale_attn_weights() || d.scale_attn_weights();
  s.scale_attn_by_inverse_layer_idx = d.scale_attn_by_inverse_layer_idx();
  if (d.has_partial_rotary_factor()) s.partial_rotary_factor = d.partial_rotary_factor();
  return s;
}

void set_decoder_config(const nn::DecoderSpec& s, DecoderConfig* d) {
  d->set_flavor(nn::flavor_name(s.flavor));
  d->set_vocab_size(static_cast<int32_t>(s.vocab_size));
  d->set_n_ctx(static_cast<int32_t>(s.n_ctx));
  d->set_d_model(static_cast<int32_t>(s.d_model));
  d->set_n_layer(static_cast<int32_t>(s.n_layer));
  d->set_n_head(static_cast<int32_t>(s.n_head));
  d->set_n_kv_head(static_cast<int32_t>(s.kv_heads()));
  d->set_d_ff(static_cast<int32_t>(s.ff()));
  d->set_norm_eps(s.norm_eps);
  d->set_rope_theta(s.rope_theta);
  d->set_tie_embeddings(s.tie_embeddings);
  d->set_head_dim(static_cast<int32_t>(s.head_dim()));
  d->set_attention_bias(s.attention_bias);
  d->set_mlp_bias(s.mlp_bias);
  d->set_sliding_window(static_cast<int32_t>(s.sliding_window));
  d->set_max_window_layers(static_cast<int32_t>(s.max_window_layers));
  d->set_rope_type(s.rope_scaling.type);
  d->set_rope_factor(s.rope_scaling.factor);
  d->set_rope_low_freq_factor(s.rope_scaling.low_freq_factor);
  d->set_rope_high_freq_factor(s.rope_scaling.high_freq_factor);
  d->set_rope_original_max_position_embeddings(
      static_cast<int32_t>(s.rope_scaling.original_max_position_embeddings));
  d->set_scale_attn_weights(s.scale_attn_weights);
  d->set_scale_attn_by_inverse_layer_idx(s.scale_attn_by_inverse_layer_idx);
  d->set_partial_rotary_factor(s.partial_rotary_factor);
}

std::unique_ptr<Workload> make_lm_workload(const RunConfig& cfg, Rng& rng) {
  return std::make_unique<LmWorkload>(cfg, rng);
}

}  // namespace tessera::train
