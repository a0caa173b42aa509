// Building blocks with Hugging Face parameter names. Each layer registers its
// tensors in a ParameterSet under `prefix` and keeps handles to them.
#pragma once

#include <memory>
#include <string>

#include "runtime/autograd/ops.h"
#include "runtime/common/rng.h"
#include "runtime/nn/parameters.h"

namespace tessera::nn {

class Linear;

// The adapter slot of a Linear. runtime/ knows no adapter kind: adapters/
// implements this interface and a Linear calls it after its base product.
class LinearAdapter {
 public:
  virtual ~LinearAdapter() = default;
  // x: the Linear's input; base_out: x·Wᵀ+b (undefined when needs_base_out()
  // is false: the adapter computes the whole output itself). Returns the adapted output.
  virtual Tensor forward(const Tensor& x, const Tensor& base_out, const Linear& base) = 0;
  // The same, called by Linear::forward with a base_out that nothing else
  // holds: an adapter may write its result into base_out's buffer.
  virtual Tensor forward_owned(const Tensor& x, const Tensor& base_out, const Linear& base) {
    return forward(x, base_out, base);
  }
  virtual bool needs_base_out() const { return true; }
};

enum class Init { Zeros, Ones, Normal, TorchDefault };

class Linear {
 public:
  Linear() = default;
  // conv1d: GPT-2's Conv1D layout (weight [in, out]).
  Linear(ParameterSet& ps, const std::string& prefix, int64_t in, int64_t out, bool bias,
         bool conv1d, Rng& rng, Init init, float std = 0.02f);

  // A Linear over a weight another layer owns ([out, in], no bias), e.g. an
  // lm_head tied to the input embeddings: nothing is registered; tied() is
  // true, and an adapter on it may not be merged (that would change the owner).
  static Linear tied(const std::string& name, const Tensor& weight);

  Tensor forward(const Tensor& x) const;

  const std::string& name() const { return name_; }
  bool tied() const { return tied_; }
  int64_t in_features() const { return in_; }
  int64_t out_features() const { return out_; }
  bool conv1d() const { return conv1d_; }
  const Tensor& weight() const { return weight_; }
  const Tensor& bias() const { return bias_; }

  // The adapter slot: empty by default.
  void set_adapter(std::shared_ptr<LinearAdapter> a) { adapter_ = std::move(a); }
  const std::shared_ptr<LinearAdapter>& adapter() const { return adapter_; }
  // How many adapters are merged into weight() now (kept by adapters/ as it
  // merges and unmerges): an adapter whose merge reads the weight (DoRA's
  // norm) needs to know whether it is still the base's own.
  int merged_adapters() const { return merged_adapters_; }
  void count_merge(int delta) { merged_adapters_ += delta; }

 private:
  std::string name_;
  int merged_adapters_ = 0;
  bool tied_ = false;
  int64_t in_ = 0, out_ = 0;
  bool conv1d_ = false;
  Tensor weight_, bias_;
  std::shared_ptr<LinearAdapter> adapter_;
};

class LayerNorm {
 public:
  LayerNorm() = default;
  LayerNorm(ParameterSet& ps, const std::string& prefix, int64_t dim, float eps, bool bias = true);
  Tensor forward(const Tensor& x) const { return ops::layernorm(x, weight_, bias_, eps_); }

 private:
  Tensor weight_, bias_;
  float eps_ = 1e-5f;
};

class RMSNorm {
 public:
  RMSNorm() = default;
  // unit_offset: Gemma's norm, x/rms(x) * (1 + w), its weight initialised to 0.
  RMSNorm(ParameterSet& ps, const std::string& prefix, int64_t dim, float eps,
          bool unit_offset = false);
  Tensor forward(const Tensor& x) const {
    return ops::rmsnorm(x, unit_offset_ ? ops::add(weight_, ones_) : weight_, eps_);
  }

 private:
  Tensor weight_, ones_;
  float eps_ = 1e-6f;
  bool unit_offset_ = false;
};

class Embedding;

// The adapter slot of an Embedding (as LinearAdapter is a Linear's): called
// with the looked-up rows; returns the adapted rows.
class EmbeddingAdapter {
 public:
  virtual ~EmbeddingAdapter() = default;
  virtual Tensor forward(const std::vector<int32_t>& ids, const Tensor& base_out,
                         const Embedding& base) = 0;
};

class Embedding {
 public:
  Embedding() = default;
  // `name` is the weight's ("model.embed_tokens.weight"); the module's is it
  // without ".weight".
  Embedding(ParameterSet& ps, const std::string& name, int64_t num, int64_t dim, Rng& rng,
            float std);
  Tensor forward(const std::vector<int32_t>& ids) const {
    Tensor y = ops::embedding(ids, weight_);
    return adapter_ ? adapter_->forward(ids, y, *this) : y;
  }
  const Tensor& weight() const { return weight_; }
  const std::string& name() const { return name_; }
  int64_t num_embeddings() const { return weight_.size(0); }
  int64_t embedding_dim() const { return weight_.size(1); }
  // Shared with a tied lm_head: changing the weight changes that too.
  bool tied() const { return tied_; }
  void set_tied(bool t) { tied_ = t; }
  void set_adapter(std::shared_ptr<EmbeddingAdapter> a) { adapter_ = std::move(a); }
  const std::shared_ptr<EmbeddingAdapter>& adapter() const { return adapter_; }

 private:
  std::string name_;
  Tensor weight_;
  bool tied_ = false;
  std::shared_ptr<EmbeddingAdapter> adapter_;
};

}  // namespace tessera::nn
