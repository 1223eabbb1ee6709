// Helpers of the graph tests: the compile options of their bf16 graphs (compute bf16, the rest
// default), and the number of a graph's nodes that satisfy a predicate.
#pragma once

#include <cstddef>

#include "taiyi/graph/passes/passes.h"

namespace taiyi::graph {

inline CompileOptions bf16() {
  CompileOptions o;
  o.compute = DType::BF16;
  return o;
}

template <typename Pred>
size_t count_nodes(const Graph& g, Pred pred) {
  size_t n = 0;
  for (const Node& node : g.nodes) n += pred(node) ? 1 : 0;
  return n;
}

}  // namespace taiyi::graph
