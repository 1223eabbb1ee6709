// Weight pre-packing: a conv2d or linear whose weight (and bias) are constants gets a
// prepared kernel, its weights packed once into the kernel's layout (and converted once to
// bf16 when asked), which the executor runs instead of the eager op.
//
// TAIYI_BF16_EMULATE=1 with bf16 asked on a CPU without bf16: instead of the plain f32 fallback,
// the f32 kernels get weights rounded to bf16 and round their input to bf16 on every run (round to
// nearest even, as oneDNN's reorders do), which is the arithmetic of oneDNN's bf16 kernels up to
// the order of the f32 accumulation. A measuring tool for bf16's error where bf16 cannot run
// (bench/RESULTS.md); slower than f32, never the default.
#include <cstdlib>
#include <string>

#include "taiyi/graph/passes/passes.h"
#include "taiyi/ops/ops.h"

namespace taiyi::graph {

namespace {

bool is_constant(const Graph& g, int v) { return v < 0 || g.values[v].kind == ValueKind::kConstant; }

// x rounded to bf16 and back, as a dense f32 copy.
Tensor round_to_bf16(const Tensor& x) { return ops::cast(ops::cast(x, DType::BF16), DType::F32); }

// An f32 prepared kernel (made from bf16-rounded weights) whose input is rounded to bf16 first,
// into the front of the scratch, with the input's own strides (inputs here are dense: row-major
// or channels-last). The residual of an epilogue stays f32, as in oneDNN's bf16 kernels.
class Bf16Emulated : public ops::PreparedOp {
 public:
  Bf16Emulated(std::shared_ptr<const ops::PreparedOp> inner, const Value& x)
      : inner_(std::move(inner)),
        x_bytes_((static_cast<size_t>(shape_numel(x.shape)) * sizeof(float) + 63) / 64 * 64) {}
  void run(const std::vector<Tensor>& in, const Tensor& out, std::byte* scratch) const override {
    const Tensor& x = in[0];
    const int64_t n = x.numel();
    const float* src = x.data<float>();
    float* dst = reinterpret_cast<float*>(scratch);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(f32_to_bf16(src[i]));
    std::vector<Tensor> args = in;
    args[0] = Tensor::from_storage(Storage::borrow(dst, x_bytes_, nullptr), 0, x.shape(), x.strides(), DType::F32);
    inner_->run(args, out, scratch + x_bytes_);
  }
  size_t scratch_bytes() const override { return x_bytes_ + inner_->scratch_bytes(); }
  size_t packed_weight_bytes() const override { return inner_->packed_weight_bytes(); }
  std::string describe() const override { return inner_->describe() + " (bf16 emulated)"; }
  double flops() const override { return inner_->flops(); }

 private:
  std::shared_ptr<const ops::PreparedOp> inner_;
  size_t x_bytes_;
};

}  // namespace

ops::Layout value_layout(const Value& v) {
  return v.shape.size() == 4 && v.strides != contiguous_strides(v.shape) &&
                 v.strides == ops::layout_strides(v.shape, ops::Layout::kNHWC)
             ? ops::Layout::kNHWC
             : ops::Layout::kNCHW;
}

bool is_dense(const Value& v) {
  return v.strides == contiguous_strides(v.shape) || value_layout(v) == ops::Layout::kNHWC;
}

ops::Epilogue node_epilogue(const Graph& g, const Node& n) {
  ops::Epilogue e;  // set by fuse_residual_add and fuse_linear_gelu (and bf16_gate: the factor's dtype)
  e.post_op = n.attrs.post_op;
  e.residual = ops::has_fused_residual(n.attrs, n.inputs);
  e.scale = n.attrs.output_scale;
  if (e.post_op == ops::PostOp::kMultiply) e.factor = g.values[n.inputs.at(3)].dtype;
  if (e.residual) e.residual_dtype = g.values[n.inputs.at(3)].dtype;
  if (ops::has_norm_epilogue(n.kind, n.attrs)) {  // fuse_linear_layer_norm's
    e.layer_norm_eps = n.attrs.eps;
    if (n.inputs.at(4) >= 0) e.layer_norm_gamma = g.values[n.inputs[4]].constant;
    if (n.inputs.at(5) >= 0) e.layer_norm_beta = g.values[n.inputs[5]].constant;
  }
  return e;
}

bool bf16_emulation_requested() {
  const char* v = std::getenv("TAIYI_BF16_EMULATE");
  return v != nullptr && *v != '\0' && std::string(v) != "0";
}

bool will_prepack(const Graph& g, const Node& n) {
  if (n.kind != ops::OpKind::kConv2d && n.kind != ops::OpKind::kLinear) return false;
  if (!is_constant(g, n.inputs[1]) || !is_constant(g, n.inputs[2])) return false;
  if (g.values[n.inputs[1]].constant.dtype() != DType::F32) return false;
  const Value& x = g.values[n.inputs[0]];
  // (the input may be bf16: bf16_inputs makes it so only for ops bound in bf16 that read it)
  if (x.dtype != DType::F32 && x.dtype != DType::BF16) return false;
  // Strided inputs stay with the eager op, which takes strides; a convolution also takes channels-last.
  // A linear also reads a [1, M, K] transposed view (the VAE attention's input) by columns.
  const bool dense = x.strides == contiguous_strides(x.shape) ||
                     (n.kind == ops::OpKind::kConv2d && value_layout(x) == ops::Layout::kNHWC) ||
                     (n.kind == ops::OpKind::kLinear && ops::linear_input_by_columns(x.shape, x.strides));
  return dense;
}

DType prepared_compute(const CompileOptions& options) {
  return options.compute == DType::BF16 && ops::bf16_supported() ? DType::BF16 : DType::F32;
}

bool prepack_weights(Graph& g, const CompileOptions& options) {
  const DType compute = prepared_compute(options);
  const bool emulate = options.compute == DType::BF16 && compute == DType::F32 && bf16_emulation_requested();
  bool changed = false;
  const auto readers = g.readers();
  for (Node& n : g.nodes) {
    if (n.prepared || !will_prepack(g, n)) continue;
    const Value& x = g.values[n.inputs[0]];
    const Tensor& w = g.values[n.inputs[1]].constant;
    const Tensor w_packed = emulate ? round_to_bf16(w) : w;
    const Tensor bias = n.inputs[2] >= 0 ? g.values[n.inputs[2]].constant : Tensor();
    const ops::Epilogue epilogue = node_epilogue(g, n);
    ops::Prologue prologue;  // fuse_group_norm_conv's
    if (ops::has_norm_prologue(n.kind, n.attrs)) {
      prologue.groups = n.attrs.groups;
      prologue.eps = n.attrs.eps;
      if (n.inputs.at(4) >= 0) prologue.gamma = g.values[n.inputs[4]].constant;
      if (n.inputs.at(5) >= 0) prologue.beta = g.values[n.inputs[5]].constant;
    }
    n.prepared = n.kind == ops::OpKind::kConv2d
                     ? ops::prepare_conv2d(x.shape, w_packed, bias, n.attrs.conv, compute, value_layout(x),
                                           value_layout(g.values[n.output]), epilogue, x.dtype,
                                           g.values[n.output].dtype, prologue)
                     : ops::prepare_linear(x.shape, w_packed, bias, compute, epilogue, x.dtype,
                                           g.values[n.output].dtype, ops::linear_input_by_columns(x.shape, x.strides));
    if (emulate) n.prepared = std::make_shared<Bf16Emulated>(std::move(n.prepared), x);
    // A prepared kernel that holds its own copy of the weights (every convolution: blocked or
    // Winograd; a bf16 linear) lets the checkpoint's pages of them leave memory (eager mode or a
    // new signature's trace reads them back from the file). f32 linears read the weights in place.
    if (n.prepared->packed_weight_bytes() > 0) {
      if (w.is_contiguous())
        w.storage()->release_pages(w.byte_offset(), static_cast<size_t>(w.numel()) * dtype_size(w.dtype()));
      // Nothing reads the constant any more: the graph lets go of it (the model keeps its own
      // parameters; weights a pass made, such as fuse_sibling_linears' stacked ones, are freed).
      if (readers[n.inputs[1]].size() == 1) g.values[n.inputs[1]].constant = Tensor();
    }
    changed = true;
  }
  return changed;
}

}  // namespace taiyi::graph
