#include "taiyi/ops/op_call.h"

namespace taiyi::ops {

namespace {
thread_local Recorder* t_recorder = nullptr;
thread_local const Tensor* t_output_target = nullptr;
}  // namespace

const Tensor* output_target() { return t_output_target; }
void clear_output_target() { t_output_target = nullptr; }

Tensor run_op_into(OpKind kind, const std::vector<Tensor>& inputs, const OpAttrs& attrs, const Tensor& out) {
  t_output_target = &out;
  try {
    Tensor r = run_op(kind, inputs, attrs);
    t_output_target = nullptr;
    return r;
  } catch (...) {
    t_output_target = nullptr;
    throw;
  }
}

const char* op_name(OpKind k) {
  switch (k) {
    case OpKind::kConv2d: return "conv2d";
    case OpKind::kLinear: return "linear";
    case OpKind::kMatmul: return "matmul";
    case OpKind::kAttention: return "attention";
    case OpKind::kGroupNorm: return "group_norm";
    case OpKind::kGroupNormSilu: return "group_norm_silu";
    case OpKind::kLayerNorm: return "layer_norm";
    case OpKind::kSoftmax: return "softmax";
    case OpKind::kSilu: return "silu";
    case OpKind::kGelu: return "gelu";
    case OpKind::kGeglu: return "geglu";
    case OpKind::kAdd: return "add";
    case OpKind::kSub: return "sub";
    case OpKind::kMul: return "mul";
    case OpKind::kScale: return "scale";
    case OpKind::kAddScalar: return "add_scalar";
    case OpKind::kExp: return "exp";
    case OpKind::kClamp: return "clamp";
    case OpKind::kCast: return "cast";
    case OpKind::kConcat: return "concat";
    case OpKind::kUpsampleNearest: return "upsample_nearest";
    case OpKind::kEmbedding: return "embedding";
    case OpKind::kTimestepEmbedding: return "timestep_embedding";
    case OpKind::kReshape: return "reshape";
    case OpKind::kPermute: return "permute";
    case OpKind::kSlice: return "slice";
    case OpKind::kContiguous: return "contiguous";
  }
  return "?";
}

bool is_view(OpKind k) { return k == OpKind::kReshape || k == OpKind::kPermute || k == OpKind::kSlice; }

Recorder* active_recorder() { return t_recorder; }

RecordingScope::RecordingScope(Recorder* r) : previous_(t_recorder) { t_recorder = r; }
RecordingScope::~RecordingScope() { t_recorder = previous_; }

Tensor meta_tensor(const Shape& shape, DType dtype) {
  return Tensor::from_storage(Storage::meta(static_cast<size_t>(shape_numel(shape)) * dtype_size(dtype)), 0, shape,
                              contiguous_strides(shape), dtype);
}

Tensor run_op(OpKind kind, const std::vector<Tensor>& in, const OpAttrs& a) {
  auto arg = [&](size_t i) -> const Tensor& {
    static const Tensor kNone;
    return i < in.size() ? in[i] : kNone;
  };
  switch (kind) {
    case OpKind::kConv2d:
    case OpKind::kLinear: {
      // A fused epilogue (graph/passes/fuse_residual_add.cpp) adds a residual 4th input and a scale;
      // a linear's post-op (graph/passes/fuse_linear_gelu.cpp) applies gelu, or multiplies by the 4th input;
      // a convolution's adds the 4th input, one value per channel (graph/passes/fuse_bias_add.cpp).
      // A convolution's GroupNorm+SiLU prologue (graph/passes/fuse_group_norm_conv.cpp) runs first.
      const Tensor x = has_norm_prologue(kind, a) ? group_norm_silu(arg(0), a.groups, arg(4), arg(5), a.eps) : arg(0);
      Tensor r = kind == OpKind::kConv2d ? conv2d(x, arg(1), arg(2), a.conv) : linear(x, arg(1), arg(2));
      if (a.post_op == PostOp::kGelu) r = gelu(r);
      if (a.post_op == PostOp::kMultiply) r = mul(r, in.at(3));
      if (a.post_op == PostOp::kBiasAdd) r = add(r, in.at(3));
      if (has_fused_residual(a, in)) r = add(r, in[3]);
      if (a.output_scale != 1.0f) r = scale(r, a.output_scale);
      // A linear's LayerNorm epilogue (graph/passes/fuse_linear_layer_norm.cpp) normalises its rows last.
      return has_norm_epilogue(kind, a) ? layer_norm(r, arg(4), arg(5), a.eps) : r;
    }
    case OpKind::kMatmul: return matmul(arg(0), arg(1));
    case OpKind::kAttention: return attention(arg(0), arg(1), arg(2), a.heads, a.scale);
    case OpKind::kGroupNorm: return group_norm(arg(0), a.groups, arg(1), arg(2), a.eps);
    case OpKind::kGroupNormSilu: return group_norm_silu(arg(0), a.groups, arg(1), arg(2), a.eps);
    case OpKind::kLayerNorm: return layer_norm(arg(0), arg(1), arg(2), a.eps);
    case OpKind::kSoftmax: return softmax(arg(0));
    case OpKind::kSilu: return silu(arg(0));
    case OpKind::kGelu: return gelu(arg(0));
    case OpKind::kGeglu: return geglu(arg(0));
    case OpKind::kAdd: return add(arg(0), arg(1));
    case OpKind::kSub: return sub(arg(0), arg(1));
    case OpKind::kMul: return mul(arg(0), arg(1));
    case OpKind::kScale: return scale(arg(0), a.scale);
    case OpKind::kAddScalar: return add_scalar(arg(0), a.scale);
    case OpKind::kExp: return exp(arg(0));
    case OpKind::kClamp: return clamp(arg(0), a.lo, a.hi);
    case OpKind::kCast: return cast(arg(0), a.dtype);
    case OpKind::kConcat: return concat(in, static_cast<int>(a.dim));
    case OpKind::kUpsampleNearest: return upsample_nearest(arg(0), a.out_h, a.out_w);
    case OpKind::kEmbedding: return embedding(arg(0), arg(1));
    case OpKind::kTimestepEmbedding:
      return timestep_embedding(arg(0), static_cast<int>(a.dim), a.flip_sin_to_cos, a.freq_shift, a.scale,
                                a.max_period);
    case OpKind::kReshape: return reshape(arg(0), a.shape);
    case OpKind::kPermute: return permute(arg(0), a.dims);
    case OpKind::kSlice: return slice(arg(0), static_cast<int>(a.dim), a.start, a.end);
    case OpKind::kContiguous: return contiguous(arg(0));
  }
  throw Error("run_op: unknown op");
}

}  // namespace taiyi::ops
