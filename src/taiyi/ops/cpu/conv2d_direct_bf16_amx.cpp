// Prepared bf16 3x3 convolution (stride 1, padding 1) on AMX tiles, computed directly (no
// Winograd): channels-last input and output, for the 512-channel convolutions of the VAE and the
// 320- and 640-channel ones of the UNet, where oneDNN 2.6's brgconv runs at 2.1-2.6 TFLOP/s on two
// cores and the AMX Winograd's transformed weights (8 MiB at 512 channels) no longer stay in L2.
//
// Each run first copies x into a blocked, zero-padded bf16 buffer, [n][C/32][H+2][W+2][32]: 32
// channels of a pixel are 64 bytes, so that 16 pixels of a row are one 1 KiB tile of A. Read in
// place from channels-last memory, a tile's 16 rows are C apart (1 KiB at 512 channels), in 4 of
// L1's 64 sets, and the loop below ran at oneDNN's speed; from the blocked buffer, copy included,
// 1.1-1.2x it at [1, 512, 64, 64] and the UNet's shapes and as fast at [1, 512, 128, 128]
// (bench/RESULTS.md, stop 27: a probe with zero-filled buffers had promised 1.2-1.7x). The copy takes the
// GroupNorm+SiLU prologue where there is one (graph/passes/fuse_group_norm_conv.cpp): silu(x scale + shift), rounded to
// bf16, so the normalised activation is written once, blocked, where the GroupNorm wrote it and the convolution read it
// back.
//
// Then per thread a range of output rows; per group of two panels (32 output channels each, their
// packed weights 2 x 9 C x 64 bytes, in L2 across the rows), per row, per 32 pixels, per panel: a
// 32 x 32 block of C in tiles t0-t3 over all of K = 9 C, K ordered channel block outer, tap
// inner, so that a channel block's 3 rows x 34 pixels (6.5 KiB) stay in L1 across the 9 taps; A
// from the buffer (t4, t5: pixels 0-15, 16-31, shifted by the tap), B from the packed weights (t6,
// t7, loaded with the non-temporal hint: each B tile once per row); then the block's epilogue
// (bias, residual, f32 or bf16 out).
#include <omp.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <type_traits>

#include "taiyi/ops/cpu/amx_tile_config.h"
#include "taiyi/ops/cpu/bf16_pairs_avx512.h"
#include "taiyi/ops/cpu/conv2d_winograd_f32.h"
#include "taiyi/ops/cpu/conv_io.h"
#include "taiyi/ops/cpu/cpu_isa.h"
#include "taiyi/ops/cpu/cpu_kernels.h"
#include "taiyi/ops/cpu/prepared_kernels.h"
#include "taiyi/tensor/dtype.h"
#if defined(__x86_64__)
// GCC 12's AVX-512 intrinsics pass an uninitialised _mm512_undefined_ps() as the unused merge
// source of their unmasked forms, which -Wmaybe-uninitialized reports at each use.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#endif

namespace taiyi::ops::cpu {

namespace {

constexpr int64_t kTile = 512;    // bf16 elements of a 16 x 64-byte tile
constexpr int64_t kPixels = 32;   // output pixels of a C block (two A tiles)
constexpr int64_t kGroup = 2;     // panels whose weights stay in L2 while a thread's rows pass
constexpr int64_t kMaxCin = 768;  // a group's weights (2 x 9 x Cin x 64 bytes) up to 864 KiB
constexpr int64_t kMinChannels = 320;

#if defined(__x86_64__)
class DirectConv2dBf16Amx : public PreparedOp {
 public:
  DirectConv2dBf16Amx(const Shape& xs, const Tensor& w, const Tensor& bias, const Epilogue& epilogue, DType src,
                      DType dst, const Prologue& prologue)
      : n_(xs[0]),
        cin_(xs[1]),
        h_(xs[2]),
        w_(xs[3]),
        cout_(w.size(0)),
        steps_(cin_ / 32),
        panels_(cout_ / 32),
        residual_(epilogue.residual),
        src_(src),
        dst_(dst),
        prologue_(prologue),
        threads_(std::max(1, omp_get_max_threads())) {
    // w [O, C, 3, 3] into B tiles: panel p (32 output channels), channel step s, tap t (ky 3 + kx),
    // half hf (16 channels): row r holds the pairs (c, c + 1) = (s 32 + 2 r, + 1) of output channels
    // p 32 + hf 16 + col.
    const Tensor wc = w.contiguous();
    const float* wp = wc.data<float>();
    packed_ = Tensor::empty({cout_ * cin_ * 9}, DType::BF16);
    uint16_t* b = packed_.data_u16();
#pragma omp parallel for schedule(static)
    for (int64_t p = 0; p < panels_; ++p)
      for (int64_t s = 0; s < steps_; ++s)
        for (int64_t t = 0; t < 9; ++t)
          for (int64_t hf = 0; hf < 2; ++hf) {
            uint16_t* tile = b + (((p * steps_ + s) * 9 + t) * 2 + hf) * kTile;
            for (int64_t r = 0; r < 16; ++r)
              for (int64_t col = 0; col < 16; ++col)
                for (int64_t i = 0; i < 2; ++i)
                  tile[r * 32 + col * 2 + i] =
                      f32_to_bf16(wp[((p * 32 + hf * 16 + col) * cin_ + s * 32 + 2 * r + i) * 9 + t]);
          }
    bias_ = Tensor::zeros({cout_});
    if (bias.defined()) bias_.copy_from(bias.contiguous());
    if (prologue_.gamma.defined()) prologue_.gamma = prologue_.gamma.contiguous();
    if (prologue_.beta.defined()) prologue_.beta = prologue_.beta.contiguous();
    buf_bytes_ = round_up64(static_cast<size_t>(n_ * cin_ * (h_ + 2) * (w_ + 2)) * 2);
    ab_bytes_ = prologue_.groups > 0 ? round_up64(static_cast<size_t>(n_ * 2 * cin_) * 4) : 0;
    describe_ = std::string("conv2d bf16 direct:amx nhwc") + (src == DType::BF16 ? " bf16-in" : "") +
                (dst == DType::BF16 ? " bf16-out" : "") +
                (residual_ ? (dst == DType::BF16 ? " +bf16 residual" : " +residual") : "") +
                (prologue_.groups > 0 ? " (groupnorm+silu of its input fused)" : "");
  }

  void run(const std::vector<Tensor>& in, const Tensor& out, std::byte* scratch) const override {
    const Tensor& x = in.at(0);
    const auto [res, sr] = check_nhwc_conv_io(in, out, n_, cin_, h_, w_, cout_, src_, dst_, residual_,
                                              prologue_.groups > 0, "conv2d direct (amx)");
    auto* buf = reinterpret_cast<uint16_t*>(align64(scratch));
    auto* ab = reinterpret_cast<float*>(align64(scratch) + buf_bytes_);
    if (prologue_.groups > 0) norm_scale_shift(x.data_u16(), ab);
    if (src_ == DType::BF16) {
      fill(x.data_u16(), strides4(x), ab, buf);
    } else {
      fill(x.data<float>(), strides4(x), ab, buf);
    }
    products(buf, out.raw_data(), strides4(out), res, sr);
  }

  size_t scratch_bytes() const override { return buf_bytes_ + ab_bytes_ + 64; }
  size_t packed_weight_bytes() const override { return static_cast<size_t>(packed_.numel()) * 2; }
  std::string describe() const override { return describe_; }
  double flops() const override { return 2.0 * n_ * cout_ * h_ * w_ * cin_ * 9; }

 private:
  static size_t round_up64(size_t n) { return (n + 63) / 64 * 64; }
  static std::byte* align64(std::byte* p) {
    return reinterpret_cast<std::byte*>((reinterpret_cast<uintptr_t>(p) + 63) / 64 * 64);
  }

  // The prologue's per-channel scale and shift of each sample of x (bf16, dense channels-last)
  // into ab: per sample, the scale of each channel, then the shift.
  void norm_scale_shift(const uint16_t* x, float* ab) const {
    const int64_t pixels = h_ * w_;
    const float* gamma = prologue_.gamma.defined() ? prologue_.gamma.data<float>() : nullptr;
    const float* beta = prologue_.beta.defined() ? prologue_.beta.data<float>() : nullptr;
    for (int64_t s = 0; s < n_; ++s)
      group_norm_nhwc_scale_shift(nullptr, x + s * pixels * cin_, gamma, beta, cin_, pixels, prologue_.groups,
                                  prologue_.eps, ab + s * 2 * cin_, ab + s * 2 * cin_ + cin_);
  }

  // 32 channels of one pixel (src, channel stride sc) as 32 bf16 at dst: copied (bf16), rounded to
  // nearest even (f32), or through silu(x scale + shift) (prologue, bf16 only: ab the sample's
  // scales then shifts, from channel c0).
  template <typename Src>
  TAIYI_TARGET_AMX void fill_pixel(const Src* src, int64_t sc, const float* ab, int64_t c0, uint16_t* dst) const {
    if constexpr (std::is_same_v<Src, uint16_t>) {
      if (!ab && sc == 1) {  // bf16 to bf16: the bits as they are
        std::memcpy(dst, src, 64);
        return;
      }
    }
    __m512 v[2];
    for (int64_t hh = 0; hh < 2; ++hh) {
      if constexpr (std::is_same_v<Src, uint16_t>) {
        if (sc == 1) {
          v[hh] = load_bf16x16(src + 16 * hh);
        } else {
          alignas(64) uint16_t tmp[16];
          for (int64_t c = 0; c < 16; ++c) tmp[c] = src[(16 * hh + c) * sc];
          v[hh] = load_bf16x16(tmp);
        }
      } else {
        alignas(64) float tmp[16];
        for (int64_t c = 0; c < 16; ++c) tmp[c] = src[(16 * hh + c) * sc];
        v[hh] = _mm512_load_ps(tmp);
      }
      if (ab)
        v[hh] = silu16_for_bf16(
            _mm512_fmadd_ps(v[hh], _mm512_loadu_ps(ab + c0 + 16 * hh), _mm512_loadu_ps(ab + cin_ + c0 + 16 * hh)));
    }
    _mm512_store_si512(dst, (__m512i)_mm512_cvtne2ps_pbh(v[1], v[0]));
  }

  // x into the blocked, zero-padded buffer [n][C/32][H+2][W+2][32], rows shared by the threads.
  template <typename Src>
  TAIYI_TARGET_AMX void fill(const Src* x, const Strides4& sx, const float* ab, uint16_t* buf) const {
    const bool norm = prologue_.groups > 0;
    const int64_t hp = h_ + 2, wp = w_ + 2;
#pragma omp parallel for schedule(static) num_threads(threads_)
    for (int64_t r = 0; r < n_ * hp; ++r) {
      const int64_t n = r / hp, yy = r % hp - 1;
      const float* abn = norm ? ab + n * 2 * cin_ : nullptr;
      for (int64_t cb = 0; cb < steps_; ++cb) {
        uint16_t* row = buf + ((n * steps_ + cb) * hp + yy + 1) * wp * 32;
        if (yy < 0 || yy >= h_) {
          std::memset(row, 0, static_cast<size_t>(wp) * 64);
          continue;
        }
        std::memset(row, 0, 64);
        std::memset(row + (w_ + 1) * 32, 0, 64);
        for (int64_t xx = 0; xx < w_; ++xx)
          fill_pixel(x + n * sx.n + yy * sx.h + xx * sx.w + cb * 32 * sx.c, sx.c, abn, cb * 32, row + (xx + 1) * 32);
      }
    }
  }

  // The products and epilogues (see the top): each thread its half of the rows, group by group
  // (both threads sweep a group's rows at once, its weights from L3 once; consecutive rows share two
  // of their three input rows: rows shared out two at a time as they came, 1.0175 against 0.9625 s
  // a VAE decode).
  TAIYI_TARGET_AMX void products(const uint16_t* buf, void* y, const Strides4& sy, const void* res,
                                 const Strides4& sr) const {
#pragma omp parallel num_threads(threads_)
    {
      TileConfig cfg;
      for (int t = 0; t < 8; ++t) cfg.set(t, 16, 64);
      _tile_loadconfig(&cfg);
      alignas(64) float cbuf[4 * 256];
      const int64_t rows = n_ * h_, id = omp_get_thread_num(), nt = omp_get_num_threads();
      const int64_t r0 = rows * id / nt, r1 = rows * (id + 1) / nt;
      for (int64_t g0 = 0; g0 < panels_; g0 += kGroup)
        for (int64_t r = r0; r < r1; ++r) row(buf, g0, r, cbuf, y, sy, res, sr);
      _tile_release();
    }
  }

  // Output row r (of n_ h_) for the panels of the group from g0: per 32 pixels, per panel, a C
  // block over all of K and its epilogue (cbuf: 4 KiB for the stored tiles).
  TAIYI_TARGET_AMX void row(const uint16_t* buf, int64_t g0, int64_t r, float* cbuf, void* y, const Strides4& sy,
                            const void* res, const Strides4& sr) const {
    const int64_t hp = h_ + 2, wp = w_ + 2;
    const int64_t panel_elems = steps_ * 9 * 2 * kTile;
    const int64_t n = r / h_, yy = r % h_;
    for (int64_t x0 = 0; x0 < w_; x0 += kPixels)
      for (int64_t p = g0; p < std::min(panels_, g0 + kGroup); ++p) {
        const uint16_t* bp = packed_.data_u16() + p * panel_elems;
        // A of step s, tap t: rows yy + dy, pixels x0 + dx ... of the padded buffer
        const auto a_at = [&](int64_t s, int64_t t) {
          return buf + ((n * steps_ + s) * hp + yy + t / 3) * wp * 32 + (x0 + t % 3) * 32;
        };
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
        _tile_loadd(4, a_at(0, 0), 64);
        _tile_loadd(5, a_at(0, 0) + kTile, 64);
        _tile_stream_loadd(6, bp, 64);
        _tile_stream_loadd(7, bp + kTile, 64);
        const int64_t k = steps_ * 9;
        for (int64_t i = 0; i < k; ++i) {
          const bool more = i + 1 < k;
          amx_step_2x2<true>(more ? a_at((i + 1) / 9, (i + 1) % 9) : nullptr,
                             more ? bp + (i + 1) * 2 * kTile : nullptr);
        }
        _tile_stored(0, cbuf, 64);
        _tile_stored(1, cbuf + 256, 64);
        _tile_stored(2, cbuf + 512, 64);
        _tile_stored(3, cbuf + 768, 64);
        epilogue(cbuf, n, yy, x0, p, y, sy, res, sr);
      }
  }

  // The 32 x 32 block of C (tiles t0-t3 at c) + bias (+ residual) into y at pixels x0 .. x0 + 31 of
  // row yy of image n, channels p 32 .. p 32 + 31.
  TAIYI_TARGET_AMX void epilogue(const float* c, int64_t n, int64_t yy, int64_t x0, int64_t p, void* y,
                                 const Strides4& sy, const void* res, const Strides4& sr) const {
    const float* bias = bias_.data<float>() + p * 32;
    const __m512 b0 = _mm512_loadu_ps(bias), b1 = _mm512_loadu_ps(bias + 16);
    for (int64_t i = 0; i < kPixels; ++i) {
      const float* t = c + (i / 16 * 2) * 256 + i % 16 * 16;
      __m512 v0 = _mm512_add_ps(_mm512_load_ps(t), b0), v1 = _mm512_add_ps(_mm512_load_ps(t + 256), b1);
      if (res) {
        const int64_t at = n * sr.n + yy * sr.h + (x0 + i) * sr.w + p * 32 * sr.c;
        if (dst_ == DType::BF16) {
          const uint16_t* rp = static_cast<const uint16_t*>(res) + at;
          v0 = _mm512_add_ps(v0, load_bf16x16(rp));
          v1 = _mm512_add_ps(v1, load_bf16x16(rp + 16));
        } else {
          const float* rp = static_cast<const float*>(res) + at;
          v0 = _mm512_add_ps(v0, _mm512_loadu_ps(rp));
          v1 = _mm512_add_ps(v1, _mm512_loadu_ps(rp + 16));
        }
      }
      const int64_t at = n * sy.n + yy * sy.h + (x0 + i) * sy.w + p * 32 * sy.c;
      if (dst_ == DType::BF16) {
        _mm512_storeu_si512(static_cast<uint16_t*>(y) + at, (__m512i)_mm512_cvtne2ps_pbh(v1, v0));
      } else {
        _mm512_storeu_ps(static_cast<float*>(y) + at, v0);
        _mm512_storeu_ps(static_cast<float*>(y) + at + 16, v1);
      }
    }
  }

  int64_t n_, cin_, h_, w_, cout_, steps_, panels_;
  bool residual_;
  DType src_, dst_;
  Prologue prologue_;
  int threads_;
  Tensor packed_, bias_;
  size_t buf_bytes_ = 0, ab_bytes_ = 0;
  std::string describe_;
};
#endif

}  // namespace

bool direct_conv_bf16_amx_applicable(const Shape& x_shape, const Tensor& w, const Conv2dParams& p) {
  return cpu_has_amx_bf16() && winograd_3x3_form(x_shape, w, p) && p.upsample == 1 && p.pad_top == 1 &&
         p.pad_bottom == 1 && p.pad_left == 1 && p.pad_right == 1 && x_shape[1] % 32 == 0 && w.size(0) % 32 == 0 &&
         x_shape[1] >= kMinChannels && x_shape[1] <= kMaxCin && w.size(0) >= kMinChannels && x_shape[3] % kPixels == 0;
}

std::unique_ptr<PreparedOp> prepare_conv2d_direct_bf16_amx(const Shape& x_shape, const Tensor& w, const Tensor& bias,
                                                           const Conv2dParams& p, const Epilogue& epilogue, DType src,
                                                           DType dst, const Prologue& prologue) {
  check_nhwc_prologue(x_shape, src, prologue, "conv2d direct");
  if (!direct_conv_bf16_amx_applicable(x_shape, w, p) || epilogue.scale != 1.0f || epilogue.post_op != PostOp::kNone ||
      (epilogue.residual && epilogue.residual_dtype != dst) || (src != DType::F32 && src != DType::BF16) ||
      (dst != DType::F32 && dst != DType::BF16) ||
      (bias.defined() && (bias.dtype() != DType::F32 || bias.numel() != w.size(0))))
    throw Error("conv2d direct: bf16 on AMX not applicable to input " + shape_str(x_shape) + ", weight " +
                w.describe() + " (needs AMX, a 3x3 f32 kernel, stride 1, padding 1, 320 to 768 input channels and " +
                "at least 320 output channels in multiples of 32, a width a multiple of 32, no post-op)");
#if defined(__x86_64__)
  return std::make_unique<DirectConv2dBf16Amx>(x_shape, w, bias, epilogue, src, dst, prologue);
#else
  throw Error("conv2d direct: needs an x86 CPU with AMX");
#endif
}

}  // namespace taiyi::ops::cpu
