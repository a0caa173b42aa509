#include "adapters/compose.h"

#include <algorithm>

#include "runtime/autograd/ops.h"
#include "runtime/common/error.h"

namespace tessera::adapters {

const NameTable<Compose>& compose_names() {
  static const NameTable<Compose> t = {{Compose::Stack, "stack"},
                                       {Compose::Average, "average"},
                                       {Compose::BatchSplit, "batch_split"},
                                       {Compose::Parallel, "parallel"}};
  return t;
}

const char* compose_name(Compose c) {
  return compose_names().name(c);
}

namespace {
// One child on its input: the base output passes where the set skips the module.
Tensor apply(const std::shared_ptr<Adapter>& c, const Tensor& x, const Tensor& base_out,
             const nn::Linear& base) {
  if (!c) return base_out;
  return c->forward(x, c->needs_base_out() ? base_out : Tensor(), base);
}
}  // namespace

Composite::Composite(Compose mode, std::vector<std::shared_ptr<Adapter>> children,
                     std::vector<float> weights, std::shared_ptr<const std::vector<int64_t>> splits)
    : mode_(mode),
      children_(std::move(children)),
      weights_(std::move(weights)),
      splits_(std::move(splits)) {}

Tensor Composite::forward(const Tensor& x, const Tensor& base_out, const nn::Linear& base) {
  const size_t n = children_.size();
  switch (mode_) {
    case Compose::Stack: {
      Tensor y = base_out;
      bool applied = false;
      for (const auto& c : children_) {
        if (!c) continue;
        if (!c->needs_base_out() && applied)
          throw Error(str("Stack on ", base.name(), ": an input-scaling (IA)3 adapter reads the ",
                          "module's input and must come first in the stack"));
        y = apply(c, x, y, base);
        applied = true;
      }
      return y;
    }
    case Compose::Average: {
      Tensor y;
      for (size_t i = 0; i < n; ++i) {
        Tensor yi = ops::scale(apply(children_[i], x, base_out, base), weights_[i]);
        y = y.defined() ? ops::add(y, yi) : yi;
      }
      return y;
    }
    case Compose::BatchSplit:
    case Compose::Parallel: {
      const std::vector<int64_t>& sp = *splits_;
      if (sp.size() != n)
        throw Error(str(compose_name(mode_), " on ", base.name(), ": ", sp.size(), " splits for ",
                        n, " adapters (call set_splits / replicate first)"));
      int64_t examples = 0;
      for (int64_t e : sp) examples += e;
      const int64_t N = x.size(0);
      if (examples <= 0 || N % examples != 0)
        throw Error(str(compose_name(mode_), " on ", base.name(), ": splits of ", examples,
                        " examples do not divide the ", N, " rows of the batch"));
      const int64_t G = N / examples;
      std::vector<Tensor> parts;
      int64_t off = 0;
      for (size_t i = 0; i < n; ++i) {
        const int64_t b = off * G, e = (off + sp[i]) * G;
        off += sp[i];
        if (b == e) continue;
        parts.push_back(
            apply(children_[i], ops::slice_rows(x, b, e), ops::slice_rows(base_out, b, e), base));
      }
      return ops::concat_rows(parts);
    }
  }
  return base_out;
}

void Composite::shift_base(nn::Linear& base, bool merge) {
  if (merge)
    throw Error(str("a ", compose_name(mode_), " composition on ", base.name(),
                    " has no single merged weight; merge the sets themselves in the stack's order "
                    "(LoRA and VeRA deltas add in any order; a DoRA or (IA)3 set reads or scales "
                    "the weight, so at most one of them per module, merged first)"));
}

Composition::Composition(std::vector<nn::Linear*> linears, std::vector<AdapterSet*> sets,
                         Compose mode, std::vector<float> weights)
    : mode_(mode), n_(sets.size()), splits_(std::make_shared<std::vector<int64_t>>()) {
  if (sets.size() < 2) throw Error("a composition needs at least two adapter sets");
  if (mode == Compose::Average) {
    if (weights.empty()) weights.assign(sets.size(), 1.0f / static_cast<float>(sets.size()));
    if (weights.size() != sets.size())
      throw Error(str("Average: ", weights.size(), " weights for ", sets.size(), " adapters"));
  } else if (!weights.empty()) {
    throw Error(str(compose_name(mode), " takes no weights (only average does)"));
  }
  for (nn::Linear* l : linears) {
    std::vector<std::shared_ptr<Adapter>> children;
    bool any = false;
    for (AdapterSet* s : sets) {
      std::shared_ptr<Adapter> a;
      for (size_t k = 0; k < s->modules().size(); ++k)
        if (s->modules()[k] == l->name()) a = s->adapters()[k];
      if (a && l->adapter() == a)
        throw Error(str("adapter set on ", l->name(),
                        " is installed in the slot; build the sets with install = false"));
      any = any || a;
      children.push_back(a);
    }
    if (!any) continue;
    if (l->adapter()) throw Error(str("module ", l->name(), " already has an adapter attached"));
    auto c = std::make_shared<Composite>(mode, children, weights, splits_);
    l->set_adapter(c);
    linears_.push_back(l);
    composites_.push_back(c);
  }
}

Composition::~Composition() {
  if (attached_) detach();
}

void Composition::set_splits(std::vector<int64_t> examples) {
  if (mode_ != Compose::BatchSplit && mode_ != Compose::Parallel)
    throw Error(str(compose_name(mode_), " takes no splits"));
  if (examples.size() != n_)
    throw Error(str("BatchSplit: ", examples.size(), " splits for ", n_, " adapters"));
  for (int64_t e : examples)
    if (e < 0) throw Error(str("BatchSplit: split of ", e, " examples"));
  *splits_ = std::move(examples);
}

Tensor Composition::replicate(const Tensor& x, int64_t examples) {
  if (mode_ != Compose::Parallel) throw Error("replicate() belongs to a Parallel composition");
  set_splits(std::vector<int64_t>(n_, examples));
  return ops::concat_rows(std::vector<Tensor>(n_, x));
}

std::vector<Tensor> Composition::split_outputs(const Tensor& y) const {
  if (y.size(0) % static_cast<int64_t>(n_) != 0)
    throw Error(str("split_outputs: ", y.size(0), " rows are not ", n_, " equal replicas"));
  const int64_t m = y.size(0) / static_cast<int64_t>(n_);
  std::vector<Tensor> out;
  for (size_t i = 0; i < n_; ++i)
    out.push_back(ops::slice_rows(y, static_cast<int64_t>(i) * m, static_cast<int64_t>(i + 1) * m));
  return out;
}

void Composition::detach() {
  for (size_t i = 0; i < linears_.size(); ++i)
    if (linears_[i]->adapter() == composites_[i]) linears_[i]->set_adapter(nullptr);
  attached_ = false;
}

}  // namespace tessera::adapters
