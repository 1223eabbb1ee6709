// The bf16 Winograd F(2x2,3x3) prepared convolution for AVX512-BF16 (conv2d_winograd_bf16_avx512.cpp)
// against a reference in double that rounds where the kernel does (the transformed input B^T d B,
// computed in f32 in the kernel's order, and the transformed weights G g G^T to bf16, nearest even), and against the
// f32 convolution within bf16's error: odd and tiny sizes, partial tiles and groups of 16 and 32 tiles, channel counts
// off the 8-channel panels and odd, padding 0..2 and asymmetric, batch, all four src/dst layouts, bias or none, a
// residual (also in place), several blocks, one thread and the default count, NaN-filled scratch and guard values after
// the scratch and the output. Skipped on CPUs without avx512_bf16.
// The AMX kernel (conv2d_winograd_bf16_amx.cpp) against the same reference: channels-last f32 and
// bf16 inputs and outputs, residuals (f32 separate and in place, bf16 in place), partial blocks,
// blocks across tile rows and whole rows, batches, one thread; its GroupNorm+SiLU prologue; and
// where prepare_conv2d binds it.
// Skipped on CPUs without AMX.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "guarded_buffers.h"
#include "op_testing.h"
#include "taiyi/ops/cpu/cpu_isa.h"
#include "taiyi/ops/cpu/dnnl_context.h"
#include "taiyi/ops/cpu/prepared_kernels.h"
#include "taiyi/ops/ops.h"
#include "taiyi/ops/prepared.h"
#include "taiyi/tensor/dtype.h"

namespace taiyi::ops_test {
namespace {

using ops::Layout;

double round_bf16(double x) { return bf16_to_f32(f32_to_bf16(static_cast<float>(x))); }

// conv2d(x, w) + bias by F(2x2,3x3) in double with V and U rounded to bf16: [N, Cout, Ho, Wo] values.
std::vector<double> winograd_bf16_reference(const Tensor& x, const Tensor& w, const Tensor& bias,
                                            const ops::Conv2dParams& p) {
  static const double kG[4][3] = {{1, 0, 0}, {0.5, 0.5, 0.5}, {0.5, -0.5, 0.5}, {0, 0, 1}};
  static const double kAt[2][4] = {{1, 1, 1, 0}, {0, 1, -1, -1}};
  const int64_t n = x.size(0), cin = x.size(1), h = x.size(2), wd = x.size(3), cout = w.size(0);
  const int64_t ho = h + p.pad_top + p.pad_bottom - 2, wo = wd + p.pad_left + p.pad_right - 2;
  const std::vector<double> xv = values(x), wv = values(w);
  const std::vector<double> bv = bias.defined() ? values(bias) : std::vector<double>(static_cast<size_t>(cout), 0.0);
  std::vector<double> u(static_cast<size_t>(cout * cin * 16));
  for (int64_t co = 0; co < cout; ++co)
    for (int64_t ci = 0; ci < cin; ++ci) {
      const double* g = &wv[static_cast<size_t>((co * cin + ci) * 9)];
      for (int a = 0; a < 4; ++a)
        for (int b = 0; b < 4; ++b) {
          double s = 0;
          for (int i = 0; i < 3; ++i)
            for (int j = 0; j < 3; ++j) s += kG[a][i] * g[i * 3 + j] * kG[b][j];
          u[static_cast<size_t>((co * cin + ci) * 16 + a * 4 + b)] = round_bf16(s);
        }
    }
  std::vector<double> out(static_cast<size_t>(n * cout * ho * wo));
  std::vector<double> v(static_cast<size_t>(cin * 16));
  for (int64_t b = 0; b < n; ++b)
    for (int64_t ty = 0; ty < (ho + 1) / 2; ++ty)
      for (int64_t tx = 0; tx < (wo + 1) / 2; ++tx) {
        for (int64_t ci = 0; ci < cin; ++ci) {
          double d[4][4];
          for (int i = 0; i < 4; ++i)
            for (int j = 0; j < 4; ++j) {
              const int64_t yy = 2 * ty - p.pad_top + i, xx = 2 * tx - p.pad_left + j;
              d[i][j] = yy >= 0 && yy < h && xx >= 0 && xx < wd
                            ? xv[static_cast<size_t>(((b * cin + ci) * h + yy) * wd + xx)]
                            : 0.0;
            }
          // B^T d B in f32 in the kernel's order (along the height, then the width), so that the
          // rounding to bf16 sees the same f32 values.
          float t[4][4], vt[4][4];
          const auto bt = [](const float* e, int stride, float* o, int ostride) {
            o[0] = e[0] - e[2 * stride];
            o[ostride] = e[stride] + e[2 * stride];
            o[2 * ostride] = e[2 * stride] - e[stride];
            o[3 * ostride] = e[stride] - e[3 * stride];
          };
          float df[4][4];
          for (int i = 0; i < 4; ++i)
            for (int j = 0; j < 4; ++j) df[i][j] = static_cast<float>(d[i][j]);
          for (int j = 0; j < 4; ++j) bt(&df[0][j], 4, &t[0][j], 4);
          for (int a = 0; a < 4; ++a) bt(t[a], 1, vt[a], 1);
          for (int a = 0; a < 4; ++a)
            for (int c = 0; c < 4; ++c) v[static_cast<size_t>(ci * 16 + a * 4 + c)] = round_bf16(vt[a][c]);
        }
        for (int64_t co = 0; co < cout; ++co) {
          double m[16] = {};
          for (int64_t ci = 0; ci < cin; ++ci)
            for (int pos = 0; pos < 16; ++pos)
              m[pos] += u[static_cast<size_t>((co * cin + ci) * 16 + pos)] * v[static_cast<size_t>(ci * 16 + pos)];
          for (int r = 0; r < 2; ++r)
            for (int c = 0; c < 2; ++c) {
              const int64_t yy = 2 * ty + r, xx = 2 * tx + c;
              if (yy >= ho || xx >= wo) continue;
              double s = bv[static_cast<size_t>(co)];
              for (int a = 0; a < 4; ++a)
                for (int e = 0; e < 4; ++e) s += kAt[r][a] * m[a * 4 + e] * kAt[c][e];
              out[static_cast<size_t>(((b * cout + co) * ho + yy) * wo + xx)] = s;
            }
        }
      }
  return out;
}

struct Case {
  int64_t n, cin, h, w, cout;
  int pad;
  bool bias;
};

std::string case_name(const Case& c) {
  return "x [" + std::to_string(c.n) + "," + std::to_string(c.cin) + "," + std::to_string(c.h) + "," +
         std::to_string(c.w) + "] cout " + std::to_string(c.cout) + " pad " + std::to_string(c.pad);
}

void check_case(const Case& c, const ops::Conv2dParams& p, Layout src_layout, Layout dst_layout, Residual residual,
                uint32_t seed) {
  const Shape xs = {c.n, c.cin, c.h, c.w};
  const Tensor x_nchw = random_tensor(xs, seed);
  const Tensor w = random_tensor({c.cout, c.cin, 3, 3}, seed + 1);
  const Tensor bias = c.bias ? random_tensor({c.cout}, seed + 2) : Tensor();
  ASSERT_TRUE(ops::cpu::winograd_bf16_avx512_applicable(xs, w, p));
  std::vector<double> expected = winograd_bf16_reference(x_nchw, w, bias, p);
  const Tensor f32 = ops::conv2d(x_nchw, w, bias, p);
  const Shape ys = f32.shape();
  const auto op = ops::cpu::prepare_conv2d_winograd_bf16_avx512(xs, w, bias, p, src_layout, dst_layout);
  const GuardedRun run = run_guarded(*op, x_nchw, src_layout, ys, dst_layout, residual, seed + 3);
  const Tensor& y = run.y;
  std::vector<double> expected_f32 = values(f32);
  for (size_t i = 0; i < run.residual.size(); ++i) expected[i] += run.residual[i], expected_f32[i] += run.residual[i];
  // The same roundings as the kernel: what remains is the f32 accumulation of up to 9 Cin terms.
  const std::vector<double> got = values(y);
  double max_abs = 0, max_err = 0, num = 0, den = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    max_abs = std::max(max_abs, std::abs(expected[i]));
    max_err = std::max(max_err, std::abs(got[i] - expected[i]));
    num += (got[i] - expected_f32[i]) * (got[i] - expected_f32[i]);
    den += expected_f32[i] * expected_f32[i];
  }
  EXPECT_LE(max_err, 2e-5 * max_abs + 1e-6) << "max |expected| " << max_abs;
  // Against f32: bf16's error (and not less: the roundings happen). |x|, |w| <= 1 uniform.
  if (residual == Residual::kNone && got.size() >= 32) {
    EXPECT_LT(std::sqrt(num / den), 1.5e-2);
    EXPECT_GT(std::sqrt(num / den), 1e-4);
  }
  EXPECT_EQ(op->flops(), 2.0 * c.n * c.cout * ys[2] * ys[3] * c.cin * 9);
}

class Conv2dWinogradBf16 : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!ops::cpu::cpu_has_avx512_bf16()) GTEST_SKIP() << "no avx512_bf16";
  }
};

TEST_F(Conv2dWinogradBf16, MatchesTheRoundedReferenceOnOddShapes) {
  const Case cases[] = {
      {1, 1, 1, 1, 1, 1, true},      {2, 3, 2, 3, 5, 1, true},      {1, 8, 4, 4, 8, 1, false},
      {3, 17, 5, 7, 3, 1, true},     {2, 3, 9, 13, 17, 1, true},    {1, 64, 8, 8, 64, 1, true},
      {2, 17, 16, 17, 33, 1, false}, {1, 5, 13, 9, 7, 0, true},     {2, 4, 7, 5, 6, 2, true},
      {1, 3, 3, 3, 2, 0, false},     {3, 9, 17, 16, 13, 1, true},   {1, 20, 64, 64, 24, 1, true},
      {2, 33, 64, 9, 19, 1, true},   {1, 300, 12, 10, 70, 1, true}, {2, 16, 1, 64, 16, 1, true},
      {1, 7, 10, 34, 9, 1, true},    {2, 5, 12, 40, 7, 2, false},
  };
  uint32_t seed = 100;
  for (const Case& c : cases) {
    SCOPED_TRACE(case_name(c));
    check_case(c, ops::Conv2dParams::same(c.pad), Layout::kNCHW, Layout::kNCHW, Residual::kNone, seed);
    seed += 10;
  }
}

TEST_F(Conv2dWinogradBf16, AllLayoutsAndResiduals) {
  const Case cases[] = {{2, 17, 9, 13, 11, 1, true}, {1, 8, 16, 16, 24, 1, false}, {2, 40, 32, 32, 30, 1, true}};
  uint32_t seed = 1000;
  for (const Case& c : cases) {
    SCOPED_TRACE(case_name(c));
    for_each_layout_and_residual([&](Layout src, Layout dst, Residual r) {
      check_case(c, ops::Conv2dParams::same(c.pad), src, dst, r, seed);
      seed += 10;
    });
  }
}

TEST_F(Conv2dWinogradBf16, ManyBlocksThreadCountsAndAsymmetricPadding) {
  // 2 x 18 x 22 = 792 tiles: two blocks of up to 512; output channels over 8 panels.
  const Case c = {2, 130, 36, 44, 75, 1, true};
  const int threads = omp_get_max_threads();
  check_case(c, ops::Conv2dParams::same(1), Layout::kNCHW, Layout::kNCHW, Residual::kSeparate, 5000);
  omp_set_num_threads(1);
  check_case(c, ops::Conv2dParams::same(1), Layout::kNHWC, Layout::kNCHW, Residual::kInPlace, 5010);
  omp_set_num_threads(threads);
  const ops::Conv2dParams asym = {1, 1, 0, 2, 1, 0, 1, 1, 1};
  check_case({2, 6, 11, 10, 5, 1, true}, asym, Layout::kNCHW, Layout::kNCHW, Residual::kNone, 5020);
}

TEST_F(Conv2dWinogradBf16, ApplicabilityAndKernelChoice) {
  const Shape xs = {1, 32, 8, 8};
  const Tensor w3 = random_tensor({32, 32, 3, 3}, 1), w1 = random_tensor({32, 32, 1, 1}, 2);
  EXPECT_TRUE(ops::cpu::winograd_bf16_avx512_applicable(xs, w3, ops::Conv2dParams::same(1)));
  EXPECT_FALSE(ops::cpu::winograd_bf16_avx512_applicable(xs, w3, ops::Conv2dParams::same(1, 2)));
  EXPECT_FALSE(ops::cpu::winograd_bf16_avx512_applicable(xs, w1, ops::Conv2dParams{}));
  EXPECT_FALSE(ops::cpu::winograd_bf16_avx512_applicable(xs, w3, {1, 1, 2, 2, 2, 2, 2, 2, 1}));
  EXPECT_TRUE(throws_error(
      [&] { ops::cpu::prepare_conv2d_winograd_bf16_avx512(xs, w1, Tensor(), {}, Layout::kNCHW, Layout::kNCHW); },
      {"winograd", "not applicable"}));
  if (!ops::bf16_supported()) return;
  // prepare_conv2d in bf16: this kernel where oneDNN has no AMX, for 3x3 stride-1 convolutions of
  // at least 16 channels in and out; oneDNN otherwise and under TAIYI_WINOGRAD=0.
  const auto kernel = [&](const Shape& x, const Tensor& w, const ops::Conv2dParams& p) {
    return ops::prepare_conv2d(x, w, Tensor(), p, DType::BF16)->describe();
  };
  const bool want = !ops::cpu::dnnl_uses_amx();
  EXPECT_EQ(kernel(xs, w3, ops::Conv2dParams::same(1)).find("winograd_f23:avx512_bf16") != std::string::npos, want);
  EXPECT_EQ(kernel(xs, w3, ops::Conv2dParams::same(1, 2)).find("winograd"), std::string::npos);
  EXPECT_EQ(kernel({1, 8, 8, 8}, random_tensor({32, 8, 3, 3}, 3), ops::Conv2dParams::same(1)).find("winograd"),
            std::string::npos);
  setenv("TAIYI_WINOGRAD", "0", 1);
  EXPECT_EQ(kernel(xs, w3, ops::Conv2dParams::same(1)).find("winograd"), std::string::npos);
  unsetenv("TAIYI_WINOGRAD");
  // Weights: 16 positions of Cin (padded to even) x Cout (padded to 8) bf16.
  const auto op = ops::cpu::prepare_conv2d_winograd_bf16_avx512(
      {1, 5, 8, 8}, random_tensor({9, 5, 3, 3}, 4), Tensor(), ops::Conv2dParams::same(1), Layout::kNCHW, Layout::kNHWC);
  EXPECT_EQ(op->packed_weight_bytes(), size_t{16} * 6 * 16 * 2);
  EXPECT_EQ(op->describe(), "conv2d bf16 winograd_f23:avx512_bf16 nchw->nhwc");
}

// ---- The AMX kernel (conv2d_winograd_bf16_amx.cpp): channels-last in and out, f32 or bf16 each.

class Conv2dWinogradBf16Amx : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!ops::cpu::cpu_has_amx_bf16()) GTEST_SKIP() << "this CPU has no AMX-BF16 (or Linux does not allow it)";
  }
};

// The largest |got - want| and |want| over got's values.
struct ErrorBound {
  double max_err = 0, max_abs = 0;
};
ErrorBound compare(const std::vector<double>& got, const std::vector<double>& want) {
  ErrorBound e;
  for (size_t i = 0; i < got.size(); ++i) {
    e.max_abs = std::max(e.max_abs, std::abs(want[i]));
    e.max_err = std::max(e.max_err, std::abs(got[i] - want[i]));
  }
  return e;
}

// The f32 path against the rounded reference and f32 (check_case, NHWC in and out, every residual
// kind); then the same input rounded to bf16 read as bf16, and the outputs written in bf16.
void check_amx_case(const Case& c, uint32_t seed) {
  SCOPED_TRACE(case_name(c));
  const Shape xs = {c.n, c.cin, c.h, c.w};
  const ops::Conv2dParams p = ops::Conv2dParams::same(1);
  const Tensor x = ops::cast(ops::cast(random_tensor(xs, seed), DType::BF16), DType::F32);  // bf16 values
  const Tensor w = random_tensor({c.cout, c.cin, 3, 3}, seed + 1);
  const Tensor bias = c.bias ? random_tensor({c.cout}, seed + 2) : Tensor();
  ASSERT_TRUE(ops::cpu::winograd_bf16_amx_applicable(xs, w, p));
  for (Residual r : {Residual::kNone, Residual::kSeparate, Residual::kInPlace}) {
    SCOPED_TRACE("residual " + std::to_string(static_cast<int>(r)));
    const auto op =
        ops::cpu::prepare_conv2d_winograd_bf16_amx(xs, w, bias, p, {r != Residual::kNone}, DType::F32, DType::F32);
    std::vector<double> want = winograd_bf16_reference(x, w, bias, p);
    const GuardedRun run = run_guarded(*op, x, Layout::kNHWC, {c.n, c.cout, c.h, c.w}, Layout::kNHWC, r, seed + 3);
    for (size_t i = 0; i < run.residual.size(); ++i) want[i] += run.residual[i];
    const ErrorBound e = compare(values(run.y), want);
    EXPECT_LE(e.max_err, 2e-5 * e.max_abs + 1e-6) << "max |expected| " << e.max_abs;
  }
  // bf16 in (the same values), f32 and bf16 out: the reference's values again, and the bf16 output
  // the f32 one rounded (the same sums before the store).
  const auto f32_out = ops::cpu::prepare_conv2d_winograd_bf16_amx(xs, w, bias, p, {}, DType::BF16, DType::F32);
  const auto bf16_out = ops::cpu::prepare_conv2d_winograd_bf16_amx(xs, w, bias, p, {}, DType::BF16, DType::BF16);
  const Tensor xb = nhwc(x, DType::BF16);
  const auto [yf_nchw, yb_nchw] = run_f32_and_bf16_out(*f32_out, *bf16_out, xb, {c.n, c.cout, c.h, c.w});
  const std::vector<double> expected = winograd_bf16_reference(x, w, bias, p);
  const ErrorBound e = compare(values(yf_nchw), expected);
  EXPECT_LE(e.max_err, 2e-5 * e.max_abs + 1e-6) << "bf16 input, max |expected| " << e.max_abs;
  int64_t differ = 0;
  for (int64_t i = 0; i < yf_nchw.numel(); ++i)
    differ += bf16_to_f32(yb_nchw.data_u16()[i]) != bf16_to_f32(f32_to_bf16(yf_nchw.data<float>()[i]));
  EXPECT_EQ(differ, 0);
  // A bf16 residual, in place, into the bf16 output.
  const auto with_res = ops::cpu::prepare_conv2d_winograd_bf16_amx(
      xs, w, bias, p, {true, 1.0f, ops::PostOp::kNone, DType::F32, DType::BF16}, DType::BF16, DType::BF16);
  const Tensor res = ops::cast(ops::cast(random_tensor({c.n, c.cout, c.h, c.w}, seed + 4), DType::BF16), DType::F32);
  Tensor y = nhwc(res, DType::BF16);
  Scratch scratch(with_res->scratch_bytes());
  with_res->run({xb, y}, y, scratch.mem.get());
  const std::vector<double> rv = values(res), yv = values(y);
  double worst = 0;
  for (size_t i = 0; i < yv.size(); ++i) worst = std::max(worst, std::abs(yv[i] - (expected[i] + rv[i])));
  EXPECT_LE(worst, (e.max_abs + 1.0) * std::ldexp(1.0, -8) + 1e-6);  // one bf16 rounding of the sum
}

TEST_F(Conv2dWinogradBf16Amx, MatchesTheRoundedReference) {
  // One tile; one partial block of 30 tiles (batch 2); tile rows of 64 tiles (whole blocks of a
  // row: the channels-last row path, blocks in columns, the next rows prefetched); rows of 32 tiles
  // over 3 panels and 3 steps of Cin in a batch of 2; rows of 33 tiles (blocks across rows).
  const Case cases[] = {{1, 32, 2, 2, 32, 1, true},
                        {2, 64, 6, 10, 32, 1, true},
                        {1, 32, 4, 128, 64, 1, false},
                        {2, 96, 8, 64, 96, 1, true},
                        {1, 64, 34, 66, 32, 1, true}};
  uint32_t seed = 7000;
  for (const Case& c : cases) {
    check_amx_case(c, seed);
    seed += 10;
  }
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  check_amx_case({1, 64, 6, 128, 32, 1, true}, seed);
  omp_set_num_threads(threads);
  // With two threads, the threads splitting each block's panels (TAIYI_WINOGRAD_SPLIT=1; by
  // default where U is too large for one core's L2 but half of it is not: 256 -> 256), whole rows
  // of blocks and blocks across rows.
  if (threads == 2) {
    const Shape xs = {1, 256, 4, 64};
    EXPECT_NE(ops::cpu::prepare_conv2d_winograd_bf16_amx(xs, random_tensor({256, 256, 3, 3}, 9), Tensor(),
                                                         ops::Conv2dParams::same(1), {}, DType::BF16, DType::BF16)
                  ->describe()
                  .find("split the panels"),
              std::string::npos);
    setenv("TAIYI_WINOGRAD_SPLIT", "1", 1);
    check_amx_case({1, 64, 6, 64, 64, 1, true}, seed + 10);
    check_amx_case({2, 32, 6, 10, 128, 1, false}, seed + 20);
    unsetenv("TAIYI_WINOGRAD_SPLIT");
  }
}

// The GroupNorm+SiLU prologue (ops::Prologue) of a bf16 input x: against the rounded reference of
// y = silu(group_norm(x)) rounded to bf16 (eager f32 ops), which the kernel computes with
// silu16_for_bf16 (relative error ~1e-4): where that moves a value across a bf16 rounding boundary
// of y or V, the two differ by one bf16 step of it, a few percent of the values. Samples of
// different mean and spread (per-sample statistics), gamma and beta or none, f32 and bf16 output
// with a bf16 residual in place; whole rows of blocks (the thread's ring of normalised rows, reused
// going down a column of blocks), blocks across rows and partial ones, one thread.
void check_prologue_case(const Case& c, int groups, bool affine, bool bf16_out, uint32_t seed) {
  SCOPED_TRACE(case_name(c) + " groups " + std::to_string(groups) + (affine ? " affine" : "") +
               (bf16_out ? " bf16 out" : ""));
  const Shape xs = {c.n, c.cin, c.h, c.w};
  const ops::Conv2dParams p = ops::Conv2dParams::same(1);
  // Sample s: mean about 2 s - 1, spread 1 + s.
  Tensor x = random_tensor(xs, seed);
  const int64_t per = c.cin * c.h * c.w;
  for (int64_t s = 0; s < c.n; ++s)
    for (int64_t i = 0; i < per; ++i) x.data<float>()[s * per + i] = x.data<float>()[s * per + i] * (1 + s) + 2 * s - 1;
  x = ops::cast(ops::cast(x, DType::BF16), DType::F32);  // bf16 values
  const Tensor w = random_tensor({c.cout, c.cin, 3, 3}, seed + 1);
  const Tensor bias = c.bias ? random_tensor({c.cout}, seed + 2) : Tensor();
  const Tensor gamma = affine ? random_tensor({c.cin}, seed + 3) : Tensor();
  const Tensor beta = affine ? random_tensor({c.cin}, seed + 4) : Tensor();
  const float eps = 1e-6f;
  const Tensor y = ops::cast(ops::cast(ops::group_norm_silu(x, groups, gamma, beta, eps), DType::BF16), DType::F32);
  const std::vector<double> want = winograd_bf16_reference(y, w, bias, p);
  const DType dst = bf16_out ? DType::BF16 : DType::F32;
  ops::Epilogue e;
  Tensor res;
  if (bf16_out) {
    e = {true, 1.0f, ops::PostOp::kNone, DType::F32, DType::BF16};
    res = ops::cast(ops::cast(random_tensor({c.n, c.cout, c.h, c.w}, seed + 5), DType::BF16), DType::F32);
  }
  const auto op =
      ops::cpu::prepare_conv2d_winograd_bf16_amx(xs, w, bias, p, e, DType::BF16, dst, {groups, eps, gamma, beta});
  EXPECT_NE(op->describe().find("groupnorm+silu"), std::string::npos);
  Scratch scratch(op->scratch_bytes());
  Tensor out = nhwc(bf16_out ? res : Tensor::zeros({c.n, c.cout, c.h, c.w}), dst);
  std::vector<Tensor> in = {nhwc(x, DType::BF16)};
  if (bf16_out) in.push_back(out);
  op->run(in, out, scratch.mem.get());
  const std::vector<double> got = values(out);
  const std::vector<double> rv = bf16_out ? values(res) : std::vector<double>(got.size(), 0.0);
  double err2 = 0, ref2 = 0, worst = 0, max_abs = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double d = got[i] - (want[i] + rv[i]);
    err2 += d * d;
    ref2 += want[i] * want[i];
    worst = std::max(worst, std::abs(d));
    max_abs = std::max(max_abs, std::abs(want[i]));
  }
  // relL2: flips of a few percent of the roundings give ~5e-4, and a bf16 output's own rounding
  // ~1e-3 (a whole bf16 conv's error is ~3e-3; a wrong channel, sample or missing SiLU gives 0.1
  // and more).
  EXPECT_LE(std::sqrt(err2 / ref2), bf16_out ? 2.5e-3 : 1.5e-3);
  EXPECT_LE(worst, 0.05 * max_abs + 0.01);
}

TEST_F(Conv2dWinogradBf16Amx, GroupNormSiluPrologue) {
  uint32_t seed = 7400;
  // whole rows of blocks (2 per row, 4 tile rows: the ring), batch 2 of them (1 per row), blocks
  // across rows and a partial one, and 3 steps of Cin.
  check_prologue_case({1, 64, 8, 128, 32, 1, true}, 32, true, false, seed);
  check_prologue_case({2, 32, 6, 64, 64, 1, true}, 8, false, true, seed + 10);
  check_prologue_case({2, 64, 6, 10, 32, 1, false}, 4, true, true, seed + 20);
  check_prologue_case({1, 96, 4, 64, 32, 1, true}, 32, true, false, seed + 30);
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  check_prologue_case({1, 64, 8, 64, 32, 1, true}, 16, true, true, seed + 40);
  omp_set_num_threads(threads);
  // the threads splitting the panels (each normalising every block's rows)
  setenv("TAIYI_WINOGRAD_SPLIT", "1", 1);
  check_prologue_case({1, 64, 8, 128, 64, 1, true}, 32, true, true, seed + 50);
  unsetenv("TAIYI_WINOGRAD_SPLIT");
}

// Split panels with two threads: a thread that has done its half of every block takes, from the
// other's end, blocks of the other half it has not reached (work_units.h). With thread 1 asleep
// after its first block, thread 0 takes most of its blocks, and the output is the same to the
// bit. 8 x 128 pixels: 4 x 64 tiles, 8 blocks of 32 (up to 5 tries: a thread takes only from one
// that has started).
TEST_F(Conv2dWinogradBf16Amx, SplitPanelsTakeBlocksFromAStalledThread) {
  if (omp_get_max_threads() != 2) GTEST_SKIP() << "the panel split needs two threads";
  const Shape xs = {1, 64, 8, 128};
  const ops::Conv2dParams p = ops::Conv2dParams::same(1);
  const Tensor xb = nhwc(random_tensor(xs, 77), DType::BF16);
  setenv("TAIYI_WINOGRAD_SPLIT", "1", 1);
  const auto op = ops::cpu::prepare_conv2d_winograd_bf16_amx(xs, random_tensor({64, 64, 3, 3}, 78),
                                                             random_tensor({64}, 79), p, {}, DType::BF16, DType::BF16);
  unsetenv("TAIYI_WINOGRAD_SPLIT");
  ASSERT_NE(op->describe().find("split the panels"), std::string::npos) << op->describe();
  Scratch scratch(op->scratch_bytes());
  Tensor want = nhwc(Tensor::zeros({1, 64, 8, 128}), DType::BF16);
  ops::cpu::work_stealing_stall_for_tests(-1, 0);
  op->run({xb}, want, scratch.mem.get());
  int64_t most = 0;
  for (int attempt = 0; attempt < 5 && most < 4; ++attempt) {
    ops::cpu::work_stealing_stall_for_tests(1, 100000);
    Tensor got = nhwc(Tensor::zeros({1, 64, 8, 128}), DType::BF16);
    op->run({xb}, got, scratch.mem.get());
    most = std::max(most, ops::cpu::work_stealing_stall_for_tests(-1, 0));
    const Tensor a = got.contiguous(), b = want.contiguous();
    for (int64_t i = 0; i < a.numel(); ++i) ASSERT_EQ(a.data_u16()[i], b.data_u16()[i]) << "element " << i;
  }
  EXPECT_GE(most, 4) << "thread 0 took too few of thread 1's blocks";
}

// write_moments / read_moments (graph/passes/link_norm_moments.cpp). The writer's moments of its
// bf16 output about its bias are the sums of the values it wrote, per sample and channel, on each
// path (blocks across rows and samples, a residual, split panels, one thread). A reader with them
// computes what it computes from its own pass over x within a few flipped bf16 roundings (the mean
// and variance summed in another order), takes them once per writer's run, and only for the
// memory they are of: otherwise it computes its own, to the bit as an unlinked reader.
void check_moments_case(const Shape& xs, int64_t cout, bool residual, uint32_t seed) {
  SCOPED_TRACE(shape_str(xs) + " -> " + std::to_string(cout) + (residual ? " +residual" : ""));
  const ops::Conv2dParams p = ops::Conv2dParams::same(1);
  const Shape ys = {xs[0], cout, xs[2], xs[3]};
  const Tensor x = nhwc(random_tensor(xs, seed), DType::BF16);
  const Tensor bias = random_tensor({cout}, seed + 2);
  ops::Epilogue e;
  if (residual) e = {true, 1.0f, ops::PostOp::kNone, DType::F32, DType::BF16};
  const auto writer = ops::cpu::prepare_conv2d_winograd_bf16_amx(xs, random_tensor({cout, xs[1], 3, 3}, seed + 1), bias,
                                                                 p, e, DType::BF16, DType::BF16);
  const auto m = std::make_shared<ops::ChannelMoments>();
  ASSERT_TRUE(writer->write_moments(m));
  Scratch scratch(writer->scratch_bytes());
  Tensor y = nhwc(residual ? random_tensor(ys, seed + 3) : Tensor::zeros(ys), DType::BF16);
  std::vector<Tensor> in = {x};
  if (residual) in.push_back(y);
  writer->run(in, y, scratch.mem.get());
  ASSERT_TRUE(m->ready);
  EXPECT_EQ(m->data, y.raw_data());
  expect_moments_of(*m, y, bias);
  // Readers: a GroupNorm+SiLU prologue of 8 groups over y.
  const Tensor w2 = random_tensor({32, cout, 3, 3}, seed + 4), b2 = random_tensor({32}, seed + 5);
  const ops::Prologue pro{8, 1e-6f, random_tensor({cout}, seed + 6), random_tensor({cout}, seed + 7)};
  const auto linked = ops::cpu::prepare_conv2d_winograd_bf16_amx(ys, w2, b2, p, {}, DType::BF16, DType::BF16, pro);
  const auto alone = ops::cpu::prepare_conv2d_winograd_bf16_amx(ys, w2, b2, p, {}, DType::BF16, DType::BF16, pro);
  ASSERT_TRUE(linked->read_moments(m));
  Scratch scratch2(linked->scratch_bytes());
  const Shape zs = {ys[0], 32, ys[2], ys[3]};
  Tensor want = nhwc(Tensor::zeros(zs), DType::BF16), got = nhwc(Tensor::zeros(zs), DType::BF16);
  alone->run({y}, want, scratch2.mem.get());
  linked->run({y}, got, scratch2.mem.get());
  EXPECT_FALSE(m->ready);  // taken
  const std::vector<double> wv = values(want), gv = values(got);
  double err2 = 0, ref2 = 0;
  int64_t differ = 0;
  for (size_t i = 0; i < wv.size(); ++i) {
    err2 += (gv[i] - wv[i]) * (gv[i] - wv[i]);
    ref2 += wv[i] * wv[i];
    differ += gv[i] != wv[i];
  }
  EXPECT_LE(std::sqrt(err2 / ref2), 1e-3);
  EXPECT_LE(differ, static_cast<int64_t>(wv.size()) / 20);
  // Not ready (already taken), then ready but of other memory: the reader's own statistics.
  const auto same_as_alone = [&](const Tensor& input) {
    Tensor again = nhwc(Tensor::zeros(zs), DType::BF16);
    linked->run({input}, again, scratch2.mem.get());
    const std::vector<double> av = values(again);
    for (size_t i = 0; i < wv.size(); ++i) ASSERT_EQ(av[i], wv[i]) << "element " << i;
  };
  same_as_alone(y);
  m->ready = true;
  Tensor copy = nhwc(Tensor::zeros(ys), DType::BF16);
  copy.copy_from(y);
  same_as_alone(copy);
  // An f32 writer and a reader without a prologue refuse.
  EXPECT_FALSE(ops::cpu::prepare_conv2d_winograd_bf16_amx(xs, random_tensor({cout, xs[1], 3, 3}, seed + 8), bias, p, {},
                                                          DType::BF16, DType::F32)
                   ->write_moments(m));
  EXPECT_FALSE(writer->read_moments(m));
}

TEST_F(Conv2dWinogradBf16Amx, WritesTheMomentsItsReaderTakes) {
  uint32_t seed = 7600;
  check_moments_case({2, 64, 6, 10}, 64, true, seed);         // blocks across rows and samples
  check_moments_case({1, 32, 8, 128}, 96, false, seed + 10);  // whole rows of blocks, 3 panels
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  check_moments_case({2, 64, 6, 64}, 64, false, seed + 20);
  omp_set_num_threads(threads);
  setenv("TAIYI_WINOGRAD_SPLIT", "1", 1);  // each thread half of the panels
  check_moments_case({1, 64, 8, 128}, 64, true, seed + 30);
  unsetenv("TAIYI_WINOGRAD_SPLIT");
}

TEST_F(Conv2dWinogradBf16Amx, ApplicabilityAndKernelChoice) {
  const Shape xs = {1, 64, 8, 8};
  const Tensor w = random_tensor({64, 64, 3, 3}, 1);
  const ops::Conv2dParams p = ops::Conv2dParams::same(1);
  EXPECT_TRUE(ops::cpu::winograd_bf16_amx_applicable(xs, w, p));
  EXPECT_FALSE(ops::cpu::winograd_bf16_amx_applicable({1, 48, 8, 8}, random_tensor({64, 48, 3, 3}, 2), p));
  EXPECT_FALSE(ops::cpu::winograd_bf16_amx_applicable({1, 64, 7, 8}, w, p));
  EXPECT_FALSE(ops::cpu::winograd_bf16_amx_applicable(xs, w, ops::Conv2dParams::same(1, 2)));
  EXPECT_FALSE(ops::cpu::winograd_bf16_amx_applicable(xs, w, ops::Conv2dParams::same(0)));
  EXPECT_TRUE(throws_error(
      [&] {
        ops::cpu::prepare_conv2d_winograd_bf16_amx({1, 64, 7, 8}, w, Tensor(), p, {}, DType::BF16, DType::BF16);
      },
      {"winograd", "not applicable", "even sizes"}));
  const auto op = ops::cpu::prepare_conv2d_winograd_bf16_amx(xs, w, Tensor(), p, {}, DType::BF16, DType::BF16);
  EXPECT_EQ(op->describe(), "conv2d bf16 winograd_f23:amx nhwc bf16-in bf16-out");
  EXPECT_EQ(op->packed_weight_bytes(), size_t{16} * 64 * 64 * 2);
  Scratch scratch(op->scratch_bytes());
  EXPECT_TRUE(throws_error([&] { op->run({random_tensor(xs, 3)}, Tensor::empty(xs, DType::BF16), scratch.mem.get()); },
                           {"channels-last", "bf16"}));
  // prepare_conv2d in bf16 with channels-last activations: this kernel where oneDNN runs on AMX, up
  // to 256 output channels; oneDNN with a per-call bias, NCHW, wider outputs and TAIYI_WINOGRAD=0.
  if (!ops::bf16_supported()) return;
  const auto kernel = [&](const Shape& x, const Tensor& wt, Layout layout, ops::PostOp post) {
    ops::Epilogue e;
    e.post_op = post;
    return ops::prepare_conv2d(x, wt, random_tensor({wt.size(0)}, 4), p, DType::BF16, layout, layout, e)->describe();
  };
  const bool amx = ops::cpu::dnnl_uses_amx();
  EXPECT_EQ(kernel(xs, w, Layout::kNHWC, ops::PostOp::kNone).find("winograd_f23:amx") != std::string::npos, amx);
  EXPECT_EQ(kernel(xs, w, Layout::kNCHW, ops::PostOp::kNone).find("winograd_f23:amx"), std::string::npos);
  EXPECT_EQ(kernel(xs, w, Layout::kNHWC, ops::PostOp::kBiasAdd).find("winograd_f23:amx"), std::string::npos);
  EXPECT_EQ(kernel({1, 64, 8, 8}, random_tensor({320, 64, 3, 3}, 5), Layout::kNHWC, ops::PostOp::kNone)
                .find("winograd_f23:amx"),
            std::string::npos);
  EXPECT_EQ(ops::conv2d_writes_bf16(xs, w, p, DType::BF16, Layout::kNHWC, Layout::kNHWC, {}, DType::BF16), amx);
  // The GroupNorm+SiLU prologue: this kernel on bf16 input only.
  const auto takes_norm = [&](Layout layout, DType src, int64_t groups) {
    return ops::conv2d_takes_group_norm_silu(xs, w, p, DType::BF16, layout, layout, {}, src, groups);
  };
  EXPECT_EQ(takes_norm(Layout::kNHWC, DType::BF16, 32), amx);
  EXPECT_FALSE(takes_norm(Layout::kNCHW, DType::BF16, 32));
  EXPECT_FALSE(takes_norm(Layout::kNHWC, DType::F32, 32));
  EXPECT_FALSE(takes_norm(Layout::kNHWC, DType::BF16, 48));
  EXPECT_TRUE(throws_error(
      [&] {
        ops::prepare_conv2d(xs, w, Tensor(), p, DType::BF16, Layout::kNCHW, Layout::kNCHW, {}, DType::F32, DType::F32,
                            {32, 1e-6f, Tensor(), Tensor()});
      },
      {"GroupNorm", "32 groups"}));
  EXPECT_TRUE(throws_error(
      [&] {
        ops::cpu::prepare_conv2d_winograd_bf16_amx(xs, w, Tensor(), p, {}, DType::F32, DType::F32,
                                                   {32, 1e-6f, Tensor(), Tensor()});
      },
      {"GroupNorm prologue", "bf16 input"}));
  EXPECT_TRUE(throws_error(
      [&] {
        ops::cpu::prepare_conv2d_winograd_bf16_amx(xs, w, Tensor(), p, {}, DType::BF16, DType::F32,
                                                   {32, 1e-6f, random_tensor({32}, 6), Tensor()});
      },
      {"GroupNorm prologue", "one value per channel"}));
  setenv("TAIYI_FUSE_NORM_CONV", "0", 1);
  EXPECT_FALSE(takes_norm(Layout::kNHWC, DType::BF16, 32));
  unsetenv("TAIYI_FUSE_NORM_CONV");
  setenv("TAIYI_WINOGRAD", "0", 1);
  EXPECT_EQ(kernel(xs, w, Layout::kNHWC, ops::PostOp::kNone).find("winograd"), std::string::npos);
  unsetenv("TAIYI_WINOGRAD");
}

}  // namespace
}  // namespace taiyi::ops_test
