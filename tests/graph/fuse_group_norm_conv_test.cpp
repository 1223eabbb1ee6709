// fuse_group_norm_conv: with bf16 on AMX, a ResNet block's GroupNorm+SiLU in front of each of its
// convolutions (the VAE's, channels-last bf16 activations) goes into the convolution as its
// prologue: the group_norm_silu nodes are gone, the convolutions read the GroupNorm's input,
// bound to the AMX Winograd kernel (64 channels) or the direct AMX convolution (320) with the
// prologue, and the graph computes within bf16's error of the graph without the pass
// (TAIYI_FUSE_NORM_CONV=0), the same on replay. A GroupNorm read by two nodes, f32 compute, and
// the pass switched off change nothing; eager replay of a node with the prologue normalises first.
#include <gtest/gtest.h>

#include <cstdlib>

#include "graph_testing.h"
#include "taiyi/graph/executor.h"
#include "taiyi/graph/passes/passes.h"
#include "taiyi/graph/tracer.h"
#include "taiyi/nn/resnet.h"
#include "taiyi/ops/cpu/dnnl_context.h"
#include "taiyi/ops/op_call.h"
#include "taiyi/ops/prepared.h"
#include "test_util.h"

namespace taiyi::graph {
namespace {

using testing::max_abs_diff;
using testing::random_tensor;

size_t prologues(const Graph& g) {
  return count_nodes(g, [](const Node& n) { return ops::has_norm_prologue(n.kind, n.attrs); });
}

// A ResNet block of `channels` channels on [2, 4, h, w] input (after a 3x3 convolution from 4
// channels): its two GroupNorm+SiLU pairs fused into convolutions bound to the kernel `kernel`
// names.
void check_resnet_block(int64_t channels, int64_t h, int64_t w, const char* kernel) {
  SCOPED_TRACE(std::to_string(channels) + " channels, " + kernel);
  nn::ParameterSet params;
  const nn::ResnetBlock2D block(nn::Scope(params, "block"), channels, channels, 0, 32, 1e-6f);
  params.init_random(5);
  const Tensor w_in = random_tensor({channels, 4, 3, 3}, 1, -0.3f, 0.3f), w_out = random_tensor({4, channels, 3, 3}, 2);
  const auto fn = [&](const std::vector<Tensor>& in) {
    const Tensor hid = block(ops::conv2d(in[0], w_in, Tensor(), ops::Conv2dParams::same(1)), Tensor());
    return std::vector<Tensor>{ops::conv2d(hid, w_out, Tensor(), ops::Conv2dParams::same(1))};
  };
  const std::vector<InputSpec> sig = {{{2, 4, h, w}, DType::F32}};
  Tensor x = random_tensor({2, 4, h, w}, 3);
  Graph f32 = trace(fn, sig);
  run_passes(f32, CompileOptions{});
  EXPECT_EQ(prologues(f32), 0u);
  if (!ops::bf16_supported()) GTEST_SKIP() << "this CPU runs no bf16";
  unsetenv("TAIYI_BF16_EMULATE");
  ::setenv("TAIYI_FUSE_NORM_CONV", "0", 1);
  Graph plain = trace(fn, sig);
  run_passes(plain, bf16());
  ::unsetenv("TAIYI_FUSE_NORM_CONV");
  EXPECT_EQ(prologues(plain), 0u);
  EXPECT_EQ(plain.count(ops::OpKind::kGroupNormSilu), 2u);
  Graph g = trace(fn, sig);
  run_passes(g, bf16());
  const bool fuses = ops::cpu::dnnl_uses_amx();
  EXPECT_EQ(prologues(g), fuses ? 2u : 0u) << g.dump();
  EXPECT_EQ(g.count(ops::OpKind::kGroupNormSilu), fuses ? 0u : 2u);
  for (const Node& n : g.nodes) {
    if (!ops::has_norm_prologue(n.kind, n.attrs)) continue;
    EXPECT_EQ(n.attrs.groups, 32);
    EXPECT_EQ(g.values[n.inputs[0]].dtype, DType::BF16);
    ASSERT_EQ(n.inputs.size(), 6u);
    ASSERT_TRUE(n.prepared);
    EXPECT_NE(n.prepared->describe().find(kernel), std::string::npos) << n.prepared->describe();
    EXPECT_NE(n.prepared->describe().find("groupnorm+silu"), std::string::npos);
  }
  const Tensor want = Executor(plain).run({x})[0];
  const Executor ex(g);
  const Tensor got = ex.run({x})[0];
  EXPECT_LT(testing::relative_l2(got, want), 1e-2);
  EXPECT_EQ(max_abs_diff(ex.run({x})[0], got), 0.0);
  // Each sample normalised by its own statistics: the second sample shifted and scaled changes
  // the first sample's output not at all.
  Tensor x2 = x.contiguous();
  const int64_t per = 4 * h * w;
  for (int64_t i = 0; i < per; ++i) x2.data<float>()[per + i] = 3.0f * x2.data<float>()[per + i] + 2.0f;
  const Tensor got2 = ex.run({x2})[0];
  EXPECT_EQ(max_abs_diff(ops::slice(got2, 0, 0, 1), ops::slice(got, 0, 0, 1)), 0.0);
}

TEST(FuseGroupNormConv, ResnetBlockConvolutionsNormaliseTheirInput) {
  // Width 64: rows of 32 tiles, the Winograd kernel's ring of normalised rows; batch 2: per-sample
  // statistics.
  check_resnet_block(64, 8, 64, "winograd_f23:amx");
  // 320 channels, width 32: the direct AMX convolution, which normalises as it copies its input.
  check_resnet_block(320, 2, 32, "direct:amx");
}

TEST(FuseGroupNormConv, EagerReplayNormalisesFirst) {
  // A conv2d node with the prologue, replayed eagerly (ops::run_op): group_norm_silu, then the
  // convolution, with or without a residual (its 4th input absent or present).
  const Tensor x = random_tensor({2, 8, 5, 6}, 1), w = random_tensor({4, 8, 3, 3}, 2), b = random_tensor({4}, 3);
  const Tensor gamma = random_tensor({8}, 4), beta = random_tensor({8}, 5), r = random_tensor({2, 4, 5, 6}, 6);
  ops::OpAttrs a;
  a.conv = ops::Conv2dParams::same(1);
  a.groups = 4;
  a.eps = 1e-5f;
  ASSERT_TRUE(ops::has_norm_prologue(ops::OpKind::kConv2d, a));
  const Tensor want = ops::conv2d(ops::group_norm_silu(x, 4, gamma, beta, 1e-5f), w, b, a.conv);
  EXPECT_EQ(max_abs_diff(ops::run_op(ops::OpKind::kConv2d, {x, w, b, Tensor(), gamma, beta}, a), want), 0.0);
  EXPECT_EQ(max_abs_diff(ops::run_op(ops::OpKind::kConv2d, {x, w, b, r, gamma, beta}, a), ops::add(want, r)), 0.0);
}

TEST(FuseGroupNormConv, LeavesSharedNormsAlone) {
  const Tensor w = random_tensor({64, 64, 3, 3}, 1, -0.1f, 0.1f), w_in = random_tensor({64, 4, 3, 3}, 2);
  const auto p = ops::Conv2dParams::same(1);
  const auto fn = [&](const std::vector<Tensor>& in) {
    const Tensor h = ops::conv2d(in[0], w_in, Tensor(), p);
    const Tensor y = ops::group_norm_silu(h, 32, Tensor(), Tensor(), 1e-6f);  // read by the conv and the add
    return std::vector<Tensor>{ops::add(ops::conv2d(y, w, Tensor(), p), y)};
  };
  Graph g = trace(fn, {{{1, 4, 8, 64}, DType::F32}});
  run_passes(g, bf16());
  EXPECT_EQ(prologues(g), 0u);
  EXPECT_EQ(g.count(ops::OpKind::kGroupNormSilu), 1u);
}

}  // namespace
}  // namespace taiyi::graph
