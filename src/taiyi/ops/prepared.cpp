// ops::prepare_conv2d: picks the kernel a convolution is bound to at compile time.
//
// f32 3x3 stride-1 convolutions at 32x32 outputs and above go to our Winograd F(4x4, 3x3)
// kernel (conv2d_winograd_f32.cpp: 2.8-3.2x oneDNN 2.6's direct AVX2 kernel on the UNet's
// shapes); everything else, bf16 included, to oneDNN. Below 32x32 Winograd still wins on time
// (2.8x at 16x16) but its weights take 4x the memory, and those layers hold most of the UNet's
// weights: TAIYI_WINOGRAD=all takes them too, TAIYI_WINOGRAD=0 turns Winograd off (A/B runs).
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

bool use_winograd(const Shape& x_shape, const Tensor& w, const Conv2dParams& p, DType compute) {
  if (compute != DType::F32 || !cpu::winograd_f32_applicable(x_shape, w, p)) return false;
  const WinogradPolicy policy = winograd_policy();
  if (policy == WinogradPolicy::kOff) return false;
  const int64_t ho = x_shape[2] + p.pad_top + p.pad_bottom - 2, wo = x_shape[3] + p.pad_left + p.pad_right - 2;
  return policy == WinogradPolicy::kAll || ho * wo >= 32 * 32;
}

}  // namespace

std::unique_ptr<PreparedOp> prepare_conv2d(const Shape& x_shape, const Tensor& w, const Tensor& bias,
                                           const Conv2dParams& p, DType compute, Layout src_layout,
                                           Layout dst_layout, const Epilogue& epilogue) {
  if (use_winograd(x_shape, w, p, compute) && epilogue.scale == 1.0f) {
    // The Winograd kernel fuses the residual; an output scale (never 1 in SD) stays with oneDNN.
    return cpu::prepare_conv2d_winograd_f32(x_shape, w, bias, p, src_layout, dst_layout);
  }
  return prepare_conv2d_dnnl(x_shape, w, bias, p, compute, src_layout, dst_layout, epilogue);
}

}  // namespace taiyi::ops
