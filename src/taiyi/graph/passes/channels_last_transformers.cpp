// Channels-last around the transformer blocks. The model code (diffusers' Transformer2DModel)
// does proj_in (1x1 conv) -> permute(0, 2, 3, 1) -> reshape [B, H*W, C] ... blocks ...
// reshape [B, H, W, C] -> permute(0, 3, 1, 2) -> contiguous -> proj_out (1x1 conv), and the
// reshape and contiguous each copy the whole activation through a transpose. With the
// convolution writing (and reading) NHWC memory instead, both become views: oneDNN does the
// layout change inside the reorder it runs anyway.
#include <vector>

#include "taiyi/graph/passes/passes.h"

namespace taiyi::graph {

namespace {

const std::vector<int> kToNhwc = {0, 2, 3, 1};

Strides permuted(const Strides& s, const std::vector<int>& dims) {
  Strides out(dims.size());
  for (size_t i = 0; i < dims.size(); ++i) out[i] = s[dims[i]];
  return out;
}

}  // namespace

bool channels_last_transformers(Graph& g, const CompileOptions&) {
  bool changed = false;
  auto readers = g.readers();
  // (a) conv -> permute(0, 2, 3, 1): the convolution writes NHWC; the permute is then contiguous.
  for (Node& n : g.nodes) {
    if (n.kind != ops::OpKind::kConv2d || !will_prepack(g, n) || g.is_output(n.output)) continue;
    const auto& rs = readers[n.output];
    if (rs.size() != 1) continue;
    Node& p = g.nodes[rs[0]];
    if (p.kind != ops::OpKind::kPermute || p.attrs.dims != kToNhwc) continue;
    Value& out = g.values[n.output];
    out.strides = ops::layout_strides(out.shape, ops::Layout::kNHWC);
    g.values[p.output].strides = permuted(out.strides, kToNhwc);  // now contiguous
    changed = true;
  }
  // (b) contiguous(x) with x a channels-last view, read only by convolutions: they read x.
  std::vector<bool> removed(g.nodes.size(), false);
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    Node& c = g.nodes[i];
    if (c.kind != ops::OpKind::kContiguous || g.is_output(c.output)) continue;
    const Value& x = g.values[c.inputs[0]];
    if (x.shape.size() != 4 || x.strides != ops::layout_strides(x.shape, ops::Layout::kNHWC)) continue;
    const auto& rs = readers[c.output];
    bool all_convs = !rs.empty();
    for (int r : rs) {
      const Node& reader = g.nodes[r];
      all_convs = all_convs && reader.kind == ops::OpKind::kConv2d && reader.inputs[0] == c.output &&
                  reader.inputs[1] != c.output && reader.inputs[2] != c.output;
    }
    if (!all_convs) continue;
    for (int r : rs) {
      g.nodes[r].inputs[0] = c.inputs[0];
      if (!will_prepack(g, g.nodes[r])) {  // cannot read it after all: undo
        g.nodes[r].inputs[0] = c.output;
        all_convs = false;
      }
    }
    if (!all_convs) continue;
    removed[i] = true;
    changed = true;
  }
  if (changed) g.remove_nodes(removed);
  return changed;
}

}  // namespace taiyi::graph
