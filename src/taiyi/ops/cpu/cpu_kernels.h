// The CPU kernels behind ops.h, one group per source file of this folder.
//
// Kernels trust their arguments: ops.cpp has checked ranks, shapes and dtypes,
// made inputs contiguous where a kernel says it needs that, and allocated the
// (contiguous) output. Everything here is f32 unless a name says otherwise.
#pragma once

#include <cstdint>
#include <vector>

#include "taiyi/ops/ops.h"
#include "taiyi/tensor/tensor.h"

namespace taiyi::ops::cpu {

// ---- conv2d_f32_dnnl.cpp ----
// x [N, Cin, H, W] and w [Cout, Cin/groups, kh, kw] contiguous, bias [Cout] contiguous or undefined,
// y [N, Cout, Ho, Wo]. oneDNN picks its preferred (blocked) layouts; we reorder in and out.
void conv2d_f32_dnnl(const Tensor& x, const Tensor& w, const Tensor& bias, const Conv2dParams& p, const Tensor& y);

// ---- matmul_f32_dnnl.cpp ----
// y[i] = a[i] @ b[i or 0] (+ bias) for a [Ba, M, K], b [Bb, K, N] with Bb == Ba or 1, any strides;
// y [Ba, M, N] contiguous; bias [N] contiguous or undefined. Strides are handed to oneDNN as they
// are; operands oneDNN cannot take that way are copied to contiguous first.
void matmul_f32_dnnl(const Tensor& a, const Tensor& b, const Tensor& bias, const Tensor& y);

// ---- attention_f32.cpp ----
// q [B, Lq, H*D], k [B, Lk, H*D], v [B, Lk, H*Dv], each with unit stride in the last dim;
// out [B, Lq, H*Dv] contiguous. Tiled over query blocks; scratch is O(block * Lk) per thread.
void attention_f32(const Tensor& q, const Tensor& k, const Tensor& v, int heads, float scale, const Tensor& out);

// ---- norm_f32.cpp ---- (contiguous x and y; gamma/beta may be null)
// x [n, c, spatial]; statistics per (sample, group) in double, biased variance; with `silu`,
// y = silu(group_norm(x)) in the same pass.
void group_norm_f32(const float* x, const float* gamma, const float* beta, float* y, int64_t n, int64_t c,
                    int64_t spatial, int64_t groups, float eps, bool silu = false);
// The same over channels-last memory: x and y [n, pixels, c]; the same statistics (per-channel
// sums in double, then per group), parallel over pixels.
void group_norm_nhwc_f32(const float* x, const float* gamma, const float* beta, float* y, int64_t n, int64_t c,
                         int64_t pixels, int64_t groups, float eps, bool silu = false);
// The same, y rounded to bf16 (nearest even) as it is written: the input of bf16 convolutions.
void group_norm_nhwc_f32_to_bf16(const float* x, const float* gamma, const float* beta, uint16_t* y, int64_t n,
                                 int64_t c, int64_t pixels, int64_t groups, float eps, bool silu = false);
// The same of a bf16 x (the output of a bf16 convolution, widened exactly), into y (f32) or, where
// y is null, yb (bf16).
void group_norm_nhwc_bf16(const uint16_t* x, const float* gamma, const float* beta, float* y, uint16_t* yb, int64_t n,
                          int64_t c, int64_t pixels, int64_t groups, float eps, bool silu = false);
// The per-channel map of the same GroupNorm of one sample (x [pixels, c] f32, or xb bf16 where x is
// null): normalised = x scale[ch] + shift[ch] (scale = rstd gamma, shift = beta - mean rstd gamma, the
// shift rounded once from double). For kernels that normalise as they read (the AMX Winograd
// convolution's GroupNorm+SiLU prologue).
void group_norm_nhwc_scale_shift(const float* x, const uint16_t* xb, const float* gamma, const float* beta, int64_t c,
                                 int64_t pixels, int64_t groups, float eps, float* scale, float* shift);
// The same from the per-channel moments of a sample (ops::ChannelMoments): d1 and d2, the sums of
// (x - k) and (x - k)^2 over `pixels` pixels, k a shift per channel.
// Adds the per-channel moments of `pixels` bf16 pixels of c channels (x, channels-last, one after
// the other) about shifts k to d1 (sum of x - k) and d2 (sum of (x - k)^2): in f32 about the first
// pixel's values, then in double (ops::ChannelMoments; the upsampling convolution's output rows).
void add_moments_bf16(const uint16_t* x, int64_t pixels, int64_t c, const float* k, double* d1, double* d2);
void group_norm_scale_shift_from_moments(const float* k, const double* d1, const double* d2, const float* gamma,
                                         const float* beta, int64_t c, int64_t pixels, int64_t groups, float eps,
                                         float* scale, float* shift);
// y[i] = bf16(x[i]), rounded to nearest even, with the fastest instructions this CPU has.
void round_to_bf16(const float* x, uint16_t* y, int64_t n);
// x [rows, c], normalised over c.
void layer_norm_f32(const float* x, const float* gamma, const float* beta, float* y, int64_t rows, int64_t c,
                    float eps);
// The same, y rounded to bf16 (nearest even) as it is written: the input of bf16 linears.
void layer_norm_f32_to_bf16(const float* x, const float* gamma, const float* beta, uint16_t* y, int64_t rows, int64_t c,
                            float eps);
// The same of a bf16 x (graph mode: the transformer's residual stream in bf16), widened exactly.
void layer_norm_bf16_to_bf16(const uint16_t* x, const float* gamma, const float* beta, uint16_t* y, int64_t rows,
                             int64_t c, float eps);
// The same in the calling thread only (y may be x: each row is read whole before it is written):
// the AMX linear's LayerNorm epilogue (linear_bf16_amx.cpp), over the rows each thread wrote.
void layer_norm_bf16_rows(const uint16_t* x, const float* gamma, const float* beta, uint16_t* y, int64_t rows,
                          int64_t c, float eps);

// ---- softmax_f32.cpp ----
// x [rows, c] -> softmax over c.
void softmax_f32(const float* x, float* y, int64_t rows, int64_t c);
// In place: x[i] = exp(x[i] - max(x)); returns the sum. The unnormalised half of a softmax,
// shared with attention, which folds the 1/sum into its output instead. n >= 1.
float exp_minus_max_f32(float* x, int64_t n);

// ---- elementwise_f32.cpp ----
enum class UnaryOpF32 { kSilu, kGelu, kExp, kScale, kAddScalar, kClamp };
// y[i] = op(x[i]) with parameters a, b (scale: a; add_scalar: a; clamp: [a, b]). y may equal x.
void unary_f32(UnaryOpF32 op, const float* x, float* y, int64_t n, float a = 0.0f, float b = 0.0f);
// x [rows, 2n] -> y [rows, n]: x[:, :n] * gelu(x[:, n:]).
void geglu_f32(const float* x, float* y, int64_t rows, int64_t n);
enum class BinaryOpF32 { kAdd, kSub, kMul };
// a and b are views already broadcast to y's shape (stride 0 in broadcast dims); y contiguous.
void binary_f32(BinaryOpF32 op, const Tensor& a, const Tensor& b, const Tensor& y);
// out = residual before a fused epilogue sums into out; nothing when they share memory. Both
// dense f32, or both bf16, of one shape, usually with the same strides (then a parallel memcpy).
void copy_residual_into(const Tensor& residual, const Tensor& out);

// ---- concat.cpp ---- (any dtype)
// Contiguous xs of y's dtype (or f32 xs into a bf16 y: rounded to nearest even), equal outside
// `dim`; y contiguous.
void concat_contiguous(const std::vector<Tensor>& xs, int dim, const Tensor& y);

// ---- upsample_nearest_f32.cpp ----
// x [N, C, H, W] contiguous -> y [N, C, Ho, Wo], torch's "nearest" source index rule.
void upsample_nearest_f32(const Tensor& x, const Tensor& y);
// The same with x and y channels-last (NHWC memory, NCHW shapes), each dense.
void upsample_nearest_nhwc_f32(const Tensor& x, const Tensor& y);
// The same, y bf16: x f32 (rounded to nearest even as it is written: the input of bf16
// convolutions) or bf16 (copied: the VAE's spatial residual stream).
void upsample_nearest_nhwc_to_bf16(const Tensor& x, const Tensor& y);
// The source index torch's F.interpolate(mode="nearest", size=...) reads for output index dst.
int64_t nearest_source_index(int64_t dst, int64_t in_size, int64_t out_size);

// ---- timestep_embedding_f32.cpp ----
// t[b] already converted to f32 -> y [t.size(), dim], diffusers get_timestep_embedding in f32 arithmetic.
void timestep_embedding_f32(const std::vector<float>& t, int dim, bool flip_sin_to_cos, float freq_shift, float scale,
                            float max_period, float* y);

}  // namespace taiyi::ops::cpu
