// Winograd F(2x2, 3x3) convolution with bf16 products on AMX tiles, channels-last (NHWC) in and
// out: the VAE's 3x3 convolutions at 128 and 256 channels, where oneDNN 2.6's direct brgconv runs
// at 2.0-2.4 TFLOP/s on the Xeon with AMX. F(2x2, 3x3) does 16 products per 2x2 output tile and
// (cin, cout) pair instead of 36 (2.25x fewer), with transforms exact or nearly so in bf16 (B and
// A hold 0 and +-1, G 1/2): rounding V and U to bf16 costs about 1.6x the error of a direct bf16
// convolution (tools/winograd_bf16_error.py; conv2d_winograd_bf16_avx512.cpp is the same
// arithmetic on vdpbf16ps for CPUs without AMX).
//   Y = A^T [ (G g G^T) .* (B^T d B) ] A     per 4x4 input tile d, 3x3 filter g, 2x2 output tile Y,
// summed over input channels: per transform-domain position p (16), M_p [tiles x Cout] = V_p [tiles
// x Cin] . U_p [Cin x Cout].
//
// U is transformed once and packed as B tiles: [panel of 32 output channels][p][Cin / 32 steps][half
// (16 columns)][16 channel pairs][16 columns][2]. Per call, blocks of 32 tiles (consecutive in
// image, tile row, tile column order) go to the threads; for each block a thread
//   1. transforms the input, 32 channels (one 64-byte load per input pixel, widened to f32) of one
//      tile at a time, into A tiles V [p][Cin / 32][half (16 tiles)][16 tiles][32 channels] bf16
//      (Cin KiB: in L2);
//   2. per panel of 32 output channels: the 16 products (C: 2 x 2 tiles of 16 tiles x 16 channels,
//      operands reloaded right after their last product as in linear_bf16_amx.cpp) into M [p][4
//      tiles][16][16] f32 (64 KiB), then A^T M A, the bias and the residual (f32 or bf16, which may
//      be the output itself), f32 or rounded to bf16, straight into the output's pixels.
// Products in f32 in the tiles; the order of the sums differs from a direct convolution's.
//
// With a GroupNorm+SiLU prologue (ops::Prologue, graph/passes/fuse_group_norm_conv.cpp) the call
// first takes the GroupNorm's statistics of x (one pass, group_norm_nhwc_scale_shift); the input
// transform then reads silu(x scale + shift), rounded to bf16 as the GroupNorm wrote it: the
// normalised activation (at [1, 128, 512, 512] 64 MiB in bf16) is never written to memory nor read
// back. Where blocks are whole rows of tiles, each thread normalises the rows of its blocks into a
// ring of 4 rows in its scratch (a block's top two rows are the bottom two of the block before it
// going down a column: each value is normalised once) and transforms from there; elsewhere each
// value is normalised as it is loaded. The padding stays 0 (the zeros pad the normalised input).
// SiLU by silu16_for_bf16, whose error is a few percent of a bf16 rounding.
#if defined(__x86_64__)
// GCC 12's AVX-512 intrinsics pass an uninitialised _mm512_undefined_ps() as the unused merge
// source of their unmasked forms, which -Wmaybe-uninitialized reports at each use.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <type_traits>

#include "taiyi/ops/cpu/amx_tile_config.h"
#include "taiyi/ops/cpu/bf16_pairs_avx512.h"
#include "taiyi/ops/cpu/conv2d_winograd_f32.h"
#include "taiyi/ops/cpu/conv_io.h"
#include "taiyi/ops/cpu/cpu_isa.h"
#include "taiyi/ops/cpu/cpu_kernels.h"
#include "taiyi/ops/cpu/prepared_kernels.h"
#include "taiyi/ops/cpu/work_units.h"
#include "taiyi/tensor/dtype.h"

namespace taiyi::ops::cpu {

namespace {

constexpr int kPos = 16;        // transform-domain positions (4 x 4)
constexpr int64_t kBlock = 32;  // tiles per block: the rows of a C block
constexpr int64_t kTile = 512;  // bf16 elements of a 16 x 64-byte tile
// f32 elements between positions of M: 4 tiles and a cache line (the output transform reads all 16
// positions at once, which 4 KiB apart would fall into one L1 set).
constexpr int64_t kMPos = 4 * 256 + 16;

size_t round_up64(size_t bytes) { return (bytes + 63) / 64 * 64; }

// v = B^T d on 4 vectors, B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1].
TAIYI_TARGET_AMX inline void input_1d(__m512 d0, __m512 d1, __m512 d2, __m512 d3, __m512* v) {
  v[0] = _mm512_sub_ps(d0, d2);
  v[1] = _mm512_add_ps(d1, d2);
  v[2] = _mm512_sub_ps(d2, d1);
  v[3] = _mm512_sub_ps(d1, d3);
}
// o = A^T m on 4 vectors, A^T = [1 1 1 0; 0 1 -1 -1].
TAIYI_TARGET_AMX inline void output_1d(__m512 m0, __m512 m1, __m512 m2, __m512 m3, __m512* o) {
  o[0] = _mm512_add_ps(_mm512_add_ps(m0, m1), m2);
  o[1] = _mm512_sub_ps(_mm512_sub_ps(m1, m2), m3);
}

class WinogradConv2dBf16Amx : public PreparedOp {
 public:
  WinogradConv2dBf16Amx(const Shape& xs, const Tensor& w, const Tensor& bias, const Epilogue& epilogue, DType src,
                        DType dst, const Prologue& prologue)
      : n_(xs[0]),
        cin_(xs[1]),
        h_(xs[2]),
        w_(xs[3]),
        cout_(w.size(0)),
        th_(xs[2] / 2),
        tw_(xs[3] / 2),
        nt_(xs[0] * (xs[2] / 2) * (xs[3] / 2)),
        ksteps_(xs[1] / 32),
        panels_(w.size(0) / 32),
        residual_(epilogue.residual),
        src_(src),
        dst_(dst),
        prologue_(prologue),
        threads_(std::max(1, omp_get_max_threads())) {
    transform_weights(w.contiguous());
    bias_ = Tensor::zeros({cout_});
    if (bias.defined()) bias_.copy_from(bias.contiguous());
    // One cache line more than a position's data between positions: the input transform writes all
    // 16 at once, which a multiple of 4 KiB apart would put in one L1 set.
    v_pos_ = ksteps_ * 2 * kTile + 32;
    v_bytes_ = round_up64(static_cast<size_t>(kPos * v_pos_) * 2);
    m_bytes_ = static_cast<size_t>(kPos * kMPos) * 4;
    // The prologue's per-call scale and shift: per sample, in V's channel order, and one sample's
    // in channel order as group_norm_nhwc_scale_shift writes them.
    ab_bytes_ = prologue_.groups > 0 ? round_up64(static_cast<size_t>((n_ * 4 + 2) * cin_) * 4) : 0;
    ring_bytes_ = prologue_.groups > 0 ? round_up64(static_cast<size_t>(4 * ring_slot()) * 2) : 0;
    // Where U is too large to stay in a core's L2 next to V and M but half of it is not (the 256 ->
    // 256 convolutions: U 2 MiB, streamed from L3 for each block of 67 MFLOP), the two threads
    // split the panels instead of the blocks: each transforms every block's input (twice the input
    // transforms) and runs half of the panels, its half of U staying in its L2. [1, 256, 256, 256]
    // 27-29 -> 23-23.5 ms (25-27 with the GroupNorm prologue, whose normalising is done twice too);
    // where U fits (128 channels, 256 -> 128) 24-26 -> 30-32 ms; 512 -> 256 (half of U, 2 MiB, does
    // not) no change. TAIYI_WINOGRAD_SPLIT=0 never splits, =1 wherever the panels split evenly.
    const size_t u_bytes = static_cast<size_t>(packed_.numel()) * 2;
    const char* split_env = std::getenv("TAIYI_WINOGRAD_SPLIT");
    split_ =
        threads_ == 2 && panels_ % 2 == 0 &&
        (split_env ? std::string(split_env) != "0" : u_bytes > (size_t{3} << 19) && u_bytes / 2 <= (size_t{3} << 19));
    flops_ = 2.0 * n_ * cout_ * h_ * w_ * cin_ * 9;
    describe_ = std::string("conv2d bf16 winograd_f23:amx nhwc") + (src == DType::BF16 ? " bf16-in" : "") +
                (dst == DType::BF16 ? " bf16-out" : "") +
                (residual_ ? (dst == DType::BF16 ? " +bf16 residual" : " +residual") : "") +
                (prologue_.groups > 0 ? " (groupnorm+silu of its input fused)" : "") +
                (split_ ? " (threads split the panels)" : "");
  }

  void run(const std::vector<Tensor>& in, const Tensor& out, std::byte* scratch) const override;
  // Moments of the bf16 output (ops::ChannelMoments, about the bias), summed by each thread in its
  // output transforms (output_transform<true>): 5 vector operations per 16 values where the
  // reader's own pass would read the activation again.
  bool write_moments(const std::shared_ptr<ChannelMoments>& m) const override {
    if (m && dst_ != DType::BF16) return false;
    out_moments_ = m;
    part_.assign(m ? static_cast<size_t>(threads_ * n_ * 2 * cout_) : 0, 0.0);
    return true;
  }
  bool read_moments(const std::shared_ptr<ChannelMoments>& m) const override {
    if (m && prologue_.groups <= 0) return false;
    in_moments_ = m;
    return true;
  }
  size_t scratch_bytes() const override {
    return ab_bytes_ + static_cast<size_t>(threads_) * (v_bytes_ + m_bytes_ + ring_bytes_) + 64;
  }
  size_t packed_weight_bytes() const override { return static_cast<size_t>(packed_.numel()) * 2; }
  std::string describe() const override {
    return describe_ + (in_moments_ ? " (its statistics from its input's writer)" : "") +
           (out_moments_ ? " (sums its output's moments)" : "");
  }
  double flops() const override { return flops_; }

 private:
  // U = G g G^T in bf16 as B tiles [panel][p][step][half][16 pairs][16 columns][2], the input
  // channels of a step in V's order (k_index).
  void transform_weights(const Tensor& w) {
    packed_ = Tensor::empty({panels_ * kPos * ksteps_ * 2 * kTile}, DType::BF16);
    uint16_t* dst = packed_.data_u16();
    const float* src = w.data<float>();
#pragma omp parallel for schedule(static)
    for (int64_t co = 0; co < cout_; ++co) {
      const int64_t panel = co / 32, half = co % 32 / 16, col = co % 16;
      for (int64_t ci = 0; ci < cin_; ++ci) {
        double u[4][4];
        winograd_f23_filter(src + (co * cin_ + ci) * 9, u);
        const int64_t step = ci / 32, k = k_index(ci % 32);
        for (int pos = 0; pos < kPos; ++pos) {
          const int64_t tile = ((panel * kPos + pos) * ksteps_ + step) * 2 + half;
          dst[tile * kTile + k / 2 * 32 + col * 2 + k % 2] = f32_to_bf16(static_cast<float>(u[pos / 4][pos % 4]));
        }
      }
    }
  }

  // V = (B^T d) B of one tile from its 4 columns' B^T d, rounded to bf16 into row (+ p v_pos_).
  TAIYI_TARGET_AMX void store_tile(const __m512 (&c0)[4][2], const __m512 (&c1)[4][2], const __m512 (&c2)[4][2],
                                   const __m512 (&c3)[4][2], uint16_t* row) const {
    for (int a = 0; a < 4; ++a) {
      __m512 lo[4], hi[4];
      input_1d(c0[a][0], c1[a][0], c2[a][0], c3[a][0], lo);
      input_1d(c0[a][1], c1[a][1], c2[a][1], c3[a][1], hi);
      for (int b = 0; b < 4; ++b)
        _mm512_store_si512(row + (a * 4 + b) * v_pos_, (__m512i)_mm512_cvtne2ps_pbh(hi[b], lo[b]));
    }
  }

  // The 4 input rows of tile row ty of image n (null outside the image).
  template <typename Src>
  void tile_rows(const Src* x, const Strides4& sx, int64_t n, int64_t ty, const Src* (&rows)[4]) const {
    for (int i = 0; i < 4; ++i) {
      const int64_t yy = 2 * ty - 1 + i;
      rows[i] = yy >= 0 && yy < h_ ? x + n * sx.n + yy * sx.h : nullptr;
    }
  }

  // (B^T d)[a] of the 4 input rows at column xx, channels [c, c + 32) as two halves of 16: col[a][half].
  // Pixel xx of row i is at rows[i] + (xx - origin) xstride. Norm: each pixel's values first through
  // silu(x scale + shift), ab: the sample's scale (cin_ floats in V's channel order), then its shift.
  template <typename Src, bool Norm>
  TAIYI_TARGET_AMX void column(const Src* const* rows, int64_t xx, int64_t origin, int64_t xstride, int64_t c,
                               const float* ab, __m512 (&col)[4][2]) const {
    const bool in = xx >= 0 && xx < w_;
    __m512 d[4][2];
    for (int i = 0; i < 4; ++i) {
      const Src* px = in && rows[i] ? rows[i] + (xx - origin) * xstride : nullptr;
      load32(px, c, d[i]);
      if (Norm && px)  // rounded to bf16 as normalize_row rounds it: the same values either way
        for (int hh = 0; hh < 2; ++hh)
          d[i][hh] = round_bf16x16(silu16_for_bf16(
              _mm512_fmadd_ps(d[i][hh], _mm512_loadu_ps(ab + c + 16 * hh), _mm512_loadu_ps(ab + cin_ + c + 16 * hh))));
    }
    for (int hh = 0; hh < 2; ++hh) {
      __m512 r[4];
      input_1d(d[0][hh], d[1][hh], d[2][hh], d[3][hh], r);
      for (int a = 0; a < 4; ++a) col[a][hh] = r[a];
    }
  }

  // input_transform for kBlock tiles of one tile row, from its 4 input rows (pixel xx of row i at
  // rows[i] + (xx - origin) xstride; null: padding) starting at tile column tx0: each input column's
  // B^T d is computed once and kept in registers for the next tile, which shares two columns.
  template <typename Src>
  TAIYI_TARGET_AMX void input_transform_row(const Src* const* rows, int64_t origin, int64_t xstride, int64_t tx0,
                                            uint16_t* v) const {
    const int64_t x0 = 2 * tx0 - 1;
    for (int64_t s = 0; s < ksteps_; ++s) {
      __m512 c0[4][2], c1[4][2];
      column<Src, false>(rows, x0, origin, xstride, s * 32, nullptr, c0);
      column<Src, false>(rows, x0 + 1, origin, xstride, s * 32, nullptr, c1);
      for (int64_t t = 0; t < kBlock; ++t) {
        __m512 c2[4][2], c3[4][2];
        column<Src, false>(rows, x0 + 2 * t + 2, origin, xstride, s * 32, nullptr, c2);
        column<Src, false>(rows, x0 + 2 * t + 3, origin, xstride, s * 32, nullptr, c3);
        store_tile(c0, c1, c2, c3, v + (t / 16) * kTile + (t % 16) * 32 + s * 2 * kTile);
        for (int a = 0; a < 4; ++a)
          for (int hh = 0; hh < 2; ++hh) {
            c0[a][hh] = c2[a][hh];
            c1[a][hh] = c3[a][hh];
          }
      }
    }
  }

  // The prologue's input rows of a thread: 4 slots of one image row's pixels [2 tx0 - 1, 2 tx0 +
  // 2 kBlock + 1) through silu(x scale + shift), bf16, each tagged with the (image, row, tx0) it
  // holds. Going down a column of blocks, a block's top two rows are the bottom two of the one
  // before: each value is normalised once.
  struct RowRing {
    uint16_t* buf;
    int64_t tag[4] = {-1, -1, -1, -1};
  };
  int64_t ring_slot() const { return (2 * kBlock + 2) * cin_ + 32; }  // elements (+ a cache line: L1 sets)

  // Row yy of image n, pixels [x0, x0 + 2 kBlock + 2) inside the image, through silu(x scale +
  // shift) (ab_nat: the sample's scale, then its shift, in channel order), rounded to bf16 into dst
  // (pixel xx at dst + (xx - x0) cin_).
  TAIYI_TARGET_AMX void normalize_row(const uint16_t* x, const Strides4& sx, int64_t n, int64_t yy, int64_t x0,
                                      const float* ab_nat, uint16_t* dst) const {
    const int64_t xa = std::max<int64_t>(x0, 0), xb = std::min(w_, x0 + 2 * kBlock + 2);
    for (int64_t xx = xa; xx < xb; ++xx) {
      const uint16_t* src = x + n * sx.n + yy * sx.h + xx * sx.w;
      uint16_t* d = dst + (xx - x0) * cin_;
      for (int64_t c = 0; c < cin_; c += 16) {
        const __m512 y = silu16_for_bf16(
            _mm512_fmadd_ps(load_bf16x16(src + c), _mm512_loadu_ps(ab_nat + c), _mm512_loadu_ps(ab_nat + cin_ + c)));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + c), (__m256i)_mm512_cvtneps_pbh(y));
      }
    }
  }

  // V of the block's tiles [t0, t0 + count): [p][step][half][16][32] bf16, zeros past count. Norm:
  // of x through the prologue (ab: per sample the scale and shift in V's channel order, then in
  // channel order), whole rows of tiles by way of the thread's ring.
  template <typename Src, bool Norm>
  TAIYI_TARGET_AMX void input_transform(const Src* x, const Strides4& sx, int64_t t0, int64_t count, const float* ab,
                                        RowRing* ring, uint16_t* v) const {
    const int64_t plane = th_ * tw_;
    if (count == kBlock && t0 % tw_ + kBlock <= tw_) {
      const int64_t n = t0 / plane, ty = t0 % plane / tw_, tx0 = t0 % tw_;
      if constexpr (Norm) {
        const uint16_t* rows[4];
        for (int i = 0; i < 4; ++i) {
          const int64_t yy = 2 * ty - 1 + i, slot = (yy + 4) % 4, tag = ((n * (h_ + 2) + yy + 1) * tw_) + tx0;
          rows[i] = nullptr;
          if (yy < 0 || yy >= h_) continue;
          uint16_t* dst = ring->buf + slot * ring_slot();
          if (ring->tag[slot] != tag) {
            normalize_row(x, sx, n, yy, 2 * tx0 - 1, ab + n * 4 * cin_ + 2 * cin_, dst);
            ring->tag[slot] = tag;
          }
          rows[i] = dst;
        }
        input_transform_row<uint16_t>(rows, 2 * tx0 - 1, cin_, tx0, v);
      } else {
        const Src* rows[4];
        tile_rows(x, sx, n, ty, rows);
        input_transform_row<Src>(rows, 0, sx.w, tx0, v);
      }
      return;
    }
    for (int64_t t = 0; t < kBlock; ++t) {
      uint16_t* row = v + (t / 16) * kTile + (t % 16) * 32;  // + p v_pos_ + step 2 kTile
      if (t >= count) {
        for (int p = 0; p < kPos; ++p)
          for (int64_t s = 0; s < ksteps_; ++s)
            _mm512_store_si512(row + p * v_pos_ + s * 2 * kTile, _mm512_setzero_si512());
        continue;
      }
      const int64_t tile = t0 + t, n = tile / plane, ty = tile % plane / tw_, x0 = 2 * (tile % tw_) - 1;
      const Src* rows[4];
      tile_rows(x, sx, n, ty, rows);
      const float* ab_n = Norm ? ab + n * 4 * cin_ : nullptr;
      for (int64_t s = 0; s < ksteps_; ++s) {
        __m512 c[4][4][2];
        for (int j = 0; j < 4; ++j) column<Src, Norm>(rows, x0 + j, 0, sx.w, s * 32, ab_n, c[j]);
        store_tile(c[0], c[1], c[2], c[3], row + s * 2 * kTile);
      }
    }
  }

  // Channels [c, c + 32) of the pixel at p (zeros where p is null: padding) as f32 in two registers:
  // from bf16 the even channels and the odd ones (one load, a shift and a mask: V's rows then hold
  // the even channels, then the odd ones, and U's rows follow: k_index), from f32 the first 16 and
  // the last 16.
  TAIYI_TARGET_AMX static void load32(const uint16_t* p, int64_t c, __m512 (&d)[2]) {
    if (!p) {
      d[0] = d[1] = _mm512_setzero_ps();
      return;
    }
    const __m512i x = _mm512_loadu_si512(p + c);
    d[0] = _mm512_castsi512_ps(_mm512_slli_epi32(x, 16));
    d[1] = _mm512_castsi512_ps(_mm512_and_si512(x, _mm512_set1_epi32(static_cast<int32_t>(0xffff0000u))));
  }
  TAIYI_TARGET_AMX static void load32(const float* p, int64_t c, __m512 (&d)[2]) {
    d[0] = p ? _mm512_loadu_ps(p + c) : _mm512_setzero_ps();
    d[1] = p ? _mm512_loadu_ps(p + c + 16) : _mm512_setzero_ps();
  }
  // Where input channel c of a step of 32 sits in V's rows (load32's order).
  int64_t k_index(int64_t c) const { return src_ == DType::BF16 ? c % 2 * 16 + c / 2 : c; }

  // Software prefetch of two byte ranges (the next block's new input rows), per_block lines a call.
  struct Prefetch {
    const char* range[2] = {nullptr, nullptr};
    int64_t bytes = 0, per_block = 0, next = 0;
    void issue() {
      for (int64_t i = 0; i < per_block && next < 2 * bytes; ++i, next += 64) {
        const int r = next >= bytes ? 1 : 0;
        if (range[r]) __builtin_prefetch(range[r] + (next - r * bytes), 0, 2);
      }
    }
  };

  // For each position p: the C block (the block's 32 tiles x the 32 channels of panel) over all of
  // Cin, stored as 4 tiles of 1 KiB at m + p kMPos; the operand order of linear_bf16_amx.cpp's
  // block(), and each position's first operands loaded during the last products of the one before
  // (so that they are there when its products start). pf: some lines prefetched per position.
  TAIYI_TARGET_AMX void products(const uint16_t* v, int64_t panel, float* m, Prefetch* pf) const {
    const uint16_t* bp = packed_.data_u16() + panel * kPos * ksteps_ * 2 * kTile;
    _tile_loadd(4, v, 64);
    _tile_loadd(6, bp, 64);
    _tile_loadd(5, v + kTile, 64);
    _tile_loadd(7, bp + kTile, 64);
    for (int p = 0; p < kPos; ++p) {
      if (pf) pf->issue();
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      _tile_zero(3);
      const uint16_t* a = v + p * v_pos_;
      const uint16_t* b = bp + p * ksteps_ * 2 * kTile;
      for (int64_t s = 0; s < ksteps_; ++s) {
        // the next operands: this position's next step, or the next position's first (B's follows
        // this position's last step in memory)
        const uint16_t* an = s + 1 < ksteps_ ? a + (s + 1) * 2 * kTile : p + 1 < kPos ? a + v_pos_ : nullptr;
        amx_step_2x2(an, b + (s + 1) * 2 * kTile);
      }
      float* c = m + p * kMPos;
      _tile_stored(0, c, 64);
      _tile_stored(1, c + 256, 64);
      _tile_stored(2, c + 512, 64);
      _tile_stored(3, c + 768, 64);
    }
  }

  // Y = A^T M A + bias (+ residual) of the block's tiles for the 32 channels of panel, from m [p][4
  // tiles (rows half x columns half)][16][16] f32, into y (f32 or bf16 per dst_).
  // Moments (write_moments, bf16 output): also add the moments of the values written to part, this
  // thread's [n][d1, d2][cout] sums (a separate instance: skipped only at run time, the sums cost
  // the plain one 3% of a VAE decode).
  template <bool Moments>
  TAIYI_TARGET_AMX void output_transform(const float* m, int64_t panel, int64_t t0, int64_t count, void* y,
                                         const Strides4& sy, const void* res, const Strides4& sr, double* part) const {
    const int64_t plane = th_ * tw_;
    const float* bias_f = bias_.data<float>();
    // Moments: the values of each run of tiles of one sample, per half of the panel, summed in f32
    // about the run's first value of each channel (kb: the sums stay of the spread, not of the
    // distance to the bias, which may be many times it), then added in double about the bias. Of
    // the bf16 values written (those of the f32 values before the rounding differ by ~1e-3 of the
    // spread in a small image's mean). The halves unrolled, so that the sums stay in registers.
    for (int64_t tb = 0; tb < count;) {
      const int64_t n0 = (t0 + tb) / plane, te = Moments ? std::min(count, (n0 + 1) * plane - t0) : count;
      __m512 s1[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()}, s2[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};
      __m512 kb[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};
      for (int64_t t = tb; t < te; ++t) {
        const int64_t tile = t0 + t, n = tile / plane, ty = tile % plane / tw_, tx = tile % tw_;
#pragma GCC unroll 2
        for (int64_t hh = 0; hh < 2; ++hh) {
          const float* mt = m + ((t / 16) * 2 + hh) * 256 + (t % 16) * 16;
          __m512 r[2][4];  // (A^T M)[row][b]
          for (int b = 0; b < 4; ++b) {
            __m512 o[2];
            output_1d(_mm512_load_ps(mt + (0 * 4 + b) * kMPos), _mm512_load_ps(mt + (1 * 4 + b) * kMPos),
                      _mm512_load_ps(mt + (2 * 4 + b) * kMPos), _mm512_load_ps(mt + (3 * 4 + b) * kMPos), o);
            r[0][b] = o[0];
            r[1][b] = o[1];
          }
          const int64_t c0 = panel * 32 + hh * 16;
          const __m512 bias = _mm512_loadu_ps(bias_f + c0);
          for (int i = 0; i < 2; ++i) {
            __m512 o[2];
            output_1d(r[i][0], r[i][1], r[i][2], r[i][3], o);
            for (int j = 0; j < 2; ++j) {
              const int64_t yy = 2 * ty + i, xx = 2 * tx + j;
              __m512 val = _mm512_add_ps(o[j], bias);
              const int64_t at_r = n * sr.n + yy * sr.h + xx * sr.w + c0;
              const int64_t at = n * sy.n + yy * sy.h + xx * sy.w + c0;
              if (dst_ == DType::BF16) {
                if (residual_) val = _mm512_add_ps(val, load_bf16x16(static_cast<const uint16_t*>(res) + at_r));
                const __m256i rounded = (__m256i)_mm512_cvtneps_pbh(val);
                _mm256_storeu_si256(reinterpret_cast<__m256i*>(static_cast<uint16_t*>(y) + at), rounded);
                if constexpr (Moments) {  // of the value written
                  const __m512 v = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(rounded), 16));
                  if (t == tb && i == 0 && j == 0) kb[hh] = v;
                  const __m512 e = _mm512_sub_ps(v, kb[hh]);
                  s1[hh] = _mm512_add_ps(s1[hh], e);
                  s2[hh] = _mm512_fmadd_ps(e, e, s2[hh]);
                }
              } else {
                if (residual_) val = _mm512_add_ps(val, _mm512_loadu_ps(static_cast<const float*>(res) + at_r));
                _mm512_storeu_ps(static_cast<float*>(y) + at, val);
              }
            }
          }
        }
      }
      if constexpr (Moments) {
        double* d1 = part + n0 * 2 * cout_ + panel * 32;
        const double pixels = static_cast<double>(4 * (te - tb));
        add_moments_about(d1, d1 + cout_, s1[0], s2[0], kb[0], _mm512_loadu_ps(bias_f + panel * 32), pixels);
        add_moments_about(d1 + 16, d1 + cout_ + 16, s1[1], s2[1], kb[1], _mm512_loadu_ps(bias_f + panel * 32 + 16),
                          pixels);
      }
      tb = te;
    }
  }

  // d1 += sum of (x - k), d2 += sum of (x - k)^2 over 16 channels, from s1 and s2, the sums of x - kb
  // over `pixels` values x (f32, about kb), in double.
  TAIYI_TARGET_AMX static void add_moments_about(double* d1, double* d2, __m512 s1, __m512 s2, __m512 kb, __m512 k,
                                                 double pixels) {
    const __m512d count = _mm512_set1_pd(pixels);
    for (int q = 0; q < 2; ++q) {
      const auto half = [q](__m512 v) TAIYI_TARGET_AMX {
        return q == 0 ? _mm512_cvtps_pd(_mm512_castps512_ps256(v))
                      : _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
      };
      const __m512d a1 = half(s1), a2 = half(s2), c = _mm512_sub_pd(half(kb), half(k));
      // sum (e + c) = s1 + P c, sum (e + c)^2 = s2 + 2 c s1 + P c^2
      _mm512_storeu_pd(d1 + 8 * q, _mm512_add_pd(_mm512_loadu_pd(d1 + 8 * q), _mm512_fmadd_pd(count, c, a1)));
      const __m512d sq = _mm512_fmadd_pd(_mm512_mul_pd(count, c), c, _mm512_fmadd_pd(_mm512_add_pd(c, c), a1, a2));
      _mm512_storeu_pd(d2 + 8 * q, _mm512_add_pd(_mm512_loadu_pd(d2 + 8 * q), sq));
    }
  }

  int64_t n_, cin_, h_, w_, cout_, th_, tw_, nt_, ksteps_, panels_, v_pos_ = 0;
  bool residual_;
  DType src_, dst_;
  Prologue prologue_;
  bool split_ = false;  // the threads split each block's panels (see the constructor)
  int threads_;
  Tensor packed_, bias_;
  // write_moments / read_moments: the linked moments, and each thread's sums [thread][n][d1, d2][cout]
  mutable std::shared_ptr<ChannelMoments> out_moments_, in_moments_;
  mutable std::vector<double> part_;
  size_t v_bytes_ = 0, m_bytes_ = 0, ab_bytes_ = 0, ring_bytes_ = 0;
  double flops_ = 0;
  std::string describe_;

  // The prologue's scale and shift of each sample of x (bf16, dense channels-last) into ab
  // (ab_bytes_): per sample, scale and shift in V's channel order (k_index), then in channel order.
  void norm_scale_shift(const uint16_t* x, float* ab) const {
    const int64_t pixels = h_ * w_;
    const float* gamma = prologue_.gamma.defined() ? prologue_.gamma.data<float>() : nullptr;
    const float* beta = prologue_.beta.defined() ? prologue_.beta.data<float>() : nullptr;
    // (read_moments: from the moments the kernel that wrote x summed, where it has in this run)
    const ChannelMoments* mom = in_moments_.get();
    const bool linked = mom && mom->ready && mom->data == x && mom->n == n_ && mom->c == cin_ && mom->pixels == pixels;
    if (mom) in_moments_->ready = false;
    for (int64_t s = 0; s < n_; ++s) {
      float* ab_s = ab + s * 4 * cin_;
      float *scale = ab_s + 2 * cin_, *shift = ab_s + 3 * cin_;
      if (linked) {
        group_norm_scale_shift_from_moments(mom->shift.data(), mom->d1.data() + s * cin_, mom->d2.data() + s * cin_,
                                            gamma, beta, cin_, pixels, prologue_.groups, prologue_.eps, scale, shift);
      } else {
        group_norm_nhwc_scale_shift(nullptr, x + s * pixels * cin_, gamma, beta, cin_, pixels, prologue_.groups,
                                    prologue_.eps, scale, shift);
      }
      for (int64_t c = 0; c < cin_; ++c) {
        const int64_t at = c / 32 * 32 + k_index(c % 32);
        ab_s[at] = scale[c];
        ab_s[cin_ + at] = shift[c];
      }
    }
  }

  template <typename Src, bool Norm>
  TAIYI_TARGET_AMX void run_blocks(const Src* x, const Strides4& sx, void* y, const Strides4& sy, const void* res,
                                   const Strides4& sr, std::byte* scratch) const;
  template <typename Src>
  void run_src(const Src* x, const Strides4& sx, void* y, const Strides4& sy, const void* res, const Strides4& sr,
               std::byte* scratch) const {
    if constexpr (std::is_same_v<Src, uint16_t>) {
      if (prologue_.groups > 0) {
        norm_scale_shift(x, reinterpret_cast<float*>(align64(scratch)));
        run_blocks<Src, true>(x, sx, y, sy, res, sr, scratch);
        return;
      }
    }
    run_blocks<Src, false>(x, sx, y, sy, res, sr, scratch);
  }
  static std::byte* align64(std::byte* p) {
    return reinterpret_cast<std::byte*>((reinterpret_cast<uintptr_t>(p) + 63) / 64 * 64);
  }
};

template <typename Src, bool Norm>
TAIYI_TARGET_AMX void WinogradConv2dBf16Amx::run_blocks(const Src* x, const Strides4& sx, void* y, const Strides4& sy,
                                                        const void* res, const Strides4& sr, std::byte* scratch) const {
  const int64_t blocks = (nt_ + kBlock - 1) / kBlock;
  WorkUnits units[2];  // the split panels' blocks of each thread
  const float* ab = reinterpret_cast<const float*>(align64(scratch));
  std::byte* base = align64(scratch) + ab_bytes_;
#pragma omp parallel num_threads(threads_)
  {
    auto* v = reinterpret_cast<uint16_t*>(base + static_cast<size_t>(omp_get_thread_num()) *
                                                     (v_bytes_ + m_bytes_ + ring_bytes_));
    auto* m = reinterpret_cast<float*>(reinterpret_cast<std::byte*>(v) + v_bytes_);
    double* part = out_moments_ && dst_ == DType::BF16
                       ? part_.data() + static_cast<size_t>(omp_get_thread_num() * n_ * 2 * cout_)
                       : nullptr;
    RowRing ring{reinterpret_cast<uint16_t*>(reinterpret_cast<std::byte*>(v) + v_bytes_ + m_bytes_)};
    TileConfig cfg;
    for (int t = 0; t < 8; ++t) cfg.set(t, 16, 64);
    _tile_loadconfig(&cfg);
    // Where tile rows split into whole blocks, blocks go in (image, block column, tile row) order:
    // going down a column of blocks, the next block's top two input rows are the bottom two of the
    // one before, in this core's caches.
    const bool columns = tw_ % kBlock == 0;
    const int64_t per_row = tw_ / kBlock, per_image = per_row * th_;
    const auto block_at = [&](int64_t idx) {
      if (!columns) return idx;
      const int64_t n = idx / per_image, col = idx % per_image / th_, ty = idx % th_;
      return n * per_image + ty * per_row + col;
    };
    // Runs panels [p0, p1) of block blk; next_blk: the block this thread runs next, whose two new
    // input rows (below this block's) are prefetched during the products, or -1.
    const auto run_block = [&](int64_t blk, int64_t next_blk, int64_t p0, int64_t p1) TAIYI_TARGET_AMX {
      const int64_t t0 = blk * kBlock, count = std::min(kBlock, nt_ - t0);
      input_transform<Src, Norm>(x, sx, t0, count, ab, &ring, v);
      Prefetch pf;
      if (next_blk >= 0 && sx.c == 1 && sx.w == cin_) {
        const int64_t plane = th_ * tw_, nt0 = next_blk * kBlock, n = nt0 / plane, ty = nt0 % plane / tw_;
        const int64_t xs0 = std::max<int64_t>(0, 2 * (nt0 % tw_) - 1),
                      xs1 = std::min(w_, 2 * (nt0 % tw_) + 2 * kBlock + 1);
        pf.bytes = (xs1 - xs0) * cin_ * static_cast<int64_t>(sizeof(Src));
        for (int r = 0; r < 2; ++r) {
          const int64_t yy = 2 * ty + 1 + r;
          if (yy >= 0 && yy < h_) pf.range[r] = reinterpret_cast<const char*>(x + n * sx.n + yy * sx.h + xs0 * sx.w);
        }
        pf.per_block = (2 * pf.bytes / 64 + (p1 - p0) * kPos - 1) / ((p1 - p0) * kPos);
      }
      for (int64_t panel = p0; panel < p1; ++panel) {
        products(v, panel, m, pf.bytes ? &pf : nullptr);
        if (part) {
          output_transform<true>(m, panel, t0, count, y, sy, res, sr, part);
        } else {
          output_transform<false>(m, panel, t0, count, y, sy, res, sr, nullptr);
        }
      }
    };
    const auto next_of = [&](int64_t idx) {
      return columns && idx + 1 < blocks && (idx + 1) % th_ != 0 ? block_at(idx + 1) : int64_t{-1};
    };
    if (split_ && omp_get_num_threads() == 2) {
      // Each thread its half of the panels for every block, then, from the other's end, blocks of
      // the other half it has not reached (with those panels' weights from the other core: only
      // where the host preempted it; a VAE decode had waited 1.5-20 ms for it).
      const int id = omp_get_thread_num();
      const int64_t p0 = panels_ / 2 * id, q0 = panels_ / 2 * (1 - id);
      units[id].reset(blocks, true);
      for (int64_t idx; (idx = units[id].take_front()) >= 0;) {
        run_block(block_at(idx), next_of(idx), p0, p0 + panels_ / 2);
        if (idx == 0) stall_point_for_tests(id);
      }
      take_from_others(units, id, 2, [&](int64_t, int64_t idx) TAIYI_TARGET_AMX {
        run_block(block_at(idx), -1, q0, q0 + panels_ / 2);
      });
    } else if (columns) {
      // each thread a contiguous range of blocks
#pragma omp for schedule(static)
      for (int64_t idx = 0; idx < blocks; ++idx) run_block(block_at(idx), next_of(idx), 0, panels_);
    } else {
#pragma omp for schedule(dynamic, 1)
      for (int64_t blk = 0; blk < blocks; ++blk) run_block(blk, -1, 0, panels_);
    }
    _tile_release();
  }
}

void WinogradConv2dBf16Amx::run(const std::vector<Tensor>& in, const Tensor& out, std::byte* scratch) const {
  const Tensor& x = in.at(0);
  const auto [res, sr] = check_nhwc_conv_io(in, out, n_, cin_, h_, w_, cout_, src_, dst_, residual_,
                                            prologue_.groups > 0, "conv2d winograd (amx)");
  if (out_moments_ && dst_ == DType::BF16) std::fill(part_.begin(), part_.end(), 0.0);
  if (src_ == DType::BF16) {
    run_src(x.data_u16(), strides4(x), out.raw_data(), strides4(out), res, sr, scratch);
  } else {
    run_src(x.data<float>(), strides4(x), out.raw_data(), strides4(out), res, sr, scratch);
  }
  if (out_moments_ && dst_ == DType::BF16)
    out_moments_->fill(n_, cout_, h_ * w_, bias_.data<float>(), part_, threads_, out.raw_data());
}

}  // namespace

bool winograd_bf16_amx_applicable(const Shape& x_shape, const Tensor& w, const Conv2dParams& p) {
  return cpu_has_amx_bf16() && winograd_3x3_form(x_shape, w, p) && p.upsample == 1 && p.pad_top == 1 &&
         p.pad_bottom == 1 && p.pad_left == 1 && p.pad_right == 1 && x_shape[1] % 32 == 0 && w.size(0) % 32 == 0 &&
         x_shape[2] % 2 == 0 && x_shape[3] % 2 == 0 && x_shape[2] > 0 && x_shape[3] > 0;
}

std::unique_ptr<PreparedOp> prepare_conv2d_winograd_bf16_amx(const Shape& x_shape, const Tensor& w, const Tensor& bias,
                                                             const Conv2dParams& p, const Epilogue& epilogue, DType src,
                                                             DType dst, const Prologue& prologue) {
  check_nhwc_prologue(x_shape, src, prologue, "conv2d winograd");
  if (!winograd_bf16_amx_applicable(x_shape, w, p) || epilogue.scale != 1.0f || epilogue.post_op != PostOp::kNone ||
      (epilogue.residual && epilogue.residual_dtype != dst) || (src != DType::F32 && src != DType::BF16) ||
      (dst != DType::F32 && dst != DType::BF16))
    throw Error("conv2d winograd: bf16 F(2x2,3x3) on AMX not applicable to input " + shape_str(x_shape) + ", weight " +
                w.describe() +
                " (needs AMX, a 3x3 f32 kernel, stride 1, padding 1, channel counts multiples of 32, even sizes, "
                "no post-op)");
  Prologue pro = prologue;
  if (pro.gamma.defined()) pro.gamma = pro.gamma.contiguous();
  if (pro.beta.defined()) pro.beta = pro.beta.contiguous();
  return std::make_unique<WinogradConv2dBf16Amx>(x_shape, w, bias, epilogue, src, dst, pro);
}

}  // namespace taiyi::ops::cpu

#else  // not x86: no AMX, so never applicable.

#include "taiyi/ops/cpu/prepared_kernels.h"

namespace taiyi::ops::cpu {
bool winograd_bf16_amx_applicable(const Shape&, const Tensor&, const Conv2dParams&) { return false; }
std::unique_ptr<PreparedOp> prepare_conv2d_winograd_bf16_amx(const Shape& x_shape, const Tensor&, const Tensor&,
                                                             const Conv2dParams&, const Epilogue&, DType, DType,
                                                             const Prologue&) {
  throw Error("conv2d winograd: bf16 F(2x2,3x3) on AMX needs an x86 CPU with AMX, not available for input " +
              shape_str(x_shape));
}
}  // namespace taiyi::ops::cpu

#endif
