// fuse_upsample_conv: with bf16 where oneDNN runs the upsampler's 3x3 convolution (AMX), the
// nearest 2x upsample and its convolution become one convolution of the upsample's input
// (Conv2dParams upsample 2), computing within bf16's error of the graph without the pass, the
// same on replay; with f32, at a size that is not twice the input's, or with the upsample read by
// another op as well, nothing changes.
#include <gtest/gtest.h>

#include <cstdlib>

#include "graph_testing.h"
#include "taiyi/graph/executor.h"
#include "taiyi/graph/passes/passes.h"
#include "taiyi/graph/tracer.h"
#include "taiyi/nn/resnet.h"
#include "taiyi/ops/prepared.h"
#include "test_util.h"

namespace taiyi::graph {
namespace {

using testing::max_abs_diff;
using testing::random_tensor;

size_t count(const Graph& g, ops::OpKind kind) {
  size_t n = 0;
  for (const Node& node : g.nodes) n += node.kind == kind;
  return n;
}

TEST(FuseUpsampleConv, UpsamplerBecomesOneConvolutionOfItsInput) {
  nn::ParameterSet params;
  const nn::Upsample2D up(nn::Scope(params, "up"), 16);
  params.init_random(3);
  const Tensor w_in = random_tensor({16, 4, 3, 3}, 1, -0.3f, 0.3f);
  const auto fn = [&](const std::vector<Tensor>& in) {
    const Tensor h = ops::conv2d(in[0], w_in, Tensor(), ops::Conv2dParams::same(1));
    return std::vector<Tensor>{ops::group_norm_silu(up(h), 4, Tensor(), Tensor(), 1e-5f)};
  };
  const std::vector<InputSpec> sig = {{{2, 4, 5, 7}, DType::F32}};
  const Tensor x = random_tensor({2, 4, 5, 7}, 2);
  // f32: nothing to fuse.
  Graph f32 = trace(fn, sig);
  EXPECT_FALSE(fuse_upsample_conv(f32, CompileOptions{}));
  if (!ops::bf16_supported()) GTEST_SKIP() << "this CPU runs no bf16";
  unsetenv("TAIYI_BF16_EMULATE");
  const bool fuses = ops::conv2d_fuses_upsample({2, 16, 10, 14}, random_tensor({16, 16, 3, 3}, 4),
                                                ops::Conv2dParams::same(1), DType::BF16);
  ::setenv("TAIYI_FUSE_UPSAMPLE", "0", 1);
  Graph plain = trace(fn, sig);
  run_passes(plain, bf16());
  ::unsetenv("TAIYI_FUSE_UPSAMPLE");
  Graph g = trace(fn, sig);
  run_passes(g, bf16());
  EXPECT_EQ(count(g, ops::OpKind::kUpsampleNearest), fuses ? 0u : 1u) << g.dump();
  size_t fused = 0;
  for (const Node& n : g.nodes)
    if (n.kind == ops::OpKind::kConv2d && n.attrs.conv.upsample == 2) {
      ++fused;
      EXPECT_EQ(g.values[n.inputs[0]].shape, (Shape{2, 16, 5, 7}));
      EXPECT_EQ(g.values[n.output].shape, (Shape{2, 16, 10, 14}));
      ASSERT_TRUE(n.prepared);
      EXPECT_NE(n.prepared->describe().find("upsample2x"), std::string::npos);
    }
  EXPECT_EQ(fused, fuses ? 1u : 0u);
  const Tensor want = Executor(plain).run({x})[0];
  const Executor ex(g);
  const Tensor got = ex.run({x})[0];
  EXPECT_LT(testing::relative_l2(got, want), 1e-2);
  if (fuses) {
    EXPECT_GT(max_abs_diff(got, want), 0.0);  // the summed taps round differently
  }
  EXPECT_EQ(max_abs_diff(ex.run({x})[0], got), 0.0);
}

TEST(FuseUpsampleConv, LeavesOtherSizesAndSharedUpsamplesAlone) {
  const Tensor w = random_tensor({8, 8, 3, 3}, 1, -0.3f, 0.3f), b = random_tensor({8}, 2);
  const auto p = ops::Conv2dParams::same(1);
  const auto fn = [&](const std::vector<Tensor>& in) {
    const Tensor odd = ops::upsample_nearest(in[0], 11, 15);    // not 2x
    const Tensor twice = ops::upsample_nearest(in[0], 12, 14);  // 2x, but read by the add too
    return std::vector<Tensor>{ops::conv2d(odd, w, b, p), ops::add(ops::conv2d(twice, w, b, p), twice)};
  };
  Graph g = trace(fn, {{{1, 8, 6, 7}, DType::F32}});
  EXPECT_FALSE(fuse_upsample_conv(g, bf16()));
  EXPECT_EQ(count(g, ops::OpKind::kUpsampleNearest), 2u);
}

}  // namespace
}  // namespace taiyi::graph
