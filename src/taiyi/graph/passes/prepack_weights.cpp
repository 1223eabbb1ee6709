// Weight pre-packing: a conv2d or linear whose weight (and bias) are constants gets a
// prepared kernel, its weights packed once into the kernel's layout (and converted once to
// bf16 when asked), which the executor runs instead of the eager op.
#include "taiyi/graph/passes/passes.h"

namespace taiyi::graph {

namespace {

bool is_constant(const Graph& g, int v) { return v < 0 || g.values[v].kind == ValueKind::kConstant; }

ops::Layout layout_of(const Value& v) {
  return v.strides == ops::layout_strides(v.shape, ops::Layout::kNHWC) && v.shape.size() == 4 &&
                 v.strides != contiguous_strides(v.shape)
             ? ops::Layout::kNHWC
             : ops::Layout::kNCHW;
}

}  // namespace

bool will_prepack(const Graph& g, const Node& n) {
  if (n.kind != ops::OpKind::kConv2d && n.kind != ops::OpKind::kLinear) return false;
  if (!is_constant(g, n.inputs[1]) || !is_constant(g, n.inputs[2])) return false;
  if (g.values[n.inputs[1]].constant.dtype() != DType::F32) return false;
  const Value& x = g.values[n.inputs[0]];
  if (x.dtype != DType::F32) return false;
  // Strided inputs stay with the eager op, which takes strides; a convolution also takes channels-last.
  const bool dense = x.strides == contiguous_strides(x.shape) ||
                     (n.kind == ops::OpKind::kConv2d && layout_of(x) == ops::Layout::kNHWC);
  return dense;
}

bool prepack_weights(Graph& g, const CompileOptions& options) {
  const DType compute = options.compute == DType::BF16 && ops::bf16_supported() ? DType::BF16 : DType::F32;
  bool changed = false;
  for (Node& n : g.nodes) {
    if (n.prepared || !will_prepack(g, n)) continue;
    const Value& x = g.values[n.inputs[0]];
    const Tensor& w = g.values[n.inputs[1]].constant;
    const Tensor bias = n.inputs[2] >= 0 ? g.values[n.inputs[2]].constant : Tensor();
    ops::Epilogue epilogue;  // set by fuse_residual_add
    epilogue.residual = n.inputs.size() > 3;
    epilogue.scale = n.attrs.output_scale;
    n.prepared = n.kind == ops::OpKind::kConv2d
                     ? ops::prepare_conv2d(x.shape, w, bias, n.attrs.conv, compute, layout_of(x),
                                           layout_of(g.values[n.output]), epilogue)
                     : ops::prepare_linear(x.shape, w, bias, compute, epilogue);
    // A convolution's prepared kernel holds its own copy of the weights (blocked or Winograd):
    // the checkpoint's pages of them can leave memory (eager mode or a new signature's trace
    // reads them back from the file). Linears read f32 weights in place, so theirs stay.
    if (n.kind == ops::OpKind::kConv2d && w.is_contiguous())
      w.storage()->release_pages(w.byte_offset(), static_cast<size_t>(w.numel()) * dtype_size(w.dtype()));
    changed = true;
  }
  return changed;
}

}  // namespace taiyi::graph
