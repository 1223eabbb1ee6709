// Nearest-neighbour 2-D resize, f32, as torch.nn.functional.interpolate(mode="nearest",
// size=(out_h, out_w)) on CPU: src = min(floor(dst * (float)in / out), in - 1) in f32
// arithmetic (aten/src/ATen/native/UpSample.h, nearest_idx), dst >> 1 when out == 2 * in.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "taiyi/ops/cpu/cpu_kernels.h"

namespace taiyi::ops::cpu {

int64_t nearest_source_index(int64_t dst, int64_t in_size, int64_t out_size) {
  if (out_size == in_size) return dst;
  if (out_size == 2 * in_size) return dst >> 1;
  const float scale = static_cast<float>(in_size) / static_cast<float>(out_size);
  const auto src = static_cast<int64_t>(std::floor(static_cast<float>(dst) * scale));
  return std::min(src, in_size - 1);
}

void upsample_nearest_f32(const Tensor& x, const Tensor& y) {
  const int64_t planes = x.size(0) * x.size(1), h = x.size(2), w = x.size(3);
  const int64_t oh = y.size(2), ow = y.size(3);
  std::vector<int64_t> src_col(static_cast<size_t>(ow));
  for (int64_t j = 0; j < ow; ++j) src_col[j] = nearest_source_index(j, w, ow);
  const float* px = x.data<float>();
  float* py = y.data<float>();
  const int64_t rows = planes * oh;
#pragma omp parallel for schedule(static) if (rows * ow > 32768)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t plane = r / oh, i = r % oh;
    const float* xr = px + (plane * h + nearest_source_index(i, h, oh)) * w;
    float* yr = py + r * ow;
    if (ow == 2 * w) {
      for (int64_t j = 0; j < w; ++j) yr[2 * j] = yr[2 * j + 1] = xr[j];
    } else {
      for (int64_t j = 0; j < ow; ++j) yr[j] = xr[src_col[j]];
    }
  }
}

void upsample_nearest_nhwc_f32(const Tensor& x, const Tensor& y) {
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  const int64_t oh = y.size(2), ow = y.size(3);
  const float* px = x.data<float>();
  float* py = y.data<float>();
  const int64_t rows = n * oh;
#pragma omp parallel for schedule(static) if (rows * ow * c > 32768)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t s = r / oh, i = r % oh;
    const float* xr = px + (s * h + nearest_source_index(i, h, oh)) * w * c;
    float* yr = py + r * ow * c;
    for (int64_t j = 0; j < ow; ++j) {
      const float* src = xr + nearest_source_index(j, w, ow) * c;
      std::copy(src, src + c, yr + j * c);
    }
  }
}

void upsample_nearest_nhwc_to_bf16(const Tensor& x, const Tensor& y) {
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  const int64_t oh = y.size(2), ow = y.size(3);
  std::vector<int64_t> src_col(static_cast<size_t>(ow)), first(static_cast<size_t>(h), -1),
      count(static_cast<size_t>(h), 0);
  for (int64_t j = 0; j < ow; ++j) src_col[j] = nearest_source_index(j, w, ow);
  // The output rows that read one source row are consecutive (the index only grows with dst).
  for (int64_t i = 0; i < oh; ++i) {
    const int64_t si = nearest_source_index(i, h, oh);
    if (first[si] < 0) first[si] = i;
    ++count[si];
  }
  // An f32 source is rounded (once per source pixel), a bf16 one copied.
  const bool bf16_in = x.dtype() == DType::BF16;
  const float* px = bf16_in ? nullptr : x.data<float>();
  const uint16_t* pxb = bf16_in ? x.data_u16() : nullptr;
  uint16_t* py = y.data_u16();
  const auto row_bytes = static_cast<size_t>(ow * c) * sizeof(uint16_t);
  const auto pixel_bytes = static_cast<size_t>(c) * sizeof(uint16_t);
  // Each source row rounded once into its first output row, pixel by pixel (a repeated source
  // pixel copied), then that row copied to the others.
#pragma omp parallel for schedule(static) if (n * oh * ow * c > 32768)
  for (int64_t r = 0; r < n * h; ++r) {
    const int64_t s = r / h, si = r % h;
    if (count[si] == 0) continue;
    const int64_t row = (s * h + si) * w * c;
    uint16_t* y0 = py + (s * oh + first[si]) * ow * c;
    for (int64_t j = 0; j < ow; ++j) {
      if (j > 0 && src_col[j] == src_col[j - 1]) {
        std::memcpy(y0 + j * c, y0 + (j - 1) * c, pixel_bytes);
      } else if (bf16_in) {
        std::memcpy(y0 + j * c, pxb + row + src_col[j] * c, pixel_bytes);
      } else {
        round_to_bf16(px + row + src_col[j] * c, y0 + j * c, c);
      }
    }
    for (int64_t k = 1; k < count[si]; ++k) std::memcpy(y0 + k * ow * c, y0, row_bytes);
  }
}

}  // namespace taiyi::ops::cpu
