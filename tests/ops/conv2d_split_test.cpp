// oneDNN's bf16 3x3 convolution from channels-last bf16 input with many input channels, which
// conv2d_prepared_dnnl.cpp runs as convolutions over slices of 640 (or 320) input channels summed
// into the output: against the same convolution unsplit (from NCHW f32 input holding the same
// bf16-rounded values: the same products, the sums in another order), with a bias or none, a
// residual (separate or in place), stride 1 and 2, 2, 3 or 4 slices, and an f32 channels-last
// input (rounded to bf16 as it is sliced). Skipped on CPUs without bf16.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "op_testing.h"
#include "taiyi/ops/ops.h"
#include "taiyi/ops/prepared.h"
#include "taiyi/tensor/dtype.h"

namespace taiyi::ops_test {
namespace {

using ops::Layout;

struct Case {
  int64_t n, cin, h, cout;
  int stride;
  bool bias, residual, in_place;
  const char* split;       // how the describe() names the slices
  bool f32_input = false;  // channels-last f32 (the upsamplers' convolutions), rounded as sliced
};

// x [N, C, H, W] as bf16 in channels-last memory (a view with NHWC strides), and the same values in f32.
std::pair<Tensor, Tensor> bf16_nhwc(const Tensor& x) {
  const Tensor nhwc = ops::contiguous(ops::permute(x, {0, 2, 3, 1}));
  Tensor b = Tensor::zeros(nhwc.shape(), DType::BF16);
  Tensor rounded = Tensor::empty(nhwc.shape());
  for (int64_t i = 0; i < nhwc.numel(); ++i) {
    b.data_u16()[i] = f32_to_bf16(nhwc.data<float>()[i]);
    rounded.data<float>()[i] = bf16_to_f32(b.data_u16()[i]);
  }
  return {b.permute({0, 3, 1, 2}), ops::contiguous(rounded.permute({0, 3, 1, 2}))};
}

Tensor nhwc_output(const Shape& ys) { return Tensor::zeros({ys[0], ys[2], ys[3], ys[1]}).permute({0, 3, 1, 2}); }

TEST(Conv2dSplit, SlicesOfInputChannelsSumToTheWholeConvolution) {
  if (!ops::bf16_supported()) GTEST_SKIP() << "no bf16 on this CPU";
  const Case cases[] = {
      {2, 1280, 6, 24, 1, true, false, false, "split 2x640"},
      {1, 960, 5, 16, 1, false, true, false, "split 3x320"},
      {1, 1920, 4, 32, 2, true, true, true, "split 3x640"},
      {2, 2560, 3, 8, 1, true, true, false, "split 4x640"},
      {1, 1280, 5, 16, 1, true, false, false, "split 2x640", true},
  };
  uint32_t seed = 10;
  for (const Case& c : cases) {
    SCOPED_TRACE(std::string(c.split) + ", Cin " + std::to_string(c.cin));
    ops::Conv2dParams p = ops::Conv2dParams::same(1);
    p.stride_h = p.stride_w = c.stride;
    const Shape xs = {c.n, c.cin, c.h, c.h};
    const int64_t ho = (c.h + 2 - 3) / c.stride + 1;
    const Shape ys = {c.n, c.cout, ho, ho};
    const Tensor x = random_tensor(xs, seed);
    const auto [x_bf16, x_f32] = bf16_nhwc(x);
    const Tensor w = random_tensor({c.cout, c.cin, 3, 3}, seed + 1, -0.05f, 0.05f);
    const Tensor bias = c.bias ? random_tensor({c.cout}, seed + 2) : Tensor();
    ops::Epilogue e;
    e.residual = c.residual;
    const DType src = c.f32_input ? DType::F32 : DType::BF16;
    const auto split = ops::prepare_conv2d(xs, w, bias, p, DType::BF16, Layout::kNHWC, Layout::kNHWC, e, src);
    const auto whole = ops::prepare_conv2d(xs, w, bias, p, DType::BF16, Layout::kNCHW, Layout::kNHWC, e);
    EXPECT_NE(split->describe().find(c.split), std::string::npos) << split->describe();
    EXPECT_EQ(whole->describe().find("split"), std::string::npos) << whole->describe();
    EXPECT_DOUBLE_EQ(split->flops(), whole->flops());
    const Tensor residual = random_tensor(ys, seed + 3);
    Tensor got = nhwc_output(ys), want = nhwc_output(ys);
    // An f32 input is rounded by both: as it is sliced, and by oneDNN's reorder of the whole.
    std::vector<Tensor> in_split = {c.f32_input ? ops::contiguous(ops::permute(x, {0, 2, 3, 1})).permute({0, 3, 1, 2})
                                                : x_bf16},
                        in_whole = {c.f32_input ? x : x_f32};
    if (c.residual) {
      if (c.in_place) {
        got.copy_from(residual);
        in_split.push_back(got);
      } else {
        in_split.push_back(residual);
      }
      in_whole.push_back(residual);
    }
    std::vector<std::byte> s1(split->scratch_bytes() + 64), s2(whole->scratch_bytes() + 64);
    split->run(in_split, got, s1.data());
    whole->run(in_whole, want, s2.data());
    // The same bf16 products summed in another order (f32): a few ulps of the largest output.
    EXPECT_TRUE(all_close(got, values(want), 1e-4, 1e-4));
    seed += 10;
  }
}

}  // namespace
}  // namespace taiyi::ops_test
