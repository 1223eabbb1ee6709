// Helpers of the graph tests: the compile options of their bf16 graphs (compute bf16, the rest
// default), and the number of a graph's nodes that satisfy a predicate or whose prepared op says
// something.
#pragma once

#include <cstddef>
#include <string>

#include "taiyi/graph/passes/passes.h"
#include "taiyi/ops/prepared.h"

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

// Nodes whose prepared op's description contains `what`.
inline size_t described(const Graph& g, const std::string& what) {
  return count_nodes(
      g, [&](const Node& n) { return n.prepared && n.prepared->describe().find(what) != std::string::npos; });
}

}  // namespace taiyi::graph
