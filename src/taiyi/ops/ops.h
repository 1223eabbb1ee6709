// The op set: every computation the models do goes through these functions.
//
// Model code (nn/, models/) is written once against this API. In eager mode,
// which is all this layer does today, each call checks its arguments, runs its
// CPU kernel (ops/cpu/) and returns a fresh tensor. Graph mode will intercept
// these same calls to record an IR, so model code must not touch tensor data
// directly: it only calls ops.
//
// Conventions:
// - Activations are f32, images/feature maps NCHW, sequences [batch, length, channels].
// - Inputs may be any strided view unless said otherwise; outputs are contiguous.
// - A bad argument (rank, shape, dtype) throws taiyi::Error naming the op and the shapes.
// - Matrix products (conv2d, linear, matmul, attention) add their FLOPs to flop_count()
//   (2 per multiply-add) so benchmarks can report GFLOP/s.
#pragma once

#include <cstdint>
#include <vector>

#include "taiyi/tensor/tensor.h"

namespace taiyi::ops {

// ---- Runtime ----

// Threads for our kernels and oneDNN (one OpenMP pool). n <= 0: all cores.
void set_num_threads(int n);
int num_threads();
// FLOPs done by matrix products since the last reset (eager).
uint64_t flop_count();
void reset_flop_count();
void add_flop_count(double flops);  // for kernels that run outside these functions (prepared ops)

// ---- Matrix products (oneDNN) ----

struct Conv2dParams {
  int stride_h = 1, stride_w = 1;
  int pad_top = 0, pad_left = 0, pad_bottom = 0, pad_right = 0;  // asymmetric padding allowed
  int dilation_h = 1, dilation_w = 1;
  int groups = 1;
  // The input upsampled by this factor (nearest neighbour) before the convolution: 1, or 2 (graph
  // mode's fused upsampler, graph/passes/fuse_upsample_conv.cpp).
  int upsample = 1;
  static Conv2dParams same(int pad, int stride = 1) { return {stride, stride, pad, pad, pad, pad, 1, 1, 1, 1}; }
};
// x [N, Cin, H, W], w [Cout, Cin/groups, kh, kw], bias [Cout] or undefined -> [N, Cout, Ho, Wo].
Tensor conv2d(const Tensor& x, const Tensor& w, const Tensor& bias, const Conv2dParams& p);
// x [..., K], w [N, K] (torch Linear layout), bias [N] or undefined -> [..., N].
Tensor linear(const Tensor& x, const Tensor& w, const Tensor& bias);
// a [..., M, K] @ b [..., K, N] -> [..., M, N]. Batch dims must be equal, or b may be 2-D (shared).
Tensor matmul(const Tensor& a, const Tensor& b);
// What graph mode may fuse after a linear's bias (graph/passes/fuse_linear_gelu.cpp): gelu, or
// a product with a tensor of the output's shape (GEGLU's value half times gelu of its gate half);
// and into a convolution's bias (graph/passes/fuse_bias_add.cpp): a tensor of one value per output
// channel added to the bias on every call (the ResNet blocks' time embedding).
enum class PostOp : uint8_t { kNone, kGelu, kMultiply, kBiasAdd };

// ---- Attention ----

// Multi-head scaled dot-product attention, heads packed in the channel dim:
// q [B, Lq, H*D], k [B, Lk, H*D], v [B, Lk, H*Dv] -> [B, Lq, H*Dv], where for each head h
// out_h = softmax(scale * q_h k_h^T) v_h. No mask. Never materialises all B*H*Lq*Lk scores at once.
Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, int heads, float scale);

// ---- Normalisation ----

// x [N, C, *], gamma/beta [C] (or undefined: no affine). Stats per (sample, group), biased variance.
Tensor group_norm(const Tensor& x, int groups, const Tensor& gamma, const Tensor& beta, float eps);
// silu(group_norm(x)) in one pass (what the graph compiler fuses the pair into).
Tensor group_norm_silu(const Tensor& x, int groups, const Tensor& gamma, const Tensor& beta, float eps);
// Over the last dim; gamma/beta [C] (or undefined).
Tensor layer_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, float eps);
// Softmax over the last dim.
Tensor softmax(const Tensor& x);

// ---- Element-wise ----

Tensor silu(const Tensor& x);
Tensor gelu(const Tensor& x);                  // exact (erf) form, torch's default
Tensor geglu(const Tensor& x);                 // [..., 2N] -> [..., N]: x[..., :N] * gelu(x[..., N:]) (diffusers GEGLU)
Tensor add(const Tensor& a, const Tensor& b);  // numpy broadcasting
Tensor sub(const Tensor& a, const Tensor& b);  // numpy broadcasting
Tensor mul(const Tensor& a, const Tensor& b);  // numpy broadcasting
Tensor scale(const Tensor& x, float s);        // x * s
Tensor add_scalar(const Tensor& x, float s);   // x + s
Tensor exp(const Tensor& x);
Tensor clamp(const Tensor& x, float lo, float hi);
Tensor cast(const Tensor& x, DType dtype);

// ---- Shape ----

Tensor concat(const std::vector<Tensor>& xs, int dim);
std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes, int dim);  // views
std::vector<Tensor> chunk(const Tensor& x, int n, int dim);                              // equal views
// Rows of `table` [V, D] picked by integer `ids` (i64 or i32, any shape) -> [ids..., D] (torch Embedding,
// index_select). An id outside [0, V) throws.
Tensor embedding(const Tensor& table, const Tensor& ids);
// Nearest-neighbour resize of x [N, C, H, W] to [N, C, out_h, out_w], index = floor(o * in / out)
// as torch's F.interpolate(mode="nearest") with an explicit size (x2 is the common case).
Tensor upsample_nearest(const Tensor& x, int64_t out_h, int64_t out_w);
// diffusers get_timestep_embedding: t [B] (any numeric dtype) -> [B, dim], in f32 arithmetic as torch:
// freq_i = exp(-ln(max_period) * i / (dim/2 - freq_shift)), arg = t * freq_i * scale,
// [sin | cos] (or [cos | sin] if flip_sin_to_cos), zero-padded when dim is odd.
Tensor timestep_embedding(const Tensor& t, int dim, bool flip_sin_to_cos, float freq_shift, float scale = 1.0f,
                          float max_period = 10000.0f);

// Views; graph mode records these too.
Tensor reshape(const Tensor& x, const Shape& shape);
Tensor permute(const Tensor& x, const std::vector<int>& dims);
Tensor transpose(const Tensor& x, int a, int b);
Tensor slice(const Tensor& x, int dim, int64_t start, int64_t end);
Tensor contiguous(const Tensor& x);

}  // namespace taiyi::ops
