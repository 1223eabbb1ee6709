// bf16 attention: with --dtype bf16, each attention node gets the prepared kernel whose two matrix
// products run in bf16 through oneDNN (AMX or avx512_bf16), ops/cpu/attention_prepared_dnnl.cpp.
// Without bf16 in the CPU, attention stays the f32 flash kernel, or, under TAIYI_BF16_EMULATE=1,
// the same prepared kernel on bf16-rounded f32 (as prepack_weights does for conv and linear).
#include "taiyi/graph/passes/passes.h"
#include "taiyi/ops/prepared.h"

namespace taiyi::graph {

bool bf16_attention_binds(const Graph& g, const Node& n) {
  if (n.kind != ops::OpKind::kAttention) return false;
  const Value &q = g.values[n.inputs[0]], &k = g.values[n.inputs[1]], &v = g.values[n.inputs[2]];
  return q.dtype == DType::F32 && k.dtype == DType::F32 && v.dtype == DType::F32 &&
         ops::prepared_attention_applicable(q.shape, k.shape, v.shape, n.attrs.heads);
}

bool bf16_attention(Graph& g, const CompileOptions& options) {
  if (options.compute != DType::BF16) return false;
  ops::Bf16Arithmetic how;
  if (ops::bf16_supported()) {
    how = ops::Bf16Arithmetic::kNative;
  } else if (bf16_emulation_requested()) {
    how = ops::Bf16Arithmetic::kEmulated;
  } else {
    return false;
  }
  bool changed = false;
  for (Node& n : g.nodes) {
    if (n.prepared || !bf16_attention_binds(g, n)) continue;
    const Value &q = g.values[n.inputs[0]], &k = g.values[n.inputs[1]], &v = g.values[n.inputs[2]];
    n.prepared = ops::prepare_attention_bf16(q.shape, k.shape, v.shape, n.attrs.heads, n.attrs.scale, how);
    changed = true;
  }
  return changed;
}

}  // namespace taiyi::graph
