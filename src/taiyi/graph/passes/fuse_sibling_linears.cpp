// Sibling linears into one: linears that read the same input and feed only one attention (an
// attention's q, k and v projections of one hidden state; a cross-attention's k and v of the
// text context) become one linear over their weights stacked, [N1 + N2 + ..., K], and each of
// their outputs a slice of its last dim (a view, no copy; the attention kernels read strided q, k
// and v). One product of N = 3C instead of three of C, and an f32 input rounded to bf16 once
// instead of once per sibling (BERT's q, k and v read the post-LayerNorm residual stream, which
// stays f32): the text encoder 0.150 -> 0.143 s on the Xeon with AMX. Only with bf16 the CPU runs:
// in f32 (oneDNN's f32 matmul reads the weights in place) neither the UNet nor the text encoder
// got faster, and the stacked copy would be memory the checkpoint's pages already hold.
//
// Siblings qualify when prepack_weights will bind them (constant f32 weights), nothing is fused
// into them (no residual, post-op or output scale), their weights have one K, all or none have a
// bias, and every reader of every sibling's output is an attention reading it as q, k or v. The
// stacked weights are a new constant; the originals' checkpoint pages are let go (as
// prepack_weights does), since nothing reads them any more; prepack_weights drops the stacked
// f32 copy once its bf16 one is packed. TAIYI_FUSE_QKV=0 turns the pass off
// (A/B runs).
#include <cstring>
#include <map>
#include <utility>
#include <vector>

#include "taiyi/graph/passes/passes.h"

namespace taiyi::graph {

namespace {

bool only_attention_reads(const Graph& g, const std::vector<int>& readers, int v) {
  if (readers.empty()) return false;
  for (int r : readers) {
    const Node& n = g.nodes[r];
    if (n.kind != ops::OpKind::kAttention || n.inputs.size() < 3) return false;
    for (size_t i = 3; i < n.inputs.size(); ++i)
      if (n.inputs[i] == v) return false;
  }
  return true;
}

bool fusable(const Graph& g, const Node& n, const std::vector<std::vector<int>>& readers) {
  if (n.kind != ops::OpKind::kLinear || n.inputs.size() != 3 || n.attrs.post_op != ops::PostOp::kNone ||
      n.attrs.output_scale != 1.0f || !will_prepack(g, n))
    return false;
  const Value& y = g.values[n.output];
  const Tensor& w = g.values[n.inputs[1]].constant;
  return !g.is_output(n.output) && y.dtype == DType::F32 && y.strides == contiguous_strides(y.shape) && w.ndim() == 2 &&
         only_attention_reads(g, readers[n.output], n.output);
}

// A new constant value holding t.
int add_constant(Graph& g, const Tensor& t) {
  Value c;
  c.kind = ValueKind::kConstant;
  c.constant = t;
  c.shape = t.shape();
  c.strides = t.strides();
  c.dtype = t.dtype();
  return g.add_value(std::move(c));
}

// Rows of the 2-D (weights) or 1-D (biases) f32 constants of `parts`, stacked along dim 0.
Tensor stack_rows(const std::vector<Tensor>& parts) {
  Shape shape = parts[0].shape();
  shape[0] = 0;
  for (const Tensor& p : parts) shape[0] += p.size(0);
  Tensor out = Tensor::empty(shape);
  std::byte* dst = static_cast<std::byte*>(out.raw_data());
  for (const Tensor& p : parts) {
    const Tensor c = p.contiguous();
    const size_t bytes = static_cast<size_t>(c.numel()) * sizeof(float);
    std::memcpy(dst, c.raw_data(), bytes);
    dst += bytes;
    // The stacked copy is all the graph reads now: let the checkpoint's pages go.
    if (p.is_contiguous()) p.storage()->release_pages(p.byte_offset(), bytes);
  }
  return out;
}

}  // namespace

bool fuse_sibling_linears(Graph& g, const CompileOptions& options) {
  if (pass_turned_off("TAIYI_FUSE_QKV")) return false;
  if (prepared_compute(options) != DType::BF16) return false;
  const auto readers = g.readers();
  // The qualifying linears of each input value and attention they feed, in node order: one group
  // per attention (its q, k and v, or a cross-attention's k and v), not one per input. The UNet's
  // 16 cross-attentions all read the text context: stacked together their k and v were one
  // [1024, 768] x [768, 24960] product at 1270 GFLOP/s (31 ms), one per attention run at 1950-2330
  // (18 ms in all).
  std::map<std::pair<int, int>, std::vector<int>> siblings;
  for (size_t i = 0; i < g.nodes.size(); ++i)
    if (fusable(g, g.nodes[i], readers)) {
      const Node& n = g.nodes[i];
      siblings[{n.inputs[0], readers[n.output][0]}].push_back(static_cast<int>(i));
    }
  // For each node: the group it leads (index into groups) or belongs to.
  std::vector<int> group_of(g.nodes.size(), -1);
  std::vector<std::vector<int>> groups;
  for (auto& [key, s] : siblings) {
    if (s.size() < 2) continue;
    const Node& first = g.nodes[s[0]];
    const int64_t k = g.values[first.inputs[1]].constant.size(1);
    const bool bias = first.inputs[2] >= 0;
    bool same = true;
    for (int i : s) {
      const Node& n = g.nodes[i];
      same = same && g.values[n.inputs[1]].constant.size(1) == k && (n.inputs[2] >= 0) == bias;
    }
    if (!same) continue;
    for (int i : s) group_of[i] = static_cast<int>(groups.size());
    groups.push_back(s);
  }
  if (groups.empty()) return false;

  // The stacked linear of each group goes where its first sibling was; each sibling becomes a slice.
  std::vector<int> fused_output(groups.size());
  std::vector<Node> fused_node(groups.size());
  for (size_t gi = 0; gi < groups.size(); ++gi) {
    const std::vector<int>& s = groups[gi];
    std::vector<Tensor> weights, biases;
    for (int i : s) {
      weights.push_back(g.values[g.nodes[i].inputs[1]].constant);
      if (g.nodes[i].inputs[2] >= 0) biases.push_back(g.values[g.nodes[i].inputs[2]].constant);
    }
    const Tensor w = stack_rows(weights);
    const int x = g.nodes[s[0]].inputs[0];
    Value y;
    y.shape = g.values[g.nodes[s[0]].output].shape;
    y.shape.back() = w.size(0);
    y.strides = contiguous_strides(y.shape);
    fused_output[gi] = g.add_value(std::move(y));
    Node& n = fused_node[gi];
    n.kind = ops::OpKind::kLinear;
    n.inputs = {x, add_constant(g, w), biases.empty() ? -1 : add_constant(g, stack_rows(biases))};
    n.output = fused_output[gi];
  }
  std::vector<Node> nodes;
  nodes.reserve(g.nodes.size() + groups.size());
  std::vector<int64_t> offset(groups.size(), 0);
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    const int gi = group_of[i];
    if (gi < 0) {
      nodes.push_back(std::move(g.nodes[i]));
      continue;
    }
    if (static_cast<int>(i) == groups[gi][0]) nodes.push_back(fused_node[gi]);
    Node slice;
    slice.kind = ops::OpKind::kSlice;
    slice.inputs = {fused_output[gi]};
    slice.output = g.nodes[i].output;
    Value& y = g.values[slice.output];
    const int64_t n = y.shape.back();
    slice.attrs.dim = static_cast<int64_t>(y.shape.size()) - 1;
    slice.attrs.start = offset[gi];
    slice.attrs.end = offset[gi] + n;
    offset[gi] += n;
    y.strides = g.values[fused_output[gi]].strides;
    nodes.push_back(std::move(slice));
  }
  g.nodes = std::move(nodes);
  for (size_t i = 0; i < g.nodes.size(); ++i) g.values[g.nodes[i].output].producer = static_cast<int>(i);
  return true;
}

}  // namespace taiyi::graph
