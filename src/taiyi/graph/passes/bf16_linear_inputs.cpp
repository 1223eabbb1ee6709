// bf16 inputs of bf16 linears: with --dtype bf16, every prepared linear rounds its f32 input to
// bf16 before oneDNN's matmul, one more pass over memory per linear (and three over the same
// LayerNorm output for q, k and v). Where a value is read only by such linears (as their input,
// not a residual or a multiply post-op's factor) and is written by a LayerNorm or by a prepared
// linear without a residual (the feed-forward's gated value), this pass makes the value bf16:
// the LayerNorm and the linear round it as they write it, and the readers take it as it is. The
// rounding is the same one (nearest even), so the graph computes exactly what it did before.
// Needs bf16 the CPU runs (not the f32 fallback or its emulation). TAIYI_BF16_INPUTS=0 turns the
// pass off (A/B runs).
#include <cstdlib>
#include <string>

#include "taiyi/graph/passes/passes.h"
#include "taiyi/ops/op_call.h"

namespace taiyi::graph {

namespace {

// A linear prepack_weights will bind in bf16 that reads value v as its input (only).
bool bf16_linear_reads(const Graph& g, const Node& n, int v) {
  if (n.kind != ops::OpKind::kLinear || n.inputs[0] != v || !will_prepack(g, n)) return false;
  for (size_t i = 1; i < n.inputs.size(); ++i)
    if (n.inputs[i] == v) return false;  // also its weights, bias, residual or factor
  return true;
}

bool writes_bf16(const Graph& g, const Node& n) {
  if (n.kind == ops::OpKind::kLayerNorm) return true;
  return n.kind == ops::OpKind::kLinear && will_prepack(g, n) && !ops::has_fused_residual(n.attrs, n.inputs.size()) &&
         n.attrs.output_scale == 1.0f;
}

}  // namespace

bool bf16_linear_inputs(Graph& g, const CompileOptions& options) {
  const char* off = std::getenv("TAIYI_BF16_INPUTS");
  if (off != nullptr && std::string(off) == "0") return false;
  if (options.compute != DType::BF16 || !ops::bf16_supported()) return false;
  const auto readers = g.readers();
  bool changed = false;
  for (size_t v = 0; v < g.values.size(); ++v) {
    Value& x = g.values[v];
    if (x.kind != ValueKind::kNode || x.dtype != DType::F32 || g.is_output(static_cast<int>(v)) ||
        x.strides != contiguous_strides(x.shape) || readers[v].empty())
      continue;
    if (x.producer < 0 || g.nodes[x.producer].output != static_cast<int>(v) || !writes_bf16(g, g.nodes[x.producer]))
      continue;
    bool all = true;
    for (int r : readers[v]) all = all && bf16_linear_reads(g, g.nodes[r], static_cast<int>(v));
    if (!all) continue;
    x.dtype = DType::BF16;
    changed = true;
  }
  return changed;
}

}  // namespace taiyi::graph
