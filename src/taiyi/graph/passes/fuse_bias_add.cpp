// Per-channel add into the convolution before it: add(conv2d(x), t) where t holds one value per
// output channel, the same for every batch item and position (the ResnetBlock2D's time embedding,
// [1, C, 1, 1] when the UNet is called with one timestep, as every sampler does) -> the
// convolution with t added to its bias on every call (oneDNN takes the bias per call). The add's
// pass over the activation (read and write, 21 MB at [2, 320, 64, 64]) goes.
//
// The fused node reads t as a 4th input (ops::PostOp::kBiasAdd) and takes the add's place in the
// order, since t may be computed after the convolution (diffusers projects the embedding after
// conv1). Only convolutions prepack_weights will bind to oneDNN (ops::conv2d_takes_bias_add) are
// fused; a time embedding per batch item stays an add.
#include <vector>

#include "taiyi/graph/passes/passes.h"
#include "taiyi/ops/prepared.h"

namespace taiyi::graph {

namespace {

// Whether value t broadcasts over the output [N, C, H, W] as one value per channel.
bool per_channel(const Value& t, const Shape& out) {
  if (t.dtype != DType::F32 || out.size() != 4 || t.shape.size() > 4 || shape_numel(t.shape) != out[1]) return false;
  Shape padded(4 - t.shape.size(), 1);
  padded.insert(padded.end(), t.shape.begin(), t.shape.end());
  return padded[0] == 1 && padded[1] == out[1] && padded[2] == 1 && padded[3] == 1;
}

}  // namespace

bool fuse_bias_add(Graph& g, const CompileOptions& options) {
  const auto readers = g.readers();
  std::vector<bool> removed(g.nodes.size(), false);
  bool changed = false;
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    Node& add = g.nodes[i];
    if (add.kind != ops::OpKind::kAdd) continue;
    const Value& sum = g.values[add.output];
    for (int side = 0; side < 2; ++side) {
      const int conv_out = add.inputs[side], t = add.inputs[1 - side];
      const int producer = add_operand_producer(g, readers, removed, conv_out, t);
      if (producer < 0) continue;
      const Value& y = g.values[conv_out];
      const Node& conv = g.nodes[producer];
      if (conv.kind != ops::OpKind::kConv2d || conv.inputs.size() != 3 || conv.attrs.post_op != ops::PostOp::kNone ||
          conv.attrs.output_scale != 1.0f || !will_prepack(g, conv) || y.shape != sum.shape ||
          !per_channel(g.values[t], sum.shape))
        continue;
      const Value& x = g.values[conv.inputs[0]];
      if (!ops::conv2d_takes_bias_add(x.shape, g.values[conv.inputs[1]].constant, conv.attrs.conv,
                                      prepared_compute(options), value_layout(x), value_layout(y)))
        continue;
      fold_into_add(g, i, producer, t, removed).attrs.post_op = ops::PostOp::kBiasAdd;
      changed = true;
      break;
    }
  }
  if (changed) g.remove_nodes(removed);
  return changed;
}

}  // namespace taiyi::graph
