// conv2d against a direct double-precision loop: odd sizes, stride, asymmetric padding,
// groups, dilation, non-square kernels, strided inputs, bias or none, and bad arguments.
#include <gtest/gtest.h>

#include "op_testing.h"
#include "taiyi/ops/ops.h"

namespace taiyi::ops_test {
namespace {

std::vector<double> conv2d_reference(const Tensor& x, const Tensor& w, const Tensor& bias, const ops::Conv2dParams& p) {
  const int64_t n = x.size(0), cin = x.size(1), h = x.size(2), wd = x.size(3);
  const int64_t cout = w.size(0), cg_in = w.size(1), kh = w.size(2), kw = w.size(3);
  const int64_t cg_out = cout / p.groups;
  const int64_t ho = (h + p.pad_top + p.pad_bottom - p.dilation_h * (kh - 1) - 1) / p.stride_h + 1;
  const int64_t wo = (wd + p.pad_left + p.pad_right - p.dilation_w * (kw - 1) - 1) / p.stride_w + 1;
  const std::vector<double> xv = values(x), wv = values(w);
  std::vector<double> y(static_cast<size_t>(n * cout * ho * wo));
  for (int64_t b = 0; b < n; ++b)
    for (int64_t co = 0; co < cout; ++co) {
      const int64_t g = co / cg_out;
      for (int64_t i = 0; i < ho; ++i)
        for (int64_t j = 0; j < wo; ++j) {
          double acc = bias.defined() ? bias.item(co) : 0.0;
          for (int64_t ci = 0; ci < cg_in; ++ci)
            for (int64_t u = 0; u < kh; ++u)
              for (int64_t v = 0; v < kw; ++v) {
                const int64_t yi = i * p.stride_h - p.pad_top + u * p.dilation_h;
                const int64_t xj = j * p.stride_w - p.pad_left + v * p.dilation_w;
                if (yi < 0 || yi >= h || xj < 0 || xj >= wd) continue;
                acc += xv[((b * cin + g * cg_in + ci) * h + yi) * wd + xj] * wv[((co * cg_in + ci) * kh + u) * kw + v];
              }
          y[((b * cout + co) * ho + i) * wo + j] = acc;
        }
    }
  return y;
}

struct ConvCase {
  const char* name;
  Shape x, w;
  bool bias;
  ops::Conv2dParams p;
};

TEST(Conv2d, MatchesDirectLoop) {
  const ConvCase cases[] = {
      {"3x3 pad 1", {2, 3, 7, 13}, {5, 3, 3, 3}, true, ops::Conv2dParams::same(1)},
      {"1x1", {1, 5, 3, 5}, {7, 5, 1, 1}, true, ops::Conv2dParams{}},
      {"stride 2, pad (0,1,0,1) as the VAE downsample", {2, 4, 8, 8}, {4, 4, 3, 3}, true, {2, 2, 0, 0, 1, 1, 1, 1, 1}},
      {"stride 2, odd input, asymmetric pad", {1, 3, 7, 9}, {5, 3, 3, 3}, false, {2, 2, 0, 1, 2, 0, 1, 1, 1}},
      {"groups 2, dilation 2, 3x1 kernel", {2, 6, 9, 7}, {4, 3, 3, 1}, true, {1, 1, 2, 0, 2, 0, 2, 2, 2}},
      {"depthwise", {1, 5, 6, 5}, {5, 1, 3, 3}, true, {1, 2, 1, 1, 1, 1, 1, 1, 5}},
      {"stride (1,3), dilation (2,1), 2x5 kernel", {1, 2, 11, 13}, {3, 2, 2, 5}, true, {1, 3, 1, 2, 0, 1, 2, 1, 1}},
      {"blocked channels", {2, 32, 12, 10}, {48, 32, 3, 3}, true, ops::Conv2dParams::same(1)},
      {"blocked channels, groups 4, stride 2", {1, 32, 9, 9}, {16, 8, 3, 3}, true, {2, 2, 1, 1, 1, 1, 1, 1, 4}},
  };
  uint32_t seed = 1;
  for (const ConvCase& c : cases) {
    SCOPED_TRACE(c.name);
    const Tensor x = random_tensor(c.x, seed++);
    const Tensor w = random_tensor(c.w, seed++);
    const Tensor bias = c.bias ? random_tensor({c.w[0]}, seed++) : Tensor();
    const Tensor y = ops::conv2d(x, w, bias, c.p);
    const std::vector<double> ref = conv2d_reference(x, w, bias, c.p);
    const int64_t ho = (c.x[2] + c.p.pad_top + c.p.pad_bottom - c.p.dilation_h * (c.w[2] - 1) - 1) / c.p.stride_h + 1;
    const int64_t wo = (c.x[3] + c.p.pad_left + c.p.pad_right - c.p.dilation_w * (c.w[3] - 1) - 1) / c.p.stride_w + 1;
    EXPECT_EQ(y.shape(), (Shape{c.x[0], c.w[0], ho, wo}));
    EXPECT_TRUE(y.is_contiguous());
    EXPECT_TRUE(all_close(y, ref));
  }
}

TEST(Conv2d, StridedInputAndWeight) {
  // x stored NHWC and viewed as NCHW; w a slice of a larger weight along the output channels.
  const Tensor x_nhwc = random_tensor({2, 6, 5, 4}, 11);
  const Tensor x = x_nhwc.permute({0, 3, 1, 2});
  const Tensor w_big = random_tensor({10, 4, 3, 3}, 12);
  const Tensor w = w_big.slice(0, 3, 9);
  const Tensor bias = random_tensor({6}, 13);
  ASSERT_FALSE(x.is_contiguous());
  const ops::Conv2dParams p = ops::Conv2dParams::same(1);
  EXPECT_TRUE(all_close(ops::conv2d(x, w, bias, p), conv2d_reference(x, w, bias, p)));
}

TEST(Conv2d, CountsFlops) {
  ops::reset_flop_count();
  ops::conv2d(random_tensor({2, 4, 6, 5}, 1), random_tensor({8, 2, 3, 3}, 2), Tensor(), {2, 1, 1, 1, 1, 1, 1, 1, 2});
  // Output [2, 8, 3, 5]; each output sums 2 channels x 9 taps.
  EXPECT_EQ(ops::flop_count(), uint64_t{2} * 2 * 8 * 3 * 5 * 2 * 9);
}

TEST(Conv2d, RejectsBadArguments) {
  const Tensor x = random_tensor({2, 3, 8, 8}, 1);
  EXPECT_TRUE(throws_error(
      [&] {
        ops::conv2d(x, random_tensor({16, 4, 3, 3}, 2), Tensor(), {});
      },
      {"conv2d", "f32[2, 3, 8, 8]", "has 3 channels", "f32[16, 4, 3, 3]", "expects 4"}));
  EXPECT_TRUE(throws_error(
      [&] {
        ops::conv2d(x.view({2, 3, 64}), random_tensor({4, 3, 3, 3}, 2), Tensor(), {});
      },
      {"conv2d", "input", "rank 4"}));
  EXPECT_TRUE(throws_error(
      [&] {
        ops::conv2d(x, random_tensor({4, 3, 3, 3}, 2), random_tensor({5}, 3), {});
      },
      {"conv2d", "bias", "f32[5]", "[4]"}));
  EXPECT_TRUE(throws_error(
      [&] {
        ops::conv2d(x, random_tensor({4, 3, 11, 3}, 2), Tensor(), {});
      },
      {"conv2d", "larger than the padded input"}));
  EXPECT_TRUE(throws_error(
      [&] {
        ops::conv2d(random_tensor({1, 6, 4, 4}, 1), random_tensor({5, 3, 1, 1}, 2), Tensor(),
                    {1, 1, 0, 0, 0, 0, 1, 1, 2});
      },
      {"conv2d", "not divisible by 2 groups"}));
  EXPECT_TRUE(throws_error(
      [&] {
        ops::conv2d(x, Tensor::zeros({4, 3, 3, 3}, DType::F16), Tensor(), {});
      },
      {"conv2d", "weight", "f16", "must be f32"}));
  EXPECT_TRUE(throws_error(
      [&] {
        ops::conv2d(x, random_tensor({4, 3, 3, 3}, 2), Tensor(), {0, 1, 0, 0, 0, 0, 1, 1, 1});
      },
      {"conv2d", "stride"}));
}

}  // namespace
}  // namespace taiyi::ops_test
