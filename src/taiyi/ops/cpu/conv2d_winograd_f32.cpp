// Winograd F(MxM, 3x3) convolution for AVX2+FMA, M = 4 or 2 (Lavin & Gray 2016, "Fast Algorithms
// for Convolutional Neural Networks"; F(4x4,3x3) with points 0, +-1, +-2, infinity, F(2x2,3x3) with
// 0, +-1, infinity):
//   Y = A^T [ (G g G^T) .* (B^T d B) ] A     per a x a input tile d (a = M + 2), 3x3 filter g, MxM output tile Y,
// summed over input channels, which turns the convolution into a^2 (36 or 16) independent matrix
// products, one per transform-domain position p:  M_p [Cout x tiles] = U_p [Cout x Cin] . V_p [Cin x tiles].
// F(4,3) does 36 multiply-adds per 16 outputs (4x fewer than direct), F(2,3) 16 per 4 (2.25x fewer)
// and rounds less (coefficients 0, +-1/2, +-1).
// One implementation, templated on M: only the 1-D transforms and the strip (de)interleaves differ.
//
// The tiles (n, tile row, tile column, flattened) go in blocks of up to kMaxBlockTiles. For each
// block, all threads together
//   1. transform the input: V [a^2][tiles/16][Cin][16]   (8 tiles in the vector lanes),
//   2. run the a^2 products with a 6 x 16 register tile (6 output channels broadcast from U, 16 tiles
//      loaded from V: 12 accumulators); each thread owns a range of output channels, which it takes
//      kS panels of 6 and kc input channels at a time: it transforms that slice of the weights into
//      U for one row of a positions (an L2-sized buffer) and runs those a products against V over
//      all tiles of the block (a kc x 16 panel of V stays in L1);  M [Cout][a^2][tiles],
//   3. transform the output, add bias and residual, and write it straight into `out`.
// The weights are kept as they came, only reordered once at prepare time to [Cout/6][9][Cin][6]
// (Cout padded to 6 with zeros), so they take the memory of w and not 4x (F43) or 1.78x (F23) as a
// pre-transformed U would; making U on the fly from that order is a few vector multiply-adds per 8
// weights of contiguous memory, which costs roughly 10-25% of the products' time at the UNet's
// shapes (measured by skipping it; the least at large images, where each weight meets the most
// tiles). Against U pre-transformed once (4x / 1.78x the weights' memory, 2.3 GB more for the
// UNet), F(4,3) is about 10% slower at 64x64 and 32x32 and no slower at 16x16. Tiles in the
// lanes make both transforms vertical vector code; for NCHW a row of 8 tiles is an (8M + 2)-column
// strip of the input (de-interleaved by M) and an 8M-column strip of the output (re-interleaved),
// other cases (edges, tiles across rows, channels-last) gather and scatter element by element.
// What made it fast on a 2-core Zen 3 (besides the register tile): V and M strides that are not
// multiples of 4 KiB, software prefetch of the input strips (they come from memory), and no
// vmaskmovps at the image edges (slow on AMD).
#include "taiyi/ops/cpu/conv2d_winograd_f32.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "taiyi/ops/cpu/conv_io.h"
#include "taiyi/ops/cpu/cpu_isa.h"

#if defined(__x86_64__) || defined(__i386__)
// GCC 12's AVX-512 intrinsics pass an uninitialised _mm512_undefined_ps() as the unused merge
// source of their unmasked forms, which -W(maybe-)uninitialized reports at each use.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

namespace taiyi::ops::cpu {
namespace {

constexpr int kLanes = 8;     // tiles per vector
constexpr int kMr = 6;        // output channels of a register tile
constexpr int kNr = 16;       // tiles of a register tile
constexpr int64_t kKc = 128;  // input channels per L1 panel of V (kc x 16 floats = 8 KiB)
// Output-channel panels per slice of U: the slice of the weights (16 x 6 x 128 x 9 floats) and one
// row of U made from it (a x 16 x 6 x 128) mostly stay in L2 while the row's a products run. (On the
// 2-core Zen 3 measured, 16 x 128 did best of 4 x 256, 8 x 256, 8 x 128, 12 x 96, 16 x 128 and
// 32 x 64, by less than that machine's noise of about 10%.)
constexpr int64_t kS = 16;
// Tiles per block: the transformed block V (a^2 x Cin x tiles floats) goes through L3 (it is read
// once per slice of U), and each block transforms all the weights once, so bigger blocks transform
// them less often. kVBudgetFloats caps V.
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

// ---- What depends on the output tile edge M ----
// G (the filter transform, applied in double at prepare time), the tile order in the lanes of the
// NCHW fast paths (see deinterleave / interleave) and the name.
template <int M>
struct Tiling;

template <>
struct Tiling<4> {
  // G = [1/4 0 0; -1/6 -1/6 -1/6; -1/6 1/6 -1/6; 1/24 1/12 1/6; 1/24 -1/12 1/6; 0 0 1]
  static constexpr double kG[6][3] = {{0.25, 0, 0},
                                      {-1.0 / 6, -1.0 / 6, -1.0 / 6},
                                      {-1.0 / 6, 1.0 / 6, -1.0 / 6},
                                      {1.0 / 24, 1.0 / 12, 1.0 / 6},
                                      {1.0 / 24, -1.0 / 12, 1.0 / 6},
                                      {0, 0, 1}};
  // 4x4 transposes inside 128-bit halves (no lane crossing) put tile kLaneTile[l] of 8 in lane l.
  static constexpr int kLaneTile[kLanes] = {0, 2, 4, 6, 1, 3, 5, 7};
  static constexpr const char* kName = "winograd_f43";
};

template <>
struct Tiling<2> {
  // G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1]
  static constexpr double kG[4][3] = {{1, 0, 0}, {0.5, 0.5, 0.5}, {0.5, -0.5, 0.5}, {0, 0, 1}};
  // Even / odd shuffles inside 128-bit halves put tile kLaneTile[l] of 8 in lane l.
  static constexpr int kLaneTile[kLanes] = {0, 1, 4, 5, 2, 3, 6, 7};
  static constexpr const char* kName = "winograd_f23";
};

// ---- 1-D transforms on M + 2 vectors ----

// v = B^T d.
//   M = 4: B^T = [4 0 -5 0 1 0; 0 -4 -4 1 1 0; 0 4 -4 -1 1 0; 0 -2 -1 2 1 0; 0 2 -1 -2 1 0; 0 4 0 -5 0 1]
//   M = 2: B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]
template <int M>
TAIYI_TARGET_AVX2_FMA inline void input_1d(const __m256* d, __m256* v) {
  if constexpr (M == 4) {
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
  } else {
    static_assert(M == 2);
    v[0] = _mm256_sub_ps(d[0], d[2]);
    v[1] = _mm256_add_ps(d[1], d[2]);
    v[2] = _mm256_sub_ps(d[2], d[1]);
    v[3] = _mm256_sub_ps(d[1], d[3]);
  }
}

// o = A^T m.
//   M = 4: A^T = [1 1 1 1 1 0; 0 1 -1 2 -2 0; 0 1 1 4 4 0; 0 1 -1 8 -8 1]
//   M = 2: A^T = [1 1 1 0; 0 1 -1 -1]
template <int M>
TAIYI_TARGET_AVX2_FMA inline void output_1d(const __m256* m, __m256* o) {
  if constexpr (M == 4) {
    const __m256 s12 = _mm256_add_ps(m[1], m[2]), d12 = _mm256_sub_ps(m[1], m[2]);
    const __m256 s34 = _mm256_add_ps(m[3], m[4]), d34 = _mm256_sub_ps(m[3], m[4]);
    o[0] = _mm256_add_ps(_mm256_add_ps(m[0], s12), s34);
    o[1] = _mm256_fmadd_ps(_mm256_set1_ps(2.0f), d34, d12);
    o[2] = _mm256_fmadd_ps(_mm256_set1_ps(4.0f), s34, s12);
    o[3] = _mm256_add_ps(_mm256_fmadd_ps(_mm256_set1_ps(8.0f), d34, d12), m[5]);
  } else {
    static_assert(M == 2);
    o[0] = _mm256_add_ps(_mm256_add_ps(m[0], m[1]), m[2]);
    o[1] = _mm256_sub_ps(_mm256_sub_ps(m[1], m[2]), m[3]);
  }
}

// ---- Tiles in lanes, NCHW rows ----
// A row of 8 tiles is 8M floats, M per tile; every path puts tile Tiling<M>::kLaneTile[l] in lane l.

// d[j][l] = s[M kLaneTile[l] + j], j = 0..M+1, from s[0..8M+4).
template <int M>
TAIYI_TARGET_AVX2_FMA inline void deinterleave(const float* s, __m256* d) {
  if constexpr (M == 4) {
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
  } else {
    static_assert(M == 2);
    const __m256 q0 = _mm256_loadu_ps(s), q1 = _mm256_loadu_ps(s + 8);
    const __m256 r0 = _mm256_loadu_ps(s + 2), r1 = _mm256_loadu_ps(s + 10);
    d[0] = _mm256_shuffle_ps(q0, q1, 0x88);  // s0 s2 s8 s10 | s4 s6 s12 s14
    d[1] = _mm256_shuffle_ps(q0, q1, 0xDD);
    d[2] = _mm256_shuffle_ps(r0, r1, 0x88);
    d[3] = _mm256_shuffle_ps(r0, r1, 0xDD);
  }
}

// The inverse for M values per tile: s[M kLaneTile[l] + j] = d[j][l], as M vectors q of s[0..8M).
template <int M>
TAIYI_TARGET_AVX2_FMA inline void interleave(const __m256* d, __m256* q) {
  if constexpr (M == 4) {
    const __m256 e0 = _mm256_unpacklo_ps(d[0], d[1]), e1 = _mm256_unpackhi_ps(d[0], d[1]);
    const __m256 e2 = _mm256_unpacklo_ps(d[2], d[3]), e3 = _mm256_unpackhi_ps(d[2], d[3]);
    q[0] = _mm256_shuffle_ps(e0, e2, 0x44);
    q[1] = _mm256_shuffle_ps(e0, e2, 0xEE);
    q[2] = _mm256_shuffle_ps(e1, e3, 0x44);
    q[3] = _mm256_shuffle_ps(e1, e3, 0xEE);
  } else {
    static_assert(M == 2);
    q[0] = _mm256_unpacklo_ps(d[0], d[1]);
    q[1] = _mm256_unpackhi_ps(d[0], d[1]);
  }
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

// The AVX-512 tile, 6 x 32: two panels of 16 tiles (v0 and v1, one vector each) at once, 12
// accumulators, so that each broadcast weight feeds two 16-lane multiply-adds;
// c[6][0..15] (+)= u^T . v0, c[6][16..31] (+)= u^T . v1.
TAIYI_TARGET_AVX512_F32 void gemm_6x32_avx512(const float* u, const float* v0, const float* v1, int64_t kc, float* c,
                                              int64_t ldc, bool accumulate) {
  __m512 c0[kMr], c1[kMr];
  if (accumulate) {
#pragma GCC unroll 6
    for (int r = 0; r < kMr; ++r) c0[r] = _mm512_loadu_ps(c + r * ldc), c1[r] = _mm512_loadu_ps(c + r * ldc + kNr);
  } else {
#pragma GCC unroll 6
    for (int r = 0; r < kMr; ++r) c0[r] = _mm512_setzero_ps(), c1[r] = _mm512_setzero_ps();
  }
#pragma GCC unroll 4
  for (int64_t k = 0; k < kc; ++k) {
    const __m512 b0 = _mm512_loadu_ps(v0), b1 = _mm512_loadu_ps(v1);
#pragma GCC unroll 6
    for (int r = 0; r < kMr; ++r) {
      const __m512 a = _mm512_set1_ps(u[r]);
      c0[r] = _mm512_fmadd_ps(a, b0, c0[r]);
      c1[r] = _mm512_fmadd_ps(a, b1, c1[r]);
    }
    u += kMr;
    v0 += kNr;
    v1 += kNr;
  }
#pragma GCC unroll 6
  for (int r = 0; r < kMr; ++r) _mm512_storeu_ps(c + r * ldc, c0[r]), _mm512_storeu_ps(c + r * ldc + kNr, c1[r]);
}

// ---- The prepared op ----

template <int M>
class WinogradConv2dF32 : public PreparedOp {
 public:
  static constexpr int kA = M + 2;          // input tile edge
  static constexpr int kPos = kA * kA;      // transform-domain positions
  static constexpr int kStripVecs = M + 1;  // vectors of 8 columns covering an input strip of 8M + 2
  static constexpr const int* kLaneTile = Tiling<M>::kLaneTile;

  WinogradConv2dF32(const Shape& xs, const Tensor& w, const Tensor& bias, const Conv2dParams& p, Layout src_layout,
                    Layout dst_layout)
      : n_(xs[0]), cin_(xs[1]), h_(xs[2]), w_(xs[3]), cout_(w.size(0)), pt_(p.pad_top), pl_(p.pad_left) {
    const Output2d out = winograd_3x3_output(xs, p);
    ho_ = out.h;
    wo_ = out.w;
    th_ = (ho_ + M - 1) / M;
    tw_ = (wo_ + M - 1) / M;
    nt_ = n_ * th_ * tw_;
    const int64_t max_tiles =
        std::max<int64_t>(kNr, std::min<int64_t>(kMaxBlockTiles, kVBudgetFloats / (kPos * cin_) / kNr * kNr));
    nblocks_ = (nt_ + max_tiles - 1) / max_tiles;
    tb_ = ((nt_ + nblocks_ - 1) / nblocks_ + kNr - 1) / kNr * kNr;
    npanels_ = (cout_ + kMr - 1) / kMr;
    const int64_t chunks = (cin_ + kKc - 1) / kKc;
    kc_ = (cin_ + chunks - 1) / chunks;
    threads_ = std::max(1, omp_get_max_threads());
    // One cache line more than the data between positions of V and output channels of M: the
    // transforms touch all positions at once, which at a multiple of 4 KiB apart would all fall
    // in one L1 set (and two L2 sets).
    v_pos_ = tb_ * cin_ + kNr;
    m_row_ = kPos * tb_ + kNr;
    v_floats_ = static_cast<size_t>(kPos * v_pos_);
    m_floats_ = static_cast<size_t>(npanels_ * kMr * m_row_);
    u_floats_ = static_cast<size_t>(kA * kS * kMr * kc_);
    reorder_weights(w.contiguous());
    bias_.assign(static_cast<size_t>(cout_), 0.0f);
    if (bias.defined()) {
      const Tensor b = bias.contiguous();
      std::memcpy(bias_.data(), b.data<float>(), static_cast<size_t>(cout_) * sizeof(float));
    }
    flops_ = 2.0 * n_ * cout_ * ho_ * wo_ * cin_ * 9;
    describe_ = std::string("conv2d f32 ") + Tiling<M>::kName + (avx512_ ? ":avx512" : ":avx2") +
                (src_layout == Layout::kNHWC ? " nhwc" : " nchw") + (dst_layout == Layout::kNHWC ? "->nhwc" : "");
  }

  void run(const std::vector<Tensor>& in, const Tensor& out, std::byte* scratch) const override;
  size_t scratch_bytes() const override {
    return round_up64(v_floats_ * sizeof(float)) + round_up64(m_floats_ * sizeof(float)) +
           static_cast<size_t>(threads_) * round_up64(u_floats_ * sizeof(float));
  }
  size_t packed_weight_bytes() const override { return static_cast<size_t>(npanels_ * kMr * 9 * cin_) * sizeof(float); }
  std::string describe() const override { return describe_; }
  double flops() const override { return flops_; }

 private:
  struct Tile {
    int64_t n, y, x;  // top-left output pixel
  };
  Tile tile(int64_t t) const {
    const int64_t per_image = th_ * tw_, r = t % per_image;
    return {t / per_image, r / tw_ * M, r % tw_ * M};
  }

  void tiles_from(int64_t first, Tile tiles[kLanes]) const;
  void reorder_weights(const Tensor& w);
  void transform_weights(int a, int64_t i0, int64_t ns, int64_t k0, int64_t kc, float* u) const;
  void input_transform(const float* x, const Strides4& sx, int64_t t0, int64_t ci, int64_t g, float* v) const;
  void products(int64_t i0, int64_t i1, int64_t panels_of_tiles, const float* v, float* m, float* u) const;
  void output_transform(const float* m, int64_t t0, int64_t nt_block, int64_t co, int64_t g, const float* res,
                        const Strides4& sr, float* y, const Strides4& sy) const;

  int64_t n_, cin_, h_, w_, cout_, pt_, pl_, ho_ = 0, wo_ = 0, th_ = 0, tw_ = 0, nt_ = 0;
  int64_t nblocks_ = 0, tb_ = 0, npanels_ = 0, kc_ = 0;
  int64_t v_pos_ = 0, m_row_ = 0;  // floats between positions of V, output channels of M
  int threads_ = 1;
  bool avx512_ = cpu_has_avx512f();                    // products by gemm_6x32_avx512, pairs of tile panels at a time
  size_t v_floats_ = 0, m_floats_ = 0, u_floats_ = 0;  // u: one thread's slice of U
  AlignedFloats g_;                                    // the weights, [Cout/6][9][Cin][6]
  std::vector<float> bias_;
  double flops_ = 0;
  std::string describe_;
};

template <int M>
void WinogradConv2dF32<M>::reorder_weights(const Tensor& w) {
  // Parallel over panels, each of which first-touches its own part (page faults are most of it).
  g_ = aligned_floats(static_cast<size_t>(npanels_ * 9 * cin_ * kMr));
  const float* src = w.data<float>();
#pragma omp parallel for schedule(static)
  for (int64_t panel = 0; panel < npanels_; ++panel) {
    float* dst = &g_[static_cast<size_t>(panel * 9 * cin_ * kMr)];
    for (int64_t tap = 0; tap < 9; ++tap)
      for (int64_t ci = 0; ci < cin_; ++ci)
        for (int64_t r = 0; r < kMr; ++r) {
          const int64_t co = panel * kMr + r;
          dst[(tap * cin_ + ci) * kMr + r] = co < cout_ ? src[(co * cin_ + ci) * 9 + tap] : 0.0f;
        }
  }
}

// u[b][i - i0][0 .. kc)[6] = (G g G^T)[a][b] of panels [i0, i0 + ns), input channels [k0, k0 + kc):
// row a of U, from the reordered weights. In that order the 9 taps of a panel's slice are 9
// contiguous runs of kc x 6 floats, so the transform is vertical vector code over them.
template <int M>
TAIYI_TARGET_AVX2_FMA void WinogradConv2dF32<M>::transform_weights(int a, int64_t i0, int64_t ns, int64_t k0,
                                                                   int64_t kc, float* u) const {
  const auto& kG = Tiling<M>::kG;
  const float ga0 = static_cast<float>(kG[a][0]), ga1 = static_cast<float>(kG[a][1]),
              ga2 = static_cast<float>(kG[a][2]);
  float gb[kA][3];
  for (int b = 0; b < kA; ++b)
    for (int j = 0; j < 3; ++j) gb[b][j] = static_cast<float>(kG[b][j]);
  const int64_t len = kc * kMr, tap_stride = cin_ * kMr, slice = ns * len;
  for (int64_t i = 0; i < ns; ++i) {
    const float* g = g_.get() + (i0 + i) * 9 * tap_stride + k0 * kMr;
    float* dst = u + i * len;
    int64_t e = 0;
    for (; e + kLanes <= len; e += kLanes) {
      __m256 t[3];  // (G g)[a][j] = ga0 g[0][j] + ga1 g[1][j] + ga2 g[2][j]
      for (int j = 0; j < 3; ++j)
        t[j] = _mm256_fmadd_ps(
            _mm256_set1_ps(ga2), _mm256_loadu_ps(g + (6 + j) * tap_stride + e),
            _mm256_fmadd_ps(_mm256_set1_ps(ga1), _mm256_loadu_ps(g + (3 + j) * tap_stride + e),
                            _mm256_mul_ps(_mm256_set1_ps(ga0), _mm256_loadu_ps(g + j * tap_stride + e))));
      for (int b = 0; b < kA; ++b)
        _mm256_storeu_ps(dst + b * slice + e,
                         _mm256_fmadd_ps(_mm256_set1_ps(gb[b][2]), t[2],
                                         _mm256_fmadd_ps(_mm256_set1_ps(gb[b][1]), t[1],
                                                         _mm256_mul_ps(_mm256_set1_ps(gb[b][0]), t[0]))));
    }
    for (; e < len; ++e) {  // the same arithmetic, one weight at a time
      float t[3];
      for (int j = 0; j < 3; ++j)
        t[j] = std::fma(ga2, g[(6 + j) * tap_stride + e],
                        std::fma(ga1, g[(3 + j) * tap_stride + e], ga0 * g[j * tap_stride + e]));
      for (int b = 0; b < kA; ++b)
        dst[b * slice + e] = std::fma(gb[b][2], t[2], std::fma(gb[b][1], t[1], gb[b][0] * t[0]));
    }
  }
}

// The tiles first, first + 1, ..., first + 7 (in order; zero lanes past the last tile).
template <int M>
void WinogradConv2dF32<M>::tiles_from(int64_t first, Tile tiles[kLanes]) const {
  Tile t = tile(std::min(first, nt_ - 1));
  for (int k = 0; k < kLanes; ++k) {
    tiles[k] = first + k < nt_ ? t : Tile{-1, 0, 0};
    if ((t.x += M) >= tw_ * M) {
      t.x = 0;
      if ((t.y += M) >= th_ * M) t.y = 0, ++t.n;
    }
  }
}

// V[p][g/2][ci][(g%2)*8 + lane] = (B^T d B)[p] of tile t0 + 8g + kLaneTile[lane], input channel ci.
template <int M>
TAIYI_TARGET_AVX2_FMA void WinogradConv2dF32<M>::input_transform(const float* x, const Strides4& sx, int64_t t0,
                                                                 int64_t ci, int64_t g, float* v) const {
  const int64_t first = t0 + g * kLanes, pos_stride = v_pos_;
  float* dst = v + ((g / 2) * cin_ + ci) * kNr + (g % 2) * kLanes;
  const Tile t = tile(std::min(first, nt_ - 1));
  if (sx.w == 1 && first + kLanes <= nt_ && t.x / M + kLanes <= tw_) {
    // 8 tiles of one row: B^T along the height on an (8M + 2)-column strip of M + 2 input rows (zero
    // outside the image), then B^T along the width on the strip, de-interleaved.
    alignas(32) float strip[kA][8 * kStripVecs];
    // Offsets from x; columns outside [0, w) read as zero. Vectors that stick out of the row are
    // loaded whole from the tensor's memory and masked (masked loads, vmaskmovps, are ~10x slower
    // on AMD Zen); only at the very start or end of the tensor are they built element by element.
    const int64_t extent = (n_ - 1) * sx.n + (cin_ - 1) * sx.c + (h_ - 1) * sx.h + w_;
    const int64_t xc = t.n * sx.n + ci * sx.c, x0 = t.x - pl_, x_end = std::min(w_, x0 + 8 * M + 2);
    // Consecutive items read the same strip of the next input channels, 16 KiB apart for a 64x64
    // image, which the hardware does not prefetch: ask for the strip a few channels ahead.
    if (ci + kPrefetchChannels < cin_)
      for (int i = 0; i < kA; ++i) {
        const int64_t yy = t.y - pt_ + i, off = xc + kPrefetchChannels * sx.c + yy * sx.h + std::max<int64_t>(x0, 0);
        if (yy >= 0 && yy < h_)
          for (int64_t c = 0; c < 8 * kStripVecs; c += 16)
            _mm_prefetch(reinterpret_cast<const char*>(x + off + c), _MM_HINT_T0);
      }
    for (int k = 0; k < kStripVecs; ++k) {
      const int64_t c0 = x0 + 8 * k;
      const __m256i col =
          _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(c0)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
      const __m256 mask =
          _mm256_castsi256_ps(_mm256_andnot_si256(_mm256_cmpgt_epi32(_mm256_setzero_si256(), col),
                                                  _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(x_end)), col)));
      const bool whole = c0 >= 0 && c0 + 8 <= x_end;
      __m256 rows[kA], r[kA];
      for (int i = 0; i < kA; ++i) {
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
      input_1d<M>(rows, r);
      for (int a = 0; a < kA; ++a) _mm256_store_ps(&strip[a][8 * k], r[a]);
    }
    for (int a = 0; a < kA; ++a) {
      __m256 d[kA], r[kA];
      deinterleave<M>(strip[a], d);
      input_1d<M>(d, r);
      for (int b = 0; b < kA; ++b) _mm256_store_ps(dst + (a * kA + b) * pos_stride, r[b]);
    }
    return;
  }
  // Any other case (tiles across rows, past the last tile, any strides): gather element by element.
  Tile tiles[kLanes];
  tiles_from(first, tiles);
  alignas(32) float d[kA][kA][kLanes];
  for (int l = 0; l < kLanes; ++l) {
    const Tile& tl = tiles[kLaneTile[l]];
    const float* xc = x + std::max<int64_t>(tl.n, 0) * sx.n + ci * sx.c;
    for (int i = 0; i < kA; ++i) {
      const int64_t yy = tl.y - pt_ + i;
      const bool row_in = tl.n >= 0 && yy >= 0 && yy < h_;
      for (int j = 0; j < kA; ++j) {
        const int64_t xx = tl.x - pl_ + j;
        d[i][j][l] = row_in && xx >= 0 && xx < w_ ? xc[yy * sx.h + xx * sx.w] : 0.0f;
      }
    }
  }
  __m256 tmp[kA][kA];  // tmp[a][j] = (B^T d)[a][j]
  for (int j = 0; j < kA; ++j) {
    __m256 col[kA], r[kA];
    for (int i = 0; i < kA; ++i) col[i] = _mm256_load_ps(d[i][j]);
    input_1d<M>(col, r);
    for (int a = 0; a < kA; ++a) tmp[a][j] = r[a];
  }
  for (int a = 0; a < kA; ++a) {
    __m256 r[kA];
    input_1d<M>(tmp[a], r);
    for (int b = 0; b < kA; ++b) _mm256_store_ps(dst + (a * kA + b) * pos_stride, r[b]);
  }
}

// M[i*6 .. i*6+5][p][tiles] = U_p[panel i] . V_p for panels [i0, i1) and every position p, with u
// (u_floats_) for the slices of U.
template <int M>
TAIYI_TARGET_AVX2_FMA void WinogradConv2dF32<M>::products(int64_t i0, int64_t i1, int64_t panels_of_tiles,
                                                          const float* v, float* m, float* u) const {
  for (int64_t ib = i0; ib < i1; ib += kS) {
    const int64_t ns = std::min(kS, i1 - ib);
    for (int64_t k0 = 0; k0 < cin_; k0 += kc_) {
      const int64_t kc = std::min(kc_, cin_ - k0), slice = ns * kc * kMr;
      for (int a = 0; a < kA; ++a) {
        transform_weights(a, ib, ns, k0, kc, u);
        for (int b = 0; b < kA; ++b) {
          const int64_t p = a * kA + b;
          const float* up = u + b * slice;
          const float* vp = v + p * v_pos_ + k0 * kNr;
          int64_t j = 0;
          if (avx512_) {
            for (; j + 2 <= panels_of_tiles; j += 2)
              for (int64_t i = 0; i < ns; ++i)
                gemm_6x32_avx512(up + i * kc * kMr, vp + j * cin_ * kNr, vp + (j + 1) * cin_ * kNr, kc,
                                 m + (ib + i) * kMr * m_row_ + p * tb_ + j * kNr, m_row_, k0 > 0);
          }
          for (; j < panels_of_tiles; ++j)
            for (int64_t i = 0; i < ns; ++i)
              gemm_6x16(up + i * kc * kMr, vp + j * cin_ * kNr, kc, m + (ib + i) * kMr * m_row_ + p * tb_ + j * kNr,
                        m_row_, k0 > 0);
        }
      }
    }
  }
}

// out[tile t0 + 8g + kLaneTile[lane]][co] = A^T M A + bias (+ residual), for the tiles of the block.
template <int M>
TAIYI_TARGET_AVX2_FMA void WinogradConv2dF32<M>::output_transform(const float* m, int64_t t0, int64_t nt_block,
                                                                  int64_t co, int64_t g, const float* res,
                                                                  const Strides4& sr, float* y,
                                                                  const Strides4& sy) const {
  const float* mc = m + co * m_row_ + g * kLanes;
  __m256 tmp[M][kA];  // tmp[r][b] = (A^T M)[r][b]
  for (int b = 0; b < kA; ++b) {
    __m256 col[kA], o[M];
    for (int a = 0; a < kA; ++a) col[a] = _mm256_load_ps(mc + (a * kA + b) * tb_);
    output_1d<M>(col, o);
    for (int r = 0; r < M; ++r) tmp[r][b] = o[r];
  }
  const __m256 bias = _mm256_set1_ps(bias_[static_cast<size_t>(co)]);
  __m256 o[M][M];  // o[r][c]: output row r, column c of each lane's tile
  for (int r = 0; r < M; ++r) {
    output_1d<M>(tmp[r], o[r]);
    for (int c = 0; c < M; ++c) o[r][c] = _mm256_add_ps(o[r][c], bias);
  }
  const int64_t first = t0 + g * kLanes;
  const Tile t = tile(first);
  if (sy.w == 1 && (res == nullptr || sr.w == 1) && g * kLanes + kLanes <= nt_block && t.x / M + kLanes <= tw_ &&
      t.y + M <= ho_ && t.x + M * kLanes <= wo_) {
    // 8 whole tiles of one row: M output rows of 8M columns, re-interleaved.
    float* yp = y + t.n * sy.n + co * sy.c + t.y * sy.h + t.x;
    const float* rp = res == nullptr ? nullptr : res + t.n * sr.n + co * sr.c + t.y * sr.h + t.x;
    for (int r = 0; r < M; ++r) {
      __m256 q[M];
      interleave<M>(o[r], q);
      for (int k = 0; k < M; ++k) {
        if (rp != nullptr) q[k] = _mm256_add_ps(q[k], _mm256_loadu_ps(rp + r * sr.h + 8 * k));
        _mm256_storeu_ps(yp + r * sy.h + 8 * k, q[k]);
      }
    }
    return;
  }
  alignas(32) float ob[M][M][kLanes];
  for (int r = 0; r < M; ++r)
    for (int c = 0; c < M; ++c) _mm256_store_ps(ob[r][c], o[r][c]);
  Tile tiles[kLanes];
  tiles_from(first, tiles);
  for (int l = 0; l < kLanes; ++l) {
    const int k = kLaneTile[l];
    if (g * kLanes + k >= nt_block) continue;
    const Tile& tl = tiles[k];
    const int rows = static_cast<int>(std::min<int64_t>(M, ho_ - tl.y));
    const int cols = static_cast<int>(std::min<int64_t>(M, wo_ - tl.x));
    for (int r = 0; r < rows; ++r)
      for (int c = 0; c < cols; ++c) {
        const int64_t yy = tl.y + r, xx = tl.x + c;
        float val = ob[r][c][l];
        if (res != nullptr) val += res[tl.n * sr.n + co * sr.c + yy * sr.h + xx * sr.w];
        y[tl.n * sy.n + co * sy.c + yy * sy.h + xx * sy.w] = val;
      }
  }
}

template <int M>
void WinogradConv2dF32<M>::run(const std::vector<Tensor>& in, const Tensor& out, std::byte* scratch) const {
  const auto [x, sx, res, sr, y, sy] = conv_io(in, out);
  float* v = reinterpret_cast<float*>(scratch);
  float* m = reinterpret_cast<float*>(scratch + round_up64(v_floats_ * sizeof(float)));
  std::byte* u_scratch = scratch + round_up64(v_floats_ * sizeof(float)) + round_up64(m_floats_ * sizeof(float));
#pragma omp parallel num_threads(threads_)
  for (int64_t b = 0; b < nblocks_; ++b) {
    const int64_t t0 = b * tb_, nt_block = std::min(tb_, nt_ - t0);
    const int64_t panels_of_tiles = (nt_block + kNr - 1) / kNr;
    const int64_t in_groups = panels_of_tiles * 2, out_groups = (nt_block + kLanes - 1) / kLanes;
    // Input channels innermost: consecutive items write consecutive cache lines of V at each
    // position (a^2 streams), instead of a^2 lines scattered over the block.
#pragma omp for schedule(static)
    for (int64_t item = 0; item < cin_ * in_groups; ++item) input_transform(x, sx, t0, item % cin_, item / cin_, v);
    {  // Each thread its own output channels (and so its own slice of the weights to transform).
      const int64_t tid = omp_get_thread_num(), nth = omp_get_num_threads();
      float* u = reinterpret_cast<float*>(u_scratch + static_cast<size_t>(tid) * round_up64(u_floats_ * sizeof(float)));
      products(npanels_ * tid / nth, npanels_ * (tid + 1) / nth, panels_of_tiles, v, m, u);
    }
#pragma omp barrier
#pragma omp for schedule(static)
    for (int64_t item = 0; item < cout_ * out_groups; ++item)
      output_transform(m, t0, nt_block, item / out_groups, item % out_groups, res, sr, y, sy);
  }
}

}  // namespace

bool winograd_f32_applicable(const Shape& x_shape, const Tensor& w, const Conv2dParams& p) {
  return cpu_has_avx2_fma() && winograd_3x3_form(x_shape, w, p);
}

std::unique_ptr<PreparedOp> prepare_conv2d_winograd_f32(const Shape& x_shape, const Tensor& w, const Tensor& bias,
                                                        const Conv2dParams& p, Layout src_layout, Layout dst_layout,
                                                        int tile) {
  if (tile != 2 && tile != 4) throw Error("conv2d winograd: tile must be 2 or 4, got " + std::to_string(tile));
  if (!winograd_f32_applicable(x_shape, w, p))
    throw Error("conv2d winograd: not applicable to input " + shape_str(x_shape) + ", weight " + w.describe() +
                " (needs AVX2+FMA, a 3x3 f32 kernel, stride 1, dilation 1, groups 1, padding <= 2)");
  if (tile == 2) return std::make_unique<WinogradConv2dF32<2>>(x_shape, w, bias, p, src_layout, dst_layout);
  return std::make_unique<WinogradConv2dF32<4>>(x_shape, w, bias, p, src_layout, dst_layout);
}

}  // namespace taiyi::ops::cpu

#else  // not x86: no AVX2, so never applicable.

namespace taiyi::ops::cpu {
bool winograd_f32_applicable(const Shape&, const Tensor&, const Conv2dParams&) { return false; }
std::unique_ptr<PreparedOp> prepare_conv2d_winograd_f32(const Shape& x_shape, const Tensor&, const Tensor&,
                                                        const Conv2dParams&, Layout, Layout, int) {
  throw Error("conv2d winograd: needs AVX2+FMA, not available for input " + shape_str(x_shape));
}
}  // namespace taiyi::ops::cpu

#endif

namespace taiyi::ops::cpu {

Output2d winograd_3x3_output(const Shape& xs, const Conv2dParams& p) {
  const Output2d out{xs[2] + p.pad_top + p.pad_bottom - 2, xs[3] + p.pad_left + p.pad_right - 2};
  if (out.h < 1 || out.w < 1)
    throw Error("conv2d winograd: input " + shape_str(xs) + " is too small for a 3x3 kernel with this padding");
  return out;
}

void winograd_f23_filter(const float* g, double (&u)[4][4]) {
  // G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1]
  static constexpr double kG[4][3] = {{1, 0, 0}, {0.5, 0.5, 0.5}, {0.5, -0.5, 0.5}, {0, 0, 1}};
  double t[4][3];  // G g
  for (int a = 0; a < 4; ++a)
    for (int j = 0; j < 3; ++j) t[a][j] = kG[a][0] * g[j] + kG[a][1] * g[3 + j] + kG[a][2] * g[6 + j];
  for (int a = 0; a < 4; ++a)
    for (int b = 0; b < 4; ++b) u[a][b] = t[a][0] * kG[b][0] + t[a][1] * kG[b][1] + t[a][2] * kG[b][2];
}

bool winograd_3x3_form(const Shape& x_shape, const Tensor& w, const Conv2dParams& p) {
  if (x_shape.size() != 4 || w.ndim() != 4 || w.dtype() != DType::F32) return false;
  if (w.size(2) != 3 || w.size(3) != 3 || w.size(1) != x_shape[1] || p.groups != 1) return false;
  if (p.stride_h != 1 || p.stride_w != 1 || p.dilation_h != 1 || p.dilation_w != 1) return false;
  for (int pad : {p.pad_top, p.pad_bottom, p.pad_left, p.pad_right})
    if (pad < 0 || pad > 2) return false;
  return x_shape[2] + p.pad_top + p.pad_bottom >= 3 && x_shape[3] + p.pad_left + p.pad_right >= 3;
}

}  // namespace taiyi::ops::cpu
