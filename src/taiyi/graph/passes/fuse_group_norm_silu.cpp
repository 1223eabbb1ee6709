// GroupNorm + SiLU: a group_norm whose only reader is a silu becomes one group_norm_silu
// node (ops::group_norm_silu), which applies the SiLU while it writes the normalised
// values: one pass over the activation instead of two, and one buffer fewer. Every
// ResnetBlock2D of the UNet and the VAE opens with this pair, twice.
#include <vector>

#include "taiyi/graph/passes/passes.h"

namespace taiyi::graph {

bool fuse_group_norm_silu(Graph& g, const CompileOptions&) {
  const auto readers = g.readers();
  std::vector<bool> removed(g.nodes.size(), false);
  bool changed = false;
  for (Node& n : g.nodes) {
    if (n.kind != ops::OpKind::kGroupNorm || g.is_output(n.output)) continue;
    const auto& rs = readers[n.output];
    if (rs.size() != 1 || g.nodes[rs[0]].kind != ops::OpKind::kSilu) continue;
    const Node& silu = g.nodes[rs[0]];
    if (g.values[silu.output].strides != g.values[n.output].strides) continue;
    n.kind = ops::OpKind::kGroupNormSilu;
    n.output = silu.output;  // written earlier than before: its readers all come after the silu
    removed[rs[0]] = true;
    changed = true;
  }
  if (changed) g.remove_nodes(removed);
  return changed;
}

}  // namespace taiyi::graph
