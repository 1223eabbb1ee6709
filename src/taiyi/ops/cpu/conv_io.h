// What a prepared convolution's run() reads and writes (ops/prepared.h: inputs [x, residual?] and
// out), as raw pointers and NCHW-ordered element strides, for the kernels that index memory
// themselves (Winograd f32 and bf16, the bf16 1x1 convolution, the direct AMX convolution).
//
//   const auto [x, sx, res, sr, y, sy] = conv_io(in, out);
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "taiyi/ops/prepared.h"
#include "taiyi/tensor/tensor.h"

namespace taiyi::ops::cpu {

struct Strides4 {
  int64_t n, c, h, w;
};

inline Strides4 strides4(const Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)}; }

struct ConvIO {
  const float* x;
  Strides4 sx;
  const float* res;  // the fused epilogue's residual, or null (then sr is sy)
  Strides4 sr;
  float* y;
  Strides4 sy;
};

inline ConvIO conv_io(const std::vector<Tensor>& in, const Tensor& out) {
  const bool has_res = in.size() > 1 && in[1].defined();
  const Strides4 sy = strides4(out);
  return {in[0].data<float>(),
          strides4(in[0]),
          has_res ? in[1].data<float>() : nullptr,
          has_res ? strides4(in[1]) : sy,
          out.data<float>(),
          sy};
}

// The channels-last AMX convolutions' (Winograd and direct) checks of their run() arguments: x
// [n, cin, h, w] in src and the output of cout channels in dst, channels-last (channel stride 1),
// and where `residual` a residual in[1] like the output (also in place); with `dense_input`, x
// dense channels-last (a GroupNorm prologue reads it so). Returns the residual's data and strides
// (null and the output's strides without one). `kernel` names the kernel in the errors.
struct NhwcResidual {
  const void* data;
  Strides4 s;
};
inline NhwcResidual check_nhwc_conv_io(const std::vector<Tensor>& in, const Tensor& out, int64_t n, int64_t cin,
                                       int64_t h, int64_t w, int64_t cout, DType src, DType dst, bool residual,
                                       bool dense_input, const std::string& kernel) {
  const Tensor& x = in.at(0);
  const auto nhwc = [&](const Tensor& t) {
    return t.ndim() == 4 && t.size(0) == n && t.size(2) == h && t.size(3) == w && t.stride(1) == 1;
  };
  if (x.dtype() != src || !nhwc(x) || x.size(1) != cin)
    throw Error(kernel + ": prepared for a channels-last " + dtype_name(src) + " input [" + std::to_string(n) + ", " +
                std::to_string(cin) + ", " + std::to_string(h) + ", " + std::to_string(w) + "], given " + x.describe());
  if (out.dtype() != dst || !nhwc(out) || out.size(1) != cout)
    throw Error(kernel + ": prepared for a channels-last " + dtype_name(dst) + " output of " + std::to_string(cout) +
                " channels, given " + out.describe());
  NhwcResidual r{nullptr, strides4(out)};
  if (residual) {
    const Tensor& t = in.at(1);
    if (t.dtype() != dst || !nhwc(t) || t.size(1) != cout)
      throw Error(kernel + ": the residual " + t.describe() + " does not match the output " + out.describe());
    r = {t.raw_data(), strides4(t)};
  }
  if (dense_input && (x.stride(3) != cin || x.stride(2) != w * cin || x.stride(0) != h * w * cin))
    throw Error(kernel + ": the GroupNorm prologue reads a dense channels-last input, given " + x.describe());
  return r;
}

// A GroupNorm+SiLU prologue those kernels take (ops::Prologue; none where groups is 0): on a bf16
// input whose channels split evenly into the groups, f32 gamma and beta of one value per channel
// or none. Throws naming `kernel` otherwise.
inline void check_nhwc_prologue(const Shape& x_shape, DType src, const Prologue& prologue, const std::string& kernel) {
  const auto per_channel = [&](const Tensor& t) {
    return !t.defined() || (t.dtype() == DType::F32 && t.numel() == x_shape[1]);
  };
  if (prologue.groups > 0 && (src != DType::BF16 || x_shape[1] % prologue.groups != 0 || !per_channel(prologue.gamma) ||
                              !per_channel(prologue.beta)))
    throw Error(kernel + ": a GroupNorm prologue of " + std::to_string(prologue.groups) +
                " groups needs a bf16 input of channels divisible by them and f32 gamma and beta of one value per "
                "channel; given a " +
                std::string(dtype_name(src)) + " input " + shape_str(x_shape));
}

}  // namespace taiyi::ops::cpu
