// Replays a Graph on real tensors. Nodes run in order; a value is released right
// after its last reader, so memory stays at what the live values need.
#pragma once

#include <vector>

#include "taiyi/graph/graph.h"

namespace taiyi::graph {

class Executor {
 public:
  explicit Executor(Graph g);
  // Inputs must match the traced shapes and dtypes (throws naming the input otherwise).
  std::vector<Tensor> run(const std::vector<Tensor>& inputs) const;
  const Graph& graph() const { return g_; }

 private:
  Graph g_;
  std::vector<std::vector<int>> release_after_;  // per node: values whose last reader it is
};

}  // namespace taiyi::graph
