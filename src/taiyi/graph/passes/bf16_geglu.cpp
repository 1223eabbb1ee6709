// bf16 GEGLU: with --dtype bf16 where fuse_linear_gelu left the GEGLU whole (ops::geglu_bf16_preferred:
// AMX), its projection (a prepared linear read only by the GEGLU) writes bf16, and the GEGLU gets
// the prepared kernel that reads bf16 (ops::prepare_geglu_bf16); its output is bf16 too where only
// linears bound in bf16 read it as their input (the feed-forward's output linear, which would round
// it anyway). One more rounding than the f32 GEGLU (the projection's output, 2^-9, before the GELU),
// as PyTorch's bf16 has: the graph computes within bf16's error of what it did (bf16_geglu_test.cpp).
// A plain GELU left by fuse_linear_gelu (BERT's intermediate activation) gets the same kernel
// without the gate, the same way.
// TAIYI_GEGLU_KERNEL=0 keeps the split form (ops/prepared.h).
#include "taiyi/graph/passes/passes.h"
#include "taiyi/ops/prepared.h"

namespace taiyi::graph {

namespace {

// Whether every reader of v is a linear prepack_weights will bind, reading v only as its input.
bool read_only_as_linear_input(const Graph& g, int v, const std::vector<std::vector<int>>& readers) {
  if (readers[v].empty()) return false;
  for (int r : readers[v]) {
    const Node& n = g.nodes[r];
    if (n.kind != ops::OpKind::kLinear || n.inputs[0] != v || !will_prepack(g, n)) return false;
    for (size_t i = 1; i < n.inputs.size(); ++i)
      if (n.inputs[i] == v) return false;
  }
  return true;
}

}  // namespace

bool bf16_geglu(Graph& g, const CompileOptions& options) {
  if (options.compute != DType::BF16 || !ops::geglu_bf16_supported()) return false;
  const auto readers = g.readers();
  bool changed = false;
  for (Node& n : g.nodes) {
    const bool gated = n.kind == ops::OpKind::kGeglu;
    if (n.prepared || (!gated && n.kind != ops::OpKind::kGelu)) continue;
    const int x = n.inputs[0];
    const Node* projection = f32_value_producer(g, static_cast<size_t>(x), readers);
    const Value &xv = g.values[x], &y = g.values[n.output];
    if (!projection || projection->kind != ops::OpKind::kLinear || !will_prepack(g, *projection) ||
        projection->attrs.output_scale != 1.0f || projection->attrs.post_op != ops::PostOp::kNone ||
        readers[x].size() != 1 || (gated && xv.shape.back() % 2 != 0) || xv.strides != contiguous_strides(xv.shape) ||
        y.strides != contiguous_strides(y.shape))
      continue;
    g.values[x].dtype = DType::BF16;
    if (!g.is_output(n.output) && y.dtype == DType::F32 && read_only_as_linear_input(g, n.output, readers))
      g.values[n.output].dtype = DType::BF16;
    n.prepared = gated ? ops::prepare_geglu_bf16(xv.shape) : ops::prepare_gelu_bf16(xv.shape);
    changed = true;
  }
  return changed;
}

}  // namespace taiyi::graph
