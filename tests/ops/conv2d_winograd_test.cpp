// The Winograd F(4x4,3x3) and F(2x2,3x3) prepared convolutions (every test runs for both tiles)
// against eager ops::conv2d (oneDNN's direct convolution): odd and tiny sizes, partial tiles, channel
// counts off the 6 x 16 register tile (6 x 32 on AVX-512; each test also runs capped at AVX2), padding 0..2, batch, all
// four src/dst layouts, bias or none, a residual (also in place), with NaN-filled scratch and guard values after the
// scratch and the output. Also a DISABLED_ speed comparison of both with the oneDNN prepared direct convolution at the
// UNet's sizes.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <tuple>

#include "guarded_buffers.h"
#include "op_testing.h"
#include "taiyi/ops/cpu/conv2d_winograd_f32.h"
#include "taiyi/ops/cpu/cpu_isa.h"
#include "taiyi/ops/cpu/prepared_kernels.h"
#include "taiyi/ops/ops.h"
#include "taiyi/ops/prepared.h"

namespace taiyi::ops_test {
namespace {

using ops::Layout;

struct WinoCase {
  int64_t n, cin, h, w, cout;
  int pad;
  bool bias;
};

// Largest |got - expected| / max|expected| seen per tile (index 2 or 4), for the record.
double g_max_rel_err[5] = {};

// F(4x4,3x3) rounds in the transform domain: B^T has entries up to 5, A^T up to 8 and G down to
// 1/24, so each output carries rounding of terms ~100x larger than in direct summation. With
// |x|, |w| <= 1 that gives errors of a few 1e-6 of the largest output; 5e-5 leaves room for
// Cin = 256 sums and still catches any wrong tap, tile or channel (those are O(1) errors).
// F(2x2,3x3) has only 0, +-1/2 and +-1 in its transforms (terms at most ~4x the direct ones):
// direct summation of O(Cin) terms already rounds at ~1e-6 of the largest output: 1e-5.
double tolerance(int tile) { return tile == 2 ? 1e-5 : 5e-5; }

void check_case(int tile, const WinoCase& c, Layout src_layout, Layout dst_layout, Residual residual, uint32_t seed) {
  const ops::Conv2dParams p = ops::Conv2dParams::same(c.pad);
  const Shape xs = {c.n, c.cin, c.h, c.w};
  const Tensor x_nchw = random_tensor(xs, seed);
  const Tensor w = random_tensor({c.cout, c.cin, 3, 3}, seed + 1);
  const Tensor bias = c.bias ? random_tensor({c.cout}, seed + 2) : Tensor();
  ASSERT_TRUE(ops::cpu::winograd_f32_applicable(xs, w, p));
  const Tensor ref = ops::conv2d(x_nchw, w, bias, p);
  const Shape ys = ref.shape();
  const auto op = ops::cpu::prepare_conv2d_winograd_f32(xs, w, bias, p, src_layout, dst_layout, tile);
  const GuardedRun run = run_guarded(*op, x_nchw, src_layout, ys, dst_layout, residual, seed + 3);
  const Tensor& y = run.y;
  std::vector<double> expected = values(ref);
  for (size_t i = 0; i < run.residual.size(); ++i) expected[i] += run.residual[i];
  EXPECT_TRUE(all_close(y, expected, tolerance(tile), tolerance(tile)));
  double max_abs = 0.0, max_err = 0.0;
  const std::vector<double> got = values(y);
  for (size_t i = 0; i < got.size(); ++i)
    max_abs = std::max(max_abs, std::abs(expected[i])), max_err = std::max(max_err, std::abs(got[i] - expected[i]));
  if (max_abs > 0) g_max_rel_err[tile] = std::max(g_max_rel_err[tile], max_err / max_abs);
  EXPECT_EQ(op->flops(), 2.0 * c.n * c.cout * ys[2] * ys[3] * c.cin * 9);
}

using ops::cpu::KernelLevel;

// The parameters are the output tile edge, 4 (F(4x4,3x3)) or 2 (F(2x2,3x3)), and the kernel
// level: kAll runs the products on AVX-512 where the CPU has it (pairs of tile panels, with the
// AVX2 tile for an odd last panel), kAvx2 on AVX2 only.
class Conv2dWinograd : public ::testing::TestWithParam<std::tuple<int, KernelLevel>> {
 protected:
  void SetUp() override {
    if (!ops::cpu::cpu_has_avx2_fma()) GTEST_SKIP() << "no AVX2+FMA";
    ops::cpu::set_kernel_level(std::get<1>(GetParam()));
  }
  void TearDown() override { ops::cpu::set_kernel_level(KernelLevel::kAll); }
  static int tile() { return std::get<0>(GetParam()); }
};

INSTANTIATE_TEST_SUITE_P(Tile, Conv2dWinograd,
                         ::testing::Combine(::testing::Values(4, 2),
                                            ::testing::Values(KernelLevel::kAll, KernelLevel::kAvx2)),
                         [](const ::testing::TestParamInfo<std::tuple<int, KernelLevel>>& p) {
                           return std::string(std::get<0>(p.param) == 2 ? "F23" : "F43") +
                                  (std::get<1>(p.param) == KernelLevel::kAll ? "" : "Avx2");
                         });

TEST_P(Conv2dWinograd, MatchesDirectConvOnOddShapes) {
  const WinoCase cases[] = {
      {1, 1, 1, 1, 1, 1, true},      {2, 3, 2, 3, 5, 1, true},      {1, 8, 4, 4, 8, 1, false},
      {3, 17, 5, 7, 3, 1, true},     {2, 3, 9, 13, 17, 1, true},    {1, 64, 8, 8, 64, 1, true},
      {2, 17, 16, 17, 33, 1, false}, {1, 5, 13, 9, 7, 0, true},     {2, 4, 7, 5, 6, 2, true},
      {1, 3, 3, 3, 2, 0, false},     {3, 9, 17, 16, 13, 1, true},   {1, 20, 64, 64, 24, 1, true},
      {2, 33, 64, 9, 19, 1, true},   {1, 300, 12, 10, 70, 1, true}, {2, 16, 1, 64, 16, 1, true},
      {1, 7, 10, 34, 9, 1, true},    {2, 5, 12, 40, 7, 2, false},   {1, 6, 9, 38, 5, 0, true},
  };
  uint32_t seed = 100;
  for (const WinoCase& c : cases) {
    SCOPED_TRACE("x [" + std::to_string(c.n) + "," + std::to_string(c.cin) + "," + std::to_string(c.h) + "," +
                 std::to_string(c.w) + "] cout " + std::to_string(c.cout) + " pad " + std::to_string(c.pad));
    check_case(tile(), c, Layout::kNCHW, Layout::kNCHW, Residual::kNone, seed);
    seed += 10;
  }
}

TEST_P(Conv2dWinograd, AllLayoutsAndResiduals) {
  const WinoCase cases[] = {{2, 17, 9, 13, 11, 1, true},
                            {1, 8, 16, 16, 24, 1, false},
                            {3, 5, 7, 4, 9, 2, true},
                            {2, 40, 32, 32, 30, 1, true}};
  uint32_t seed = 1000;
  for (const WinoCase& c : cases) {
    SCOPED_TRACE("x [" + std::to_string(c.n) + "," + std::to_string(c.cin) + "," + std::to_string(c.h) + "," +
                 std::to_string(c.w) + "]");
    for_each_layout_and_residual([&](Layout src, Layout dst, Residual r) {
      check_case(tile(), c, src, dst, r, seed);
      seed += 10;
    });
  }
}

TEST_P(Conv2dWinograd, ManyBlocksAndThreadCounts) {
  // More tiles than one block holds, several input-channel chunks, output channels over 240;
  // once with one thread and once with the default count.
  const WinoCase c = {2, 260, 36, 44, 250, 1, true};
  const int threads = omp_get_max_threads();
  check_case(tile(), c, Layout::kNCHW, Layout::kNCHW, Residual::kSeparate, 5000);
  omp_set_num_threads(1);
  check_case(tile(), c, Layout::kNHWC, Layout::kNCHW, Residual::kInPlace, 5010);
  omp_set_num_threads(threads);
  std::printf("winograd tile %d: max |err| / max |expected| over the tests so far: %.3g (tolerance %.3g)\n", tile(),
              g_max_rel_err[tile()], tolerance(tile()));
}

TEST_P(Conv2dWinograd, AsymmetricPadding) {
  const Shape xs = {2, 6, 11, 10};
  const ops::Conv2dParams p = {1, 1, 0, 2, 1, 0, 1, 1, 1};
  const Tensor x = random_tensor(xs, 7), w = random_tensor({5, 6, 3, 3}, 8), bias = random_tensor({5}, 9);
  const Tensor ref = ops::conv2d(x, w, bias, p);
  const auto op = ops::cpu::prepare_conv2d_winograd_f32(xs, w, bias, p, Layout::kNCHW, Layout::kNCHW, tile());
  Scratch scratch(op->scratch_bytes());
  const Tensor y = guarded_tensor(ref.shape(), Layout::kNCHW);
  op->run({x}, y, scratch.mem.get());
  EXPECT_TRUE(all_close(y, values(ref), tolerance(tile()), tolerance(tile())));
  EXPECT_TRUE(scratch.guard_intact());
  EXPECT_TRUE(tensor_guard_intact(y));
}

TEST_P(Conv2dWinograd, ApplicableOnlyTo3x3Stride1) {
  const Shape xs = {1, 4, 8, 8};
  const Tensor w3 = random_tensor({4, 4, 3, 3}, 1), w1 = random_tensor({4, 4, 1, 1}, 2);
  const Tensor wg = random_tensor({4, 2, 3, 3}, 3);
  EXPECT_TRUE(ops::cpu::winograd_f32_applicable(xs, w3, ops::Conv2dParams::same(1)));
  EXPECT_TRUE(ops::cpu::winograd_f32_applicable(xs, w3, ops::Conv2dParams::same(0)));
  EXPECT_FALSE(ops::cpu::winograd_f32_applicable(xs, w3, ops::Conv2dParams::same(1, 2)));
  EXPECT_FALSE(ops::cpu::winograd_f32_applicable(xs, w3, ops::Conv2dParams::same(3)));
  EXPECT_FALSE(ops::cpu::winograd_f32_applicable(xs, w1, ops::Conv2dParams{}));
  EXPECT_FALSE(ops::cpu::winograd_f32_applicable(xs, wg, {1, 1, 1, 1, 1, 1, 1, 1, 2}));
  EXPECT_FALSE(ops::cpu::winograd_f32_applicable(xs, w3, {1, 1, 2, 2, 2, 2, 2, 2, 1}));
  EXPECT_FALSE(ops::cpu::winograd_f32_applicable({1, 4, 8}, w3, ops::Conv2dParams::same(1)));
  EXPECT_TRUE(throws_error(
      [&] { ops::cpu::prepare_conv2d_winograd_f32(xs, w1, Tensor(), {}, Layout::kNCHW, Layout::kNCHW, tile()); },
      {"winograd", "not applicable"}));
}

TEST_P(Conv2dWinograd, DescribesTileAndWeightMemory) {
  const Shape xs = {1, 8, 8, 8};
  const Tensor w = random_tensor({12, 8, 3, 3}, 4);
  const auto op = ops::cpu::prepare_conv2d_winograd_f32(xs, w, Tensor(), ops::Conv2dParams::same(1), Layout::kNHWC,
                                                        Layout::kNCHW, tile());
  const bool avx512 = std::get<1>(GetParam()) == KernelLevel::kAll && ops::cpu::cpu_has_avx512f();
  EXPECT_EQ(op->describe(), std::string("conv2d f32 ") + (tile() == 2 ? "winograd_f23" : "winograd_f43") +
                                (avx512 ? ":avx512" : ":avx2") + " nhwc");
  // The weights keep their size (reordered, not pre-transformed): 12 = 2 panels of 6, 13 pads to 18.
  EXPECT_EQ(op->packed_weight_bytes(), static_cast<size_t>(12 * 8 * 9) * sizeof(float));
  const Tensor w13 = random_tensor({13, 8, 3, 3}, 5);
  EXPECT_EQ(ops::cpu::prepare_conv2d_winograd_f32(xs, w13, Tensor(), ops::Conv2dParams::same(1), Layout::kNCHW,
                                                  Layout::kNCHW, tile())
                ->packed_weight_bytes(),
            static_cast<size_t>(18 * 8 * 9) * sizeof(float));
  EXPECT_TRUE(throws_error(
      [&] {
        ops::cpu::prepare_conv2d_winograd_f32(xs, w, Tensor(), ops::Conv2dParams::same(1), Layout::kNCHW, Layout::kNCHW,
                                              3);
      },
      {"winograd", "tile"}));
}

// Whether row i is in the comma-separated list `env` (all rows without one).
bool selected(const char* env, size_t i) {
  if (env == nullptr) return true;
  for (const char* s = env; *s != '\0';) {
    char* end = nullptr;
    const long v = std::strtol(s, &end, 10);
    if (end == s) {
      ++s;
      continue;
    }
    if (v == static_cast<long>(i)) return true;
    s = end;
  }
  return false;
}

// Speed of F(4x4,3x3) and F(2x2,3x3) against the oneDNN prepared direct convolution (same
// interface) at the UNet's 3x3 convolutions.
// Run with: ops_tests --gtest_also_run_disabled_tests --gtest_filter='*Winograd*Speed*'
TEST(Conv2dWinogradSpeed, DISABLED_SpeedUNetShapes) {
  if (!ops::cpu::cpu_has_avx2_fma()) GTEST_SKIP() << "no AVX2+FMA";
  struct SpeedShape {
    int64_t n, cin, h, cout;
    int reps;
  };
  const SpeedShape shapes[] = {
      {2, 320, 64, 320, 8},   {2, 640, 64, 320, 6},   {2, 960, 64, 320, 5},   {2, 640, 32, 640, 8},
      {2, 320, 32, 640, 10},  {2, 1280, 32, 640, 6},  {2, 960, 32, 640, 6},   {2, 1280, 16, 1280, 8},
      {2, 2560, 16, 1280, 6}, {2, 1920, 16, 1280, 6}, {2, 640, 16, 1280, 10}, {2, 1280, 8, 1280, 10},
      {2, 2560, 8, 1280, 8},
  };
  const char* env = std::getenv("TAIYI_WINO_SHAPES");  // e.g. "0,5": only those rows
  uint32_t seed = 1;
  for (size_t si = 0; si < std::size(shapes); ++si) {
    if (!selected(env, si)) continue;
    const SpeedShape& s = shapes[si];
    const Shape xs = {s.n, s.cin, s.h, s.h};
    const Tensor x = random_tensor(xs, seed++), w = random_tensor({s.cout, s.cin, 3, 3}, seed++, -0.05f, 0.05f);
    const Tensor bias = random_tensor({s.cout}, seed++);
    const ops::Conv2dParams p = ops::Conv2dParams::same(1);
    const Tensor y = Tensor::empty({s.n, s.cout, s.h, s.h});
    const std::unique_ptr<ops::PreparedOp> ops_[] = {
        ops::prepare_conv2d_dnnl(xs, w, bias, p, DType::F32, Layout::kNCHW, Layout::kNCHW, ops::Epilogue{}),
        ops::cpu::prepare_conv2d_winograd_f32(xs, w, bias, p, Layout::kNCHW, Layout::kNCHW, 4),
        ops::cpu::prepare_conv2d_winograd_f32(xs, w, bias, p, Layout::kNCHW, Layout::kNCHW, 2)};
    size_t scratch_bytes = 0;
    for (const auto& op : ops_) scratch_bytes = std::max(scratch_bytes, op->scratch_bytes());
    Scratch scratch(scratch_bytes);
    // Take turns, so that load from other processes hits all alike; keep the best of each.
    double best[std::size(ops_)];
    for (size_t k = 0; k < std::size(ops_); ++k) ops_[k]->run({x}, y, scratch.mem.get()), best[k] = 1e30;
    for (int r = 0; r < s.reps; ++r)
      for (size_t k = 0; k < std::size(ops_); ++k) {
        const auto t0 = std::chrono::steady_clock::now();
        ops_[k]->run({x}, y, scratch.mem.get());
        best[k] = std::min(best[k], std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      }
    char name[64];
    std::snprintf(name, sizeof(name), "[%lld,%lld,%lld,%lld]->%lld", static_cast<long long>(s.n),
                  static_cast<long long>(s.cin), static_cast<long long>(s.h), static_cast<long long>(s.h),
                  static_cast<long long>(s.cout));
    std::printf("%-24s", name);
    const char* labels[] = {"oneDNN", "F43", "F23"};
    for (size_t k = 0; k < std::size(ops_); ++k)
      std::printf(" | %s %7.1f ms %5.1f GF/s %6.1f MB", labels[k], best[k] * 1e3, ops_[k]->flops() * 1e-9 / best[k],
                  ops_[k]->packed_weight_bytes() / 1e6);
    std::printf(" | F43 x%.2f F23 x%.2f\n", best[0] / best[1], best[0] / best[2]);
    std::fflush(stdout);
  }
}

}  // namespace
}  // namespace taiyi::ops_test
