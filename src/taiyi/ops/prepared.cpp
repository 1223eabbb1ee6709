// ops::prepare_conv2d: picks the kernel a convolution is bound to at compile time.
//
// f32 3x3 stride-1 convolutions go to our Winograd kernels (conv2d_winograd_f32.cpp; oneDNN 2.6
// has Winograd only for AVX-512): F(4x4, 3x3) at 32x32 outputs and above (2.8-3.2x oneDNN's
// direct AVX2 kernel on the UNet's shapes, weights 4x their memory), F(2x2, 3x3) at 16x16 (2.2x,
// weights 1.78x). The 8x8 layers stay with oneDNN: F(2x2, 3x3) is 2x faster there too, but those
// layers hold 1 GB of the UNet's weights and take only ~0.7 s of a step. Everything else, bf16
// included, goes to oneDNN. TAIYI_WINOGRAD=all takes 8x8 too (F(2x2, 3x3)); TAIYI_WINOGRAD=0 turns
// Winograd off (A/B runs).
#include "taiyi/ops/prepared.h"

#include <cstdlib>
#include <string>

#include "taiyi/ops/cpu/conv2d_winograd_f32.h"
#include "taiyi/ops/cpu/prepared_kernels.h"

namespace taiyi::ops {

namespace {

enum class WinogradPolicy { kOff, kLarge, kAll };

WinogradPolicy winograd_policy() {
  const char* v = std::getenv("TAIYI_WINOGRAD");
  if (!v) return WinogradPolicy::kLarge;
  const std::string s(v);
  if (s == "0" || s == "off") return WinogradPolicy::kOff;
  if (s == "all") return WinogradPolicy::kAll;
  return WinogradPolicy::kLarge;
}

// The Winograd output tile for this convolution (4 or 2), or 0 for oneDNN.
int winograd_tile(const Shape& x_shape, const Tensor& w, const Conv2dParams& p, DType compute) {
  if (compute != DType::F32 || !cpu::winograd_f32_applicable(x_shape, w, p)) return 0;
  const WinogradPolicy policy = winograd_policy();
  if (policy == WinogradPolicy::kOff) return 0;
  const int64_t ho = x_shape[2] + p.pad_top + p.pad_bottom - 2, wo = x_shape[3] + p.pad_left + p.pad_right - 2;
  if (ho * wo >= 32 * 32) return 4;
  if (ho * wo >= 16 * 16 || policy == WinogradPolicy::kAll) return 2;
  return 0;
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
