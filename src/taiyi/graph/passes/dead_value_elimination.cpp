// Dead-value elimination: a node none of whose readers (transitively) reach a
// graph output is dropped, and so are constants nothing reads any more.
#include <vector>

#include "taiyi/graph/passes/passes.h"

namespace taiyi::graph {

bool dead_value_elimination(Graph& g, const CompileOptions&) {
  std::vector<bool> live(g.values.size(), false);
  for (int v : g.outputs) live[v] = true;
  for (size_t i = g.nodes.size(); i-- > 0;) {
    const Node& n = g.nodes[i];
    if (!live[n.output]) continue;
    for (int v : n.inputs)
      if (v >= 0) live[v] = true;
  }
  std::vector<Node> kept;
  kept.reserve(g.nodes.size());
  for (auto& n : g.nodes)
    if (live[n.output]) kept.push_back(std::move(n));
  const bool changed = kept.size() != g.nodes.size();
  g.nodes = std::move(kept);
  for (size_t i = 0; i < g.nodes.size(); ++i) g.values[g.nodes[i].output].producer = static_cast<int>(i);
  for (size_t v = 0; v < g.values.size(); ++v)
    if (!live[v] && g.values[v].kind == ValueKind::kConstant) g.values[v].constant = Tensor();  // free the memory ref
  return changed;
}

}  // namespace taiyi::graph
