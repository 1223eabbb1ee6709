// Winograd F(4x4, 3x3) and F(2x2, 3x3) convolution, f32, for AVX2+FMA, as a prepared op (see
// ops/prepared.h).
//
// Replaces oneDNN's direct convolution (oneDNN 2.6 has Winograd only for AVX-512) for the 3x3,
// stride-1 convolutions of the UNet: with tile 4 each 4x4 output tile costs 36 multiply-adds per
// (cin, cout) pair instead of 144; with tile 2 each 2x2 tile costs 16 instead of 36 (2.25x fewer).
// The weights keep the memory of w (reordered once, at prepare time; they are transformed slice by
// slice as the products need them); run() takes an optional residual (inputs[1], of
// the output's shape and layout, possibly the output's own memory) that is added in the output
// transform, so a ResNet block's skip connection costs no extra pass.
//
//   if (cpu::cpu_has_avx2_fma() && cpu::winograd_f32_applicable(x_shape, w, p))
//     op = cpu::prepare_conv2d_winograd_f32(x_shape, w, bias, p, Layout::kNCHW, Layout::kNCHW, /*tile=*/4);
//   op->run({x}, y, scratch);             // y = conv(x) + bias
//   op->run({x, skip}, skip, scratch);    // skip = conv(x) + bias + skip, in place
#pragma once

#include <memory>

#include "taiyi/ops/prepared.h"

namespace taiyi::ops::cpu {

// True when the convolution of an x of shape x_shape with w under p has the form every Winograd
// kernel here takes (f32 or bf16): 4-D, a 3x3 f32 kernel, stride 1, dilation 1, groups 1, each
// padding in [0, 2], an output at least 1x1. Any CPU.
bool winograd_3x3_form(const Shape& x_shape, const Tensor& w, const Conv2dParams& p);

// The output height and width of a 3x3 stride-1 convolution of x [N, C, H, W] under p's padding;
// throws when the output would be empty.
struct Output2d {
  int64_t h, w;
};
Output2d winograd_3x3_output(const Shape& x_shape, const Conv2dParams& p);

// U = G g G^T of F(2x2, 3x3) for one 3x3 filter g (row-major), in double: the bf16 kernels round
// it to bf16 once (conv2d_winograd_bf16_avx512.cpp, conv2d_winograd_bf16_amx.cpp). Any CPU.
void winograd_f23_filter(const float* g, double (&u)[4][4]);

// winograd_3x3_form() and the CPU has AVX2 and FMA.
bool winograd_f32_applicable(const Shape& x_shape, const Tensor& w, const Conv2dParams& p);

// The prepared convolution; bias may be undefined. Only call when winograd_f32_applicable().
// tile: the output tile edge, 4 (F(4x4,3x3), describe() "winograd_f43:avx2") or 2 (F(2x2,3x3),
// "winograd_f23:avx2"; faster for small images, where each weight meets few tiles). Scratch grows
// with the thread count (omp_get_max_threads() at prepare time) by one L2-sized slice per thread.
std::unique_ptr<PreparedOp> prepare_conv2d_winograd_f32(const Shape& x_shape, const Tensor& w, const Tensor& bias,
                                                        const Conv2dParams& p, Layout src_layout, Layout dst_layout,
                                                        int tile = 4);

}  // namespace taiyi::ops::cpu
