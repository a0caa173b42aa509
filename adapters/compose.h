// Composition of several adapters on one base (the adapter-transformers
// composition blocks). Each AdapterSet is built with install = false, so its
// adapters exist but fill no slot; a Composition then puts one composite
// adapter in the slot of every module any of the sets covers:
//
//   Stack       y = a_n(…a_2(a_1(h))) — each adapter applied to the previous
//               one's output (LoRAs add up; bottlenecks nest)
//   Average     y = Σ w_i · a_i(h) (weighted outputs; w defaults to 1/n)
//   BatchSplit  example ranges of the batch go to different adapters
//               (splits: examples per adapter, summing to the batch)
//   Parallel    the batch replicated once per adapter (replicate()), each
//               replica through its own adapter — and through its own head
//               when the set adapts the output layer; split_outputs() returns
//               one output per adapter
//
// A module a set does not cover passes the base output for that set.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "adapters/lora.h"

namespace tessera::adapters {

enum class Compose { Stack, Average, BatchSplit, Parallel };
const NameTable<Compose>& compose_names();
const char* compose_name(Compose c);

class Composite : public Adapter {
 public:
  Composite(Compose mode, std::vector<std::shared_ptr<Adapter>> children,
            std::vector<float> weights, std::shared_ptr<const std::vector<int64_t>> splits);
  Tensor forward(const Tensor& x, const Tensor& base_out, const nn::Linear& base) override;
  bool needs_base_out() const override { return true; }
  Kind kind() const override { return Kind::Lora; }
  void shift_base(nn::Linear& base, bool merge) override;  // throws: merge each set instead

 private:
  Compose mode_;
  std::vector<std::shared_ptr<Adapter>> children_;  // null: this set skips the module
  std::vector<float> weights_;
  std::shared_ptr<const std::vector<int64_t>> splits_;
};

class Composition {
 public:
  // `sets` were built with install = false over the same model's Linears.
  // Average: `weights` (default 1/n each). BatchSplit: set_splits() before
  // each forward. Parallel: splits follow the replicated batch automatically.
  Composition(std::vector<nn::Linear*> linears, std::vector<AdapterSet*> sets, Compose mode,
              std::vector<float> weights = {});
  ~Composition();
  Composition(const Composition&) = delete;
  Composition& operator=(const Composition&) = delete;

  Compose mode() const { return mode_; }
  // BatchSplit: examples per adapter, in order (Σ = the batch's examples).
  void set_splits(std::vector<int64_t> examples);
  // Parallel: x [N, ...] → [n·N, ...], replica i for adapter i (records
  // gradients), and sets the splits to N examples each.
  Tensor replicate(const Tensor& x, int64_t examples);
  // Parallel: the model's output [n·N, C] → one [N, C] per adapter.
  std::vector<Tensor> split_outputs(const Tensor& y) const;
  void detach();

 private:
  std::vector<nn::Linear*> linears_;
  std::vector<std::shared_ptr<Composite>> composites_;
  Compose mode_;
  size_t n_;
  std::shared_ptr<std::vector<int64_t>> splits_;
  bool attached_ = true;
};

}  // namespace tessera::adapters
