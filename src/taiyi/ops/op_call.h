// An op call as data: which op, its tensor inputs and its attributes. This is the
// seam between the op set and graph mode.
//
// While a Recorder is active on the calling thread (graph tracing), every function
// of ops.h checks its arguments exactly as in eager mode, then hands the call to
// the recorder instead of computing, and returns the recorder's result: a tensor
// over meta storage (shape, strides, dtype; no data). The graph layer implements
// Recorder; the ops layer knows nothing of graphs. run_op() replays a recorded
// call eagerly, which is how the graph executor runs nodes no pass replaced.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "taiyi/ops/ops.h"

namespace taiyi::ops {

enum class OpKind : uint8_t {
  // compute
  kConv2d,
  kLinear,
  kMatmul,
  kAttention,
  kGroupNorm,
  kGroupNormSilu,
  kLayerNorm,
  kSoftmax,
  kSilu,
  kGelu,
  kGeglu,
  kAdd,
  kSub,
  kMul,
  kScale,
  kAddScalar,
  kExp,
  kClamp,
  kCast,
  kConcat,
  kUpsampleNearest,
  kEmbedding,
  kTimestepEmbedding,
  // views and copies
  kReshape,
  kPermute,
  kSlice,
  kContiguous,
};

const char* op_name(OpKind k);
// Views alias their input's memory; every other op writes a fresh output.
bool is_view(OpKind k);

// The attributes of one call; each op reads only its own fields.
struct OpAttrs {
  Conv2dParams conv;       // conv2d
  int heads = 0;           // attention
  int groups = 0;          // group_norm(_silu); conv2d: its input's GroupNorm+SiLU prologue (0: none)
  float eps = 0;           // group_norm(_silu), conv2d's prologue, layer_norm
  float output_scale = 1;  // conv2d, linear: out = (op(x) + residual) * output_scale, residual the 4th input
  // linear: after the bias, gelu, or times the 4th input; conv2d: the 4th input (one value per
  // output channel) added to the bias. Then no residual.
  PostOp post_op = PostOp::kNone;
  float scale = 0;       // attention, scale, add_scalar (the scalar), timestep_embedding
  float lo = 0, hi = 0;  // clamp
  float freq_shift = 0;  // timestep_embedding
  float max_period = 0;  // timestep_embedding
  bool flip_sin_to_cos = false;
  int64_t dim = 0;               // concat, slice; timestep_embedding (embedding size)
  int64_t start = 0, end = 0;    // slice
  int64_t out_h = 0, out_w = 0;  // upsample_nearest
  Shape shape;                   // reshape
  std::vector<int> dims;         // permute
  DType dtype = DType::F32;      // cast
};

// A conv2d with a GroupNorm+SiLU prologue (graph/passes/fuse_group_norm_conv.cpp) computes
// conv2d(group_norm_silu(x, groups, gamma, beta, eps)): inputs [x, w, bias, 4th input or absent (-1,
// an undefined tensor), gamma, beta].
inline bool has_norm_prologue(OpKind kind, const OpAttrs& a) { return kind == OpKind::kConv2d && a.groups > 0; }
// A linear with a LayerNorm epilogue (graph/passes/fuse_linear_layer_norm.cpp) computes
// layer_norm(linear(x) (+ residual), gamma, beta, eps): inputs [x, w, bias, residual or absent (-1),
// gamma, beta].
inline bool has_norm_epilogue(OpKind kind, const OpAttrs& a) { return kind == OpKind::kLinear && a.eps > 0; }

// Whether a conv2d or linear call with these attributes and inputs carries a fused residual (its
// 4th input), rather than a multiply post-op's factor or a bias to add.
inline bool has_fused_residual(const OpAttrs& a, const std::vector<int>& inputs) {
  return inputs.size() > 3 && inputs[3] >= 0 && a.post_op != PostOp::kMultiply && a.post_op != PostOp::kBiasAdd;
}
inline bool has_fused_residual(const OpAttrs& a, const std::vector<Tensor>& inputs) {
  return inputs.size() > 3 && inputs[3].defined() && a.post_op != PostOp::kMultiply && a.post_op != PostOp::kBiasAdd;
}

class Recorder {
 public:
  virtual ~Recorder() = default;
  // `out` is the checked output shape (contiguous) or, for views, the view's own metadata.
  virtual Tensor record(OpKind kind, const std::vector<Tensor>& inputs, const OpAttrs& attrs, const Tensor& out) = 0;
};

// The recorder of this thread, or null (eager).
Recorder* active_recorder();

// Makes `r` the recorder of this thread for the scope's lifetime (nesting restores the previous one).
class RecordingScope {
 public:
  explicit RecordingScope(Recorder* r);
  ~RecordingScope();
  RecordingScope(const RecordingScope&) = delete;
  RecordingScope& operator=(const RecordingScope&) = delete;

 private:
  Recorder* previous_;
};

// Runs one call eagerly (no recorder may be active).
Tensor run_op(OpKind kind, const std::vector<Tensor>& inputs, const OpAttrs& attrs);

// Runs one call eagerly with its output written into `out` when the op's output matches out's
// shape and dtype (the graph executor's planned buffer). Returns the result, which is `out`
// unless the op produced its result elsewhere (a view, or an op that cannot write in place);
// the caller copies then.
Tensor run_op_into(OpKind kind, const std::vector<Tensor>& inputs, const OpAttrs& attrs, const Tensor& out);

// The planned output buffer of the op call in progress on this thread, if any (ops.cpp).
const Tensor* output_target();
void clear_output_target();

// A tensor of `shape`/`dtype` over fresh meta storage, contiguous: a traced op's output.
Tensor meta_tensor(const Shape& shape, DType dtype);

}  // namespace taiyi::ops
