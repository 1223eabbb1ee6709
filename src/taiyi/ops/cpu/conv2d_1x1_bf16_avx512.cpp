// 1x1 convolution (stride 1, no padding) with bf16 products on AVX512-BF16 (vdpbf16ps), for CPUs
// that have avx512_bf16 but no AMX (AMD Zen 4). A 1x1 convolution is a matrix product per image,
//   Y[co][pixel] = sum_ci W[co][ci] X[ci][pixel] + bias[co] (+ residual),
// which oneDNN runs at the bf16 peak too, but only in channels-last memory: with NCHW activations
// (the UNet's and VAE's ResNet shortcuts, the transformers' proj_in / proj_out) it transposes the
// f32 input into nhwc bf16 and the output back, passes that cost as much as the product at these
// shapes (200-330 GFLOP/s at 64x64 and 32x32, 130-200 at the VAE's 512x512 and 256x256). Here
// pixels sit in the lanes, so NCHW rows are read and written as they are:
//   1. per block of pixels, pairs of input channels are rounded to bf16 and interleaved into
//      X [pixels/32][Cin/2][32 pixels][2 ci] (contiguous rows: 2 loads, a convert and a permute per
//      16 pixels; any other strides, e.g. channels-last: gathers);
//   2. (chunk of panels of 8 output channels, group of 32 pixels) items run an 8 x 32 register tile
//      (16 accumulators; per pair of input channels 2 loads of X, 8 broadcasts of W, 16 vdpbf16ps)
//      and write bias (+ residual) straight into `out` (contiguous rows: stores; else scatters).
// W is rounded to bf16 once, [Cout/8][Cin/2][8 co][2 ci]. Same arithmetic as oneDNN's bf16
// convolution: bf16 inputs and weights, f32 accumulation, f32 bias and residual.
#if defined(__x86_64__)
// GCC 12's AVX-512 intrinsics pass an uninitialised _mm512_undefined_ps() as the unused merge
// source of their unmasked forms, which -Wmaybe-uninitialized reports at each use.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#include "taiyi/ops/cpu/bf16_pairs_avx512.h"
#include "taiyi/ops/cpu/conv_io.h"
#include "taiyi/ops/cpu/cpu_isa.h"
#include "taiyi/ops/cpu/prepared_kernels.h"
#include "taiyi/tensor/dtype.h"

namespace taiyi::ops::cpu {

namespace {

constexpr int kLanes = 16;  // pixels per vector
constexpr int kMr = 8;      // output channels of a register tile (a panel)
constexpr int kNr = 32;     // pixels of a register tile (a group)
constexpr int64_t kMaxBlockPixels = 2048;
constexpr int64_t kXBudgetBytes = int64_t{2} << 20;   // the packed block of X stays in L2/L3
constexpr int64_t kWChunkBytes = int64_t{512} << 10;  // weights a thread runs against one group of X

size_t round_up64(size_t bytes) { return (bytes + 63) / 64 * 64; }

struct AlignedFree {
  void operator()(uint32_t* p) const { std::free(p); }
};

class Conv1x1Bf16 : public PreparedOp {
 public:
  Conv1x1Bf16(const Shape& xs, const Tensor& w, const Tensor& bias, Layout src_layout, Layout dst_layout)
      : n_(xs[0]), cin_(xs[1]), h_(xs[2]), w_(xs[3]), cout_(w.size(0)) {
    plane_ = h_ * w_;
    np_ = n_ * plane_;
    cin2_ = (cin_ + 1) / 2;
    npanels_ = (cout_ + kMr - 1) / kMr;
    const int64_t budget = std::max<int64_t>(kNr, kXBudgetBytes / (cin2_ * 4) / kNr * kNr);
    const int64_t max_pixels = std::min(kMaxBlockPixels, budget);
    nblocks_ = (np_ + max_pixels - 1) / max_pixels;
    tb_ = ((np_ + nblocks_ - 1) / nblocks_ + kNr - 1) / kNr * kNr;
    chunk_panels_ = even_chunk(npanels_, kWChunkBytes / (cin2_ * kMr * 4));
    threads_ = std::max(1, omp_get_max_threads());
    const size_t words = static_cast<size_t>(npanels_ * cin2_ * kMr);
    void* mem = std::aligned_alloc(64, round_up64(words * 4));
    if (mem == nullptr) throw Error("conv2d 1x1: out of memory for " + std::to_string(words) + " weights");
    w_packed_.reset(static_cast<uint32_t*>(mem));
    const Tensor wc = w.contiguous();
    const float* src = wc.data<float>();
    auto* dst = reinterpret_cast<uint16_t*>(w_packed_.get());
    for (int64_t panel = 0; panel < npanels_; ++panel)
      for (int64_t ci = 0; ci < 2 * cin2_; ++ci)
        for (int64_t r = 0; r < kMr; ++r) {
          const int64_t co = panel * kMr + r;
          const float v = co < cout_ && ci < cin_ ? src[co * cin_ + ci] : 0.0f;
          dst[((panel * cin2_ + ci / 2) * kMr + r) * 2 + ci % 2] = f32_to_bf16(v);
        }
    bias_.assign(static_cast<size_t>(npanels_ * kMr), 0.0f);
    if (bias.defined()) {
      const Tensor b = bias.contiguous();
      std::memcpy(bias_.data(), b.data<float>(), static_cast<size_t>(cout_) * sizeof(float));
    }
    describe_ = std::string("conv2d bf16 1x1:avx512_bf16") + (src_layout == Layout::kNHWC ? " nhwc" : " nchw") +
                (dst_layout == Layout::kNHWC ? "->nhwc" : "");
  }

  void run(const std::vector<Tensor>& in, const Tensor& out, std::byte* scratch) const override;
  size_t scratch_bytes() const override { return round_up64(static_cast<size_t>(tb_ * cin2_) * 4); }
  size_t packed_weight_bytes() const override { return static_cast<size_t>(npanels_ * cin2_ * kMr) * 4; }
  std::string describe() const override { return describe_; }
  double flops() const override { return 2.0 * np_ * cout_ * cin_; }

 private:
  void pack(const float* x, const Strides4& sx, int64_t t0, int64_t np_block, int64_t g, int64_t c2, uint32_t* v) const;
  void panel_group(int64_t panel, int64_t t0, int64_t np_block, int64_t group, const uint32_t* v, const float* res,
                   const Strides4& sr, float* y, const Strides4& sy) const;

  // Whether the 16 pixels from t (global) are one run of a dense row-major plane of strides s.
  bool contiguous_run(int64_t t, int64_t count, const Strides4& s) const {
    return s.w == 1 && s.h == w_ && t % plane_ + count <= plane_;
  }

  int64_t n_, cin_, h_, w_, cout_, plane_ = 0, np_ = 0, cin2_ = 0, npanels_ = 0, nblocks_ = 0, tb_ = 0;
  int64_t chunk_panels_ = 1;
  int threads_ = 1;
  std::unique_ptr<uint32_t[], AlignedFree> w_packed_;  // [panel][cin / 2][8] pairs of bf16
  std::vector<float> bias_;
  std::string describe_;
};

// X[g / 2][c2][lane (g % 2) * 16 + l][2] = bf16(x[2 c2], x[2 c2 + 1]) of pixel t0 + 16 g + l (zeros
// past the block's pixels and past Cin).
TAIYI_TARGET_AVX512_BF16 void Conv1x1Bf16::pack(const float* x, const Strides4& sx, int64_t t0, int64_t np_block,
                                                int64_t g, int64_t c2, uint32_t* v) const {
  const int64_t first = g * kLanes, count = std::clamp<int64_t>(np_block - first, 0, kLanes);
  const int64_t t = t0 + first;
  __m512 ch[2];
  if (count == kLanes && contiguous_run(t, kLanes, sx)) {
    const float* row = x + t / plane_ * sx.n + t % plane_;
    for (int k = 0; k < 2; ++k)
      ch[k] = 2 * c2 + k < cin_ ? _mm512_loadu_ps(row + (2 * c2 + k) * sx.c) : _mm512_setzero_ps();
  } else {
    alignas(64) int32_t off[kLanes];
    for (int l = 0; l < kLanes; ++l) {
      const int64_t tl = std::min(t + l, np_ - 1), p = tl % plane_;
      off[l] = static_cast<int32_t>(tl / plane_ * sx.n + p / w_ * sx.h + p % w_ * sx.w);
    }
    const __m512i idx = _mm512_load_si512(off);
    for (int k = 0; k < 2; ++k)
      ch[k] = 2 * c2 + k < cin_
                  ? _mm512_mask_i32gather_ps(_mm512_setzero_ps(), first_lanes(count), idx, x + (2 * c2 + k) * sx.c, 4)
                  : _mm512_setzero_ps();
  }
  for (auto& c : ch) c = _mm512_maskz_mov_ps(first_lanes(count), c);
  _mm512_store_si512(v + ((g / 2) * cin2_ + c2) * kNr + (g % 2) * kLanes, as_si(pair_rows(ch[0], ch[1])));
}

TAIYI_TARGET_AVX512_BF16 void Conv1x1Bf16::panel_group(int64_t panel, int64_t t0, int64_t np_block, int64_t group,
                                                       const uint32_t* v, const float* res, const Strides4& sr,
                                                       float* y, const Strides4& sy) const {
  const uint32_t* u = w_packed_.get() + panel * cin2_ * kMr;
  const uint32_t* vp = v + group * cin2_ * kNr;
  __m512 acc[kMr][2];
  for (auto& a : acc) a[0] = a[1] = _mm512_setzero_ps();
  for (int64_t c2 = 0; c2 < cin2_; ++c2) {
    const __m512bh v0 = as_bh(_mm512_load_si512(vp + c2 * kNr)), v1 = as_bh(_mm512_load_si512(vp + c2 * kNr + 16));
    for (int r = 0; r < kMr; ++r) {
      const __m512bh ur = as_bh(_mm512_set1_epi32(static_cast<int32_t>(u[c2 * kMr + r])));
      acc[r][0] = _mm512_dpbf16_ps(acc[r][0], ur, v0);
      acc[r][1] = _mm512_dpbf16_ps(acc[r][1], ur, v1);
    }
  }
  const int64_t co_end = std::min<int64_t>(kMr, cout_ - panel * kMr);
  for (int half = 0; half < 2; ++half) {
    const int64_t first = group * kNr + half * kLanes, count = std::clamp<int64_t>(np_block - first, 0, kLanes);
    if (count == 0) break;
    const int64_t t = t0 + first;
    const __mmask16 m = first_lanes(count);
    if (contiguous_run(t, count, sy) && (res == nullptr || contiguous_run(t, count, sr))) {
      const int64_t n = t / plane_, p = t % plane_;
      for (int64_t r = 0; r < co_end; ++r) {
        const int64_t co = panel * kMr + r;
        __m512 val = _mm512_add_ps(acc[r][half], _mm512_set1_ps(bias_[static_cast<size_t>(co)]));
        if (res != nullptr) val = _mm512_add_ps(val, _mm512_maskz_loadu_ps(m, res + n * sr.n + co * sr.c + p));
        _mm512_mask_storeu_ps(y + n * sy.n + co * sy.c + p, m, val);
      }
      continue;
    }
    alignas(64) int32_t oy[kLanes], orr[kLanes];
    for (int l = 0; l < kLanes; ++l) {
      const int64_t tl = std::min(t + l, np_ - 1), p = tl % plane_, n = tl / plane_;
      oy[l] = static_cast<int32_t>(n * sy.n + p / w_ * sy.h + p % w_ * sy.w);
      orr[l] = static_cast<int32_t>(n * sr.n + p / w_ * sr.h + p % w_ * sr.w);
    }
    const __m512i iy = _mm512_load_si512(oy), ir = _mm512_load_si512(orr);
    for (int64_t r = 0; r < co_end; ++r) {
      const int64_t co = panel * kMr + r;
      __m512 val = _mm512_add_ps(acc[r][half], _mm512_set1_ps(bias_[static_cast<size_t>(co)]));
      if (res != nullptr)
        val = _mm512_add_ps(val, _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, ir, res + co * sr.c, 4));
      _mm512_mask_i32scatter_ps(y + co * sy.c, m, iy, val, 4);
    }
  }
}

void Conv1x1Bf16::run(const std::vector<Tensor>& in, const Tensor& out, std::byte* scratch) const {
  const auto [x, sx, res, sr, y, sy] = conv_io(in, out);
  auto* v = reinterpret_cast<uint32_t*>(scratch);
  const int64_t panel_chunks = (npanels_ + chunk_panels_ - 1) / chunk_panels_;
#pragma omp parallel num_threads(threads_)
  for (int64_t b = 0; b < nblocks_; ++b) {
    const int64_t t0 = b * tb_, np_block = std::min(tb_, np_ - t0);
    const int64_t groups = (np_block + kNr - 1) / kNr;
    // Channels outer: a thread's consecutive items read on along the same two rows.
#pragma omp for schedule(static)
    for (int64_t item = 0; item < cin2_ * 2 * groups; ++item)
      pack(x, sx, t0, np_block, item % (2 * groups), item / (2 * groups), v);
#pragma omp for schedule(static)
    for (int64_t item = 0; item < panel_chunks * groups; ++item) {
      const int64_t p0 = item / groups * chunk_panels_, p1 = std::min(npanels_, p0 + chunk_panels_);
      for (int64_t panel = p0; panel < p1; ++panel) panel_group(panel, t0, np_block, item % groups, v, res, sr, y, sy);
    }
  }
}

}  // namespace

bool conv1x1_bf16_avx512_applicable(const Shape& x_shape, const Tensor& w, const Conv2dParams& p) {
  if (!cpu_has_avx512_bf16() || x_shape.size() != 4 || w.ndim() != 4 || w.dtype() != DType::F32) return false;
  if (w.size(2) != 1 || w.size(3) != 1 || w.size(1) != x_shape[1] || p.groups != 1) return false;
  if (p.stride_h != 1 || p.stride_w != 1 || p.pad_top || p.pad_bottom || p.pad_left || p.pad_right) return false;
  // Offsets into the input and output are 32-bit in the gathers and scatters.
  const int64_t plane = x_shape[2] * x_shape[3];
  return plane > 0 && x_shape[0] * x_shape[1] * plane < (int64_t{1} << 31) &&
         x_shape[0] * w.size(0) * plane < (int64_t{1} << 31);
}

std::unique_ptr<PreparedOp> prepare_conv2d_1x1_bf16_avx512(const Shape& x_shape, const Tensor& w, const Tensor& bias,
                                                           const Conv2dParams& p, Layout src_layout,
                                                           Layout dst_layout) {
  if (!conv1x1_bf16_avx512_applicable(x_shape, w, p))
    throw Error("conv2d 1x1: bf16 kernel not applicable to input " + shape_str(x_shape) + ", weight " + w.describe() +
                " (needs avx512_bf16, a 1x1 f32 kernel, stride 1, no padding, groups 1)");
  return std::make_unique<Conv1x1Bf16>(x_shape, w, bias, src_layout, dst_layout);
}

}  // namespace taiyi::ops::cpu

#else  // not x86: no AVX512-BF16, so never applicable.

#include "taiyi/ops/cpu/prepared_kernels.h"

namespace taiyi::ops::cpu {
bool conv1x1_bf16_avx512_applicable(const Shape&, const Tensor&, const Conv2dParams&) { return false; }
std::unique_ptr<PreparedOp> prepare_conv2d_1x1_bf16_avx512(const Shape& x_shape, const Tensor&, const Tensor&,
                                                           const Conv2dParams&, Layout, Layout) {
  throw Error("conv2d 1x1: the bf16 kernel needs an x86 CPU with avx512_bf16, not available for input " +
              shape_str(x_shape));
}
}  // namespace taiyi::ops::cpu

#endif
