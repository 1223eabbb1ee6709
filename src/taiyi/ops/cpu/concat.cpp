// Concatenation along one dim (torch.cat), any dtype: a byte copy per (outer index, input), or f32
// rounded into bf16. Each
// copy also prefetches the same input's part ~4 KiB further on (the channels-last skip concats copy
// a pixel's channels at a time, 1-2.5 KiB, and this VM's hardware prefetchers leave such a
// stream near 10 GB/s: see norm_f32.cpp).
#include <cstring>

#include "taiyi/ops/cpu/cpu_kernels.h"

namespace taiyi::ops::cpu {

void concat_contiguous(const std::vector<Tensor>& xs, int dim, const Tensor& y) {
  // f32 inputs into a bf16 output are rounded (nearest even) as they are copied (graph mode: the
  // up blocks' skip concats, read by a GroupNorm and a 1x1 convolution that take bf16).
  const bool to_bf16 = y.dtype() == DType::BF16 && !xs.empty() && xs[0].dtype() == DType::F32;
  const size_t es = dtype_size(xs.empty() ? y.dtype() : xs[0].dtype()), ys = dtype_size(y.dtype());
  int64_t outer = 1, inner = 1;
  for (int d = 0; d < dim; ++d) outer *= y.size(d);
  for (int d = dim + 1; d < y.ndim(); ++d) inner *= y.size(d);
  const size_t y_row = static_cast<size_t>(y.size(dim) * inner) * ys;

  // Byte offset of each input's part inside one output row, and its length.
  std::vector<size_t> col(xs.size()), len(xs.size());
  size_t at = 0;
  for (size_t i = 0; i < xs.size(); ++i) {
    col[i] = at;
    len[i] = static_cast<size_t>(xs[i].size(dim) * inner) * es;
    at += len[i];
  }
  std::vector<int64_t> ahead(xs.size());
  for (size_t i = 0; i < xs.size(); ++i)
    ahead[i] = len[i] == 0 ? 0 : static_cast<int64_t>((4096 + len[i] - 1) / len[i]);
  std::byte* py = static_cast<std::byte*>(y.raw_data());
  const int64_t n_in = static_cast<int64_t>(xs.size()), items = outer * n_in;
#pragma omp parallel for schedule(static) if (items > 1 && y.nbytes() > (1 << 20))
  for (int64_t item = 0; item < items; ++item) {
    const int64_t o = item / n_in;
    const size_t i = static_cast<size_t>(item % n_in);
    if (len[i] == 0) continue;
    const std::byte* src = static_cast<const std::byte*>(xs[i].raw_data()) + static_cast<size_t>(o) * len[i];
    if (o + ahead[i] < outer)
      for (size_t b = 0; b < len[i]; b += 64) __builtin_prefetch(src + ahead[i] * len[i] + b, 0, 3);
    std::byte* dst = py + static_cast<size_t>(o) * y_row + col[i] / es * ys;
    if (to_bf16) {
      round_to_bf16(reinterpret_cast<const float*>(src), reinterpret_cast<uint16_t*>(dst),
                    static_cast<int64_t>(len[i] / es));
    } else {
      std::memcpy(dst, src, len[i]);
    }
  }
}

}  // namespace taiyi::ops::cpu
