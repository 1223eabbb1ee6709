// What a prepared convolution's run() reads and writes (ops/prepared.h: inputs [x, residual?] and
// out), as raw pointers and NCHW-ordered element strides, for the kernels that index memory
// themselves (Winograd f32 and bf16, the bf16 1x1 convolution).
//
//   const auto [x, sx, res, sr, y, sy] = conv_io(in, out);
#pragma once

#include <cstdint>
#include <vector>

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
  return {in[0].data<float>(), strides4(in[0]),          has_res ? in[1].data<float>() : nullptr,
          has_res ? strides4(in[1]) : sy, out.data<float>(), sy};
}

}  // namespace taiyi::ops::cpu
