// After prepack_weights: a bf16 AMX linear whose output only another AMX linear in its K-block
// mode reads (BERT's intermediate dense and its output dense) writes that output in 32-row blocks
// of A tiles (ops::PreparedOp::write_tiles), and the reader takes its A tiles from it in place
// (read_tiles) instead of copying each K block of its input rows into tiles first: that copy was
// 13% of the output dense's time (bench/RESULTS.md, stop 26). The value keeps its shape and size;
// only these two ops ever see its bytes, in the tiled order. TAIYI_LINK_LINEAR_TILES=0 turns it off.
#include "taiyi/graph/passes/passes.h"
#include "taiyi/ops/op_call.h"
#include "taiyi/ops/prepared.h"

namespace taiyi::graph {

bool link_linear_tiles(Graph& g, const CompileOptions&) {
  if (pass_turned_off("TAIYI_LINK_LINEAR_TILES")) return false;
  const auto readers = g.readers();
  bool changed = false;
  for (Node& n : g.nodes) {
    if (n.kind != ops::OpKind::kLinear || !n.prepared || n.inputs.empty() || n.inputs[0] < 0) continue;
    const int v = n.inputs[0];
    const Value& x = g.values[v];
    if (x.kind != ValueKind::kNode || x.producer < 0 || g.is_output(v)) continue;
    Node& p = g.nodes[static_cast<size_t>(x.producer)];
    // the producer's output, read by this linear alone and as its input alone
    if (p.kind != ops::OpKind::kLinear || !p.prepared || p.output != v || readers[v].size() != 1) continue;
    bool other_use = false;
    for (size_t i = 1; i < n.inputs.size(); ++i) other_use = other_use || n.inputs[i] == v;
    if (other_use || x.strides != contiguous_strides(x.shape)) continue;
    if (!n.prepared->read_tiles(true)) continue;
    if (!p.prepared->write_tiles(true)) {
      n.prepared->read_tiles(false);
      continue;
    }
    changed = true;
  }
  return changed;
}

}  // namespace taiyi::graph
