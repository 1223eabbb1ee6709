// Winograd F(4x4, 3x3) convolution for AVX2+FMA (Lavin & Gray 2016, "Fast Algorithms for
// Convolutional Neural Networks", the F(4x4,3x3) matrices with points 0, +-1, +-2, infinity):
//   Y = A^T [ (G g G^T) .* (B^T d B) ] A     per 6x6 input tile d, 3x3 filter g, 4x4 output tile Y,
// summed over input channels, which turns the convolution into 36 independent matrix products, one
// per transform-domain position p:  M_p [Cout x tiles] = U_p [Cout x Cin] . V_p [Cin x tiles].
//
// The tiles (n, tile row, tile column, flattened) go in blocks of up to kMaxBlockTiles. For each
// block, all threads together
//   1. transform the input: V [36][tiles/16][Cin][16]   (8 tiles in the vector lanes),
//   2. run the 36 products, split over positions, with a 6 x 16 register tile (6 output channels
//      broadcast from U, 16 tiles loaded from V: 12 accumulators), blocked GotoBLAS-style so a
//      kc x 16 panel of V stays in L1 and a 240 x kc block of U in L2;  M [Cout][36][tiles],
//   3. transform the output, add bias and residual, and write it straight into `out`.
// U is made once at prepare time, [36][Cout/6][Cin][6] (Cout padded to 6 with zeros). Tiles in the
// lanes make both transforms vertical vector code; for NCHW a row of 8 tiles is a 34-column strip
// of the input (de-interleaved by 4) and a 32-column strip of the output (re-interleaved), other
// cases (edges, tiles across rows, channels-last) gather and scatter element by element.
// What made it fast on a 2-core Zen 3 (besides the register tile): V and M strides that are not
// multiples of 4 KiB, software prefetch of the input strips and of the next block of U (both come
// from memory), and no vmaskmovps at the image edges (slow on AMD).
#include "taiyi/ops/cpu/conv2d_winograd_f32.h"

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "taiyi/ops/cpu/cpu_isa.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

namespace taiyi::ops::cpu {
namespace {

constexpr int kPos = 36;           // transform-domain positions, 6 x 6
constexpr int kLanes = 8;          // tiles per vector
constexpr int kMr = 6;             // output channels of a register tile
constexpr int kNr = 16;            // tiles of a register tile
constexpr int64_t kKc = 256;       // input channels per L1 panel of V (kc x 16 floats = 16 KiB)
constexpr int64_t kMcPanels = 40;  // output-channel panels per L2 block of U (240 x 256 floats = 240 KiB)
// Tiles per block: the transformed block V (36 x Cin x tiles floats) goes through L3, and each block
// reads all of U once, so bigger blocks read the weights less often. kVBudgetFloats caps V. (On the
// 2-core Zen 3 measured, 256 beat 128 and 64 at [2,320,64,64] -> 320; a 32 MiB cap was no better.)
constexpr int64_t kMaxBlockTiles = 256;
constexpr int64_t kPrefetchChannels = 4;              // how far ahead the input transform prefetches
constexpr int64_t kVBudgetFloats = int64_t{4} << 20;  // 16 MiB

size_t round_up64(size_t bytes) { return (bytes + 63) / 64 * 64; }

struct AlignedFree {
  void operator()(float* p) const { std::free(p); }
};
using AlignedFloats = std::unique_ptr<float[], AlignedFree>;

AlignedFloats aligned_floats(size_t n) {
  void* p = std::aligned_alloc(64, round_up64(n * sizeof(float)));
  if (p == nullptr) throw Error("conv2d winograd: out of memory for " + std::to_string(n) + " transformed weights");
  return AlignedFloats(static_cast<float*>(p));
}

// ---- 1-D transforms on 6 (or 4) vectors ----

// v = B^T d:  B^T = [4 0 -5 0 1 0; 0 -4 -4 1 1 0; 0 4 -4 -1 1 0; 0 -2 -1 2 1 0; 0 2 -1 -2 1 0; 0 4 0 -5 0 1]
TAIYI_TARGET_AVX2_FMA inline void input_1d(const __m256 d[6], __m256 v[6]) {
  const __m256 four = _mm256_set1_ps(4.0f), five = _mm256_set1_ps(5.0f), two = _mm256_set1_ps(2.0f);
  const __m256 t1 = _mm256_fnmadd_ps(four, d[2], d[4]);  // d4 - 4 d2
  const __m256 t2 = _mm256_fnmadd_ps(four, d[1], d[3]);  // d3 - 4 d1
  const __m256 t3 = _mm256_sub_ps(d[4], d[2]);
  const __m256 t4 = _mm256_mul_ps(two, _mm256_sub_ps(d[3], d[1]));
  v[0] = _mm256_fmadd_ps(four, d[0], _mm256_fnmadd_ps(five, d[2], d[4]));
  v[1] = _mm256_add_ps(t1, t2);
  v[2] = _mm256_sub_ps(t1, t2);
  v[3] = _mm256_add_ps(t3, t4);
  v[4] = _mm256_sub_ps(t3, t4);
  v[5] = _mm256_fmadd_ps(four, d[1], _mm256_fnmadd_ps(five, d[3], d[5]));
}

// o = A^T m:  A^T = [1 1 1 1 1 0; 0 1 -1 2 -2 0; 0 1 1 4 4 0; 0 1 -1 8 -8 1]
TAIYI_TARGET_AVX2_FMA inline void output_1d(const __m256 m[6], __m256 o[4]) {
  const __m256 s12 = _mm256_add_ps(m[1], m[2]), d12 = _mm256_sub_ps(m[1], m[2]);
  const __m256 s34 = _mm256_add_ps(m[3], m[4]), d34 = _mm256_sub_ps(m[3], m[4]);
  o[0] = _mm256_add_ps(_mm256_add_ps(m[0], s12), s34);
  o[1] = _mm256_fmadd_ps(_mm256_set1_ps(2.0f), d34, d12);
  o[2] = _mm256_fmadd_ps(_mm256_set1_ps(4.0f), s34, s12);
  o[3] = _mm256_add_ps(_mm256_fmadd_ps(_mm256_set1_ps(8.0f), d34, d12), m[5]);
}

// ---- Tiles in lanes, NCHW rows ----
// A row of 8 tiles is 32 floats, 4 per tile; the 4x4 transposes inside 128-bit halves (no lane
// crossing) put tile kLaneTile[l] of the 8 in lane l. Every path uses this order.
constexpr int kLaneTile[kLanes] = {0, 2, 4, 6, 1, 3, 5, 7};

// d[j][l] = s[4 kLaneTile[l] + j], j = 0..5, from s[0..36).
TAIYI_TARGET_AVX2_FMA inline void deinterleave_6(const float* s, __m256 d[6]) {
  const __m256 q0 = _mm256_loadu_ps(s), q1 = _mm256_loadu_ps(s + 8), q2 = _mm256_loadu_ps(s + 16),
               q3 = _mm256_loadu_ps(s + 24);
  const __m256 u0 = _mm256_unpacklo_ps(q0, q1), u1 = _mm256_unpackhi_ps(q0, q1);
  const __m256 u2 = _mm256_unpacklo_ps(q2, q3), u3 = _mm256_unpackhi_ps(q2, q3);
  d[0] = _mm256_shuffle_ps(u0, u2, 0x44);
  d[1] = _mm256_shuffle_ps(u0, u2, 0xEE);
  d[2] = _mm256_shuffle_ps(u1, u3, 0x44);
  d[3] = _mm256_shuffle_ps(u1, u3, 0xEE);
  const __m256 r0 = _mm256_loadu_ps(s + 4), r1 = _mm256_loadu_ps(s + 12), r2 = _mm256_loadu_ps(s + 20),
               r3 = _mm256_loadu_ps(s + 28);
  const __m256 w0 = _mm256_unpacklo_ps(r0, r1), w2 = _mm256_unpacklo_ps(r2, r3);
  d[4] = _mm256_shuffle_ps(w0, w2, 0x44);
  d[5] = _mm256_shuffle_ps(w0, w2, 0xEE);
}

// The inverse for 4 values per tile: s[4 kLaneTile[l] + j] = d[j][l], s[0..32).
TAIYI_TARGET_AVX2_FMA inline void interleave_4(const __m256 d[4], __m256 q[4]) {
  const __m256 e0 = _mm256_unpacklo_ps(d[0], d[1]), e1 = _mm256_unpackhi_ps(d[0], d[1]);
  const __m256 e2 = _mm256_unpacklo_ps(d[2], d[3]), e3 = _mm256_unpackhi_ps(d[2], d[3]);
  q[0] = _mm256_shuffle_ps(e0, e2, 0x44);
  q[1] = _mm256_shuffle_ps(e0, e2, 0xEE);
  q[2] = _mm256_shuffle_ps(e1, e3, 0x44);
  q[3] = _mm256_shuffle_ps(e1, e3, 0xEE);
}

// ---- The 6 x 16 register tile:  c[6][16] (+)= u[kc][6]^T . v[kc][16] ----

TAIYI_TARGET_AVX2_FMA void gemm_6x16(const float* u, const float* v, int64_t kc, float* c, int64_t ldc,
                                     bool accumulate) {
  __m256 c0[kMr], c1[kMr];
  if (accumulate) {
#pragma GCC unroll 6
    for (int r = 0; r < kMr; ++r) c0[r] = _mm256_load_ps(c + r * ldc), c1[r] = _mm256_load_ps(c + r * ldc + 8);
  } else {
#pragma GCC unroll 6
    for (int r = 0; r < kMr; ++r) c0[r] = _mm256_setzero_ps(), c1[r] = _mm256_setzero_ps();
  }
#pragma GCC unroll 4
  for (int64_t k = 0; k < kc; ++k) {
    const __m256 b0 = _mm256_load_ps(v), b1 = _mm256_load_ps(v + 8);
#pragma GCC unroll 6
    for (int r = 0; r < kMr; ++r) {
      const __m256 a = _mm256_broadcast_ss(u + r);
      c0[r] = _mm256_fmadd_ps(a, b0, c0[r]);
      c1[r] = _mm256_fmadd_ps(a, b1, c1[r]);
    }
    u += kMr;
    v += kNr;
  }
#pragma GCC unroll 6
  for (int r = 0; r < kMr; ++r) _mm256_store_ps(c + r * ldc, c0[r]), _mm256_store_ps(c + r * ldc + 8, c1[r]);
}

// ---- The prepared op ----

struct Strides4 {
  int64_t n, c, h, w;
};

Strides4 strides4(const Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)}; }

class WinogradConv2dF32 : public PreparedOp {
 public:
  WinogradConv2dF32(const Shape& xs, const Tensor& w, const Tensor& bias, const Conv2dParams& p, Layout src_layout,
                    Layout dst_layout)
      : n_(xs[0]), cin_(xs[1]), h_(xs[2]), w_(xs[3]), cout_(w.size(0)), pt_(p.pad_top), pl_(p.pad_left) {
    ho_ = h_ + p.pad_top + p.pad_bottom - 2;
    wo_ = w_ + p.pad_left + p.pad_right - 2;
    if (ho_ < 1 || wo_ < 1)
      throw Error("conv2d winograd: input " + shape_str(xs) + " is too small for a 3x3 kernel with this padding");
    th_ = (ho_ + 3) / 4;
    tw_ = (wo_ + 3) / 4;
    nt_ = n_ * th_ * tw_;
    const int64_t max_tiles =
        std::max<int64_t>(kNr, std::min<int64_t>(kMaxBlockTiles, kVBudgetFloats / (kPos * cin_) / kNr * kNr));
    nblocks_ = (nt_ + max_tiles - 1) / max_tiles;
    tb_ = ((nt_ + nblocks_ - 1) / nblocks_ + kNr - 1) / kNr * kNr;
    npanels_ = (cout_ + kMr - 1) / kMr;
    const int64_t chunks = (cin_ + kKc - 1) / kKc;
    kc_ = (cin_ + chunks - 1) / chunks;
    threads_ = std::max(1, omp_get_max_threads());
    // Split the products over positions, and over output channels too when there are many threads.
    cout_chunks_ = threads_ <= 4 ? 1 : std::min<int64_t>(npanels_, (4 * threads_ + kPos - 1) / kPos);
    // One cache line more than the data between positions of V and output channels of M: the
    // transforms touch all 36 positions at once, which at a multiple of 4 KiB apart would all fall
    // in one L1 set (and two L2 sets).
    v_pos_ = tb_ * cin_ + kNr;
    m_row_ = kPos * tb_ + kNr;
    v_floats_ = static_cast<size_t>(kPos * v_pos_);
    m_floats_ = static_cast<size_t>(npanels_ * kMr * m_row_);
    transform_weights(w.contiguous());
    bias_.assign(static_cast<size_t>(cout_), 0.0f);
    if (bias.defined()) {
      const Tensor b = bias.contiguous();
      std::memcpy(bias_.data(), b.data<float>(), static_cast<size_t>(cout_) * sizeof(float));
    }
    flops_ = 2.0 * n_ * cout_ * ho_ * wo_ * cin_ * 9;
    describe_ = std::string("conv2d f32 winograd_f43:avx2 ") + (src_layout == Layout::kNHWC ? "nhwc" : "nchw") +
                (dst_layout == Layout::kNHWC ? "->nhwc" : "");
  }

  void run(const std::vector<Tensor>& in, const Tensor& out, std::byte* scratch) const override;
  size_t scratch_bytes() const override { return round_up64(v_floats_ * sizeof(float)) + m_floats_ * sizeof(float); }
  size_t packed_weight_bytes() const override {
    return static_cast<size_t>(kPos * npanels_ * kMr * cin_) * sizeof(float);
  }
  std::string describe() const override { return describe_; }
  double flops() const override { return flops_; }

 private:
  struct Tile {
    int64_t n, y, x;  // top-left output pixel
  };
  Tile tile(int64_t t) const {
    const int64_t per_image = th_ * tw_, r = t % per_image;
    return {t / per_image, r / tw_ * 4, r % tw_ * 4};
  }

  void tiles_from(int64_t first, Tile tiles[kLanes]) const;
  void transform_weights(const Tensor& w);
  void input_transform(const float* x, const Strides4& sx, int64_t t0, int64_t ci, int64_t g, float* v) const;
  void products(int64_t p, int64_t i0, int64_t i1, int64_t panels_of_tiles, const float* v, float* m) const;
  void output_transform(const float* m, int64_t t0, int64_t nt_block, int64_t co, int64_t g, const float* res,
                        const Strides4& sr, float* y, const Strides4& sy) const;

  int64_t n_, cin_, h_, w_, cout_, pt_, pl_, ho_ = 0, wo_ = 0, th_ = 0, tw_ = 0, nt_ = 0;
  int64_t nblocks_ = 0, tb_ = 0, npanels_ = 0, kc_ = 0, cout_chunks_ = 1;
  int64_t v_pos_ = 0, m_row_ = 0;  // floats between positions of V, output channels of M
  int threads_ = 1;
  size_t v_floats_ = 0, m_floats_ = 0;
  AlignedFloats u_;
  std::vector<float> bias_;
  double flops_ = 0;
  std::string describe_;
};

void WinogradConv2dF32::transform_weights(const Tensor& w) {
  // U = G g G^T in double, G = [1/4 0 0; -1/6 -1/6 -1/6; -1/6 1/6 -1/6; 1/24 1/12 1/6; 1/24 -1/12 1/6; 0 0 1].
  static constexpr double kG[6][3] = {{0.25, 0, 0},
                                      {-1.0 / 6, -1.0 / 6, -1.0 / 6},
                                      {-1.0 / 6, 1.0 / 6, -1.0 / 6},
                                      {1.0 / 24, 1.0 / 12, 1.0 / 6},
                                      {1.0 / 24, -1.0 / 12, 1.0 / 6},
                                      {0, 0, 1}};
  const size_t floats = static_cast<size_t>(kPos * npanels_ * kMr * cin_);
  u_ = aligned_floats(floats);
  std::memset(u_.get(), 0, floats * sizeof(float));
  const float* g = w.data<float>();
  for (int64_t co = 0; co < cout_; ++co)
    for (int64_t ci = 0; ci < cin_; ++ci) {
      const float* k = g + (co * cin_ + ci) * 9;
      double gk[6][3];  // G g
      for (int a = 0; a < 6; ++a)
        for (int j = 0; j < 3; ++j) gk[a][j] = kG[a][0] * k[j] + kG[a][1] * k[3 + j] + kG[a][2] * k[6 + j];
      for (int a = 0; a < 6; ++a)
        for (int b = 0; b < 6; ++b) {
          const double u = gk[a][0] * kG[b][0] + gk[a][1] * kG[b][1] + gk[a][2] * kG[b][2];
          const int64_t pos = a * 6 + b;
          u_[static_cast<size_t>(((pos * npanels_ + co / kMr) * cin_ + ci) * kMr + co % kMr)] = static_cast<float>(u);
        }
    }
}

// The tiles first, first + 1, ..., first + 7 (in order; zero lanes past the last tile).
void WinogradConv2dF32::tiles_from(int64_t first, Tile tiles[kLanes]) const {
  Tile t = tile(std::min(first, nt_ - 1));
  for (int k = 0; k < kLanes; ++k) {
    tiles[k] = first + k < nt_ ? t : Tile{-1, 0, 0};
    if ((t.x += 4) >= tw_ * 4) {
      t.x = 0;
      if ((t.y += 4) >= th_ * 4) t.y = 0, ++t.n;
    }
  }
}

// V[p][g/2][ci][(g%2)*8 + lane] = (B^T d B)[p] of tile t0 + 8g + kLaneTile[lane], input channel ci.
TAIYI_TARGET_AVX2_FMA void WinogradConv2dF32::input_transform(const float* x, const Strides4& sx, int64_t t0,
                                                              int64_t ci, int64_t g, float* v) const {
  const int64_t first = t0 + g * kLanes, pos_stride = v_pos_;
  float* dst = v + ((g / 2) * cin_ + ci) * kNr + (g % 2) * kLanes;
  const Tile t = tile(std::min(first, nt_ - 1));
  if (sx.w == 1 && first + kLanes <= nt_ && t.x / 4 + kLanes <= tw_) {
    // 8 tiles of one row: B^T along the height on a 34-column strip of 6 input rows (zero outside
    // the image), then B^T along the width on the strip, de-interleaved.
    alignas(32) float strip[6][40];
    // Offsets from x; columns outside [0, w) read as zero. Vectors that stick out of the row are
    // loaded whole from the tensor's memory and masked (masked loads, vmaskmovps, are ~10x slower
    // on AMD Zen); only at the very start or end of the tensor are they built element by element.
    const int64_t extent = (n_ - 1) * sx.n + (cin_ - 1) * sx.c + (h_ - 1) * sx.h + w_;
    const int64_t xc = t.n * sx.n + ci * sx.c, x0 = t.x - pl_, x_end = std::min(w_, x0 + 34);
    // Consecutive items read the same strip of the next input channels, 16 KiB apart for a 64x64
    // image, which the hardware does not prefetch: ask for the strip a few channels ahead.
    if (ci + kPrefetchChannels < cin_)
      for (int i = 0; i < 6; ++i) {
        const int64_t yy = t.y - pt_ + i, off = xc + kPrefetchChannels * sx.c + yy * sx.h + std::max<int64_t>(x0, 0);
        if (yy >= 0 && yy < h_)
          for (int64_t c = 0; c < 40; c += 16) _mm_prefetch(reinterpret_cast<const char*>(x + off + c), _MM_HINT_T0);
      }
    for (int k = 0; k < 5; ++k) {
      const int64_t c0 = x0 + 8 * k;
      const __m256i col =
          _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(c0)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
      const __m256 mask =
          _mm256_castsi256_ps(_mm256_andnot_si256(_mm256_cmpgt_epi32(_mm256_setzero_si256(), col),
                                                  _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(x_end)), col)));
      const bool whole = c0 >= 0 && c0 + 8 <= x_end;
      __m256 rows[6], r[6];
      for (int i = 0; i < 6; ++i) {
        const int64_t yy = t.y - pt_ + i, off = xc + yy * sx.h + c0;
        if (yy < 0 || yy >= h_) {
          rows[i] = _mm256_setzero_ps();
        } else if (whole) {
          rows[i] = _mm256_loadu_ps(x + off);
        } else if (off >= 0 && off + 8 <= extent) {
          rows[i] = _mm256_and_ps(_mm256_loadu_ps(x + off), mask);
        } else {
          alignas(32) float e[kLanes];
          for (int l = 0; l < kLanes; ++l) e[l] = c0 + l >= 0 && c0 + l < x_end ? x[off + l] : 0.0f;
          rows[i] = _mm256_load_ps(e);
        }
      }
      input_1d(rows, r);
      for (int a = 0; a < 6; ++a) _mm256_store_ps(&strip[a][8 * k], r[a]);
    }
    for (int a = 0; a < 6; ++a) {
      __m256 d[6], r[6];
      deinterleave_6(strip[a], d);
      input_1d(d, r);
      for (int b = 0; b < 6; ++b) _mm256_store_ps(dst + (a * 6 + b) * pos_stride, r[b]);
    }
    return;
  }
  // Any other case (tiles across rows, past the last tile, any strides): gather element by element.
  Tile tiles[kLanes];
  tiles_from(first, tiles);
  alignas(32) float d[6][6][kLanes];
  for (int l = 0; l < kLanes; ++l) {
    const Tile& tl = tiles[kLaneTile[l]];
    const float* xc = x + std::max<int64_t>(tl.n, 0) * sx.n + ci * sx.c;
    for (int i = 0; i < 6; ++i) {
      const int64_t yy = tl.y - pt_ + i;
      const bool row_in = tl.n >= 0 && yy >= 0 && yy < h_;
      for (int j = 0; j < 6; ++j) {
        const int64_t xx = tl.x - pl_ + j;
        d[i][j][l] = row_in && xx >= 0 && xx < w_ ? xc[yy * sx.h + xx * sx.w] : 0.0f;
      }
    }
  }
  __m256 tmp[6][6];  // tmp[a][j] = (B^T d)[a][j]
  for (int j = 0; j < 6; ++j) {
    __m256 col[6], r[6];
    for (int i = 0; i < 6; ++i) col[i] = _mm256_load_ps(d[i][j]);
    input_1d(col, r);
    for (int a = 0; a < 6; ++a) tmp[a][j] = r[a];
  }
  for (int a = 0; a < 6; ++a) {
    __m256 r[6];
    input_1d(tmp[a], r);
    for (int b = 0; b < 6; ++b) _mm256_store_ps(dst + (a * 6 + b) * pos_stride, r[b]);
  }
}

// M[i*6 .. i*6+5][p][tiles] = U_p[panel i] . V_p for panels [i0, i1).
// U is read once per block, mostly from memory (it is 4x the weights); the block of U a step
// needs next is prefetched into L2 a little at each register tile of the current step, or the
// first pass over a block would wait on memory.
TAIYI_TARGET_AVX2_FMA void WinogradConv2dF32::products(int64_t p, int64_t i0, int64_t i1, int64_t panels_of_tiles,
                                                       const float* v, float* m) const {
  const float* up = u_.get() + p * npanels_ * cin_ * kMr;
  const float* vp = v + p * v_pos_;
  for (int64_t k0 = 0; k0 < cin_; k0 += kc_) {
    const int64_t kc = std::min(kc_, cin_ - k0);
    for (int64_t ib = i0; ib < i1; ib += kMcPanels) {
      const int64_t ie = std::min(i1, ib + kMcPanels);
      // The next step's block: panels [nb, ne) of position np, input channels [nk, nk + nkc).
      int64_t np = p, nk = k0, nb = ib + kMcPanels;
      if (nb >= i1) nb = i0, nk += kc_;
      if (nk >= cin_) nk = 0, ++np;
      const int64_t ne = std::min(i1, nb + kMcPanels), nkc = std::min(kc_, cin_ - nk);
      const float* next = np < kPos ? u_.get() + (np * npanels_ + nb) * cin_ * kMr + nk * kMr : nullptr;
      const int64_t panel_lines = (nkc * kMr + 15) / 16, lines = next != nullptr ? (ne - nb) * panel_lines : 0;
      const int64_t calls = panels_of_tiles * (ie - ib);
      int64_t call = 0, line = 0;
      for (int64_t j = 0; j < panels_of_tiles; ++j)
        for (int64_t i = ib; i < ie; ++i, ++call) {
          for (const int64_t line_end = (call + 1) * lines / calls; line < line_end; ++line)
            _mm_prefetch(
                reinterpret_cast<const char*>(next + line / panel_lines * cin_ * kMr + line % panel_lines * 16),
                _MM_HINT_T1);
          gemm_6x16(up + (i * cin_ + k0) * kMr, vp + (j * cin_ + k0) * kNr, kc,
                    m + i * kMr * m_row_ + p * tb_ + j * kNr, m_row_, k0 > 0);
        }
    }
  }
}

// out[tile t0 + 8g + kLaneTile[lane]][co] = A^T M A + bias (+ residual), for the tiles of the block.
TAIYI_TARGET_AVX2_FMA void WinogradConv2dF32::output_transform(const float* m, int64_t t0, int64_t nt_block, int64_t co,
                                                               int64_t g, const float* res, const Strides4& sr,
                                                               float* y, const Strides4& sy) const {
  const float* mc = m + co * m_row_ + g * kLanes;
  __m256 tmp[4][6];  // tmp[r][b] = (A^T M)[r][b]
  for (int b = 0; b < 6; ++b) {
    __m256 col[6], o[4];
    for (int a = 0; a < 6; ++a) col[a] = _mm256_load_ps(mc + (a * 6 + b) * tb_);
    output_1d(col, o);
    for (int r = 0; r < 4; ++r) tmp[r][b] = o[r];
  }
  const __m256 bias = _mm256_set1_ps(bias_[static_cast<size_t>(co)]);
  __m256 o[4][4];  // o[r][c]: output row r, column c of each lane's tile
  for (int r = 0; r < 4; ++r) {
    output_1d(tmp[r], o[r]);
    for (int c = 0; c < 4; ++c) o[r][c] = _mm256_add_ps(o[r][c], bias);
  }
  const int64_t first = t0 + g * kLanes;
  const Tile t = tile(first);
  if (sy.w == 1 && (res == nullptr || sr.w == 1) && g * kLanes + kLanes <= nt_block && t.x / 4 + kLanes <= tw_ &&
      t.y + 4 <= ho_ && t.x + 4 * kLanes <= wo_) {
    // 8 whole tiles of one row: 4 output rows of 32 columns, re-interleaved.
    float* yp = y + t.n * sy.n + co * sy.c + t.y * sy.h + t.x;
    const float* rp = res == nullptr ? nullptr : res + t.n * sr.n + co * sr.c + t.y * sr.h + t.x;
    for (int r = 0; r < 4; ++r) {
      __m256 q[4];
      interleave_4(o[r], q);
      for (int k = 0; k < 4; ++k) {
        if (rp != nullptr) q[k] = _mm256_add_ps(q[k], _mm256_loadu_ps(rp + r * sr.h + 8 * k));
        _mm256_storeu_ps(yp + r * sy.h + 8 * k, q[k]);
      }
    }
    return;
  }
  alignas(32) float ob[4][4][kLanes];
  for (int r = 0; r < 4; ++r)
    for (int c = 0; c < 4; ++c) _mm256_store_ps(ob[r][c], o[r][c]);
  Tile tiles[kLanes];
  tiles_from(first, tiles);
  for (int l = 0; l < kLanes; ++l) {
    const int k = kLaneTile[l];
    if (g * kLanes + k >= nt_block) continue;
    const Tile& tl = tiles[k];
    const int rows = static_cast<int>(std::min<int64_t>(4, ho_ - tl.y));
    const int cols = static_cast<int>(std::min<int64_t>(4, wo_ - tl.x));
    for (int r = 0; r < rows; ++r)
      for (int c = 0; c < cols; ++c) {
        const int64_t yy = tl.y + r, xx = tl.x + c;
        float val = ob[r][c][l];
        if (res != nullptr) val += res[tl.n * sr.n + co * sr.c + yy * sr.h + xx * sr.w];
        y[tl.n * sy.n + co * sy.c + yy * sy.h + xx * sy.w] = val;
      }
  }
}

void WinogradConv2dF32::run(const std::vector<Tensor>& in, const Tensor& out, std::byte* scratch) const {
  const float* x = in[0].data<float>();
  const Strides4 sx = strides4(in[0]), sy = strides4(out);
  const bool has_res = in.size() > 1 && in[1].defined();
  const float* res = has_res ? in[1].data<float>() : nullptr;
  const Strides4 sr = has_res ? strides4(in[1]) : sy;
  float* y = out.data<float>();
  float* v = reinterpret_cast<float*>(scratch);
  float* m = reinterpret_cast<float*>(scratch + round_up64(v_floats_ * sizeof(float)));
  const int64_t panels_per_chunk = (npanels_ + cout_chunks_ - 1) / cout_chunks_;
#pragma omp parallel num_threads(threads_)
  for (int64_t b = 0; b < nblocks_; ++b) {
    const int64_t t0 = b * tb_, nt_block = std::min(tb_, nt_ - t0);
    const int64_t panels_of_tiles = (nt_block + kNr - 1) / kNr;
    const int64_t in_groups = panels_of_tiles * 2, out_groups = (nt_block + kLanes - 1) / kLanes;
    // Input channels innermost: consecutive items write consecutive cache lines of V at each
    // position (36 streams), instead of 36 lines scattered over the block.
#pragma omp for schedule(static)
    for (int64_t item = 0; item < cin_ * in_groups; ++item) input_transform(x, sx, t0, item % cin_, item / cin_, v);
#pragma omp for schedule(static)
    for (int64_t item = 0; item < kPos * cout_chunks_; ++item) {
      const int64_t p = item % kPos, i0 = item / kPos * panels_per_chunk;
      products(p, i0, std::min(npanels_, i0 + panels_per_chunk), panels_of_tiles, v, m);
    }
#pragma omp for schedule(static)
    for (int64_t item = 0; item < cout_ * out_groups; ++item)
      output_transform(m, t0, nt_block, item / out_groups, item % out_groups, res, sr, y, sy);
  }
}

}  // namespace

bool winograd_f32_applicable(const Shape& x_shape, const Tensor& w, const Conv2dParams& p) {
  if (!cpu_has_avx2_fma() || x_shape.size() != 4 || w.ndim() != 4 || w.dtype() != DType::F32) return false;
  if (w.size(2) != 3 || w.size(3) != 3 || w.size(1) != x_shape[1] || p.groups != 1) return false;
  if (p.stride_h != 1 || p.stride_w != 1 || p.dilation_h != 1 || p.dilation_w != 1) return false;
  for (int pad : {p.pad_top, p.pad_bottom, p.pad_left, p.pad_right})
    if (pad < 0 || pad > 2) return false;
  return x_shape[2] + p.pad_top + p.pad_bottom >= 3 && x_shape[3] + p.pad_left + p.pad_right >= 3;
}

std::unique_ptr<PreparedOp> prepare_conv2d_winograd_f32(const Shape& x_shape, const Tensor& w, const Tensor& bias,
                                                        const Conv2dParams& p, Layout src_layout, Layout dst_layout) {
  if (!winograd_f32_applicable(x_shape, w, p))
    throw Error("conv2d winograd: not applicable to input " + shape_str(x_shape) + ", weight " + w.describe() +
                " (needs AVX2+FMA, a 3x3 f32 kernel, stride 1, dilation 1, groups 1, padding <= 2)");
  return std::make_unique<WinogradConv2dF32>(x_shape, w, bias, p, src_layout, dst_layout);
}

}  // namespace taiyi::ops::cpu

#else  // not x86: no AVX2, so never applicable.

namespace taiyi::ops::cpu {
bool winograd_f32_applicable(const Shape&, const Tensor&, const Conv2dParams&) { return false; }
std::unique_ptr<PreparedOp> prepare_conv2d_winograd_f32(const Shape& x_shape, const Tensor&, const Tensor&,
                                                        const Conv2dParams&, Layout, Layout) {
  throw Error("conv2d winograd: needs AVX2+FMA, not available for input " + shape_str(x_shape));
}
}  // namespace taiyi::ops::cpu

#endif
