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
  return fold_input_producers(g, options, ops::OpKind::kGroupNormSilu, [&](Node& n, const Node& gn, DType compute) {
    if (n.attrs.groups > 0 || n.attrs.conv.upsample != 1) return false;
    const Value& y = g.values[n.inputs[0]];
    const Value& x = g.values[gn.inputs[0]];
    const auto constant_or_absent = [&](size_t i) {
      return i >= gn.inputs.size() || gn.inputs[i] < 0 || g.values[gn.inputs[i]].kind == ValueKind::kConstant;
    };
    if (x.shape != y.shape || value_layout(x) != ops::Layout::kNHWC || !is_dense(x) || !constant_or_absent(1) ||
        !constant_or_absent(2))
      return false;
    if (!ops::conv2d_takes_group_norm_silu(x.shape, g.values[n.inputs[1]].constant, n.attrs.conv, compute,
                                           ops::Layout::kNHWC, value_layout(g.values[n.output]), node_epilogue(g, n),
                                           x.dtype, gn.attrs.groups))
      return false;
    n.inputs[0] = gn.inputs[0];
    n.inputs.resize(4, -1);  // no 4th input: absent
    n.inputs.push_back(gn.inputs.size() > 1 ? gn.inputs[1] : -1);
    n.inputs.push_back(gn.inputs.size() > 2 ? gn.inputs[2] : -1);
    n.attrs.groups = gn.attrs.groups;
    n.attrs.eps = gn.attrs.eps;
    return true;
  });
}

}  // namespace taiyi::graph
