// The prepared-op implementations behind ops::prepare_conv2d (prepared.cpp picks one) and
// ops::prepare_attention_bf16 (attention_prepared_dnnl.cpp picks one).
#pragma once

#include <memory>

#include "taiyi/ops/prepared.h"

namespace taiyi::ops {

// conv2d_prepared_dnnl.cpp: oneDNN's direct convolution, weights reordered once; any conv2d.
std::unique_ptr<PreparedOp> prepare_conv2d_dnnl(const Shape& x_shape, const Tensor& w, const Tensor& bias,
                                                const Conv2dParams& p, DType compute, Layout src_layout,
                                                Layout dst_layout, const Epilogue& epilogue, DType src = DType::F32,
                                                DType dst = DType::F32);
// linear_prepared_dnnl.cpp: oneDNN's matmul, weights packed once (bf16) or read as they are (f32); any linear.
std::unique_ptr<PreparedOp> prepare_linear_dnnl(const Shape& x_shape, const Tensor& w, const Tensor& bias,
                                                DType compute, const Epilogue& epilogue, DType src, DType dst,
                                                bool src_columns);
// Whether it can write a bf16 output: bf16 compute, channels-last out, no scale, a residual only
// in bf16 (summed in), and not split by input channels (the slices sum into the output, which must
// stay f32 for that).
bool conv2d_dnnl_writes_bf16(const Shape& x_shape, const Tensor& w, const Conv2dParams& p, DType compute,
                             Layout src_layout, Layout dst_layout, const Epilogue& epilogue, DType src);

namespace cpu {

// conv2d_winograd_bf16_avx512.cpp: Winograd F(2x2,3x3) with bf16 products on AVX512-BF16, for CPUs
// with avx512_bf16 and no AMX; weights transformed once (16/9 of their elements, in bf16); a
// residual (inputs[1]) is added in the output transform. Any input and output strides.
bool winograd_bf16_avx512_applicable(const Shape& x_shape, const Tensor& w, const Conv2dParams& p);
std::unique_ptr<PreparedOp> prepare_conv2d_winograd_bf16_avx512(const Shape& x_shape, const Tensor& w,
                                                                const Tensor& bias, const Conv2dParams& p,
                                                                Layout src_layout, Layout dst_layout);

// conv2d_1x1_bf16_avx512.cpp: a 1x1 stride-1 convolution with bf16 products on AVX512-BF16, pixels
// in the lanes, so NCHW activations need no transposes; a residual (inputs[1]) is added as it
// writes. Any input and output strides.
bool conv1x1_bf16_avx512_applicable(const Shape& x_shape, const Tensor& w, const Conv2dParams& p);
std::unique_ptr<PreparedOp> prepare_conv2d_1x1_bf16_avx512(const Shape& x_shape, const Tensor& w, const Tensor& bias,
                                                           const Conv2dParams& p, Layout src_layout, Layout dst_layout);

// conv2d_upsample_dnnl.cpp: a 3x3 convolution (stride 1, padding 1, with bias) of x upsampled 2x
// (nearest), from x [N, Cin, H, W] itself: four oneDNN 2x2 convolutions of summed taps, one per
// output phase, interleaved into out [N, Cout, 2H, 2W]; either layout on either side.
std::unique_ptr<PreparedOp> prepare_conv2d_upsample2x(const Shape& x_shape, const Tensor& w, const Tensor& bias,
                                                      DType compute, Layout src_layout, Layout dst_layout, DType src,
                                                      DType dst);

// linear_bf16_amx.cpp: a bf16 linear on AMX tiles (applicable: AMX, K and N multiples of 32, 64
// rows or more, no post-op), x bf16 rows, weights packed once into tiles; + an f32 bias (+ an f32 or
// bf16 residual, inputs[1]) into an f32 or bf16 output. Two modes: from K = 1280 (BERT's output
// dense, the UNet's feed-forward outputs) K in blocks of 256 with f32 accumulators per strip of rows
// and chunk of columns; below, the C tiles over all of K and the epilogue overlapping the next
// block's products (linear_bf16_amx_whole_k).
bool linear_bf16_amx_applicable(const Shape& x_shape, const Tensor& w, const Tensor& bias, DType compute,
                                const Epilogue& epilogue, DType src, DType dst, bool src_columns);
std::unique_ptr<PreparedOp> prepare_linear_bf16_amx(const Shape& x_shape, const Tensor& w, const Tensor& bias,
                                                    const Epilogue& epilogue, DType dst);
bool linear_bf16_amx_whole_k(const Shape& x_shape);
// Test support for the work stealing (work_units.h): from now on thread `thread` of each parallel
// loop that takes units from others sleeps `microseconds` at the loop's stall point (-1: no
// thread): the AMX linear after its first unit (K-block mode) or its last strip's first (whole-K
// mode), the split-panel AMX Winograd after its first block. Returns how many units threads took
// from other threads since the last call.
int64_t work_stealing_stall_for_tests(int thread, int microseconds);

// conv2d_winograd_bf16_amx.cpp: bf16 F(2x2,3x3) Winograd on AMX tiles, channels-last in and out
// (f32 or bf16 each), a residual of the output's dtype, a GroupNorm+SiLU prologue. Needs
// cpu_has_amx_bf16(), a 3x3 kernel, stride 1, padding 1, channel counts multiples of 32 and even
// sizes (winograd_bf16_amx_applicable).
bool winograd_bf16_amx_applicable(const Shape& x_shape, const Tensor& w, const Conv2dParams& p);
std::unique_ptr<PreparedOp> prepare_conv2d_winograd_bf16_amx(const Shape& x_shape, const Tensor& w, const Tensor& bias,
                                                             const Conv2dParams& p, const Epilogue& epilogue, DType src,
                                                             DType dst, const Prologue& prologue = {});

// conv2d_direct_bf16_amx.cpp: bf16 3x3 convolution on AMX tiles from a blocked, padded copy of the
// input, channels-last in and out (f32 or bf16 each), a residual of the output's dtype, a
// GroupNorm+SiLU prologue (applied as the copy is made). Needs cpu_has_amx_bf16(), a 3x3 kernel,
// stride 1, padding 1, 320-768 input and >= 320 output channels in multiples of 32, a width that is
// a multiple of 32 (direct_conv_bf16_amx_applicable).
bool direct_conv_bf16_amx_applicable(const Shape& x_shape, const Tensor& w, const Conv2dParams& p);
std::unique_ptr<PreparedOp> prepare_conv2d_direct_bf16_amx(const Shape& x_shape, const Tensor& w, const Tensor& bias,
                                                           const Conv2dParams& p, const Epilogue& epilogue, DType src,
                                                           DType dst, const Prologue& prologue = {});

// attention_bf16_avx512.cpp: bf16 attention on vdpbf16ps, for CPUs with avx512_bf16 and no AMX.
// Needs cpu_has_avx512_bf16() and scale > 0 (attention_bf16_avx512_applicable).
bool attention_bf16_avx512_applicable(float scale);
std::unique_ptr<PreparedOp> prepare_attention_bf16_avx512(const Shape& q, const Shape& k, const Shape& v, int heads,
                                                          float scale);

// attention_bf16_amx.cpp: bf16 attention on AMX tiles. Needs cpu_has_amx_bf16() and scale > 0
// (attention_bf16_amx_applicable).
bool attention_bf16_amx_applicable(float scale);
std::unique_ptr<PreparedOp> prepare_attention_bf16_amx(const Shape& q, const Shape& k, const Shape& v, int heads,
                                                       float scale);

// geglu_bf16_avx512.cpp: GEGLU of a bf16 [..., 2N] input into bf16 or f32 [..., N] (contiguous),
// exact GELU in f32 on AVX-512. Needs cpu_has_avx512_bf16().
bool geglu_bf16_avx512_applicable();
std::unique_ptr<PreparedOp> prepare_geglu_bf16_avx512(const Shape& x);
// The same kernel's exact GELU of a bf16 [..., N] input into bf16 or f32 [..., N].
std::unique_ptr<PreparedOp> prepare_gelu_bf16_avx512(const Shape& x);

}  // namespace cpu
}  // namespace taiyi::ops
