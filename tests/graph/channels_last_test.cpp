// channels_last_transformers: around a Transformer2DModel (the diffusers module, random
// weights) the two NCHW <-> NHWC copies become views, and the graph computes the same.
#include <gtest/gtest.h>

#include "taiyi/graph/executor.h"
#include "taiyi/graph/memory_plan.h"
#include "taiyi/graph/passes/passes.h"
#include "taiyi/graph/tracer.h"
#include "taiyi/nn/transformer_2d.h"
#include "test_util.h"

namespace taiyi::graph {
namespace {

using testing::max_abs_diff;
using testing::random_tensor;

// Nodes that copy memory to change layout: a contiguous, or a reshape of a non-contiguous input.
size_t layout_copies(const Graph& g) {
  size_t n = 0;
  for (const Node& node : g.nodes)
    if ((node.kind == ops::OpKind::kContiguous || node.kind == ops::OpKind::kReshape) && !node_is_alias(g, node)) ++n;
  return n;
}

TEST(ChannelsLastTransformers, TransposeCopiesBecomeViews) {
  nn::ParameterSet params;
  nn::Transformer2DOptions o;
  o.heads = 2;
  o.dim_head = 8;
  o.in_channels = 16;
  o.cross_attention_dim = 12;
  o.norm_groups = 4;
  const nn::Transformer2DModel block(nn::Scope(params, "t"), o);
  params.init_random(3);
  const auto fn = [&](const std::vector<Tensor>& in) { return std::vector<Tensor>{block(in[0], in[1])}; };
  Graph g = trace(fn, {{{2, 16, 5, 7}, DType::F32}, {{2, 6, 12}, DType::F32}});
  const Tensor x = random_tensor({2, 16, 5, 7}, 1), ctx = random_tensor({2, 6, 12}, 2);
  const Tensor want = fn({x, ctx})[0];
  EXPECT_EQ(layout_copies(g), 2u);
  EXPECT_TRUE(channels_last_transformers(g));
  EXPECT_EQ(layout_copies(g), 0u);
  EXPECT_EQ(g.count(ops::OpKind::kContiguous), 0u);
  prepack_weights(g);
  EXPECT_LE(max_abs_diff(Executor(g).run({x, ctx})[0], want), 1e-5);
}

TEST(ChannelsLastTransformers, LeavesOtherPermutesAlone) {
  const Tensor w = random_tensor({8, 4, 1, 1}, 1);
  const auto fn = [&](const std::vector<Tensor>& in) {
    const Tensor h = ops::conv2d(in[0], w, Tensor(), ops::Conv2dParams::same(0));
    // Two readers of the conv: it must keep writing NCHW.
    return std::vector<Tensor>{ops::contiguous(ops::permute(h, {0, 2, 3, 1})), ops::silu(h)};
  };
  Graph g = trace(fn, {{{1, 4, 3, 3}, DType::F32}});
  EXPECT_FALSE(channels_last_transformers(g));
}

}  // namespace
}  // namespace taiyi::graph
