// A LayerNorm over the rows of the bf16 linear before it, into that linear's epilogue:
//   layer_norm(linear(x, w, b) (+ residual)) -> one linear whose rows, after the residual and
//   rounded to bf16, then go through the LayerNorm (OpAttrs eps; gamma and beta its 5th and 6th
//   inputs, the 4th the residual or absent; ops::Epilogue::layer_norm_eps),
// where the linear's bf16 output is read by nothing else and ops::linear_takes_layer_norm_bf16
// says its kernel takes it (our AMX linear: each thread normalises the rows it has written, while
// they are in its L2, where the separate LayerNorm read them back from L3). BERT's post-LN layers
// have two each: the attention's output dense + residual, and the output dense + residual.
// The LayerNorm reads the rows rounded to bf16 as the separate one read them, with the same code
// (ops/cpu/norm_f32.cpp): the graph computes the same to the bit. TAIYI_FUSE_LINEAR_LN=0 turns it off.
#include <vector>

#include "taiyi/graph/passes/passes.h"
#include "taiyi/ops/prepared.h"

namespace taiyi::graph {

bool fuse_linear_layer_norm(Graph& g, const CompileOptions& options) {
  if (prepared_compute(options) != DType::BF16) return false;
  const auto readers = g.readers();
  std::vector<bool> removed(g.nodes.size(), false);
  bool changed = false;
  const auto constant_or_absent = [&](const Node& n, size_t i) {
    return i >= n.inputs.size() || n.inputs[i] < 0 || g.values[n.inputs[i]].kind == ValueKind::kConstant;
  };
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    Node& lin = g.nodes[i];
    if (lin.kind != ops::OpKind::kLinear || lin.prepared || lin.attrs.post_op != ops::PostOp::kNone ||
        lin.attrs.output_scale != 1.0f || ops::has_norm_epilogue(lin.kind, lin.attrs) || lin.inputs.size() > 4 ||
        !will_prepack(g, lin))
      continue;
    const int y = lin.output;
    if (g.is_output(y) || readers[y].size() != 1) continue;
    const int r = readers[y][0];
    const Node& ln = g.nodes[r];
    if (ln.kind != ops::OpKind::kLayerNorm || ln.inputs.empty() || ln.inputs[0] != y) continue;
    const Value& yv = g.values[y];
    const Value& out = g.values[ln.output];
    // (the kernel reads bf16 rows: bf16_inputs made the input so where its producer can write it)
    if (g.values[lin.inputs[0]].dtype != DType::BF16 || !is_dense(g.values[lin.inputs[0]])) continue;
    if (yv.dtype != DType::BF16 || out.dtype != DType::BF16 || yv.shape != out.shape || !is_dense(yv) ||
        !is_dense(out) || !constant_or_absent(ln, 1) || !constant_or_absent(ln, 2))
      continue;
    const int gamma = ln.inputs.size() > 1 ? ln.inputs[1] : -1, beta = ln.inputs.size() > 2 ? ln.inputs[2] : -1;
    ops::Epilogue e = node_epilogue(g, lin);
    e.layer_norm_eps = ln.attrs.eps;
    if (gamma >= 0) e.layer_norm_gamma = g.values[gamma].constant;
    if (beta >= 0) e.layer_norm_beta = g.values[beta].constant;
    const Tensor bias = lin.inputs[2] >= 0 ? g.values[lin.inputs[2]].constant : Tensor();
    if (!ops::linear_takes_layer_norm_bf16(g.values[lin.inputs[0]].shape, g.values[lin.inputs[1]].constant, bias, e))
      continue;
    lin.inputs.resize(4, -1);  // the residual, or absent
    lin.inputs.push_back(gamma);
    lin.inputs.push_back(beta);
    lin.attrs.eps = ln.attrs.eps;
    lin.output = ln.output;  // defined earlier than before; nothing between read it
    g.values[ln.output].producer = static_cast<int>(i);
    removed[r] = true;
    changed = true;
  }
  if (changed) g.remove_nodes(removed);
  return changed;
}

}  // namespace taiyi::graph
