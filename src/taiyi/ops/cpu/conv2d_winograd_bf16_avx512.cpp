// Winograd F(2x2, 3x3) convolution with bf16 products on AVX512-BF16 (vdpbf16ps), for CPUs that
// have avx512_bf16 but no AMX (AMD Zen 4). There oneDNN's direct bf16 convolution already runs at
// the machine's bf16 peak (one vdpbf16ps a cycle), so only fewer products make it faster:
// F(2x2, 3x3) does 16 multiply-adds per 2x2 output tile and (cin, cout) pair instead of 36 (2.25x
// fewer). It is the Winograd tile whose transforms are exact or nearly so in bf16 (B and A hold
// 0 and +-1, G 1/2): rounding the transformed input V and weights U to bf16 costs about 1.6x the
// error of a direct bf16 convolution (input and weight rounded), where F(4x4, 3x3) costs about 10x
// (tools/winograd_bf16_error.py). Lavin & Gray 2016, "Fast Algorithms for Convolutional Neural
// Networks":
//   Y = A^T [ (G g G^T) .* (B^T d B) ] A     per 4x4 input tile d, 3x3 filter g, 2x2 output tile Y,
// summed over input channels: 16 independent matrix products, one per transform-domain position p,
//   M_p [Cout x tiles] = U_p [Cout x Cin] . V_p [Cin x tiles].
//
// U is transformed once at prepare time and kept in bf16: [Cout/8][16 p][Cin/2][8 co][2 ci]
// (16/9 of the weights' element count, 0.9x their f32 bytes). Per call, the tiles (image, tile row,
// tile column) go in blocks; for each block, all threads together
//   1. transform the input, 16 tiles in the 16 lanes of a register, any strides: the 16 input
//      values of each tile are fetched by gathers with zero masks for the padding, B^T d B is
//      vertical adds, and channel pairs are rounded to bf16 and interleaved into
//      V [16 p][tiles/32][Cin/2][32 tiles][2 ci];
//   2. take (chunk of panels of 8 output channels, group of 32 tiles) items, the chunk's slice of U
//      within 512 KiB so that it stays in L2 across groups, and run for each panel the 16 products
//      with an 8 x 32 register tile (16 accumulators; per pair of input channels 2 loads of V, 8
//      broadcasts of U, 16 vdpbf16ps) into an L1 buffer, then the output transform A^T M A, bias
//      and residual, straight into `out` (contiguous NCHW rows by permutes and stores, else scatters).
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
#include "taiyi/ops/cpu/conv2d_winograd_f32.h"
#include "taiyi/ops/cpu/cpu_isa.h"
#include "taiyi/ops/cpu/prepared_kernels.h"
#include "taiyi/tensor/dtype.h"

namespace taiyi::ops::cpu {

namespace {

constexpr int kPos = 16;     // transform-domain positions (4 x 4)
constexpr int kLanes = 16;   // tiles per vector
constexpr int kMr = 8;       // output channels of a register tile (a panel)
constexpr int kNr = 32;      // tiles of a register tile (a group)
// Tiles per block: V (16 x Cin x tiles bf16) is read once per panel, from L3, so it is capped at
// kVBudgetBytes; bigger blocks mean fewer barriers.
constexpr int64_t kMaxBlockTiles = 512;
constexpr int64_t kVBudgetBytes = int64_t{8} << 20;
// Weights of the panels a thread runs against one group of V at a time (half the L2 of a Zen 4 core).
constexpr int64_t kUChunkBytes = int64_t{512} << 10;

size_t round_up64(size_t bytes) { return (bytes + 63) / 64 * 64; }

struct AlignedFree {
  void operator()(uint32_t* p) const { std::free(p); }
};


// v = B^T d on 4 vectors, B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1].
TAIYI_TARGET_AVX512_BF16 inline void input_1d(const __m512* d, __m512* v) {
  v[0] = _mm512_sub_ps(d[0], d[2]);
  v[1] = _mm512_add_ps(d[1], d[2]);
  v[2] = _mm512_sub_ps(d[2], d[1]);
  v[3] = _mm512_sub_ps(d[1], d[3]);
}
// o = A^T m on 4 vectors, A^T = [1 1 1 0; 0 1 -1 -1].
TAIYI_TARGET_AVX512_BF16 inline void output_1d(const __m512* m, __m512* o) {
  o[0] = _mm512_add_ps(_mm512_add_ps(m[0], m[1]), m[2]);
  o[1] = _mm512_sub_ps(_mm512_sub_ps(m[1], m[2]), m[3]);
}

class WinogradConv2dBf16 : public PreparedOp {
 public:
  WinogradConv2dBf16(const Shape& xs, const Tensor& w, const Tensor& bias, const Conv2dParams& p, Layout src_layout,
                     Layout dst_layout)
      : n_(xs[0]), cin_(xs[1]), h_(xs[2]), w_(xs[3]), cout_(w.size(0)), pt_(p.pad_top), pl_(p.pad_left) {
    const Output2d out = winograd_3x3_output(xs, p);
    ho_ = out.h;
    wo_ = out.w;
    th_ = (ho_ + 1) / 2;
    tw_ = (wo_ + 1) / 2;
    nt_ = n_ * th_ * tw_;
    cin2_ = (cin_ + 1) / 2;
    npanels_ = (cout_ + kMr - 1) / kMr;
    const int64_t budget_tiles = kVBudgetBytes / (kPos * cin2_ * 4) / kNr * kNr;
    const int64_t max_tiles = std::max<int64_t>(kNr, std::min(kMaxBlockTiles, budget_tiles));
    nblocks_ = (nt_ + max_tiles - 1) / max_tiles;
    tb_ = ((nt_ + nblocks_ - 1) / nblocks_ + kNr - 1) / kNr * kNr;
    // One cache line more than the data between positions of V: the input transform writes all
    // 16 positions at once, which at a multiple of 4 KiB apart would fall into one L1 set.
    v_pos_ = tb_ / kNr * cin2_ * kNr + kLanes;
    threads_ = std::max(1, omp_get_max_threads());
    // Panels per chunk: their slice of U (16 x Cin x 16 bytes a panel) within kUChunkBytes.
    chunk_panels_ = even_chunk(npanels_, kUChunkBytes / (kPos * cin2_ * kMr * 4));
    transform_weights(w.contiguous());
    bias_.assign(static_cast<size_t>(npanels_ * kMr), 0.0f);
    if (bias.defined()) {
      const Tensor b = bias.contiguous();
      std::memcpy(bias_.data(), b.data<float>(), static_cast<size_t>(cout_) * sizeof(float));
    }
    flops_ = 2.0 * n_ * cout_ * ho_ * wo_ * cin_ * 9;
    describe_ = std::string("conv2d bf16 winograd_f23:avx512_bf16") + (src_layout == Layout::kNHWC ? " nhwc" : " nchw") +
                (dst_layout == Layout::kNHWC ? "->nhwc" : "");
  }

  void run(const std::vector<Tensor>& in, const Tensor& out, std::byte* scratch) const override;
  size_t scratch_bytes() const override {
    return round_up64(static_cast<size_t>(kPos * v_pos_) * 4) +
           static_cast<size_t>(threads_) * round_up64(static_cast<size_t>(kPos * kMr * kNr) * 4);
  }
  size_t packed_weight_bytes() const override { return static_cast<size_t>(npanels_ * kPos * cin2_ * kMr) * 4; }
  std::string describe() const override { return describe_; }
  double flops() const override { return flops_; }

 private:
  void transform_weights(const Tensor& w);
  void input_transform(const float* x, const Strides4& sx, int64_t t0, int64_t nt_block, int64_t g, int64_t c2_begin,
                       int64_t c2_end, uint32_t* v) const;
  void input_transform_row(const float* x, const Strides4& sx, int64_t y0, int64_t x0, int64_t g, int64_t c2_begin,
                           int64_t c2_end, uint32_t* v) const;
  template <typename Fetch>
  TAIYI_TARGET_AVX512_BF16 void transform_channels(int64_t g, int64_t c2_begin, int64_t c2_end, uint32_t* v,
                                                   Fetch&& fetch) const;
  void panel_group(int64_t panel, int64_t t0, int64_t nt_block, int64_t group, const uint32_t* v, float* mt,
                   const float* res, const Strides4& sr, float* y, const Strides4& sy) const;

  int64_t n_, cin_, h_, w_, cout_, pt_, pl_, ho_ = 0, wo_ = 0, th_ = 0, tw_ = 0, nt_ = 0;
  int64_t cin2_ = 0, npanels_ = 0, nblocks_ = 0, tb_ = 0, v_pos_ = 0, chunk_panels_ = 1;
  int threads_ = 1;
  std::unique_ptr<uint32_t[], AlignedFree> u_;  // [panel][p][cin / 2][8] pairs of bf16
  std::vector<float> bias_;
  double flops_ = 0;
  std::string describe_;
};

void WinogradConv2dBf16::transform_weights(const Tensor& w) {
  const size_t words = static_cast<size_t>(npanels_ * kPos * cin2_ * kMr);
  void* mem = std::aligned_alloc(64, round_up64(words * 4));
  if (mem == nullptr) throw Error("conv2d winograd: out of memory for " + std::to_string(words) + " weights");
  u_.reset(static_cast<uint32_t*>(mem));
  const float* src = w.data<float>();
  // Parallel over panels, each of which first-touches its own part.
#pragma omp parallel for schedule(static)
  for (int64_t panel = 0; panel < npanels_; ++panel) {
    uint16_t* dst = reinterpret_cast<uint16_t*>(u_.get() + panel * kPos * cin2_ * kMr);
    for (int64_t r = 0; r < kMr; ++r)
      for (int64_t ci = 0; ci < 2 * cin2_; ++ci) {
        const int64_t co = panel * kMr + r;
        double u[4][4] = {};
        if (co < cout_ && ci < cin_) winograd_f23_filter(src + (co * cin_ + ci) * 9, u);
        for (int pos = 0; pos < kPos; ++pos)
          dst[((pos * cin2_ + ci / 2) * kMr + r) * 2 + ci % 2] = f32_to_bf16(static_cast<float>(u[pos / 4][pos % 4]));
      }
  }
}

// V[p][group][ci / 2][lane of 32][2] for the 16 tiles t0 + 16 g + lane (lane 16 g % 32 + lane of its
// group), input channel pairs [c2_begin, c2_end); zeros for padding and past the block's last tile. When the 16 tiles
// lie in one tile row and the input's rows are contiguous (NCHW), each of the 4 input rows is 34
// contiguous columns: 4 loads (masked at the image's edges) and 4 two-source permutes split them
// into the tiles' columns 0..3; otherwise 16 gathers per channel fetch them.
TAIYI_TARGET_AVX512_BF16 void WinogradConv2dBf16::input_transform(const float* x, const Strides4& sx, int64_t t0,
                                                                  int64_t nt_block, int64_t g, int64_t c2_begin,
                                                                  int64_t c2_end, uint32_t* v) const {
  const int64_t first = t0 + g * kLanes, r0 = first % (th_ * tw_);
  const bool row_of_16 = sx.w == 1 && g * kLanes + kLanes <= nt_block && r0 % tw_ + kLanes <= tw_;
  if (row_of_16) {
    input_transform_row(x + first / (th_ * tw_) * sx.n, sx, r0 / tw_ * 2 - pt_, r0 % tw_ * 2 - pl_, g, c2_begin, c2_end,
                        v);
    return;
  }
  // Each lane's tile: image n, top-left input pixel (y0, x0).
  alignas(64) int32_t base[kLanes], ys[kLanes], xs[kLanes];
  __mmask16 live = 0;
  for (int l = 0; l < kLanes; ++l) {
    const int64_t t = t0 + g * kLanes + l, r = t % (th_ * tw_);
    const bool in = g * kLanes + l < nt_block;
    live |= static_cast<__mmask16>(in ? 1u << l : 0u);
    base[l] = in ? static_cast<int32_t>(t / (th_ * tw_) * sx.n) : 0;
    ys[l] = static_cast<int32_t>(r / tw_ * 2 - pt_);
    xs[l] = static_cast<int32_t>(r % tw_ * 2 - pl_);
  }
  __m512i off[4][4];
  __mmask16 mask[4][4];
  const __m512i vbase = _mm512_load_si512(base), vy = _mm512_load_si512(ys), vx = _mm512_load_si512(xs);
  for (int i = 0; i < 4; ++i) {
    const __m512i yy = _mm512_add_epi32(vy, _mm512_set1_epi32(i));
    const __mmask16 row_in = live & _mm512_cmpge_epi32_mask(yy, _mm512_setzero_si512()) &
                             _mm512_cmplt_epi32_mask(yy, _mm512_set1_epi32(static_cast<int32_t>(h_)));
    const __m512i row = _mm512_add_epi32(vbase, _mm512_mullo_epi32(yy, _mm512_set1_epi32(static_cast<int32_t>(sx.h))));
    for (int j = 0; j < 4; ++j) {
      const __m512i xx = _mm512_add_epi32(vx, _mm512_set1_epi32(j));
      mask[i][j] = row_in & _mm512_cmpge_epi32_mask(xx, _mm512_setzero_si512()) &
                   _mm512_cmplt_epi32_mask(xx, _mm512_set1_epi32(static_cast<int32_t>(w_)));
      off[i][j] = _mm512_add_epi32(row, _mm512_mullo_epi32(xx, _mm512_set1_epi32(static_cast<int32_t>(sx.w))));
    }
  }
  transform_channels(g, c2_begin, c2_end, v, [&](int64_t ci, __m512(&d)[4][4]) TAIYI_TARGET_AVX512_BF16 {
    const float* xc = x + ci * sx.c;
    for (int i = 0; i < 4; ++i)
      for (int j = 0; j < 4; ++j) d[i][j] = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), mask[i][j], off[i][j], xc, 4);
  });
}

// 16 tiles of one tile row of image x, input rows y0 .. y0 + 3, columns x0 .. x0 + 33.
TAIYI_TARGET_AVX512_BF16 void WinogradConv2dBf16::input_transform_row(const float* x, const Strides4& sx, int64_t y0,
                                                                      int64_t x0, int64_t g, int64_t c2_begin,
                                                                      int64_t c2_end, uint32_t* v) const {
  // Columns x0 + c .. x0 + c + 15 of a row, zero outside [0, w): masks for c = 0, 2, 16, 18.
  const auto cols = [&](int64_t c) {
    const int64_t lo = std::clamp<int64_t>(-(x0 + c), 0, 16), hi = std::clamp<int64_t>(w_ - (x0 + c), 0, 16);
    return static_cast<__mmask16>(hi > lo ? ((1u << hi) - 1u) & ~((1u << lo) - 1u) : 0u);
  };
  const __mmask16 m0 = cols(0), m2 = cols(2), m16 = cols(16), m18 = cols(18);
  const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  transform_channels(g, c2_begin, c2_end, v, [&](int64_t ci, __m512(&d)[4][4]) TAIYI_TARGET_AVX512_BF16 {
    for (int i = 0; i < 4; ++i) {
      const int64_t yy = y0 + i;
      if (yy < 0 || yy >= h_) {
        for (auto& e : d[i]) e = _mm512_setzero_ps();
        continue;
      }
      // Masked-off lanes are not read, so the address may point outside the row.
      const float* row = x + ci * sx.c + yy * sx.h + x0;
      const __m512 a = _mm512_maskz_loadu_ps(m0, row), b = _mm512_maskz_loadu_ps(m16, row + 16);
      const __m512 a2 = _mm512_maskz_loadu_ps(m2, row + 2), b2 = _mm512_maskz_loadu_ps(m18, row + 18);
      d[i][0] = _mm512_permutex2var_ps(a, even, b);  // lane l: column x0 + 2 l
      d[i][1] = _mm512_permutex2var_ps(a, odd, b);
      d[i][2] = _mm512_permutex2var_ps(a2, even, b2);
      d[i][3] = _mm512_permutex2var_ps(a2, odd, b2);
    }
  });
}

// For every pair of input channels: fetch(ci, d) gives the 4 x 4 inputs of the 16 tiles of lane
// group g; V = B^T d B of both channels, rounded to bf16 and interleaved into pairs.
template <typename Fetch>
TAIYI_TARGET_AVX512_BF16 void WinogradConv2dBf16::transform_channels(int64_t g, int64_t c2_begin, int64_t c2_end,
                                                                     uint32_t* v, Fetch&& fetch) const {
  uint32_t* dst = v + (g / 2) * cin2_ * kNr + (g % 2) * kLanes;
  for (int64_t c2 = c2_begin; c2 < c2_end; ++c2) {
    __m512 vt[2][kPos];  // B^T d B of channels 2 c2 and 2 c2 + 1
    for (int k = 0; k < 2; ++k) {
      const int64_t ci = 2 * c2 + k;
      if (ci >= cin_) {
        for (auto& e : vt[k]) e = _mm512_setzero_ps();
        continue;
      }
      __m512 d[4][4], t[4][4];
      fetch(ci, d);
      for (int j = 0; j < 4; ++j) {  // along the height: t[.][j] = B^T d[.][j]
        const __m512 col[4] = {d[0][j], d[1][j], d[2][j], d[3][j]};
        __m512 r[4];
        input_1d(col, r);
        for (int a = 0; a < 4; ++a) t[a][j] = r[a];
      }
      for (int a = 0; a < 4; ++a) input_1d(t[a], &vt[k][a * 4]);  // along the width
    }
    for (int pos = 0; pos < kPos; ++pos) {
      _mm512_store_si512(dst + pos * v_pos_ + c2 * kNr, as_si(pair_rows(vt[0][pos], vt[1][pos])));
    }
  }
}

// Output channels [8 panel, 8 panel + 8) of the 32 tiles t0 + 32 group + lane: the 16 products
// into mt [16 p][8][32], then A^T M A + bias (+ residual) into y.
TAIYI_TARGET_AVX512_BF16 void WinogradConv2dBf16::panel_group(int64_t panel, int64_t t0, int64_t nt_block,
                                                              int64_t group, const uint32_t* v, float* mt,
                                                              const float* res, const Strides4& sr, float* y,
                                                              const Strides4& sy) const {
  const uint32_t* up = u_.get() + panel * kPos * cin2_ * kMr;
  for (int pos = 0; pos < kPos; ++pos) {
    const uint32_t* vp = v + pos * v_pos_ + group * cin2_ * kNr;
    const uint32_t* u = up + pos * cin2_ * kMr;
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
    for (int r = 0; r < kMr; ++r) {
      _mm512_store_ps(mt + (pos * kMr + r) * kNr, acc[r][0]);
      _mm512_store_ps(mt + (pos * kMr + r) * kNr + 16, acc[r][1]);
    }
  }
  const int64_t co_end = std::min<int64_t>(kMr, cout_ - panel * kMr);
  for (int half = 0; half < 2; ++half) {
    const int64_t first = group * kNr + half * kLanes;  // within the block
    if (first >= nt_block) break;
    const int64_t t_first = t0 + first, r0 = t_first % (th_ * tw_);
    // A^T M A + bias of output channel co (row r of the panel), for this half's 16 tiles.
    const auto outputs = [&](int64_t r, __m512 (&o)[2][2]) TAIYI_TARGET_AVX512_BF16 {
      __m512 tmp[2][4];  // (A^T M)[row][b]
      for (int b = 0; b < 4; ++b) {
        __m512 col[4], ob[2];
        for (int a = 0; a < 4; ++a) col[a] = _mm512_load_ps(mt + ((a * 4 + b) * kMr + r) * kNr + half * kLanes);
        output_1d(col, ob);
        tmp[0][b] = ob[0];
        tmp[1][b] = ob[1];
      }
      const __m512 bias = _mm512_set1_ps(bias_[static_cast<size_t>(panel * kMr + r)]);
      for (int rr = 0; rr < 2; ++rr) {
        output_1d(tmp[rr], o[rr]);
        for (auto& e : o[rr]) e = _mm512_add_ps(e, bias);
      }
    };
    if (sy.w == 1 && (res == nullptr || sr.w == 1) && first + kLanes <= nt_block && r0 % tw_ + kLanes <= tw_) {
      // 16 tiles of one tile row, contiguous output rows (NCHW): each of the 2 rows is 32 columns,
      // the two columns of the tiles interleaved by permutes; stores masked at the right and bottom
      // edges (odd output sizes).
      const int64_t n = t_first / (th_ * tw_), oy0 = r0 / tw_ * 2, ox0 = r0 % tw_ * 2;
      const __m512i lo = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
      const __m512i hi = _mm512_add_epi32(lo, _mm512_set1_epi32(8));
      const auto cols = [&](int64_t c) {
        const int64_t k = std::clamp<int64_t>(wo_ - (ox0 + c), 0, 16);
        return static_cast<__mmask16>((1u << k) - 1u);
      };
      const __mmask16 m0 = cols(0), m16 = cols(16);
      const int rows = static_cast<int>(std::min<int64_t>(2, ho_ - oy0));
      for (int64_t r = 0; r < co_end; ++r) {
        const int64_t co = panel * kMr + r;
        __m512 o[2][2];
        outputs(r, o);
        for (int rr = 0; rr < rows; ++rr) {
          __m512 q0 = _mm512_permutex2var_ps(o[rr][0], lo, o[rr][1]), q1 = _mm512_permutex2var_ps(o[rr][0], hi, o[rr][1]);
          float* yp = y + n * sy.n + co * sy.c + (oy0 + rr) * sy.h + ox0;
          if (res != nullptr) {
            const float* rp = res + n * sr.n + co * sr.c + (oy0 + rr) * sr.h + ox0;
            q0 = _mm512_add_ps(q0, _mm512_maskz_loadu_ps(m0, rp));
            q1 = _mm512_add_ps(q1, _mm512_maskz_loadu_ps(m16, rp + 16));
          }
          _mm512_mask_storeu_ps(yp, m0, q0);
          _mm512_mask_storeu_ps(yp + 16, m16, q1);
        }
      }
      continue;
    }
    // Any other case: each lane's tile (image n, top-left output pixel) and the offsets of its 4
    // outputs in y and res, scattered and gathered.
    alignas(64) int32_t oy[kLanes], ores[kLanes], ty[kLanes], tx[kLanes];
    __mmask16 live = 0;
    for (int l = 0; l < kLanes; ++l) {
      const int64_t t = t_first + l, r = t % (th_ * tw_), n = t / (th_ * tw_);
      const bool in = first + l < nt_block;
      live |= static_cast<__mmask16>(in ? 1u << l : 0u);
      ty[l] = static_cast<int32_t>(r / tw_ * 2);
      tx[l] = static_cast<int32_t>(r % tw_ * 2);
      oy[l] = in ? static_cast<int32_t>(n * sy.n + ty[l] * sy.h + tx[l] * sy.w) : 0;
      ores[l] = in ? static_cast<int32_t>(n * sr.n + ty[l] * sr.h + tx[l] * sr.w) : 0;
    }
    __m512i off[2][2], roff[2][2];
    __mmask16 mask[2][2];
    for (int r = 0; r < 2; ++r)
      for (int c = 0; c < 2; ++c) {
        const __mmask16 rin = _mm512_cmplt_epi32_mask(_mm512_add_epi32(_mm512_load_si512(ty), _mm512_set1_epi32(r)),
                                                       _mm512_set1_epi32(static_cast<int32_t>(ho_)));
        const __mmask16 cin = _mm512_cmplt_epi32_mask(_mm512_add_epi32(_mm512_load_si512(tx), _mm512_set1_epi32(c)),
                                                      _mm512_set1_epi32(static_cast<int32_t>(wo_)));
        mask[r][c] = live & rin & cin;
        off[r][c] = _mm512_add_epi32(_mm512_load_si512(oy), _mm512_set1_epi32(static_cast<int32_t>(r * sy.h + c * sy.w)));
        roff[r][c] =
            _mm512_add_epi32(_mm512_load_si512(ores), _mm512_set1_epi32(static_cast<int32_t>(r * sr.h + c * sr.w)));
      }
    for (int64_t r = 0; r < co_end; ++r) {
      const int64_t co = panel * kMr + r;
      __m512 o[2][2];
      outputs(r, o);
      for (int rr = 0; rr < 2; ++rr)
        for (int c = 0; c < 2; ++c) {
          __m512 val = o[rr][c];
          if (res != nullptr)
            val = _mm512_add_ps(val, _mm512_mask_i32gather_ps(_mm512_setzero_ps(), mask[rr][c], roff[rr][c],
                                                              res + co * sr.c, 4));
          _mm512_mask_i32scatter_ps(y + co * sy.c, mask[rr][c], off[rr][c], val, 4);
        }
    }
  }
}

void WinogradConv2dBf16::run(const std::vector<Tensor>& in, const Tensor& out, std::byte* scratch) const {
  const auto [x, sx, res, sr, y, sy] = conv_io(in, out);
  auto* v = reinterpret_cast<uint32_t*>(scratch);
  std::byte* mt_scratch = scratch + round_up64(static_cast<size_t>(kPos * v_pos_) * 4);
  const size_t mt_bytes = round_up64(static_cast<size_t>(kPos * kMr * kNr) * 4);
#pragma omp parallel num_threads(threads_)
  {
    auto* mt = reinterpret_cast<float*>(mt_scratch + static_cast<size_t>(omp_get_thread_num()) * mt_bytes);
    for (int64_t b = 0; b < nblocks_; ++b) {
      const int64_t t0 = b * tb_, nt_block = std::min(tb_, nt_ - t0);
      const int64_t lane_groups = (nt_block + kLanes - 1) / kLanes, groups = (nt_block + kNr - 1) / kNr;
      // Items (channel pairs, lane group), channels outer: with contiguous input rows, consecutive
      // items of one thread read on along the same 8 rows, which the hardware prefetches (a lane
      // group's 4 rows of every channel at once would be hundreds of streams from memory); the
      // gather path takes all channels of a lane group at once (its offsets are made once).
      const int64_t c2_step = sx.w == 1 && tw_ % kLanes == 0 ? 1 : cin2_, chunks = (cin2_ + c2_step - 1) / c2_step;
#pragma omp for schedule(static)
      for (int64_t item = 0; item < chunks * 2 * groups; ++item) {
        const int64_t g = item % (2 * groups), c2 = item / (2 * groups) * c2_step;
        const int64_t c2_end = std::min(cin2_, c2 + c2_step);
        if (g < lane_groups) {
          input_transform(x, sx, t0, nt_block, g, c2, c2_end, v);
        } else {  // the second half of a last group of 32: zeros
          for (int pos = 0; pos < kPos; ++pos)
            for (int64_t k = c2; k < c2_end; ++k)
              std::memset(v + pos * v_pos_ + (g / 2) * cin2_ * kNr + k * kNr + kLanes, 0, kLanes * 4);
        }
      }
      // Items (chunk of panels, group): the chunk's slice of U stays in L2 across the groups of a
      // thread, and each group's V in L2 across the chunk's panels.
      const int64_t panel_chunks = (npanels_ + chunk_panels_ - 1) / chunk_panels_;
#pragma omp for schedule(static)
      for (int64_t item = 0; item < panel_chunks * groups; ++item) {
        const int64_t p0 = item / groups * chunk_panels_, p1 = std::min(npanels_, p0 + chunk_panels_);
        for (int64_t panel = p0; panel < p1; ++panel)
          panel_group(panel, t0, nt_block, item % groups, v, mt, res, sr, y, sy);
      }
    }
  }
}

}  // namespace

bool winograd_bf16_avx512_applicable(const Shape& x_shape, const Tensor& w, const Conv2dParams& p) {
  if (!cpu_has_avx512_bf16() || !winograd_3x3_form(x_shape, w, p)) return false;
  // Offsets into the input and output are 32-bit in the gathers and scatters.
  const int64_t plane = (x_shape[2] + 4) * (x_shape[3] + 4);
  return x_shape[0] * x_shape[1] * plane < (int64_t{1} << 31) && x_shape[0] * w.size(0) * plane < (int64_t{1} << 31);
}

std::unique_ptr<PreparedOp> prepare_conv2d_winograd_bf16_avx512(const Shape& x_shape, const Tensor& w,
                                                                const Tensor& bias, const Conv2dParams& p,
                                                                Layout src_layout, Layout dst_layout) {
  if (!winograd_bf16_avx512_applicable(x_shape, w, p))
    throw Error("conv2d winograd: bf16 F(2x2,3x3) not applicable to input " + shape_str(x_shape) + ", weight " +
                w.describe() + " (needs avx512_bf16, a 3x3 f32 kernel, stride 1, dilation 1, groups 1, padding <= 2)");
  return std::make_unique<WinogradConv2dBf16>(x_shape, w, bias, p, src_layout, dst_layout);
}

}  // namespace taiyi::ops::cpu

#else  // not x86: no AVX512-BF16, so never applicable.

#include "taiyi/ops/cpu/prepared_kernels.h"

namespace taiyi::ops::cpu {
bool winograd_bf16_avx512_applicable(const Shape&, const Tensor&, const Conv2dParams&) { return false; }
std::unique_ptr<PreparedOp> prepare_conv2d_winograd_bf16_avx512(const Shape& x_shape, const Tensor&, const Tensor&,
                                                                const Conv2dParams&, Layout, Layout) {
  throw Error("conv2d winograd: bf16 F(2x2,3x3) needs an x86 CPU with avx512_bf16, not available for input " +
              shape_str(x_shape));
}
}  // namespace taiyi::ops::cpu

#endif
