// A 3x3 convolution (stride 1, padding 1) of a nearest-2x upsampled input, computed on the input
// itself: output pixel (2i + a, 2j + b) sees input rows i - 1 + a .. i + a and columns j - 1 + b ..
// j + b only, the 3x3 taps falling on them in pairs. So each of the four phases (a, b) is a 2x2
// convolution of x with summed taps,
//   a = 0: rows (i - 1: w[0], i: w[1] + w[2]), padding top 1;  a = 1: rows (i: w[0] + w[1], i + 1: w[2]), bottom 1,
// and likewise for the columns: 16 products per 2x2 block of outputs instead of 36 (2.25x fewer).
// The four run as oneDNN convolutions (conv2d_prepared_dnnl.cpp, weights summed in f32 and packed
// once) into dense scratch in the output's layout, and a copy interleaves them into the output
// (oneDNN 2.6 has no fast kernel for a strided output). The upsampler convolutions of the VAE, measured on the
// Xeon with AMX (bf16, 2 threads): [1,512,128,128] -> 256x256: 149.8 -> 57.4 ms for the phases;
// [1,256,256,256] -> 512x512: 148.4 -> 76.8 ms. The summed taps are rounded to bf16 once each,
// as the original taps were: bf16's error, not the same roundings (graph/passes/fuse_upsample_conv.cpp).
#include <omp.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <memory>
#include <string>

#include "taiyi/ops/cpu/cpu_kernels.h"
#include "taiyi/ops/cpu/prepared_kernels.h"

namespace taiyi::ops::cpu {

namespace {

size_t round_up64(size_t n) { return (n + 63) / 64 * 64; }

class UpsampleConv2d : public PreparedOp {
 public:
  UpsampleConv2d(const Shape& xs, const Tensor& w, const Tensor& bias, DType compute, Layout src_layout,
                 Layout dst_layout, DType src, DType dst)
      : n_(xs[0]), h_(xs[2]), w_(xs[3]), cout_(w.size(0)), dst_layout_(dst_layout), dst_(dst) {
    const int64_t cin = xs[1];
    const Tensor wc = w.contiguous();
    const float* g = wc.data<float>();
    // Row (or column) taps of phase a: which 3x3 rows add into each of the 2.
    constexpr int kTaps[2][2][2] = {{{0, -1}, {1, 2}}, {{0, 1}, {2, -1}}};
    for (int a = 0; a < 2; ++a)
      for (int b = 0; b < 2; ++b) {
        Tensor wp = Tensor::empty({cout_, cin, 2, 2});
        float* d = wp.data<float>();
        for (int64_t oc = 0; oc < cout_ * cin; ++oc)
          for (int r = 0; r < 2; ++r)
            for (int c = 0; c < 2; ++c) {
              double sum = 0.0;
              for (int ky : kTaps[a][r])
                for (int kx : kTaps[b][c])
                  if (ky >= 0 && kx >= 0) sum += g[oc * 9 + ky * 3 + kx];
              d[oc * 4 + r * 2 + c] = static_cast<float>(sum);
            }
        Conv2dParams p;
        p.pad_top = 1 - a;
        p.pad_bottom = a;
        p.pad_left = 1 - b;
        p.pad_right = b;
        phases_[static_cast<size_t>(a * 2 + b)] =
            prepare_conv2d_dnnl(xs, wp, bias, p, compute, src_layout, dst_layout, {}, src, dst);
      }
    bias_ = Tensor::zeros({cout_});
    if (bias.defined()) bias_.copy_from(bias.contiguous());
    phase_bytes_ = round_up64(static_cast<size_t>(n_ * h_ * w_ * cout_) * dtype_size(dst));
    for (const auto& ph : phases_) pad_bytes_ = std::max(pad_bytes_, ph->scratch_bytes());
    flops_ = 2.0 * n_ * cout_ * (2 * h_) * (2 * w_) * cin * 9;
    describe_ = "conv2d upsample2x as 4 phase convs 2x2 (" + phases_[0]->describe() + ")";
  }

  // Moments of a bf16 channels-last output (ops::ChannelMoments, about the bias), each output row's
  // added as its copy finishes, while it is in this core's caches.
  bool write_moments(const std::shared_ptr<ChannelMoments>& m) const override {
    if (m && (dst_ != DType::BF16 || dst_layout_ != Layout::kNHWC)) return false;
    out_moments_ = m;
    threads_ = std::max(1, omp_get_max_threads());
    part_.assign(m ? static_cast<size_t>(threads_ * n_ * 2 * cout_) : 0, 0.0);
    return true;
  }

  void run(const std::vector<Tensor>& in, const Tensor& out, std::byte* scratch) const override {
    if (out.dtype() != dst_ || out.strides() != layout_strides(out.shape(), dst_layout_))
      throw Error("conv2d upsample2x: prepared for a dense " + std::string(dtype_name(dst_)) +
                  (dst_layout_ == Layout::kNHWC ? " channels-last" : " NCHW") + " output, given " + out.describe());
    const Shape ps = {n_, cout_, h_, w_};
    std::byte* pad = scratch + 4 * phase_bytes_;
    for (size_t k = 0; k < 4; ++k) {
      const Tensor phase = Tensor::from_storage(Storage::borrow(scratch + k * phase_bytes_, phase_bytes_, nullptr), 0,
                                                ps, layout_strides(ps, dst_layout_), dst_);
      phases_[k]->run({in.at(0)}, phase, pad);
    }
    // out[.., 2i + a, 2j + b, ..] = phase (a, b)[.., i, j, ..], a unit at a time: a pixel's Cout
    // values (NHWC), or one value (NCHW, where each channel's plane has its own rows).
    const size_t unit = (dst_layout_ == Layout::kNHWC ? static_cast<size_t>(cout_) : 1) * dtype_size(dst_);
    const int64_t rows = (dst_layout_ == Layout::kNHWC ? n_ : n_ * cout_) * h_;  // of each phase
    auto* y = static_cast<std::byte*>(out.raw_data());
    const bool moments = out_moments_ != nullptr;
    if (moments) std::fill(part_.begin(), part_.end(), 0.0);
    const int threads = std::min(threads_, std::max(1, omp_get_max_threads()));
#pragma omp parallel for schedule(static) num_threads(moments ? threads : omp_get_max_threads())
    for (int64_t r = 0; r < rows * 2; ++r) {
      const int64_t a = r % 2, i = r / 2;
      std::byte* row = y + static_cast<size_t>(i * 2 + a) * static_cast<size_t>(2 * w_) * unit;
      const std::byte* p0 = scratch + static_cast<size_t>(a * 2) * phase_bytes_ + static_cast<size_t>(i * w_) * unit;
      const std::byte* p1 = p0 + phase_bytes_;
      for (int64_t j = 0; j < w_; ++j) {
        std::memcpy(row + static_cast<size_t>(2 * j) * unit, p0 + static_cast<size_t>(j) * unit, unit);
        std::memcpy(row + static_cast<size_t>(2 * j + 1) * unit, p1 + static_cast<size_t>(j) * unit, unit);
      }
      if (moments) {  // (NHWC: row i of sample i / h)
        double* d1 = part_.data() + static_cast<size_t>((omp_get_thread_num() * n_ + i / h_) * 2 * cout_);
        add_moments_bf16(reinterpret_cast<const uint16_t*>(row), 2 * w_, cout_, bias_.data<float>(), d1, d1 + cout_);
      }
    }
    if (moments) out_moments_->fill(n_, cout_, 4 * h_ * w_, bias_.data<float>(), part_, threads_, out.raw_data());
  }

  size_t scratch_bytes() const override { return 4 * phase_bytes_ + pad_bytes_; }
  size_t packed_weight_bytes() const override {
    size_t bytes = 0;
    for (const auto& ph : phases_) bytes += ph->packed_weight_bytes();
    return bytes;
  }
  std::string describe() const override { return describe_ + (out_moments_ ? " (sums its output's moments)" : ""); }
  double flops() const override { return flops_; }

 private:
  int64_t n_, h_, w_, cout_;
  Layout dst_layout_;
  DType dst_;
  std::array<std::unique_ptr<PreparedOp>, 4> phases_;
  Tensor bias_;                                          // f32 [Cout], zeros where none: the moments' shift
  mutable std::shared_ptr<ChannelMoments> out_moments_;  // write_moments
  mutable std::vector<double> part_;                     // [thread][n][d1, d2][Cout]
  mutable int threads_ = 1;
  size_t phase_bytes_ = 0, pad_bytes_ = 0;
  double flops_ = 0;
  std::string describe_;
};

}  // namespace

std::unique_ptr<PreparedOp> prepare_conv2d_upsample2x(const Shape& x_shape, const Tensor& w, const Tensor& bias,
                                                      DType compute, Layout src_layout, Layout dst_layout, DType src,
                                                      DType dst) {
  if (x_shape.size() != 4 || w.ndim() != 4 || w.size(1) != x_shape[1] || w.size(2) != 3 || w.size(3) != 3)
    throw Error("conv2d upsample2x: needs a 3x3 weight over the input's channels, given input " + shape_str(x_shape) +
                ", weight " + w.describe());
  return std::make_unique<UpsampleConv2d>(x_shape, w, bias, compute, src_layout, dst_layout, src, dst);
}

}  // namespace taiyi::ops::cpu
