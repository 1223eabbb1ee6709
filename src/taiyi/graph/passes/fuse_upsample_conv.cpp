// conv2d(upsample_nearest(x) to twice x's size), the upsamplers of the UNet and the VAE, -> one
// conv2d of x itself with Conv2dParams upsample 2, where ops::conv2d_fuses_upsample says its
// kernel is the better one (bf16 on oneDNN's AMX path: four 2x2 convolutions of summed taps, 2.25x
// fewer products, ops/cpu/conv2d_upsample_dnnl.cpp). The upsampled activation (4x the input) is
// never written. Only for a convolution prepack_weights will bind with nothing fused into it but
// its bias, reading an upsample that nothing else reads. The summed taps are rounded to bf16 once
// each: the graph computes within bf16's error of what it did.
#include <vector>

#include "taiyi/graph/passes/passes.h"
#include "taiyi/ops/prepared.h"

namespace taiyi::graph {

bool fold_input_producers(Graph& g, const CompileOptions& options, ops::OpKind kind,
                          const std::function<bool(Node& conv, const Node& producer, DType compute)>& fold) {
  const DType compute = prepared_compute(options);
  if (compute != DType::BF16) return false;
  const auto readers = g.readers();
  std::vector<bool> removed(g.nodes.size(), false);
  bool changed = false;
  for (Node& n : g.nodes) {
    if (n.kind != ops::OpKind::kConv2d || !will_prepack(g, n)) continue;
    const int v = n.inputs[0];
    const Value& val = g.values[v];
    if (val.kind != ValueKind::kNode || val.producer < 0 || g.is_output(v) || readers[v].size() != 1) continue;
    const Node& p = g.nodes[val.producer];
    if (p.kind != kind || p.output != v || !fold(n, p, compute)) continue;
    removed[static_cast<size_t>(val.producer)] = true;
    changed = true;
  }
  if (changed) g.remove_nodes(removed);
  return changed;
}

bool fuse_upsample_conv(Graph& g, const CompileOptions& options) {
  return fold_input_producers(g, options, ops::OpKind::kUpsampleNearest, [&](Node& n, const Node& un, DType compute) {
    if (n.inputs.size() != 3 || n.attrs.output_scale != 1.0f || n.attrs.post_op != ops::PostOp::kNone) return false;
    const Value& u = g.values[n.inputs[0]];
    const Value& x = g.values[un.inputs[0]];
    if (x.shape.size() != 4 || x.dtype != DType::F32 || u.shape[2] != 2 * x.shape[2] || u.shape[3] != 2 * x.shape[3])
      return false;
    if (!ops::conv2d_fuses_upsample(u.shape, g.values[n.inputs[1]].constant, n.attrs.conv, compute)) return false;
    n.inputs[0] = un.inputs[0];
    n.attrs.conv.upsample = 2;
    return true;
  });
}

}  // namespace taiyi::graph
