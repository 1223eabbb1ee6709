// Residual add (and output scale) into the convolution or linear before it: add(op(x), r)
// -> op(x) + r as the op's epilogue (ops::Epilogue, oneDNN post-ops), and a scale that is
// the add's only reader folds in too: (op(x) + r) * s. This is the residual connection of
// every ResnetBlock2D (conv2 + shortcut), attention block (to_out + input), feed-forward
// (ff.net.2 + input) and Transformer2DModel (proj_out + input).
//
// The fused node takes the residual as a 4th input and the add's (or scale's) output, and
// moves to the add's place in the order, since the residual may be computed after the op
// (diffusers applies conv_shortcut after conv2). Only ops prepack_weights will bind are
// fused (their prepared kernels implement the epilogue); a residual with another memory
// order than the output, or a broadcasting add, stays an add.
#include <vector>

#include "taiyi/graph/passes/passes.h"

namespace taiyi::graph {

int add_operand_producer(const Graph& g, const std::vector<std::vector<int>>& readers, const std::vector<bool>& removed,
                         int op_out, int other) {
  const Value& y = g.values[op_out];
  if (y.kind != ValueKind::kNode || g.is_output(op_out) || readers[op_out].size() != 1 || op_out == other ||
      y.producer < 0 || removed[y.producer])
    return -1;
  return y.producer;
}

Node& fold_into_add(Graph& g, size_t add_index, int producer, int extra, std::vector<bool>& removed) {
  Node fused = std::move(g.nodes[producer]);
  removed[producer] = true;
  fused.inputs.push_back(extra);
  fused.output = g.nodes[add_index].output;
  g.nodes[add_index] = std::move(fused);
  return g.nodes[add_index];
}

bool fuse_residual_add(Graph& g, const CompileOptions&) {
  const auto readers = g.readers();
  std::vector<bool> removed(g.nodes.size(), false);
  bool changed = false;
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    Node& add = g.nodes[i];
    if (add.kind != ops::OpKind::kAdd || removed[i]) continue;
    const Value& sum = g.values[add.output];
    for (int side = 0; side < 2; ++side) {
      const int op_out = add.inputs[side], residual = add.inputs[1 - side];
      const int producer = add_operand_producer(g, readers, removed, op_out, residual);
      if (producer < 0) continue;
      const Value& y = g.values[op_out];
      const Node& op = g.nodes[producer];
      if ((op.kind != ops::OpKind::kConv2d && op.kind != ops::OpKind::kLinear) || op.inputs.size() != 3 ||
          op.attrs.post_op != ops::PostOp::kNone || !will_prepack(g, op))
        continue;
      const Value& r = g.values[residual];
      if (r.shape != sum.shape || y.shape != sum.shape || r.dtype != DType::F32 || r.strides != sum.strides ||
          sum.strides != contiguous_strides(sum.shape))
        continue;
      const int sum_value = add.output;
      Node& fused = fold_into_add(g, i, producer, residual, removed);
      // A scale that only reads the sum joins the epilogue.
      const auto& sum_readers = readers[sum_value];
      if (!g.is_output(sum_value) && sum_readers.size() == 1 && g.nodes[sum_readers[0]].kind == ops::OpKind::kScale &&
          g.values[g.nodes[sum_readers[0]].output].strides == sum.strides) {
        const Node& sc = g.nodes[sum_readers[0]];
        fused.attrs.output_scale = sc.attrs.scale;
        fused.output = sc.output;
        removed[sum_readers[0]] = true;
        // The scale's place is after the add's; nothing between reads the (now unwritten) sum.
      }
      changed = true;
      break;
    }
  }
  if (changed) g.remove_nodes(removed);
  return changed;
}

}  // namespace taiyi::graph
