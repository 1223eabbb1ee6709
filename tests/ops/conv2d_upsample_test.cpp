// A 3x3 convolution of a nearest-2x upsampled input (Conv2dParams upsample 2), which graph mode
// binds to four 2x2 convolutions of the input itself (ops/cpu/conv2d_upsample_dnnl.cpp): eager
// mode computes it as the upsample and the convolution; the prepared kernel computes the same in
// f32 (the taps summed first: another order of the same sums), from and into either layout, at odd
// sizes and with batch 2; in bf16 within bf16's error of it, and the moments of its bf16 output
// where asked (write_moments). What it does not take is refused.
#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "op_testing.h"
#include "taiyi/ops/ops.h"
#include "taiyi/ops/prepared.h"
#include "test_util.h"

namespace taiyi::ops_test {
namespace {

using ops::Layout;

ops::Conv2dParams upsampled() {
  ops::Conv2dParams p = ops::Conv2dParams::same(1);
  p.upsample = 2;
  return p;
}

// t (any strides) copied into `layout` memory (NHWC: a permuted view), in `dtype`.
Tensor in_layout(const Tensor& t, Layout layout, DType dtype = DType::F32) {
  if (layout == Layout::kNCHW) return ops::cast(ops::contiguous(t), dtype);
  return ops::cast(ops::contiguous(ops::permute(t, {0, 2, 3, 1})), dtype).permute({0, 3, 1, 2});
}

// Runs a prepared op of one input into a fresh output of `layout` and `dtype`, twice (the same
// scratch: the second run must not depend on what the first left there); returns it as f32.
Tensor run(const ops::PreparedOp& op, const Tensor& x, const Shape& ys, Layout layout, DType dtype) {
  std::vector<std::byte> scratch(op.scratch_bytes() + 64, std::byte{0x7f});
  std::byte* aligned = reinterpret_cast<std::byte*>((reinterpret_cast<uintptr_t>(scratch.data()) + 63) / 64 * 64);
  Tensor y = in_layout(Tensor::zeros(ys), layout, dtype);
  op.run({x}, y, aligned);
  const Tensor first = ops::cast(y, DType::F32).contiguous();
  op.run({x}, y, aligned);
  EXPECT_EQ(taiyi::testing::max_abs_diff(ops::cast(y, DType::F32), first), 0.0);
  return first;
}

TEST(Conv2dUpsample, EagerIsTheUpsampleThenTheConvolution) {
  const Tensor x = random_tensor({2, 6, 5, 7}, 1), w = random_tensor({8, 6, 3, 3}, 2), b = random_tensor({8}, 3);
  const Tensor want = ops::conv2d(ops::upsample_nearest(x, 10, 14), w, b, ops::Conv2dParams::same(1));
  const Tensor got = ops::conv2d(x, w, b, upsampled());
  EXPECT_EQ(got.shape(), (Shape{2, 8, 10, 14}));
  EXPECT_EQ(taiyi::testing::max_abs_diff(got, want), 0.0);
  ops::Conv2dParams p3 = upsampled();
  p3.upsample = 3;
  EXPECT_THROW(ops::conv2d(x, w, b, p3), Error);
}

TEST(Conv2dUpsample, FourPhaseConvolutionsComputeTheUpsampledOneInF32) {
  const Tensor x = random_tensor({2, 16, 5, 7}, 4), w = random_tensor({24, 16, 3, 3}, 5, -0.3f, 0.3f);
  const Tensor b = random_tensor({24}, 6);
  const Shape ys = {2, 24, 10, 14};
  const std::vector<double> want =
      values(ops::conv2d(ops::upsample_nearest(x, 10, 14), w, b, ops::Conv2dParams::same(1)));
  for (const Layout src : {Layout::kNHWC, Layout::kNCHW})
    for (const Layout dst : {Layout::kNHWC, Layout::kNCHW}) {
      SCOPED_TRACE(std::string(src == Layout::kNHWC ? "nhwc" : "nchw") + " -> " +
                   (dst == Layout::kNHWC ? "nhwc" : "nchw"));
      const auto op = ops::prepare_conv2d(x.shape(), w, b, upsampled(), DType::F32, src, dst);
      EXPECT_NE(op->describe().find("upsample2x"), std::string::npos) << op->describe();
      // The FLOPs of the convolution it stands for (the profile's and the bench's count).
      EXPECT_DOUBLE_EQ(op->flops(), 2.0 * 2 * 24 * 10 * 14 * 16 * 9);
      EXPECT_TRUE(all_close(run(*op, in_layout(x, src), ys, dst, DType::F32), want, 1e-5, 1e-5));
    }
}

TEST(Conv2dUpsample, Bf16IsWithinBf16sErrorAndFusesWhereOneDnnRunsTheConvolution) {
  if (!ops::bf16_supported()) GTEST_SKIP() << "this CPU runs no bf16";
  const Tensor x = random_tensor({1, 32, 6, 9}, 7), w = random_tensor({16, 32, 3, 3}, 8, -0.3f, 0.3f);
  const Tensor b = random_tensor({16}, 9);
  const Shape up = {1, 32, 12, 18}, ys = {1, 16, 12, 18};
  const Tensor want = ops::conv2d(ops::upsample_nearest(x, 12, 18), w, b, ops::Conv2dParams::same(1)).contiguous();
  // Fused where the 3x3 convolution would be oneDNN's (AMX), not where our bf16 Winograd kernel runs it.
  const bool onednn =
      ops::conv2d_takes_bf16_input(up, w, ops::Conv2dParams::same(1), DType::BF16, Layout::kNHWC, Layout::kNHWC, {});
  EXPECT_EQ(ops::conv2d_fuses_upsample(up, w, ops::Conv2dParams::same(1), DType::BF16), onednn);
  EXPECT_FALSE(ops::conv2d_fuses_upsample(up, w, ops::Conv2dParams::same(1), DType::F32));
  EXPECT_FALSE(ops::conv2d_fuses_upsample({1, 32, 12, 17}, w, ops::Conv2dParams::same(1), DType::BF16));  // odd
  EXPECT_FALSE(ops::conv2d_fuses_upsample(up, w, ops::Conv2dParams::same(1, 2), DType::BF16));            // stride 2
  // bf16 in and out, channels-last (the VAE's upsamplers in graph mode).
  ASSERT_TRUE(ops::conv2d_takes_bf16_input(x.shape(), w, upsampled(), DType::BF16, Layout::kNHWC, Layout::kNHWC, {}));
  ASSERT_TRUE(
      ops::conv2d_writes_bf16(x.shape(), w, upsampled(), DType::BF16, Layout::kNHWC, Layout::kNHWC, {}, DType::BF16));
  const auto op = ops::prepare_conv2d(x.shape(), w, b, upsampled(), DType::BF16, Layout::kNHWC, Layout::kNHWC, {},
                                      DType::BF16, DType::BF16);
  const Tensor got = run(*op, in_layout(x, Layout::kNHWC, DType::BF16), ys, Layout::kNHWC, DType::BF16);
  const double err = taiyi::testing::relative_l2(got, want);
  EXPECT_LT(err, 1e-2);
  EXPECT_GT(err, 1e-5);  // the roundings happen
}

// write_moments (graph/passes/link_norm_moments.cpp): with a bf16 channels-last output, the sums
// of each channel's written values about the bias, per sample (ops::ChannelMoments), added as each
// output row is copied; 40 channels (a partial 16 of them), batch 2. An f32 output refuses.
TEST(Conv2dUpsample, Bf16WritesTheMomentsOfItsOutput) {
  if (!ops::bf16_supported()) GTEST_SKIP() << "this CPU runs no bf16";
  const Tensor x = random_tensor({2, 32, 6, 9}, 17), w = random_tensor({40, 32, 3, 3}, 18, -0.3f, 0.3f);
  const Tensor b = random_tensor({40}, 19);
  const auto op = ops::prepare_conv2d(x.shape(), w, b, upsampled(), DType::BF16, Layout::kNHWC, Layout::kNHWC, {},
                                      DType::BF16, DType::BF16);
  ASSERT_NE(op->describe().find("upsample2x"), std::string::npos) << op->describe();
  const auto m = std::make_shared<ops::ChannelMoments>();
  ASSERT_TRUE(op->write_moments(m));
  std::vector<std::byte> scratch(op->scratch_bytes() + 64);
  std::byte* aligned = reinterpret_cast<std::byte*>((reinterpret_cast<uintptr_t>(scratch.data()) + 63) / 64 * 64);
  Tensor y = in_layout(Tensor::zeros({2, 40, 12, 18}), Layout::kNHWC, DType::BF16);
  op->run({in_layout(x, Layout::kNHWC, DType::BF16)}, y, aligned);
  ASSERT_TRUE(m->ready);
  EXPECT_EQ(m->data, y.raw_data());
  ASSERT_EQ(m->pixels, 12 * 18);
  expect_moments_of(*m, y, b);
  EXPECT_FALSE(ops::prepare_conv2d(x.shape(), w, b, upsampled(), DType::BF16, Layout::kNHWC, Layout::kNHWC, {},
                                   DType::BF16, DType::F32)
                   ->write_moments(m));
}

TEST(Conv2dUpsample, RefusesWhatItDoesNotCompute) {
  const Tensor w = random_tensor({8, 6, 3, 3}, 1), b = random_tensor({8}, 2);
  const Shape xs = {1, 6, 4, 4};
  ops::Epilogue residual;
  residual.residual = true;
  EXPECT_THROW(ops::prepare_conv2d(xs, w, b, upsampled(), DType::F32, Layout::kNHWC, Layout::kNHWC, residual), Error);
  ops::Conv2dParams strided = upsampled();
  strided.stride_h = strided.stride_w = 2;
  EXPECT_THROW(ops::prepare_conv2d(xs, w, b, strided, DType::F32, Layout::kNHWC, Layout::kNHWC), Error);
  EXPECT_THROW(
      ops::prepare_conv2d(xs, random_tensor({8, 6, 1, 1}, 3), b, upsampled(), DType::F32, Layout::kNHWC, Layout::kNHWC),
      Error);
  EXPECT_FALSE(ops::conv2d_takes_bias_add(xs, w, upsampled(), DType::BF16, Layout::kNHWC, Layout::kNHWC));
  // bf16 input only channels-last; bf16 output only channels-last.
  EXPECT_FALSE(ops::conv2d_takes_bf16_input(xs, w, upsampled(), DType::BF16, Layout::kNCHW, Layout::kNHWC, {}));
  EXPECT_FALSE(ops::conv2d_writes_bf16(xs, w, upsampled(), DType::BF16, Layout::kNHWC, Layout::kNCHW, {}, DType::F32));
}

}  // namespace
}  // namespace taiyi::ops_test
