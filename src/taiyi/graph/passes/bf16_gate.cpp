// The GEGLU's gate in bf16: with --dtype bf16, fuse_linear_gelu leaves the feed-forward as a gate
// linear (post-op gelu) whose f32 output the value linear's epilogue multiplies by. At the UNet's
// 64x64 level that gate is [2, 4096, 1280]: 42 MB written and read back per block, in DRAM. Here a
// gate read only as the multiply post-op's factor of bf16 linears is written in bf16 (oneDNN
// rounds it, nearest even, as it stores it) and read so: half the bytes both ways. Unlike
// bf16_inputs this rounds a value that was f32 before: the gate gelu(x w_g + b_g) gets one bf16
// rounding (relative error at most 2^-9) before the product, whose own output is rounded to bf16
// for the next linear anyway (bf16_inputs). The peers round it too: PyTorch's bf16 model computes
// the whole feed-forward in bf16. Needs bf16 the CPU runs. TAIYI_BF16_GATE=0 turns it off (A/B).
#include "taiyi/graph/passes/passes.h"

namespace taiyi::graph {

namespace {

// A linear prepack_weights will bind whose post-op multiplies by v (its 4th input), and that reads
// v only so.
bool multiplies_by(const Graph& g, const Node& n, int v) {
  if (n.kind != ops::OpKind::kLinear || n.attrs.post_op != ops::PostOp::kMultiply || n.inputs.size() != 4 ||
      n.inputs[3] != v || !will_prepack(g, n))
    return false;
  for (size_t i = 0; i < 3; ++i)
    if (n.inputs[i] == v) return false;
  return true;
}

}  // namespace

bool bf16_gate(Graph& g, const CompileOptions& options) {
  if (pass_turned_off("TAIYI_BF16_GATE")) return false;
  if (prepared_compute(options) != DType::BF16) return false;
  const auto readers = g.readers();
  bool changed = false;
  for (size_t v = 0; v < g.values.size(); ++v) {
    const Node* p = f32_value_producer(g, v, readers);
    if (!p || p->kind != ops::OpKind::kLinear || p->attrs.post_op != ops::PostOp::kGelu ||
        ops::has_fused_residual(p->attrs, p->inputs) || p->attrs.output_scale != 1.0f || !will_prepack(g, *p))
      continue;
    bool all = true;
    for (int r : readers[v]) all = all && multiplies_by(g, g.nodes[r], static_cast<int>(v));
    if (!all) continue;
    g.values[v].dtype = DType::BF16;
    changed = true;
  }
  return changed;
}

}  // namespace taiyi::graph
