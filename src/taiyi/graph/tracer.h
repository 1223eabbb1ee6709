// Tracing: runs a function of tensors (the model code, unchanged) with meta
// inputs while recording every op call into a Graph. Weights the function
// touches become constants; ops whose inputs are all constants run at once
// (constant folding) instead of becoming nodes.
#pragma once

#include <functional>
#include <vector>

#include "taiyi/graph/graph.h"

namespace taiyi::graph {

struct InputSpec {
  Shape shape;
  DType dtype = DType::F32;
};

using TraceFn = std::function<std::vector<Tensor>(const std::vector<Tensor>&)>;

Graph trace(const TraceFn& fn, const std::vector<InputSpec>& inputs);

}  // namespace taiyi::graph
