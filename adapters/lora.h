// Adapters on the frozen base. Every kind fills the adapter slot of a Linear
// (nn::LinearAdapter) and owns only its own parameters:
//
//   lora        y = W·x + b + s · B·(A·drop(x)), A [r, in] (Kaiming-uniform),
//               B [out, r] (zeros), s = α/r, or α/√r with rsLoRA
//   dora        y = m ⊙ (W·x + s·B·A·drop(x)) / ‖W + s·B·A‖ + b, m [out]
//               initialised to the row norms of W (Liu et al. 2024). As in the
//               paper and PEFT the norm is detached by default (`dora_exact_grad`
//               differentiates through it)
//   vera        y = W·x + b + λ_b ⊙ B·(λ_d ⊙ A·drop(x)), A [r, in] and B [out, r]
//               frozen random slices of one pair shared by every module
//               (Kopiczko et al. 2024); λ_d [r] = d_init, λ_b [out] = 0 train
//   ia3         y = l ⊙ (W·x + b) (keys, values), or W·(l ⊙ x) + b for the
//               modules named feed-forward (Liu et al. 2022); l = 1 at start
//   bottleneck  y = h + U·act(D·h + b_D) + b_U with h = W·x + b, D [m, out],
//               U [out, m] = 0 at start (Houlsby et al. 2019); placement
//               "houlsby" puts one after attention and one after the MLP,
//               "pfeiffer" only after the MLP
//
// An AdapterSet attaches one adapter of one kind to every Linear of a model
// whose module name matches a pattern (glob, "re:<regex>", or "all-linear",
// which like PEFT leaves out the output layer), owns the adapter parameters in
// its own ParameterSet (so an optimizer sees only them), and can detach, merge
// into the base weights and unmerge.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "runtime/common/names.h"
#include "runtime/common/rng.h"
#include "runtime/nn/layers.h"
#include "runtime/nn/parameters.h"

namespace tessera::adapters {

struct LoraConfig {
  int64_t r = 8;
  float alpha = 16.0f;
  bool rslora = false;  // s = α/√r instead of α/r
  float scale() const;
};

// Per-module overrides as PEFT writes them: a key matches a module when the
// regex (.*\.)?(key)$ matches its whole name.
struct LoraSpec {
  // Every module's options unless a pattern below names it. For the kinds
  // that are not LoRA, r is VeRA's shared rank and the bottleneck's width.
  LoraConfig defaults;
  std::vector<std::pair<std::string, int64_t>> rank_pattern;
  std::vector<std::pair<std::string, float>> alpha_pattern;
  LoraSpec() = default;
  LoraSpec(const LoraConfig& c) : defaults(c) {}  // NOLINT: a plain config is a spec
  LoraConfig for_module(const std::string& name) const;
};
bool peft_pattern_matches(const std::string& key, const std::string& module);
// `s` with regex metacharacters escaped: an exact module name as a pattern.
std::string regex_escape(const std::string& s);

enum class Kind { Lora, Dora, Vera, Ia3, Bottleneck };
const NameTable<Kind>& kind_names();
const char* kind_name(Kind k);
Kind parse_kind(const std::string& s);  // throws Error listing the kinds

// Everything that configures one AdapterSet. `lora` carries r (the rank, the
// VeRA rank, or the bottleneck width: lora.defaults.r), α and the per-module
// patterns. The command line's shorthand for it: adapters/spec.h.
struct AdapterSpec {
  Kind kind = Kind::Lora;
  LoraSpec lora;
  float dropout = 0.0f;          // on the adapter input (lora, dora, vera)
  bool dora_exact_grad = false;  // dora: differentiate through the weight norm
  float vera_d_init = 0.1f;      // vera: initial λ_d
  // ia3: modules (patterns as for targets) whose input rather than output is scaled.
  std::vector<std::string> feedforward = {"re:.*(mlp\\.c_proj|down_proj|fc2)"};
  kernels::cpu::Act act = kernels::cpu::Act::Relu;  // bottleneck non-linearity
  AdapterSpec() = default;
  AdapterSpec(const LoraSpec& s) : lora(s) {}    // NOLINT
  AdapterSpec(const LoraConfig& c) : lora(c) {}  // NOLINT
  AdapterSpec(Kind k, const LoraConfig& c) : kind(k), lora(c) {}
};

// Default targets of a bottleneck placement ("houlsby" or "pfeiffer").
std::vector<std::string> placement_targets(const std::string& placement);

// An adapter in a Linear's slot.
class Adapter : public nn::LinearAdapter {
 public:
  virtual Kind kind() const = 0;
  // Folds the adapter into the base weights (merge) or takes it out again
  // (unmerge); while merged, forward passes the base output through.
  // Throws Error for kinds that cannot merge (bottleneck).
  virtual void shift_base(nn::Linear& base, bool merge) = 0;
  bool merged() const { return merged_; }

 protected:
  bool merged_ = false;
};

class Lora : public Adapter {
 public:
  // Registers "<module>.lora_A.weight" [r, in] and "<module>.lora_B.weight" [out, r]
  // in `ps` (and for DoRA "<module>.lora_magnitude_vector" [out]).
  Lora(const nn::Linear& base, const LoraConfig& cfg, nn::ParameterSet& ps, Rng& rng,
       bool dora = false, float dropout = 0.0f, bool dora_exact_grad = false);
  Tensor forward(const Tensor& x, const Tensor& base_out, const nn::Linear& base) override {
    return apply(x, base_out, base, false);
  }
  Tensor forward_owned(const Tensor& x, const Tensor& base_out, const nn::Linear& base) override {
    return apply(x, base_out, base, true);
  }
  Kind kind() const override { return dora_ ? Kind::Dora : Kind::Lora; }
  void shift_base(nn::Linear& base, bool merge) override;

  const LoraConfig& config() const { return cfg_; }
  const Tensor& A() const { return a_; }
  const Tensor& B() const { return b_; }
  const Tensor& magnitude() const { return m_; }  // DoRA only
  float scale() const { return scale_; }
  // s·B·A laid out like the base weight ([out, in], or [in, out] for Conv1D).
  Tensor delta_weight(const nn::Linear& base) const;
  // DoRA: ‖W + s·B·A‖ per output feature (recorded on the tape unless `detach`).
  Tensor weight_norm(const nn::Linear& base, bool detach) const;

 private:
  Tensor apply(const Tensor& x, const Tensor& base_out, const nn::Linear& base, bool in_place);
  LoraConfig cfg_;
  Tensor a_, b_, m_;
  float scale_;
  bool dora_;
  float dropout_;
  bool exact_;
  Rng rng_;
  Tensor merge_norm_;  // DoRA: the norm the merge divided by, so unmerge is exact
};

// LoRA on an embedding (peft's lora.Embedding): the looked-up rows plus
// s·(Aᵀ[ids])·Bᵀ, with "<module>.lora_embedding_A" [r, num_embeddings] and
// "<module>.lora_embedding_B" [dim, r] (peft's names and shapes; A starts at
// zero and B normal, as peft initialises them). Merging adds s·(B·A)ᵀ to the
// table; refused for a table tied to the lm_head.
class EmbeddingLora : public nn::EmbeddingAdapter {
 public:
  EmbeddingLora(const nn::Embedding& base, const LoraConfig& cfg, nn::ParameterSet& ps, Rng& rng);
  Tensor forward(const std::vector<int32_t>& ids, const Tensor& base_out,
                 const nn::Embedding& base) override;
  void shift_base(nn::Embedding& base, bool merge);
  bool merged() const { return merged_; }
  const LoraConfig& config() const { return cfg_; }
  const Tensor& A() const { return a_; }
  const Tensor& B() const { return b_; }
  float scale() const { return scale_; }

 private:
  LoraConfig cfg_;
  Tensor a_, b_;
  float scale_;
  bool merged_ = false;
};

// peft's modules_to_save: a module replaced by a trainable copy of itself.
// A Linear's copy holds "<module>.modules_to_save.weight" (and .bias); an
// Embedding's the table. Merging writes the copy into the base (refused for
// weights tied between the embeddings and the lm_head).
class LinearCopy : public nn::LinearAdapter {
 public:
  LinearCopy(const nn::Linear& base, nn::ParameterSet& ps);
  Tensor forward(const Tensor& x, const Tensor& base_out, const nn::Linear& base) override;
  bool needs_base_out() const override { return false; }
  void shift_base(nn::Linear& base, bool merge);
  bool merged() const { return merged_; }
  const Tensor& weight() const { return w_; }
  const Tensor& bias() const { return b_; }

 private:
  Tensor w_, b_, saved_w_, saved_b_;
  bool merged_ = false;
};
class TableCopy : public nn::EmbeddingAdapter {
 public:
  TableCopy(const nn::Embedding& base, nn::ParameterSet& ps);
  Tensor forward(const std::vector<int32_t>& ids, const Tensor& base_out,
                 const nn::Embedding& base) override;
  void shift_base(nn::Embedding& base, bool merge);
  bool merged() const { return merged_; }
  const Tensor& weight() const { return w_; }

 private:
  Tensor w_, saved_;
  bool merged_ = false;
};

class AdapterSet {
 public:
  // Attaches an adapter of spec.kind to every Linear in `linears` whose name
  // matches one of `targets`; throws Error listing near names when a target
  // matches nothing. The base parameters are frozen (`base` is the model's ParameterSet).
  // With install = false the adapters are built but fill no slot (for a
  // Composition of several sets).
  // With no targets at all the set adapts no Linear (for a set that only
  // adapts embeddings, add_embeddings).
  AdapterSet(std::vector<nn::Linear*> linears, nn::ParameterSet& base,
             const std::vector<std::string>& targets, const AdapterSpec& spec, uint64_t seed,
             bool install = true);
  ~AdapterSet();
  AdapterSet(const AdapterSet&) = delete;
  AdapterSet& operator=(const AdapterSet&) = delete;

  Kind kind() const { return spec_.kind; }
  nn::ParameterSet& params() { return params_; }
  const nn::ParameterSet& params() const { return params_; }
  const std::vector<std::string>& modules() const { return names_; }
  const std::vector<std::shared_ptr<Adapter>>& adapters() const { return adapters_; }
  // The LoRA / DoRA adapters (empty for other kinds), in module order.
  std::vector<std::shared_ptr<Lora>> loras() const;
  const std::vector<nn::Linear*>& linears() const { return linears_; }
  const AdapterSpec& spec() const { return spec_; }
  const LoraSpec& lora_spec() const { return spec_.lora; }
  const std::vector<std::string>& targets() const { return targets_; }
  // Folds every adapter into its base weight; the adapters then stand aside in forward.
  void merge();
  // Takes them out again (W back within fp32 rounding).
  void unmerge();
  // Empties every slot this set filled (unmerging first); the base output is
  // then bit-identical to the model's before attach.
  void detach();

  // LoRA (kind lora) on embeddings too: one EmbeddingLora per table named in
  // `names`, its rank and α from the spec's patterns; the tables are frozen.
  // merge/unmerge/detach and params() cover them.
  void add_embeddings(const std::vector<nn::Embedding*>& embeddings,
                      const std::vector<std::string>& names);
  const std::vector<std::string>& embedding_modules() const { return emb_names_; }
  const std::vector<std::shared_ptr<EmbeddingLora>>& embedding_loras() const { return emb_loras_; }
  const std::vector<nn::Embedding*>& embeddings() const { return embs_; }

  // peft's modules_to_save: each module named (a Linear or an Embedding of
  // the model) gets a copy of itself that replaces it, starting equal to it.
  void add_copies(const std::vector<nn::Linear*>& linears,
                  const std::vector<nn::Embedding*>& embeddings,
                  const std::vector<std::string>& names);
  const std::vector<std::string>& copied_modules() const { return copy_names_; }

 private:
  std::vector<std::string> copy_names_;
  std::vector<std::pair<nn::Linear*, std::shared_ptr<LinearCopy>>> linear_copies_;
  std::vector<std::pair<nn::Embedding*, std::shared_ptr<TableCopy>>> table_copies_;
  std::vector<nn::Embedding*> embs_;
  std::vector<std::shared_ptr<EmbeddingLora>> emb_loras_;
  std::vector<std::string> emb_names_;
  std::vector<nn::Linear*> linears_;
  std::vector<std::shared_ptr<Adapter>> adapters_;
  std::vector<std::string> names_;
  nn::ParameterSet params_;
  AdapterSpec spec_;
  std::vector<std::string> targets_;
  bool attached_ = true;
};

// Module names of `linears` selected by one target pattern.
std::vector<std::string> match_targets(const std::vector<nn::Linear*>& linears,
                                       const std::string& target);
// Module names selected by any of `targets`; throws Error naming the near
// matches for a target that selects nothing.
std::vector<std::string> select_modules(const std::vector<nn::Linear*>& linears,
                                        const std::vector<std::string>& targets);

}  // namespace tessera::adapters
