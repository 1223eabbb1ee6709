// GELU and GEGLU into the linear before them, as oneDNN post-ops of its prepared matmul:
//   gelu(linear(x, w, b))        -> one linear with post-op gelu (BERT's intermediate dense);
//   geglu(linear(x, w, b))       -> gate = linear(x, w[N:2N], b[N:2N]) with post-op gelu, then
//                                   linear(x, w[0:N], b[0:N]) with post-op "times gate"
// (diffusers' GEGLU: hidden, gate = proj(x).chunk(2, -1); hidden * gelu(gate)). The GEGLU split
// saves the [.., 2N] intermediate and the separate pass over it: the gate is written once and read
// once by the second matmul's epilogue. Both halves of w are row ranges of the checkpoint's [2N, K]
// weight, so views, no copies. Only linears prepack_weights will bind (their prepared kernels run
// the post-ops), whose output nothing else reads, with no fused residual or scale.
// In bf16 where ops::geglu_bf16_preferred() (AMX) a GEGLU of 2048 rows or more is not split: the
// whole projection writes bf16 and a kernel of ours computes the GEGLU (bf16_geglu.cpp). Measured
// in the UNet step (per 64x64 block): the halves with post-ops 13.5 ms, the whole projection 9.8
// plus the kernel 2.6; at 32x32 10.1 against 9.8; at 16x16 (512 rows) the N = 10240 projection
// alone took longer than both halves (10.4 against 10.1). A plain GELU stays too (the same kernel,
// without the gate): BERT's [1024, 768] x [768, 3072], 12 a text encoder, 41.8 ms with the gelu post-op,
// 32.1 plain (bf16 out) + 6.9 for the kernel.
// TAIYI_FUSE_GELU=0 turns the pass off (A/B runs).
#include <vector>

#include "taiyi/graph/passes/passes.h"
#include "taiyi/ops/prepared.h"

namespace taiyi::graph {

namespace {

// A constant value holding rows [start, end) of a constant's dim 0.
int constant_rows(Graph& g, int v, int64_t start, int64_t end) {
  Value c;
  c.kind = ValueKind::kConstant;
  c.constant = g.values[v].constant.slice(0, start, end);
  c.shape = c.constant.shape();
  c.strides = c.constant.strides();
  c.dtype = c.constant.dtype();
  return g.add_value(std::move(c));
}

}  // namespace

bool fuse_linear_gelu(Graph& g, const CompileOptions& options) {
  if (pass_turned_off("TAIYI_FUSE_GELU")) return false;
  // In bf16 on AMX the GEGLU and the GELU stay: the linear writes bf16 and our kernel follows (bf16_geglu).
  const bool keep_geglu = prepared_compute(options) == DType::BF16 && ops::geglu_bf16_preferred();
  const auto readers = g.readers();
  std::vector<bool> removed(g.nodes.size(), false);
  bool changed = false;
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    if (g.nodes[i].kind != ops::OpKind::kLinear) continue;
    const Node& lin = g.nodes[i];
    if (lin.inputs.size() != 3 || lin.attrs.post_op != ops::PostOp::kNone || lin.attrs.output_scale != 1.0f ||
        !will_prepack(g, lin))
      continue;
    const int y = lin.output;
    if (g.is_output(y) || readers[y].size() != 1) continue;
    const int reader = readers[y][0];
    const ops::OpKind kind = g.nodes[reader].kind;
    if (kind != ops::OpKind::kGelu && kind != ops::OpKind::kGeglu) continue;
    // (any rows: measured at BERT's 1024; unless our AMX linear computes the GELU in its epilogue)
    if (kind == ops::OpKind::kGelu && keep_geglu &&
        !ops::linear_gelu_in_epilogue_bf16(g.values[lin.inputs[0]].shape, g.values[lin.inputs[1]].constant,
                                           lin.inputs[2] >= 0 ? g.values[lin.inputs[2]].constant : Tensor()))
      continue;
    // (from 2048 rows: below, the whole projection with N = 2 x 5120 runs slower than its halves)
    if (kind == ops::OpKind::kGeglu && keep_geglu && shape_numel(g.values[y].shape) / g.values[y].shape.back() >= 2048)
      continue;
    const int out = g.nodes[reader].output;
    if (g.values[out].strides != contiguous_strides(g.values[out].shape)) continue;
    if (kind == ops::OpKind::kGelu) {
      g.nodes[i].attrs.post_op = ops::PostOp::kGelu;
      g.nodes[i].output = out;  // defined earlier than before; nothing between read it
      g.values[out].producer = static_cast<int>(i);
      removed[reader] = true;
    } else {
      const int64_t n = g.values[out].shape.back();
      const int w = lin.inputs[1], b = lin.inputs[2], x = lin.inputs[0];
      const int w_value = constant_rows(g, w, 0, n), w_gate = constant_rows(g, w, n, 2 * n);
      const int b_value = b >= 0 ? constant_rows(g, b, 0, n) : -1, b_gate = b >= 0 ? constant_rows(g, b, n, 2 * n) : -1;
      Value gate_value;
      gate_value.shape = g.values[out].shape;
      gate_value.strides = g.values[out].strides;
      gate_value.producer = static_cast<int>(i);
      const int gate = g.add_value(std::move(gate_value));
      Node& gate_node = g.nodes[i];  // the linear's place: the gate
      gate_node.inputs = {x, w_gate, b_gate};
      gate_node.attrs.post_op = ops::PostOp::kGelu;
      gate_node.output = gate;
      Node& value_node = g.nodes[reader];  // the GEGLU's place: value half times the gate
      value_node.kind = ops::OpKind::kLinear;
      value_node.inputs = {x, w_value, b_value, gate};
      value_node.attrs = ops::OpAttrs{};
      value_node.attrs.post_op = ops::PostOp::kMultiply;
      // `out` keeps its producer, the GEGLU's node.
    }
    changed = true;
  }
  if (changed) g.remove_nodes(removed);
  return changed;
}

}  // namespace taiyi::graph
