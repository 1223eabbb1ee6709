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
  if (!ops::prepared_attention_applicable(q.shape, k.shape, v.shape, n.attrs.heads)) return false;
  // Inputs f32, or bf16 where bf16_inputs made them so for a kernel that reads them (q and k share the head size).
  for (const Value* x : {&q, &k, &v})
    if (x->dtype != DType::F32 && !(x->dtype == DType::BF16 && attention_reads_bf16(n, *x))) return false;
  return true;
}

bool attention_reads_bf16(const Node& n, const Value& x) {
  return n.kind == ops::OpKind::kAttention && n.attrs.heads > 0 && x.shape.size() == 3 &&
         x.shape[2] % n.attrs.heads == 0 &&
         ops::attention_bf16_reads_bf16(n.attrs.scale, x.shape[2] / n.attrs.heads, x.strides[2]);
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
