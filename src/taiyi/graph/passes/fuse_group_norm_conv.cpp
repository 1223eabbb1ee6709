// GroupNorm+SiLU into the convolution after it: conv2d(group_norm_silu(x)) -> one conv2d of x with
// a GroupNorm+SiLU prologue (ops::Prologue; OpAttrs groups and eps, gamma and beta its 5th and 6th
// inputs), where ops::conv2d_takes_group_norm_silu says its kernel takes one: the AMX Winograd
// kernel, which maps each value through the normalisation as its input transform loads it. The
// normalised activation (read by nothing else) is never written: at the VAE's [1, 128, 512, 512]
// 64 MiB in bf16, written by the GroupNorm and read back by the convolution. Every ResnetBlock2D
// of the VAE's 128- and 256-channel levels opens each of its two convolutions with this pair.
// The kernel takes the statistics in one pass as the GroupNorm did and rounds the normalised value
// only inside V's bf16 rounding: the graph computes within bf16's error of what it did.
#include <vector>

#include "taiyi/graph/passes/passes.h"
#include "taiyi/ops/prepared.h"

namespace taiyi::graph {

bool fuse_group_norm_conv(Graph& g, const CompileOptions& options) {
  const DType compute = prepared_compute(options);
  if (compute != DType::BF16) return false;
  const auto readers = g.readers();
  std::vector<bool> removed(g.nodes.size(), false);
  bool changed = false;
  for (Node& n : g.nodes) {
    if (n.kind != ops::OpKind::kConv2d || n.attrs.groups > 0 || n.attrs.conv.upsample != 1 || !will_prepack(g, n))
      continue;
    const int y = n.inputs[0];
    const Value& yv = g.values[y];
    if (yv.kind != ValueKind::kNode || yv.producer < 0 || g.is_output(y) || readers[y].size() != 1) continue;
    const Node& gn = g.nodes[yv.producer];
    if (gn.kind != ops::OpKind::kGroupNormSilu || gn.output != y) continue;
    const Value& x = g.values[gn.inputs[0]];
    const auto constant_or_absent = [&](size_t i) {
      return i >= gn.inputs.size() || gn.inputs[i] < 0 || g.values[gn.inputs[i]].kind == ValueKind::kConstant;
    };
    if (x.shape != yv.shape || value_layout(x) != ops::Layout::kNHWC || !is_dense(x) || !constant_or_absent(1) ||
        !constant_or_absent(2))
      continue;
    if (!ops::conv2d_takes_group_norm_silu(x.shape, g.values[n.inputs[1]].constant, n.attrs.conv, compute,
                                           ops::Layout::kNHWC, value_layout(g.values[n.output]), node_epilogue(g, n),
                                           x.dtype, gn.attrs.groups))
      continue;
    n.inputs[0] = gn.inputs[0];
    n.inputs.resize(4, -1);  // no 4th input: absent
    n.inputs.push_back(gn.inputs.size() > 1 ? gn.inputs[1] : -1);
    n.inputs.push_back(gn.inputs.size() > 2 ? gn.inputs[2] : -1);
    n.attrs.groups = gn.attrs.groups;
    n.attrs.eps = gn.attrs.eps;
    removed[static_cast<size_t>(yv.producer)] = true;
    changed = true;
  }
  if (changed) g.remove_nodes(removed);
  return changed;
}

}  // namespace taiyi::graph
