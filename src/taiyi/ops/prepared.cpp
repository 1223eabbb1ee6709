// ops::prepare_conv2d: picks the kernel a convolution is bound to at compile time.
//
// f32 3x3 stride-1 convolutions go to our Winograd kernels (conv2d_winograd_f32.cpp; oneDNN 2.6
// has Winograd only for AVX-512): F(4x4, 3x3) at 16x16 outputs and above (2.5-3x oneDNN's direct
// AVX2 kernel on the UNet's shapes), F(2x2, 3x3) below (about 1.7-1.9x at 8x8, where F(4x4, 3x3)
// has too few tiles per weight). Both keep the weights at their own size. Everything else, bf16
// included, goes to oneDNN, except bf16 3x3 convolutions on CPUs with avx512_bf16 and no AMX (AMD
// Zen 4), which go to our bf16 F(2x2,3x3) kernel (conv2d_winograd_bf16_avx512.cpp), and bf16 1x1
// convolutions from NCHW to NCHW there, to our kernel that reads and writes NCHW as it is
// (conv2d_1x1_bf16_avx512.cpp). On AMX, bf16 3x3 convolutions between channels-last activations
// of up to 256 output channels (the VAE's 128- and 256-channel levels) go to our F(2x2,3x3) AMX
// kernel (conv2d_winograd_bf16_amx.cpp: 1.1-1.6x oneDNN's brgconv there; at 320 channels and more,
// the UNet's, oneDNN is as fast or faster), except with a per-call bias, which oneDNN takes; those
// of 320-768 input channels and a width a multiple of 32 (the VAE's 512-channel ones, the UNet's
// 320- and 640-channel ones) to our direct AMX kernel (conv2d_direct_bf16_amx.cpp), which reads a
// blocked copy of its input (and takes a GroupNorm+SiLU prologue, as the Winograd does).
// A convolution of a nearest-2x upsampled input (Conv2dParams upsample 2: graph mode's upsamplers,
// graph/passes/fuse_upsample_conv.cpp) goes to conv2d_upsample_dnnl.cpp: four 2x2 convolutions of
// the input itself, 2.25x fewer products.
// TAIYI_WINOGRAD=0 turns Winograd off, TAIYI_CONV1X1=0 the 1x1 kernel, TAIYI_FUSE_UPSAMPLE=0 the
// upsampler fusion (A/B runs).
// ops::prepare_linear likewise: oneDNN's matmul (linear_prepared_dnnl.cpp), except a bf16 linear
// on AMX with no post-op, which goes to linear_bf16_amx.cpp (TAIYI_AMX_LINEAR=0 turns it off,
// TAIYI_AMX_LINEAR_WHOLE_K=0 only for reductions below 1280).
#include "taiyi/ops/prepared.h"

#include <cstdlib>
#include <string>

#include "taiyi/ops/cpu/conv2d_winograd_f32.h"
#include "taiyi/ops/cpu/dnnl_context.h"
#include "taiyi/ops/cpu/prepared_kernels.h"

namespace taiyi::ops {

namespace {

// Whether an A/B switch (TAIYI_WINOGRAD, TAIYI_CONV1X1, TAIYI_GEGLU_KERNEL, TAIYI_AMX_LINEAR, ...) is set to "0" or
// "off".
bool switched_off(const char* env_var) {
  const char* v = std::getenv(env_var);
  const std::string s = v ? v : "";
  return s == "0" || s == "off";
}

bool winograd_enabled() { return !switched_off("TAIYI_WINOGRAD"); }

// The Winograd output tile for this convolution (4 or 2), or 0 for oneDNN.
int winograd_tile(const Shape& x_shape, const Tensor& w, const Conv2dParams& p, DType compute) {
  if (compute != DType::F32 || p.upsample != 1 || !winograd_enabled() || !cpu::winograd_f32_applicable(x_shape, w, p))
    return 0;
  const int64_t ho = x_shape[2] + p.pad_top + p.pad_bottom - 2, wo = x_shape[3] + p.pad_left + p.pad_right - 2;
  return ho * wo >= 16 * 16 ? 4 : 2;
}

// bf16 3x3 convolutions go to our F(2x2,3x3) AVX512-BF16 kernel where oneDNN has no AMX (there its
// direct kernel is already at the machine's bf16 peak, so only fewer products help), when both
// channel counts are large enough for the products to dominate the transforms.
bool winograd_bf16(const Shape& x_shape, const Tensor& w, const Conv2dParams& p, DType compute) {
  return compute == DType::BF16 && winograd_enabled() && x_shape.size() == 4 && x_shape[1] >= 16 && w.size(0) >= 16 &&
         cpu::winograd_bf16_avx512_applicable(x_shape, w, p) && !cpu::dnnl_uses_amx();
}

// bf16 1x1 convolutions from NCHW to NCHW go to our AVX512-BF16 kernel where oneDNN has no AMX:
// oneDNN computes them at the peak too, but in channels-last memory, and transposing the input
// and the output costs as much as the product (the VAE's shortcuts at 512x512 and 256x256: 150
// and 220 GFLOP/s against 230 and 315). With either side channels-last (the transformers'
// proj_in and proj_out) oneDNN has no transpose to do there and stays. TAIYI_CONV1X1=0 keeps oneDNN.
bool conv1x1_bf16(const Shape& x_shape, const Tensor& w, const Conv2dParams& p, DType compute, Layout src_layout,
                  Layout dst_layout) {
  return compute == DType::BF16 && !switched_off("TAIYI_CONV1X1") && src_layout == Layout::kNCHW &&
         dst_layout == Layout::kNCHW && x_shape.size() == 4 && x_shape[1] >= 16 &&
         cpu::conv1x1_bf16_avx512_applicable(x_shape, w, p) && !cpu::dnnl_uses_amx();
}

}  // namespace

namespace {

enum class ConvKernel { kWinogradF32, kWinogradBf16, kWinogradAmx, kDirectAmx, kConv1x1Bf16, kDnnl, kUpsample2x };

// What our AMX convolutions take: bf16 compute between channels-last activations, no post-op, on a
// CPU where oneDNN uses AMX.
bool amx_channels_last(DType compute, Layout src_layout, Layout dst_layout, const Epilogue& epilogue) {
  return compute == DType::BF16 && src_layout == Layout::kNHWC && dst_layout == Layout::kNHWC &&
         epilogue.post_op == PostOp::kNone && cpu::dnnl_uses_amx();
}

// bf16 3x3 convolutions with channels-last activations on AMX go to our F(2x2,3x3) AMX kernel
// (conv2d_winograd_bf16_amx.cpp) where it beats oneDNN's direct brgconv (bench/conv_bench bf16-nhwc).
bool winograd_amx(const Shape& x_shape, const Tensor& w, const Conv2dParams& p, DType compute, Layout src_layout,
                  Layout dst_layout, const Epilogue& epilogue) {
  return winograd_enabled() && amx_channels_last(compute, src_layout, dst_layout, epilogue) &&
         cpu::winograd_bf16_amx_applicable(x_shape, w, p) && x_shape[1] <= 512 && w.size(0) <= 256 &&
         x_shape[1] * w.size(0) <= 512 * 256;
}

// bf16 3x3 convolutions with channels-last activations on AMX that the Winograd does not take, of
// 320-768 input and >= 320 output channels and a width a multiple of 32 (the VAE's 512-channel
// ones, the UNet's 320- and 640-channel ones) go to our direct AMX kernel
// (conv2d_direct_bf16_amx.cpp: 1.1-1.2x oneDNN's brgconv at [1, 512, 64, 64] and the UNet's
// shapes, as fast at [1, 512, 128, 128]; TAIYI_DIRECT_CONV=0 keeps oneDNN).
bool direct_amx(const Shape& x_shape, const Tensor& w, const Conv2dParams& p, DType compute, Layout src_layout,
                Layout dst_layout, const Epilogue& epilogue) {
  return !switched_off("TAIYI_DIRECT_CONV") && amx_channels_last(compute, src_layout, dst_layout, epilogue) &&
         cpu::direct_conv_bf16_amx_applicable(x_shape, w, p);
}

ConvKernel pick(const Shape& x_shape, const Tensor& w, const Conv2dParams& p, DType compute, Layout src_layout,
                Layout dst_layout, const Epilogue& epilogue) {
  if (p.upsample != 1) return ConvKernel::kUpsample2x;  // (prepare_conv2d checks it applies)
  // The Winograd kernels fuse the residual; an output scale (always 1 in SD) stays with oneDNN.
  if (epilogue.scale != 1.0f) return ConvKernel::kDnnl;
  if (winograd_tile(x_shape, w, p, compute)) return ConvKernel::kWinogradF32;
  if (winograd_bf16(x_shape, w, p, compute)) return ConvKernel::kWinogradBf16;
  if (winograd_amx(x_shape, w, p, compute, src_layout, dst_layout, epilogue)) return ConvKernel::kWinogradAmx;
  if (direct_amx(x_shape, w, p, compute, src_layout, dst_layout, epilogue)) return ConvKernel::kDirectAmx;
  if (conv1x1_bf16(x_shape, w, p, compute, src_layout, dst_layout)) return ConvKernel::kConv1x1Bf16;
  return ConvKernel::kDnnl;
}

// Whether the upsample2x kernel takes this convolution: a 3x3 one, stride 1, padding 1 (of the
// upsampled input), input upsampled by 2, nothing fused but the bias.
bool upsample2x_applies(const Shape& x_shape, const Tensor& w, const Conv2dParams& p, const Epilogue& epilogue) {
  return x_shape.size() == 4 && w.ndim() == 4 && w.size(1) == x_shape[1] && w.size(2) == 3 && w.size(3) == 3 &&
         p.stride_h == 1 && p.stride_w == 1 && p.pad_top == 1 && p.pad_bottom == 1 && p.pad_left == 1 &&
         p.pad_right == 1 && p.dilation_h == 1 && p.dilation_w == 1 && p.groups == 1 && p.upsample == 2 &&
         !epilogue.residual && epilogue.scale == 1.0f && epilogue.post_op == PostOp::kNone;
}

}  // namespace

bool conv2d_fuses_upsample(const Shape& up_shape, const Tensor& w, const Conv2dParams& p, DType compute) {
  if (switched_off("TAIYI_FUSE_UPSAMPLE") || compute != DType::BF16 || up_shape.size() != 4 || up_shape[2] % 2 != 0 ||
      up_shape[3] % 2 != 0)
    return false;
  Conv2dParams fused = p;
  fused.upsample = 2;
  const Shape x_shape = {up_shape[0], up_shape[1], up_shape[2] / 2, up_shape[3] / 2};
  const ConvKernel k = pick(up_shape, w, p, compute, Layout::kNHWC, Layout::kNHWC, {});
  return p.upsample == 1 && upsample2x_applies(x_shape, w, fused, {}) &&
         (k == ConvKernel::kDnnl || k == ConvKernel::kWinogradAmx || k == ConvKernel::kDirectAmx);
}

bool conv2d_writes_bf16(const Shape& x_shape, const Tensor& w, const Conv2dParams& p, DType compute, Layout src_layout,
                        Layout dst_layout, const Epilogue& epilogue, DType src) {
  const ConvKernel k = pick(x_shape, w, p, compute, src_layout, dst_layout, epilogue);
  if (k == ConvKernel::kUpsample2x)
    return compute == DType::BF16 && !switched_off("TAIYI_BF16_CONV_OUT") && dst_layout == Layout::kNHWC &&
           upsample2x_applies(x_shape, w, p, epilogue);
  if (k == ConvKernel::kWinogradAmx || k == ConvKernel::kDirectAmx)
    return !switched_off("TAIYI_BF16_CONV_OUT") && (!epilogue.residual || epilogue.residual_dtype == DType::BF16);
  return !switched_off("TAIYI_BF16_CONV_OUT") &&
         (src == DType::F32 || conv2d_takes_bf16_input(x_shape, w, p, compute, src_layout, dst_layout, epilogue)) &&
         k == ConvKernel::kDnnl &&
         conv2d_dnnl_writes_bf16(x_shape, w, p, compute, src_layout, dst_layout, epilogue, src);
}

bool conv2d_takes_bf16_input(const Shape& x_shape, const Tensor& w, const Conv2dParams& p, DType compute,
                             Layout src_layout, Layout dst_layout, const Epilogue& epilogue) {
  if (compute != DType::BF16 || (epilogue.post_op != PostOp::kNone && epilogue.post_op != PostOp::kBiasAdd))
    return false;
  const ConvKernel k = pick(x_shape, w, p, compute, src_layout, dst_layout, epilogue);
  return k == ConvKernel::kDnnl || k == ConvKernel::kWinogradAmx || k == ConvKernel::kDirectAmx ||
         (k == ConvKernel::kUpsample2x && src_layout == Layout::kNHWC && upsample2x_applies(x_shape, w, p, epilogue));
}

bool conv2d_takes_bias_add(const Shape& x_shape, const Tensor& w, const Conv2dParams& p, DType compute,
                           Layout src_layout, Layout dst_layout) {
  // (with a per-call bias oneDNN's kernel takes the convolution that would go to the AMX Winograd
  // or the direct AMX kernel)
  const ConvKernel k = pick(x_shape, w, p, compute, src_layout, dst_layout, {});
  return k == ConvKernel::kDnnl || k == ConvKernel::kWinogradAmx || k == ConvKernel::kDirectAmx;
}

bool geglu_bf16_supported() { return bf16_supported() && cpu::geglu_bf16_avx512_applicable(); }

bool geglu_bf16_preferred() {
  return !switched_off("TAIYI_GEGLU_KERNEL") && geglu_bf16_supported() && cpu::dnnl_uses_amx();
}

std::unique_ptr<PreparedOp> prepare_geglu_bf16(const Shape& x_shape) {
  if (!geglu_bf16_supported())
    throw Error("geglu: this CPU runs no bf16 GEGLU kernel (input " + shape_str(x_shape) + ")");
  return cpu::prepare_geglu_bf16_avx512(x_shape);
}

std::unique_ptr<PreparedOp> prepare_gelu_bf16(const Shape& x_shape) {
  if (!geglu_bf16_supported())
    throw Error("gelu: this CPU runs no bf16 GELU kernel (input " + shape_str(x_shape) + ")");
  return cpu::prepare_gelu_bf16_avx512(x_shape);
}

bool conv2d_prefers_channels_last(const Shape& x_shape, const Tensor& w, const Conv2dParams& p, DType compute) {
  return winograd_tile(x_shape, w, p, compute) == 0;
}

// Whether the A/B switches leave a linear with this input and epilogue to our AMX kernel:
// TAIYI_AMX_LINEAR=0 none, TAIYI_AMX_LINEAR_WHOLE_K=0 none with K below 1280, TAIYI_AMX_GELU=0 none
// with a gelu, TAIYI_FUSE_LINEAR_LN=0 none with a LayerNorm.
bool amx_linear_allowed(const Shape& x_shape, const Epilogue& epilogue) {
  return !switched_off("TAIYI_AMX_LINEAR") &&
         !(switched_off("TAIYI_AMX_LINEAR_WHOLE_K") && cpu::linear_bf16_amx_whole_k(x_shape)) &&
         !(switched_off("TAIYI_AMX_GELU") && epilogue.post_op == PostOp::kGelu) &&
         !(switched_off("TAIYI_FUSE_LINEAR_LN") && epilogue.layer_norm_eps > 0);
}

// Whether prepare_linear gives a bf16 linear (bf16 in and out) with this epilogue our AMX kernel.
bool amx_linear_taken(const Shape& x_shape, const Tensor& w, const Tensor& bias, const Epilogue& epilogue) {
  return amx_linear_allowed(x_shape, epilogue) &&
         cpu::linear_bf16_amx_applicable(x_shape, w, bias, DType::BF16, epilogue, DType::BF16, DType::BF16, false);
}

bool linear_gelu_in_epilogue_bf16(const Shape& x_shape, const Tensor& w, const Tensor& bias) {
  Epilogue gelu;
  gelu.post_op = PostOp::kGelu;
  return amx_linear_taken(x_shape, w, bias, gelu);
}

bool linear_takes_layer_norm_bf16(const Shape& x_shape, const Tensor& w, const Tensor& bias, const Epilogue& epilogue) {
  return epilogue.layer_norm_eps > 0 && amx_linear_taken(x_shape, w, bias, epilogue);
}

std::unique_ptr<PreparedOp> prepare_linear(const Shape& x_shape, const Tensor& w, const Tensor& bias, DType compute,
                                           const Epilogue& epilogue, DType src, DType dst, bool src_columns) {
  if (amx_linear_allowed(x_shape, epilogue) &&
      cpu::linear_bf16_amx_applicable(x_shape, w, bias, compute, epilogue, src, dst, src_columns))
    return cpu::prepare_linear_bf16_amx(x_shape, w, bias, epilogue, dst);
  return prepare_linear_dnnl(x_shape, w, bias, compute, epilogue, src, dst, src_columns);
}

bool conv2d_takes_group_norm_silu(const Shape& x_shape, const Tensor& w, const Conv2dParams& p, DType compute,
                                  Layout src_layout, Layout dst_layout, const Epilogue& epilogue, DType src,
                                  int64_t groups) {
  if (switched_off("TAIYI_FUSE_NORM_CONV") || groups <= 0 || x_shape.size() != 4 || x_shape[1] % groups != 0 ||
      src != DType::BF16)
    return false;
  const ConvKernel k = pick(x_shape, w, p, compute, src_layout, dst_layout, epilogue);
  return k == ConvKernel::kWinogradAmx || k == ConvKernel::kDirectAmx;
}

std::unique_ptr<PreparedOp> prepare_conv2d(const Shape& x_shape, const Tensor& w, const Tensor& bias,
                                           const Conv2dParams& p, DType compute, Layout src_layout, Layout dst_layout,
                                           const Epilogue& epilogue, DType src, DType dst, const Prologue& prologue) {
  if (prologue.groups > 0 &&
      !conv2d_takes_group_norm_silu(x_shape, w, p, compute, src_layout, dst_layout, epilogue, src, prologue.groups))
    throw Error("conv2d: no prepared kernel applies a GroupNorm of " + std::to_string(prologue.groups) +
                " groups and SiLU to the " + dtype_name(src) + " input " + shape_str(x_shape) + " here");
  if (epilogue.post_op != PostOp::kNone && epilogue.post_op != PostOp::kBiasAdd)
    throw Error("conv2d: gelu and multiply post-ops are for linears, not the convolution of input " +
                shape_str(x_shape));
  if (epilogue.residual && epilogue.residual_dtype != dst)
    throw Error("conv2d: no prepared kernel adds a " + std::string(dtype_name(epilogue.residual_dtype)) +
                " residual into the " + dtype_name(dst) + " output of the convolution of input " + shape_str(x_shape));
  if (epilogue.post_op == PostOp::kBiasAdd &&
      (epilogue.residual || !conv2d_takes_bias_add(x_shape, w, p, compute, src_layout, dst_layout)))
    throw Error("conv2d: no prepared kernel adds a per-call bias to the convolution of input " + shape_str(x_shape) +
                (epilogue.residual ? " with a residual" : " here"));
  if (src != DType::F32 &&
      !(src == DType::BF16 && conv2d_takes_bf16_input(x_shape, w, p, compute, src_layout, dst_layout, epilogue)))
    throw Error("conv2d: no prepared kernel reads a " + std::string(dtype_name(src)) + " input " + shape_str(x_shape) +
                " here");
  if (dst != DType::F32 && !conv2d_writes_bf16(x_shape, w, p, compute, src_layout, dst_layout, epilogue, src))
    throw Error("conv2d: no prepared kernel writes a " + std::string(dtype_name(dst)) + " output for input " +
                shape_str(x_shape) + " here");
  switch (pick(x_shape, w, p, compute, src_layout, dst_layout, epilogue)) {
    case ConvKernel::kWinogradF32:
      return cpu::prepare_conv2d_winograd_f32(x_shape, w, bias, p, src_layout, dst_layout,
                                              winograd_tile(x_shape, w, p, compute));
    case ConvKernel::kWinogradBf16:
      return cpu::prepare_conv2d_winograd_bf16_avx512(x_shape, w, bias, p, src_layout, dst_layout);
    case ConvKernel::kWinogradAmx:
      return cpu::prepare_conv2d_winograd_bf16_amx(x_shape, w, bias, p, epilogue, src, dst, prologue);
    case ConvKernel::kDirectAmx:
      return cpu::prepare_conv2d_direct_bf16_amx(x_shape, w, bias, p, epilogue, src, dst, prologue);
    case ConvKernel::kConv1x1Bf16:
      return cpu::prepare_conv2d_1x1_bf16_avx512(x_shape, w, bias, p, src_layout, dst_layout);
    case ConvKernel::kUpsample2x:
      if (!upsample2x_applies(x_shape, w, p, epilogue))
        throw Error("conv2d: an input upsampled by " + std::to_string(p.upsample) + " is taken only by a 3x3 " +
                    "convolution, stride 1, padding 1, with nothing fused but its bias; given input " +
                    shape_str(x_shape) + ", weight " + w.describe());
      return cpu::prepare_conv2d_upsample2x(x_shape, w, bias, compute, src_layout, dst_layout, src, dst);
    case ConvKernel::kDnnl: break;
  }
  return prepare_conv2d_dnnl(x_shape, w, bias, p, compute, src_layout, dst_layout, epilogue, src, dst);
}

}  // namespace taiyi::ops
