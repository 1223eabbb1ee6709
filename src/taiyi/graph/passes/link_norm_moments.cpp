// The GroupNorm statistics of a convolution's prologue from the convolution that wrote its input:
// where a node with a GroupNorm+SiLU prologue (fuse_group_norm_conv) reads the output of a node
// whose prepared kernel can sum its output's per-channel moments as it writes it (the AMX Winograd
// kernel and the four-phase upsampling convolution, with a bf16 output), the two share an
// ops::ChannelMoments: the writer fills it on every run, the reader takes its statistics from it
// instead of reading the activation once more for them. In the VAE, 10 of the 12 prologues (at 128
// and 256 channels): each block's second convolution reads its first's output, each block's first
// the previous block's second or the upsampler's; the other two read a 1x1 shortcut of oneDNN's.
// The writer's sums cost 0.4-1.3 ms where the reader's pass took 1.7-3.4 (`/tmp` probe, bench/
// RESULTS.md stop 25). A writer feeds one reader (the first); the reader checks that the moments
// are of this run and of the memory it reads, and computes its own where not.
// TAIYI_LINK_NORM_MOMENTS=0 turns the pass off.
#include <memory>
#include <vector>

#include "taiyi/graph/passes/passes.h"
#include "taiyi/ops/op_call.h"
#include "taiyi/ops/prepared.h"

namespace taiyi::graph {

bool link_norm_moments(Graph& g, const CompileOptions&) {
  if (pass_turned_off("TAIYI_LINK_NORM_MOMENTS")) return false;
  std::vector<bool> writing(g.nodes.size(), false);
  bool changed = false;
  for (Node& n : g.nodes) {
    if (!n.prepared || !ops::has_norm_prologue(n.kind, n.attrs) || n.inputs.empty() || n.inputs[0] < 0) continue;
    const Value& x = g.values[n.inputs[0]];
    if (x.kind != ValueKind::kNode || x.producer < 0) continue;
    const auto p = static_cast<size_t>(x.producer);
    if (writing[p] || !g.nodes[p].prepared) continue;
    const auto moments = std::make_shared<ops::ChannelMoments>();
    if (!n.prepared->read_moments(moments)) continue;
    if (!g.nodes[p].prepared->write_moments(moments)) {
      n.prepared->read_moments(nullptr);
      continue;
    }
    writing[p] = true;
    changed = true;
  }
  return changed;
}

}  // namespace taiyi::graph
