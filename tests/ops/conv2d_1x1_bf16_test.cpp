// The bf16 1x1 prepared convolution for AVX512-BF16 (conv2d_1x1_bf16_avx512.cpp) against a
// reference in double on bf16-rounded inputs and weights (its arithmetic: bf16 products, f32
// accumulation, f32 bias and residual), and against the f32 convolution within bf16's error:
// odd sizes, pixel counts off the groups of 16 and 32 and across images, channel counts off the
// 8-channel panels and odd, all four src/dst layouts, bias or none, a residual (also in place),
// several blocks, one thread and the default count, NaN-filled scratch and guard values. Skipped on
// CPUs without avx512_bf16.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
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

struct Case {
  int64_t n, cin, h, w, cout;
  bool bias;
};

void check_case(const Case& c, Layout src_layout, Layout dst_layout, Residual residual, uint32_t seed) {
  const Shape xs = {c.n, c.cin, c.h, c.w}, ys = {c.n, c.cout, c.h, c.w};
  const Tensor x_nchw = random_tensor(xs, seed), w = random_tensor({c.cout, c.cin, 1, 1}, seed + 1);
  const Tensor bias = c.bias ? random_tensor({c.cout}, seed + 2) : Tensor();
  const ops::Conv2dParams p = ops::Conv2dParams::same(0);
  ASSERT_TRUE(ops::cpu::conv1x1_bf16_avx512_applicable(xs, w, p));
  const std::vector<double> xv = values(x_nchw), wv = values(w);
  std::vector<double> expected(static_cast<size_t>(shape_numel(ys))),
      expected_f32 = values(ops::conv2d(x_nchw, w, bias, p));
  const int64_t plane = c.h * c.w;
  for (int64_t n = 0; n < c.n; ++n)
    for (int64_t co = 0; co < c.cout; ++co)
      for (int64_t q = 0; q < plane; ++q) {
        double s = c.bias ? bias.item(co) : 0.0;
        for (int64_t ci = 0; ci < c.cin; ++ci)
          s += round_bf16(wv[static_cast<size_t>(co * c.cin + ci)]) *
               round_bf16(xv[static_cast<size_t>((n * c.cin + ci) * plane + q)]);
        expected[static_cast<size_t>((n * c.cout + co) * plane + q)] = s;
      }
  const auto op = ops::cpu::prepare_conv2d_1x1_bf16_avx512(xs, w, bias, p, src_layout, dst_layout);
  const GuardedRun run = run_guarded(*op, x_nchw, src_layout, ys, dst_layout, residual, seed + 3);
  const Tensor& y = run.y;
  for (size_t i = 0; i < run.residual.size(); ++i) expected[i] += run.residual[i], expected_f32[i] += run.residual[i];
  // The same roundings as the kernel: what remains is the f32 accumulation of Cin products.
  EXPECT_TRUE(all_close(y, expected, 1e-5, 1e-5));
  if (residual == Residual::kNone && c.cin >= 8) {  // bf16's error against f32, and not less
    const std::vector<double> got = values(y);
    double num = 0, den = 0;
    for (size_t i = 0; i < got.size(); ++i)
      num += (got[i] - expected_f32[i]) * (got[i] - expected_f32[i]), den += expected_f32[i] * expected_f32[i];
    EXPECT_LT(std::sqrt(num / den), 1e-2);
    EXPECT_GT(std::sqrt(num / den), 1e-4);
  }
  EXPECT_EQ(op->flops(), 2.0 * c.n * c.cout * plane * c.cin);
}

std::string case_name(const Case& c) {
  return "x [" + std::to_string(c.n) + "," + std::to_string(c.cin) + "," + std::to_string(c.h) + "," +
         std::to_string(c.w) + "] cout " + std::to_string(c.cout);
}

class Conv1x1Bf16 : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!ops::cpu::cpu_has_avx512_bf16()) GTEST_SKIP() << "no avx512_bf16";
  }
};

TEST_F(Conv1x1Bf16, MatchesTheRoundedReference) {
  const Case cases[] = {{1, 1, 1, 1, 1, true},     {2, 3, 2, 3, 5, true},      {1, 16, 4, 4, 8, false},
                        {3, 17, 5, 7, 3, true},    {2, 33, 9, 13, 17, false},  {1, 64, 8, 8, 64, true},
                        {2, 20, 16, 17, 33, true}, {1, 300, 12, 10, 70, true}, {2, 7, 1, 64, 9, false}};
  uint32_t seed = 100;
  for (const Case& c : cases) {
    SCOPED_TRACE(case_name(c));
    check_case(c, Layout::kNCHW, Layout::kNCHW, Residual::kNone, seed);
    seed += 10;
  }
}

TEST_F(Conv1x1Bf16, AllLayoutsAndResiduals) {
  const Case cases[] = {{2, 17, 9, 13, 11, true}, {1, 24, 16, 16, 40, false}};
  uint32_t seed = 1000;
  for (const Case& c : cases) {
    SCOPED_TRACE(case_name(c));
    for_each_layout_and_residual([&](Layout src, Layout dst, Residual r) {
      check_case(c, src, dst, r, seed);
      seed += 10;
    });
  }
}

TEST_F(Conv1x1Bf16, ManyBlocksAndThreadCounts) {
  const Case c = {2, 600, 40, 41, 36, true};  // 3280 pixels: blocks of at most ~1700 (Cin 600)
  const int threads = omp_get_max_threads();
  check_case(c, Layout::kNCHW, Layout::kNCHW, Residual::kSeparate, 5000);
  omp_set_num_threads(1);
  check_case(c, Layout::kNHWC, Layout::kNCHW, Residual::kInPlace, 5010);
  omp_set_num_threads(threads);
}

TEST_F(Conv1x1Bf16, ApplicabilityAndKernelChoice) {
  const Shape xs = {1, 32, 8, 8};
  const Tensor w1 = random_tensor({32, 32, 1, 1}, 1), w3 = random_tensor({32, 32, 3, 3}, 2);
  EXPECT_TRUE(ops::cpu::conv1x1_bf16_avx512_applicable(xs, w1, ops::Conv2dParams::same(0)));
  EXPECT_FALSE(ops::cpu::conv1x1_bf16_avx512_applicable(xs, w3, ops::Conv2dParams::same(1)));
  EXPECT_FALSE(ops::cpu::conv1x1_bf16_avx512_applicable(xs, w1, ops::Conv2dParams::same(0, 2)));
  EXPECT_FALSE(ops::cpu::conv1x1_bf16_avx512_applicable(xs, w1, ops::Conv2dParams::same(1)));
  EXPECT_TRUE(throws_error(
      [&] {
        ops::cpu::prepare_conv2d_1x1_bf16_avx512(xs, w3, Tensor(), ops::Conv2dParams::same(1), Layout::kNCHW,
                                                 Layout::kNCHW);
      },
      {"1x1", "not applicable"}));
  if (!ops::bf16_supported()) return;
  // prepare_conv2d in bf16: this kernel where oneDNN has no AMX, for at least 16 input channels,
  // NCHW to NCHW; oneDNN otherwise and under TAIYI_CONV1X1=0.
  const auto kernel = [&](const Shape& x, const Tensor& w, Layout src = Layout::kNCHW, Layout dst = Layout::kNCHW) {
    return ops::prepare_conv2d(x, w, Tensor(), ops::Conv2dParams::same(0), DType::BF16, src, dst)->describe();
  };
  EXPECT_EQ(kernel(xs, w1).find("1x1:avx512_bf16") != std::string::npos, !ops::cpu::dnnl_uses_amx());
  EXPECT_EQ(kernel(xs, w1, Layout::kNHWC).find("avx512_bf16 "), std::string::npos);
  EXPECT_EQ(kernel(xs, w1, Layout::kNCHW, Layout::kNHWC).find("1x1:avx512_bf16"), std::string::npos);
  EXPECT_EQ(kernel({1, 8, 8, 8}, random_tensor({32, 8, 1, 1}, 3)).find("avx512_bf16"), std::string::npos);
  setenv("TAIYI_CONV1X1", "0", 1);
  EXPECT_EQ(kernel(xs, w1).find("1x1:avx512_bf16"), std::string::npos);
  unsetenv("TAIYI_CONV1X1");
  const auto op = ops::cpu::prepare_conv2d_1x1_bf16_avx512({1, 5, 8, 8}, random_tensor({9, 5, 1, 1}, 4), Tensor(),
                                                           ops::Conv2dParams::same(0), Layout::kNHWC, Layout::kNCHW);
  EXPECT_EQ(op->packed_weight_bytes(), size_t{16} * 3 * 2 * 2);  // 2 panels of 8 x 3 pairs x 2 bf16
  EXPECT_EQ(op->describe(), "conv2d bf16 1x1:avx512_bf16 nhwc");
}

}  // namespace
}  // namespace taiyi::ops_test
