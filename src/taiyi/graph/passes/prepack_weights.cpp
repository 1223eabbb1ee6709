// Weight pre-packing: a conv2d whose weight (and bias) are constants gets a prepared
// oneDNN primitive, its weights reordered once into the primitive's layout, which the
// executor runs instead of the eager op (that one reorders the weights on every call).
#include "taiyi/graph/passes/passes.h"

namespace taiyi::graph {

namespace {
bool is_constant(const Graph& g, int v) { return v < 0 || g.values[v].kind == ValueKind::kConstant; }
}  // namespace

bool prepack_weights(Graph& g) {
  bool changed = false;
  for (Node& n : g.nodes) {
    if (n.prepared || n.kind != ops::OpKind::kConv2d) continue;
    if (!is_constant(g, n.inputs[1]) || !is_constant(g, n.inputs[2])) continue;
    const Tensor& w = g.values[n.inputs[1]].constant;
    const Tensor bias = n.inputs[2] >= 0 ? g.values[n.inputs[2]].constant : Tensor();
    n.prepared = ops::prepare_conv2d(g.values[n.inputs[0]].shape, w, bias, n.attrs.conv);
    changed = true;
  }
  return changed;
}

}  // namespace taiyi::graph
