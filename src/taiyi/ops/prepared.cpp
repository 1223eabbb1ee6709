// ops::prepare_conv2d: picks the kernel a convolution is bound to at compile time.
//
// f32 3x3 stride-1 convolutions go to our Winograd kernels (conv2d_winograd_f32.cpp; oneDNN 2.6
// has Winograd only for AVX-512): F(4x4, 3x3) at 32x32 outputs and above (2.8-3.2x oneDNN's
// direct AVX2 kernel on the UNet's shapes, weights 4x their memory), F(2x2, 3x3) below (2.2x at
// 16x16, 2x at 8x8, weights 1.78x: F(4x4, 3x3) would take 4x the memory of the layers that hold
// most of the UNet's weights). Everything else, bf16 included, goes to oneDNN.
// TAIYI_WINOGRAD=0 turns Winograd off (A/B runs); TAIYI_WINOGRAD=large keeps it to >= 32x32
// outputs (less memory: the 16x16 and 8x8 layers' weights stay 1x).
#include "taiyi/ops/prepared.h"

#include <cstdlib>
#include <string>

#include "taiyi/ops/cpu/conv2d_winograd_f32.h"
#include "taiyi/ops/cpu/prepared_kernels.h"

namespace taiyi::ops {

namespace {

enum class WinogradPolicy { kOff, kLarge, kAll };  // kAll: the default

WinogradPolicy winograd_policy() {
  const char* v = std::getenv("TAIYI_WINOGRAD");
  const std::string s = v ? v : "";
  if (s == "0" || s == "off") return WinogradPolicy::kOff;
  if (s == "large") return WinogradPolicy::kLarge;
  return WinogradPolicy::kAll;
}

// The Winograd output tile for this convolution (4 or 2), or 0 for oneDNN.
int winograd_tile(const Shape& x_shape, const Tensor& w, const Conv2dParams& p, DType compute) {
  if (compute != DType::F32 || !cpu::winograd_f32_applicable(x_shape, w, p)) return 0;
  const WinogradPolicy policy = winograd_policy();
  if (policy == WinogradPolicy::kOff) return 0;
  const int64_t ho = x_shape[2] + p.pad_top + p.pad_bottom - 2, wo = x_shape[3] + p.pad_left + p.pad_right - 2;
  if (ho * wo >= 32 * 32) return 4;
  return policy == WinogradPolicy::kAll ? 2 : 0;
}

}  // namespace

std::unique_ptr<PreparedOp> prepare_conv2d(const Shape& x_shape, const Tensor& w, const Tensor& bias,
                                           const Conv2dParams& p, DType compute, Layout src_layout,
                                           Layout dst_layout, const Epilogue& epilogue) {
  const int tile = winograd_tile(x_shape, w, p, compute);
  if (tile && epilogue.scale == 1.0f) {
    // The Winograd kernels fuse the residual; an output scale (always 1 in SD) stays with oneDNN.
    return cpu::prepare_conv2d_winograd_f32(x_shape, w, bias, p, src_layout, dst_layout, tile);
  }
  return prepare_conv2d_dnnl(x_shape, w, bias, p, compute, src_layout, dst_layout, epilogue);
}

}  // namespace taiyi::ops
