// group_norm, layer_norm and softmax against double loops: with and without affine
// parameters, any number of trailing dims, large means, strided inputs, both ISA paths,
// and bad shapes.
#include <gtest/gtest.h>

#include <cmath>

#include "op_testing.h"
#include "taiyi/ops/cpu/cpu_isa.h"
#include "taiyi/ops/cpu/cpu_kernels.h"
#include "taiyi/ops/ops.h"

namespace taiyi::ops_test {
namespace {

std::vector<double> group_norm_reference(const Tensor& x, int groups, const Tensor& gamma, const Tensor& beta,
                                         double eps) {
  const int64_t n = x.size(0), c = x.size(1), s = x.numel() / (n * c), cg = c / groups;
  const std::vector<double> xv = values(x);
  std::vector<double> y(xv.size());
  for (int64_t b = 0; b < n; ++b)
    for (int g = 0; g < groups; ++g) {
      const int64_t begin = (b * c + g * cg) * s, count = cg * s;
      double mean = 0.0, var = 0.0;
      for (int64_t i = 0; i < count; ++i) mean += xv[begin + i];
      mean /= static_cast<double>(count);
      for (int64_t i = 0; i < count; ++i) var += (xv[begin + i] - mean) * (xv[begin + i] - mean);
      var /= static_cast<double>(count);
      for (int64_t i = 0; i < count; ++i) {
        const int64_t ch = g * cg + i / s;
        y[begin + i] = (xv[begin + i] - mean) / std::sqrt(var + eps) * (gamma.defined() ? gamma.item(ch) : 1.0) +
                       (beta.defined() ? beta.item(ch) : 0.0);
      }
    }
  return y;
}

std::vector<double> layer_norm_reference(const Tensor& x, const Tensor& gamma, const Tensor& beta, double eps) {
  const int64_t c = x.size(-1), rows = x.numel() / c;
  const std::vector<double> xv = values(x);
  std::vector<double> y(xv.size());
  for (int64_t r = 0; r < rows; ++r) {
    double mean = 0.0, var = 0.0;
    for (int64_t i = 0; i < c; ++i) mean += xv[r * c + i];
    mean /= static_cast<double>(c);
    for (int64_t i = 0; i < c; ++i) var += (xv[r * c + i] - mean) * (xv[r * c + i] - mean);
    var /= static_cast<double>(c);
    for (int64_t i = 0; i < c; ++i)
      y[r * c + i] = (xv[r * c + i] - mean) / std::sqrt(var + eps) * (gamma.defined() ? gamma.item(i) : 1.0) +
                     (beta.defined() ? beta.item(i) : 0.0);
  }
  return y;
}

std::vector<double> softmax_reference(const Tensor& x) {
  const int64_t c = x.size(-1), rows = x.numel() / c;
  const std::vector<double> xv = values(x);
  std::vector<double> y(xv.size());
  for (int64_t r = 0; r < rows; ++r) {
    double mx = -INFINITY, sum = 0.0;
    for (int64_t i = 0; i < c; ++i) mx = std::max(mx, xv[r * c + i]);
    for (int64_t i = 0; i < c; ++i) sum += std::exp(xv[r * c + i] - mx);
    for (int64_t i = 0; i < c; ++i) y[r * c + i] = std::exp(xv[r * c + i] - mx) / sum;
  }
  return y;
}

TEST(GroupNorm, MatchesLoop) {
  struct Case {
    Shape x;
    int groups;
    bool affine;
  };
  const Case cases[] = {
      {{2, 6, 5, 7}, 3, true}, {{2, 6, 5, 7}, 3, false},  {{3, 8}, 4, true},          {{2, 4, 9}, 1, true},
      {{1, 5, 3, 3}, 5, true}, {{2, 64, 8, 8}, 32, true}, {{1, 4, 2, 3, 5}, 2, true},
  };
  uint32_t seed = 1;
  for (const Case& c : cases) {
    SCOPED_TRACE(shape_str(c.x) + " groups " + std::to_string(c.groups));
    const Tensor x = random_tensor(c.x, seed++, -3.0f, 2.0f);
    const Tensor gamma = c.affine ? random_tensor({c.x[1]}, seed++, 0.5f, 1.5f) : Tensor();
    const Tensor beta = c.affine ? random_tensor({c.x[1]}, seed++) : Tensor();
    const Tensor y = ops::group_norm(x, c.groups, gamma, beta, 1e-5f);
    EXPECT_EQ(y.shape(), c.x);
    EXPECT_TRUE(all_close(y, group_norm_reference(x, c.groups, gamma, beta, 1e-5)));
  }
}

TEST(Norms, LargeMeanSmallSpread) {
  // Mean 1000, spread 0.01: a single-pass f32 variance loses everything here, and even
  // subtracting a mean rounded to f32 would cost 0.5 % of the spread.
  const Tensor x = ops::add_scalar(random_tensor({2, 4, 32, 32}, 3, -0.01f, 0.01f), 1000.0f);
  const Tensor gamma = random_tensor({4}, 4), beta = random_tensor({4}, 5);
  EXPECT_TRUE(all_close(ops::group_norm(x, 2, gamma, beta, 1e-6f), group_norm_reference(x, 2, gamma, beta, 1e-6)));
  // The same through the channels-last kernel (one pass, moments about the first pixel), with a
  // first pixel far off the rest: its offset must not cost the spread its digits either.
  Tensor xn = ops::contiguous(ops::permute(x, {0, 2, 3, 1}));
  xn.data<float>()[0] = 1000.5f;
  xn.data<float>()[1] = 999.5f;
  const Tensor x_nhwc = xn.permute({0, 3, 1, 2});
  EXPECT_TRUE(
      all_close(ops::group_norm(x_nhwc, 2, gamma, beta, 1e-6f), group_norm_reference(x_nhwc, 2, gamma, beta, 1e-6)));
  EXPECT_TRUE(all_close(ops::group_norm_silu(x_nhwc, 2, gamma, beta, 1e-6f).contiguous(), [&] {
    std::vector<double> r = group_norm_reference(x_nhwc, 2, gamma, beta, 1e-6);
    for (double& v : r) v = v / (1.0 + std::exp(-v));
    return r;
  }()));
  const Tensor xl = ops::add_scalar(random_tensor({3, 256}, 6, -0.01f, 0.01f), -500.0f);
  EXPECT_TRUE(
      all_close(ops::layer_norm(xl, Tensor(), Tensor(), 1e-6f), layer_norm_reference(xl, Tensor(), Tensor(), 1e-6)));
}

TEST(GroupNorm, StridedInputAndPortablePath) {
  const Tensor x = random_tensor({2, 5, 6, 8}, 6).permute({0, 3, 1, 2});  // [2, 8, 5, 6] view
  const Tensor gamma = random_tensor({8}, 7), beta = random_tensor({8}, 8);
  const std::vector<double> ref = group_norm_reference(x, 4, gamma, beta, 1e-5);
  EXPECT_TRUE(all_close(ops::group_norm(x, 4, gamma, beta, 1e-5f), ref));
  ops::cpu::set_kernel_level(ops::cpu::KernelLevel::kPortable);
  EXPECT_TRUE(all_close(ops::group_norm(x, 4, gamma, beta, 1e-5f), ref));
  ops::cpu::set_kernel_level(ops::cpu::KernelLevel::kAll);
}

// group_norm_silu == silu(group_norm) against the double reference, on both kernel paths.
TEST(GroupNormSilu, MatchesReferenceOnBothPaths) {
  const Tensor x = random_tensor({2, 12, 5, 7}, 11, -3.0f, 3.0f);
  const Tensor gamma = random_tensor({12}, 12, 0.5f, 1.5f), beta = random_tensor({12}, 13);
  std::vector<double> ref = group_norm_reference(x, 4, gamma, beta, 1e-5);
  for (double& v : ref) v = v / (1.0 + std::exp(-v));
  for (const bool generic : {false, true}) {
    ops::cpu::set_kernel_level(generic ? ops::cpu::KernelLevel::kPortable : ops::cpu::KernelLevel::kAll);
    const Tensor y = ops::group_norm_silu(x, 4, gamma, beta, 1e-5f);
    ops::cpu::set_kernel_level(ops::cpu::KernelLevel::kAll);
    EXPECT_TRUE(all_close(y, ref)) << (generic ? "portable" : "default") << " path";
  }
  EXPECT_TRUE(throws_error([&] { ops::group_norm_silu(x, 5, Tensor(), Tensor(), 1e-5f); },
                           {"group_norm_silu", "12 channels", "5 groups"}));
}

// Channels-last GroupNorm(+SiLU) written in bf16 (graph mode's bf16 convolution inputs), from f32
// and from bf16 pixels, against the double reference rounded to bf16: at most one bf16 step apart
// (the AVX-512 SiLU's exp2 fit and vrcp14ps add about 2% of a step to the rounding) and mostly
// equal; c = 64 fills whole registers, c = 40 ends in a masked one; large negative inputs take
// SiLU to its limit 0.
TEST(GroupNormSilu, Bf16OutputsMatchTheReferenceRounded) {
  uint32_t seed = 70;
  for (const int64_t c : {int64_t{64}, int64_t{40}}) {
    const int64_t n = 2, pixels = 37, groups = 8;
    const Tensor xb = ops::cast(random_tensor({n, pixels, c}, seed++, -20.0f, 9.0f), DType::BF16);
    const Tensor xf = ops::cast(xb, DType::F32);
    const Tensor gamma = random_tensor({c}, seed++), beta = random_tensor({c}, seed++);
    const std::vector<double> want =
        group_norm_reference(ops::permute(xf, {0, 2, 1}), static_cast<int>(groups), gamma, beta, 1e-5);
    for (const bool silu : {false, true})
      for (const bool from_bf16 : {false, true}) {
        std::vector<uint16_t> got(static_cast<size_t>(n * pixels * c));
        if (from_bf16) {
          ops::cpu::group_norm_nhwc_bf16(xb.data_u16(), gamma.data<float>(), beta.data<float>(), nullptr, got.data(), n,
                                         c, pixels, groups, 1e-5f, silu);
        } else {
          ops::cpu::group_norm_nhwc_f32_to_bf16(xf.data<float>(), gamma.data<float>(), beta.data<float>(), got.data(),
                                                n, c, pixels, groups, 1e-5f, silu);
        }
        int64_t far = 0, differ = 0;
        for (int64_t b = 0; b < n; ++b)
          for (int64_t p = 0; p < pixels; ++p)
            for (int64_t ch = 0; ch < c; ++ch) {
              double e = want[static_cast<size_t>((b * c + ch) * pixels + p)];
              if (silu) e = e / (1.0 + std::exp(-e));
              const float a = bf16_to_f32(got[static_cast<size_t>((b * pixels + p) * c + ch)]);
              const float r = bf16_to_f32(f32_to_bf16(static_cast<float>(e)));
              differ += a != r;
              far += std::fabs(a - e) > std::ldexp(std::fabs(e), -7) + 1e-30;
            }
        EXPECT_EQ(far, 0) << "c " << c << " silu " << silu << " bf16 in " << from_bf16;
        EXPECT_LE(differ, n * pixels * c / 20) << "c " << c << " silu " << silu << " bf16 in " << from_bf16;
      }
  }
}

TEST(GroupNorm, RejectsBadArguments) {
  const Tensor x = random_tensor({2, 6, 4, 4}, 1);
  EXPECT_TRUE(throws_error([&] { ops::group_norm(x, 4, Tensor(), Tensor(), 1e-5f); },
                           {"group_norm", "f32[2, 6, 4, 4]", "6 channels", "4 groups"}));
  EXPECT_TRUE(throws_error([&] { ops::group_norm(x, 3, random_tensor({5}, 2), Tensor(), 1e-5f); },
                           {"group_norm", "gamma", "f32[5]", "[6]"}));
  EXPECT_TRUE(throws_error([&] { ops::group_norm(random_tensor({6}, 1), 3, Tensor(), Tensor(), 1e-5f); },
                           {"group_norm", "rank >= 2"}));
}

TEST(LayerNorm, MatchesLoop) {
  uint32_t seed = 20;
  for (const Shape& s : {Shape{3, 5, 37}, Shape{1}, Shape{7}, Shape{4, 320}, Shape{2, 77, 768}}) {
    SCOPED_TRACE(shape_str(s));
    const Tensor x = random_tensor(s, seed++, -2.0f, 3.0f);
    const Tensor gamma = random_tensor({s.back()}, seed++), beta = random_tensor({s.back()}, seed++);
    EXPECT_TRUE(all_close(ops::layer_norm(x, gamma, beta, 1e-5f), layer_norm_reference(x, gamma, beta, 1e-5)));
    EXPECT_TRUE(all_close(ops::layer_norm(x, gamma, Tensor(), 1e-5f), layer_norm_reference(x, gamma, Tensor(), 1e-5)));
    EXPECT_TRUE(all_close(ops::layer_norm(x, Tensor(), beta, 1e-5f), layer_norm_reference(x, Tensor(), beta, 1e-5)));
    EXPECT_TRUE(
        all_close(ops::layer_norm(x, Tensor(), Tensor(), 1e-5f), layer_norm_reference(x, Tensor(), Tensor(), 1e-5)));
  }
  const Tensor xt = random_tensor({13, 4}, 40).transpose(0, 1);
  const Tensor gamma = random_tensor({13}, 41), beta = random_tensor({13}, 42);
  EXPECT_TRUE(all_close(ops::layer_norm(xt, gamma, beta, 1e-5f), layer_norm_reference(xt, gamma, beta, 1e-5)));
  EXPECT_TRUE(throws_error([&] { ops::layer_norm(xt, random_tensor({4}, 1), Tensor(), 1e-5f); },
                           {"layer_norm", "gamma", "f32[4]", "[13]"}));
}

// The LayerNorm of bf16 rows (graph mode's bf16 residual stream) against the f32 LayerNorm of the
// same values, both rounded to bf16: the AVX-512 rows (c a multiple of 16: 320, 768) and the
// widening path (c = 37), with and without gamma and beta. At most one bf16 step apart (the AVX-512
// rows take their statistics in f32, the f32 LayerNorm in double), and mostly equal.
TEST(LayerNorm, Bf16RowsMatchTheF32RowsOfTheSameValues) {
  uint32_t seed = 60;
  for (const int64_t c : {int64_t{320}, int64_t{768}, int64_t{37}}) {
    const int64_t rows = 33;
    const Tensor xb = ops::cast(random_tensor({rows, c}, seed++, -2.0f, 3.0f), DType::BF16);
    const Tensor xf = ops::cast(xb, DType::F32);
    const Tensor gamma = random_tensor({c}, seed++), beta = random_tensor({c}, seed++);
    for (const bool affine : {true, false}) {
      const float* g = affine ? gamma.data<float>() : nullptr;
      const float* b = affine ? beta.data<float>() : nullptr;
      std::vector<uint16_t> got(static_cast<size_t>(rows * c)), want(got.size());
      ops::cpu::layer_norm_bf16_to_bf16(xb.data_u16(), g, b, got.data(), rows, c, 1e-5f);
      ops::cpu::layer_norm_f32_to_bf16(xf.data<float>(), g, b, want.data(), rows, c, 1e-5f);
      int64_t far = 0, differ = 0;
      for (size_t i = 0; i < got.size(); ++i) {
        const float a = bf16_to_f32(got[i]), e = bf16_to_f32(want[i]);
        differ += got[i] != want[i];
        far += std::fabs(a - e) > std::ldexp(std::fabs(e), -7) + 1e-30f;
      }
      EXPECT_EQ(far, 0) << "c " << c;
      EXPECT_LE(differ, static_cast<int64_t>(got.size()) / 100) << "c " << c;
    }
  }
}

TEST(Softmax, MatchesLoop) {
  uint32_t seed = 50;
  for (const Shape& s : {Shape{4, 13}, Shape{1}, Shape{3, 1}, Shape{2, 3, 77}, Shape{2, 4096}}) {
    SCOPED_TRACE(shape_str(s));
    const Tensor x = random_tensor(s, seed++, -30.0f, 30.0f);  // wide range: needs the max subtraction
    EXPECT_TRUE(all_close(ops::softmax(x), softmax_reference(x), 1e-5, 1e-6));
  }
  const Tensor xt = random_tensor({9, 6, 5}, 60, -5.0f, 5.0f).transpose(0, 2);
  const std::vector<double> ref = softmax_reference(xt);
  EXPECT_TRUE(all_close(ops::softmax(xt), ref, 1e-5, 1e-6));
  ops::cpu::set_kernel_level(ops::cpu::KernelLevel::kPortable);
  EXPECT_TRUE(all_close(ops::softmax(xt), ref, 1e-5, 1e-6));
  ops::cpu::set_kernel_level(ops::cpu::KernelLevel::kAll);
}

}  // namespace
}  // namespace taiyi::ops_test
