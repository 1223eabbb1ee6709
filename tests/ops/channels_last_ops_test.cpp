// The ops that graph mode runs on channels-last activations (graph/passes/
// channels_last_activations.cpp): group_norm(+silu) and upsample_nearest on an NHWC input, add and
// concat into an NHWC buffer the executor planned (run_op_into), each equal to the NCHW op, and
// writing the NHWC buffer itself rather than a copy.
#include <gtest/gtest.h>

#include <vector>

#include "op_testing.h"
#include "taiyi/ops/op_call.h"
#include "taiyi/ops/ops.h"
#include "taiyi/ops/prepared.h"

namespace taiyi::ops_test {
namespace {

// The same values, laid out NHWC (the shape stays NCHW).
Tensor channels_last(const Tensor& x) { return x.permute({0, 2, 3, 1}).contiguous().permute({0, 3, 1, 2}); }

Tensor nhwc_buffer(const Shape& s) {
  return Tensor::from_storage(Storage::allocate(static_cast<size_t>(shape_numel(s)) * sizeof(float)), 0, s,
                              ops::layout_strides(s, ops::Layout::kNHWC), DType::F32);
}

bool is_nhwc(const Tensor& t) { return t.strides() == ops::layout_strides(t.shape(), ops::Layout::kNHWC); }

TEST(ChannelsLastOps, GroupNormReadsAndWritesNhwc) {
  // 2 samples, 12 channels in 3 and 4 groups, 5x7 pixels; a large mean against the spread.
  const Tensor x = ops::add_scalar(random_tensor({2, 12, 5, 7}, 1), 30.0f);
  const Tensor gamma = random_tensor({12}, 2), beta = random_tensor({12}, 3);
  for (const int groups : {3, 4})
    for (const bool silu : {false, true}) {
      const Tensor want = silu ? ops::group_norm_silu(x, groups, gamma, beta, 1e-5f)
                               : ops::group_norm(x, groups, gamma, beta, 1e-5f);
      const Tensor got = silu ? ops::group_norm_silu(channels_last(x), groups, gamma, beta, 1e-5f)
                              : ops::group_norm(channels_last(x), groups, gamma, beta, 1e-5f);
      EXPECT_TRUE(is_nhwc(got));
      EXPECT_TRUE(all_close(got, values(want), 1e-5, 1e-5)) << groups << " groups, silu " << silu;
    }
  // No gamma or beta; one pixel row of a large image (the parallel path).
  const Tensor big = random_tensor({1, 64, 32, 48}, 4);
  EXPECT_TRUE(all_close(ops::group_norm(channels_last(big), 32, Tensor(), Tensor(), 1e-6f),
                        values(ops::group_norm(big, 32, Tensor(), Tensor(), 1e-6f)), 1e-5, 1e-5));
}

TEST(ChannelsLastOps, UpsampleNearestReadsAndWritesNhwc) {
  const Tensor x = random_tensor({2, 6, 3, 5}, 5);
  for (const auto& [oh, ow] : std::vector<std::pair<int64_t, int64_t>>{{6, 10}, {7, 4}}) {
    const Tensor got = ops::upsample_nearest(channels_last(x), oh, ow);
    EXPECT_TRUE(is_nhwc(got));
    EXPECT_TRUE(all_close(got, values(ops::upsample_nearest(x, oh, ow)), 0, 0)) << oh << "x" << ow;
  }
}

TEST(ChannelsLastOps, AddAndConcatWriteThePlannedNhwcBuffer) {
  const Tensor a = random_tensor({2, 8, 4, 3}, 6), b = random_tensor({2, 8, 4, 3}, 7);
  const Tensor temb = random_tensor({2, 8, 1, 1}, 8), c = random_tensor({2, 5, 4, 3}, 9);
  // add: both NHWC, one NHWC and one NCHW, and the time embedding broadcast over pixels.
  for (const auto& [x, y] : std::vector<std::pair<Tensor, Tensor>>{
           {channels_last(a), channels_last(b)}, {channels_last(a), b}, {channels_last(a), temb}}) {
    const Tensor out = nhwc_buffer({2, 8, 4, 3});
    const Tensor r = ops::run_op_into(ops::OpKind::kAdd, {x, y}, {}, out);
    EXPECT_EQ(r.data<float>(), out.data<float>());
    EXPECT_TRUE(all_close(r, values(ops::add(x.contiguous(), y.contiguous())), 0, 0));
  }
  ops::OpAttrs cat;
  cat.dim = 1;
  const Tensor out = nhwc_buffer({2, 13, 4, 3});
  const Tensor r = ops::run_op_into(ops::OpKind::kConcat, {channels_last(a), c}, cat, out);
  EXPECT_EQ(r.data<float>(), out.data<float>());
  EXPECT_TRUE(all_close(r, values(ops::concat({a, c}, 1)), 0, 0));
}

}  // namespace
}  // namespace taiyi::ops_test
