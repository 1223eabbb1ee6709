#include "taiyi/graph/executor.h"

namespace taiyi::graph {

Executor::Executor(Graph g) : g_(std::move(g)) {
  g_.validate();
  std::vector<int> last_use(g_.values.size(), -1);
  for (size_t i = 0; i < g_.nodes.size(); ++i)
    for (int v : g_.nodes[i].inputs)
      if (v >= 0) last_use[v] = static_cast<int>(i);
  std::vector<bool> keep(g_.values.size(), false);
  for (int v : g_.outputs) keep[v] = true;
  release_after_.resize(g_.nodes.size());
  for (size_t v = 0; v < g_.values.size(); ++v)
    if (last_use[v] >= 0 && !keep[v] && g_.values[v].kind == ValueKind::kNode)
      release_after_[last_use[v]].push_back(static_cast<int>(v));
}

std::vector<Tensor> Executor::run(const std::vector<Tensor>& inputs) const {
  if (inputs.size() != g_.inputs.size())
    throw Error("graph: expected " + std::to_string(g_.inputs.size()) + " inputs, got " +
                std::to_string(inputs.size()));
  std::vector<Tensor> vals(g_.values.size());
  for (size_t v = 0; v < g_.values.size(); ++v)
    if (g_.values[v].kind == ValueKind::kConstant) vals[v] = g_.values[v].constant;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const Value& spec = g_.values[g_.inputs[i]];
    if (inputs[i].shape() != spec.shape || inputs[i].dtype() != spec.dtype)
      throw Error("graph: input " + std::to_string(i) + " is " + inputs[i].describe() + ", the graph was built for " +
                  dtype_name(spec.dtype) + shape_str(spec.shape));
    vals[g_.inputs[i]] = inputs[i];
  }
  std::vector<Tensor> args;
  for (size_t i = 0; i < g_.nodes.size(); ++i) {
    const Node& n = g_.nodes[i];
    args.clear();
    for (int v : n.inputs) args.push_back(v >= 0 ? vals[v] : Tensor());
    vals[n.output] = ops::run_op(n.kind, args, n.attrs);
    for (int v : release_after_[i]) vals[v] = Tensor();
  }
  std::vector<Tensor> out;
  for (int v : g_.outputs) out.push_back(vals[v]);
  return out;
}

}  // namespace taiyi::graph
