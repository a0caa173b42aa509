#include "routing/centroids.h"

#include <algorithm>
#include <cmath>

#include "runtime/common/error.h"

namespace tessera::routing {

// The slot on one Linear: sums the first max_rows input rows in double.
struct CentroidRecorder::Slot : nn::LinearAdapter {
  Slot(int64_t in, int64_t max_rows) : sum(static_cast<size_t>(in), 0.0), max_rows(max_rows) {}
  Tensor forward(const Tensor& x, const Tensor& base_out, const nn::Linear&) override {
    const int64_t in = static_cast<int64_t>(sum.size());
    const int64_t n = std::min<int64_t>(x.size(0), std::max<int64_t>(0, max_rows - rows));
    const float* p = x.data();
    for (int64_t r = 0; r < n; ++r)
      for (int64_t c = 0; c < in; ++c) sum[c] += p[r * in + c];
    rows += n;
    return base_out;
  }
  std::vector<double> sum;
  int64_t rows = 0, max_rows;
};

CentroidRecorder::CentroidRecorder(std::vector<nn::Linear*> linears, int64_t max_rows)
    : linears_(std::move(linears)) {
  if (max_rows < 1) throw Error(str("centroids: max_rows = ", max_rows, " (expected at least 1)"));
  for (nn::Linear* l : linears_)
    if (l->adapter())
      throw Error(str("centroids: module '", l->name(),
                      "' already holds an adapter; record centroids on the base model alone"));
  for (nn::Linear* l : linears_) {
    slots_.push_back(std::make_shared<Slot>(l->in_features(), max_rows));
    l->set_adapter(slots_.back());
  }
}

CentroidRecorder::~CentroidRecorder() {
  detach();
}

void CentroidRecorder::detach() {
  for (size_t i = 0; i < linears_.size(); ++i)
    if (linears_[i]->adapter() == slots_[i]) linears_[i]->set_adapter(nullptr);
}

std::vector<std::pair<std::string, std::vector<float>>> CentroidRecorder::centroids() const {
  std::vector<std::pair<std::string, std::vector<float>>> out;
  for (size_t i = 0; i < linears_.size(); ++i) {
    const std::vector<double>& s = slots_[i]->sum;
    double n = 0;
    for (double v : s) n += v * v;
    n = std::sqrt(n);
    std::vector<float> c(s.size(), 0.0f);
    if (n > 0)
      for (size_t j = 0; j < s.size(); ++j) c[j] = static_cast<float>(s[j] / n);
    out.push_back({"centroid/" + linears_[i]->name(), std::move(c)});
  }
  return out;
}

int64_t CentroidRecorder::rows() const {
  return slots_.empty() ? 0 : slots_[0]->rows;
}

}  // namespace tessera::routing
