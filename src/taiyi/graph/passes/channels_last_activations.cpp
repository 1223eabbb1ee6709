// Channels-last activations: the 4-D activations between convolutions (the ResNet blocks' GroupNorm,
// SiLU, time-embedding add, the skip concats, the upsamplers) are laid out NHWC, so that a
// convolution reads and writes the layout oneDNN's bf16 and AMX kernels work in, and the NCHW <->
// NHWC transposes around every convolution go (on AMX they cost more than the convolution
// itself: 3.8 ms of a 7.9 ms 3x3 convolution at [2, 320, 64, 64]).
//
// Values are grouped by the ops that must see one layout on both sides (group_norm, add,
// concat over channels, upsample_nearest: their kernels read and write NHWC, ops.cpp). A group
// becomes channels-last when every value in it is a dense 4-D f32 node output (not a graph
// output), made by such an op or a convolution prepack_weights binds, and read only by such ops
// or as such a convolution's input or fused residual. Graph inputs and outputs keep NCHW; so does
// anything a view (permute, reshape) or another op reads, with two exceptions, the VAE's
// mid-block attention: a GroupNorm output flattened to tokens, reshape [B, C, H W] then
// permute(0, 2, 1), which over NHWC memory becomes permute(0, 2, 3, 1) then reshape [B, H W, C]
// (both views, the tokens contiguous); and the attention's output seen back as [B, C, H, W], a
// permute of a [B, H, W, C] reshape, channels-last already. TAIYI_CHANNELS_LAST=0 turns the pass
// off (A/B runs).
#include <numeric>
#include <vector>

#include "taiyi/graph/passes/passes.h"

namespace taiyi::graph {

namespace {

bool same_layout_op(ops::OpKind k) {
  return k == ops::OpKind::kGroupNorm || k == ops::OpKind::kGroupNormSilu || k == ops::OpKind::kAdd ||
         k == ops::OpKind::kConcat || k == ops::OpKind::kUpsampleNearest;
}

// Whether node n reads or writes 4-D values in either layout (its kernel takes NHWC, and for a
// convolution also runs fastest on it).
bool takes_channels_last(const Graph& g, const Node& n, const CompileOptions& options) {
  if (n.kind == ops::OpKind::kConv2d)
    return will_prepack(g, n) &&
           ops::conv2d_prefers_channels_last(g.values[n.inputs[0]].shape, g.values[n.inputs[1]].constant, n.attrs.conv,
                                             prepared_compute(options));  // (f32 where the CPU runs no bf16)
  if (n.kind == ops::OpKind::kConcat) return n.attrs.dim == 1;
  return same_layout_op(n.kind);
}

// The reshape node that flattens v [B, C, H, W] to [B, C, H W] for a permute(0, 2, 1) (to
// [B, H W, C] tokens) that alone reads it: its index, or -1.
int token_flattening(const Graph& g, const std::vector<std::vector<int>>& readers, int r, int v) {
  const Node& n = g.nodes[r];
  const Shape& s = g.values[v].shape;
  if (n.kind != ops::OpKind::kReshape || n.inputs[0] != v || s.size() != 4 ||
      n.attrs.shape != Shape{s[0], s[1], s[2] * s[3]} || g.is_output(n.output) || readers[n.output].size() != 1)
    return -1;
  const Node& p = g.nodes[readers[n.output][0]];
  return p.kind == ops::OpKind::kPermute && p.attrs.dims == std::vector<int>{0, 2, 1} ? r : -1;
}

// Whether v is a view that is channels-last already: a permute(0, 3, 1, 2) of [B, H, W, C] memory.
bool channels_last_view(const Graph& g, int v) {
  const Value& x = g.values[v];
  if (x.kind != ValueKind::kNode || x.producer < 0 || x.producer >= static_cast<int>(g.nodes.size())) return false;
  const Node& p = g.nodes[x.producer];
  return p.output == v && p.kind == ops::OpKind::kPermute && x.shape.size() == 4 &&
         x.strides == ops::layout_strides(x.shape, ops::Layout::kNHWC);
}

struct Groups {
  std::vector<int> parent;
  explicit Groups(size_t n) : parent(n) { std::iota(parent.begin(), parent.end(), 0); }
  int find(int v) { return parent[v] == v ? v : parent[v] = find(parent[v]); }
  void unite(int a, int b) { parent[find(a)] = find(b); }
};

}  // namespace

bool channels_last_activations(Graph& g, const CompileOptions& options) {
  if (pass_turned_off("TAIYI_CHANNELS_LAST")) return false;
  const auto readers = g.readers();
  const int nv = static_cast<int>(g.values.size());
  const auto candidate = [&](int v) {
    const Value& x = g.values[v];
    if (x.kind != ValueKind::kNode || x.shape.size() != 4 || x.dtype != DType::F32 || g.is_output(v)) return false;
    // (values of nodes an earlier pass removed have no producer any more)
    if (x.producer < 0 || x.producer >= static_cast<int>(g.nodes.size()) || g.nodes[x.producer].output != v)
      return false;
    if (x.shape[2] * x.shape[3] <= 1) return false;  // both layouts are the same memory
    if (!is_dense(x) || (!takes_channels_last(g, g.nodes[x.producer], options) && !channels_last_view(g, v)))
      return false;
    for (int r : readers[v]) {
      const Node& n = g.nodes[r];
      if (token_flattening(g, readers, r, v) >= 0) continue;
      if (!takes_channels_last(g, n, options)) return false;
      // A convolution reads it as its input or fused residual, never as weights.
      if (n.kind == ops::OpKind::kConv2d && (n.inputs[1] == v || n.inputs[2] == v)) return false;
    }
    return true;
  };
  Groups groups(static_cast<size_t>(nv));
  for (const Node& n : g.nodes) {
    const Shape& out = g.values[n.output].shape;
    if (same_layout_op(n.kind)) {
      for (size_t i = 0; i < n.inputs.size(); ++i) {
        const int v = n.inputs[i];
        // gamma and beta of a norm, a broadcast operand of add: no layout to share.
        if (v < 0 || g.values[v].shape != out ||
            ((n.kind == ops::OpKind::kGroupNorm || n.kind == ops::OpKind::kGroupNormSilu) && i > 0))
          continue;
        groups.unite(v, n.output);
      }
      // (concat's inputs and upsample's input differ from the output in shape, not in layout)
      if (n.kind == ops::OpKind::kConcat || n.kind == ops::OpKind::kUpsampleNearest)
        for (int v : n.inputs) groups.unite(v, n.output);
    }
    // A fused residual is copied into (or is) the convolution's output: keep them alike.
    if (n.kind == ops::OpKind::kConv2d && ops::has_fused_residual(n.attrs, n.inputs))
      groups.unite(n.inputs[3], n.output);
  }
  std::vector<bool> ok(static_cast<size_t>(nv), true);
  for (int v = 0; v < nv; ++v)
    if (!candidate(v)) ok[groups.find(v)] = false;
  bool changed = false;
  for (int v = 0; v < nv; ++v) {
    Value& x = g.values[v];
    if (!ok[groups.find(v)] || x.strides == ops::layout_strides(x.shape, ops::Layout::kNHWC)) continue;
    x.strides = ops::layout_strides(x.shape, ops::Layout::kNHWC);
    changed = true;
    // Its flattening to tokens: permute(0, 2, 3, 1) to [B, H, W, C] (contiguous), then the reshape.
    for (int r : readers[v]) {
      if (token_flattening(g, readers, r, v) < 0) continue;
      Node& flat = g.nodes[r];
      Node& perm = g.nodes[readers[flat.output][0]];
      const Shape nhwc = {x.shape[0], x.shape[2], x.shape[3], x.shape[1]};
      flat.kind = ops::OpKind::kPermute;
      flat.attrs.dims = {0, 2, 3, 1};
      g.values[flat.output].shape = nhwc;
      g.values[flat.output].strides = contiguous_strides(nhwc);
      perm.kind = ops::OpKind::kReshape;
      perm.attrs.shape = g.values[perm.output].shape;  // [B, H W, C], now contiguous
      g.values[perm.output].strides = contiguous_strides(perm.attrs.shape);
    }
  }
  return changed;
}

}  // namespace taiyi::graph
