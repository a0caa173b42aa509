// Hidden-state centroids for mttl's "avg_act" router (routing/routers.h:
// centroid_route): per expert and module, the L2-normalised mean of the
// module inputs over up to `max_rows` rows of the expert's task data.
//
// Attach a CentroidRecorder to the base model's Linear layers (it takes
// their adapter slots and passes every base output through unchanged), run
// forward passes over the task's examples, then read the centroids. The
// inputs are then the base model's hidden states: mttl's HiddenStateComputer
// with use_base_model_only=True. Its default runs the model with the
// expert attached, which needs a slot that both applies the expert and
// records; that variant, and its pooling options, are not here yet.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "runtime/nn/layers.h"

namespace tessera::routing {

class CentroidRecorder {
 public:
  // Takes the adapter slot of every Linear in `linears` (restored by
  // detach() or the destructor). Error: a Linear whose slot is taken.
  CentroidRecorder(std::vector<nn::Linear*> linears, int64_t max_rows);
  ~CentroidRecorder();
  CentroidRecorder(const CentroidRecorder&) = delete;
  CentroidRecorder& operator=(const CentroidRecorder&) = delete;
  void detach();
  // ("centroid/<module>", the L2-normalised mean input [in]) per Linear, in
  // the order given; a module that saw no rows (or only zeros) gives zeros.
  std::vector<std::pair<std::string, std::vector<float>>> centroids() const;
  // Rows recorded by the first Linear (each sees the same rows).
  int64_t rows() const;

 private:
  struct Slot;
  std::vector<nn::Linear*> linears_;
  std::vector<std::shared_ptr<Slot>> slots_;
};

}  // namespace tessera::routing
