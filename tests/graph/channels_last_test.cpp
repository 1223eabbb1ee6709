// channels_last_transformers: around a Transformer2DModel (the diffusers module, random
// weights) the two NCHW <-> NHWC copies become views, and the graph computes the same.
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include "small_blocks.h"
#include "taiyi/graph/executor.h"
#include "taiyi/graph/memory_plan.h"
#include "taiyi/graph/passes/passes.h"
#include "taiyi/graph/tracer.h"
#include "taiyi/models/autoencoder_kl.h"
#include "taiyi/nn/resnet.h"
#include "taiyi/nn/transformer_2d.h"
#include "taiyi/ops/cpu/cpu_isa.h"
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
  const nn::Transformer2DModel block = small_transformer(params);
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

size_t channels_last_values(const Graph& g) {
  size_t n = 0;
  for (const Value& v : g.values)
    n += v.shape.size() == 4 && v.strides != contiguous_strides(v.shape) &&
         v.strides == ops::layout_strides(v.shape, ops::Layout::kNHWC);
  return n;
}

// Values read or written by the f32 Winograd kernel (3x3 stride-1 convolutions in f32 where the
// CPU has AVX2), which runs fastest on NCHW.
size_t winograd_values_channels_last(const Graph& g) {
  size_t n = 0;
  for (const Node& node : g.nodes) {
    if (node.kind != ops::OpKind::kConv2d || node.prepared == nullptr ||
        node.prepared->describe().rfind("conv2d f32 winograd", 0) != 0)
      continue;
    for (const int v : {node.inputs[0], node.output})
      n += g.values[v].strides == ops::layout_strides(g.values[v].shape, ops::Layout::kNHWC) &&
           g.values[v].strides != contiguous_strides(g.values[v].shape);
  }
  return n;
}

// An up-block in miniature: a ResnetBlock2D (shortcut, time embedding), a Transformer2DModel,
// upsampling, a skip concat, another ResnetBlock2D and a downsampling convolution. Through every
// default pass the activations between them become channels-last (the graph's inputs and output
// stay NCHW) and the graph computes what eager mode does; in f32 with the Winograd kernel (also
// where bf16 was asked of a CPU that runs none), the groups its convolutions read and write stay
// NCHW instead (the bf16 Winograd kernel of CPUs without AMX takes channels-last).
TEST(ChannelsLastActivations, ResnetUpsampleConcatChainsBecomeNhwc) {
  nn::ParameterSet params;
  const nn::ResnetBlock2D first(nn::Scope(params, "r0"), 8, 16, 12, 4, 1e-5f, 1.0f);
  const nn::Transformer2DModel block = small_transformer(params);
  const nn::Upsample2D up(nn::Scope(params, "up"), 16);
  const nn::ResnetBlock2D second(nn::Scope(params, "r1"), 24, 8, 12, 4, 1e-5f, 1.0f);
  const nn::Downsample2D down(nn::Scope(params, "down"), 8, 1);
  params.init_random(7);
  const auto fn = [&](const std::vector<Tensor>& in) {
    const Tensor h = up(block(first(in[0], in[1]), in[2]));
    return std::vector<Tensor>{down(second(ops::concat({h, in[3]}, 1), in[1]))};
  };
  const std::vector<InputSpec> sig = {
      {{2, 8, 5, 6}, DType::F32}, {{2, 12}, DType::F32}, {{2, 7, 12}, DType::F32}, {{2, 8, 10, 12}, DType::F32}};
  const Tensor x = random_tensor({2, 8, 5, 6}, 1), temb = random_tensor({2, 12}, 2);
  const Tensor ctx = random_tensor({2, 7, 12}, 3), skip = random_tensor({2, 8, 10, 12}, 4);
  const Tensor want = fn({x, temb, ctx, skip})[0];
  for (const auto& [winograd, compute] : {std::pair{false, DType::F32}, std::pair{true, DType::F32},
                                          std::pair{false, DType::BF16}, std::pair{true, DType::BF16}}) {
    SCOPED_TRACE(std::string(compute == DType::F32 ? "f32" : "bf16") + (winograd ? "" : ", TAIYI_WINOGRAD=0"));
    if (!winograd) setenv("TAIYI_WINOGRAD", "0", 1);
    Graph g = trace(fn, sig);
    CompileOptions options;
    options.compute = compute;
    run_passes(g, options);
    unsetenv("TAIYI_WINOGRAD");
    EXPECT_EQ(winograd_values_channels_last(g), 0u) << g.dump();
    // Out of the first ResNet block: conv1, its temb add, norm2 + silu, conv2 (+ shortcut); the
    // transformer's input norm; the upsample; its conv; then the second block's concat, norm1,
    // conv1, add, norm2, conv2 (+ shortcut).
    // (bf16 asked on a CPU that runs none computes f32: prepared_compute)
    const bool f32_winograd = prepared_compute(options) == DType::F32 && winograd && ops::cpu::cpu_has_avx2_fma();
    if (!f32_winograd) {
      EXPECT_GE(channels_last_values(g), 12u) << g.dump();
    }
    for (int v : g.inputs) EXPECT_EQ(g.values[v].strides, contiguous_strides(g.values[v].shape));
    for (int v : g.outputs) EXPECT_EQ(g.values[v].strides, contiguous_strides(g.values[v].shape));
    const double tol = compute == DType::F32 ? 1e-4 : 5e-2;
    const Executor ex(g);
    EXPECT_LE(max_abs_diff(ex.run({x, temb, ctx, skip})[0], want), tol);
    EXPECT_LE(max_abs_diff(ex.run({x, temb, ctx, skip})[0], want), tol);  // a replay gives the same
  }
}

// A value some other op reads (here a scale, and a permute) keeps NCHW, and so does everything
// that must share its layout (the add's other operand and output).
TEST(ChannelsLastActivations, LeavesGroupsWithOtherReadersAlone) {
  const Tensor w = random_tensor({8, 4, 3, 3}, 1), b = random_tensor({8}, 2);
  const auto fn = [&](const std::vector<Tensor>& in) {
    const Tensor h = ops::conv2d(in[0], w, b, ops::Conv2dParams::same(1));
    const Tensor s = ops::add(h, in[1]);
    return std::vector<Tensor>{
        ops::scale(s, 2.0f),
        ops::contiguous(ops::permute(ops::group_norm(h, 2, Tensor(), Tensor(), 1e-5f), {0, 2, 3, 1}))};
  };
  Graph g = trace(fn, {{{1, 4, 6, 6}, DType::F32}, {{1, 8, 6, 6}, DType::F32}});
  prepack_weights(g);
  EXPECT_FALSE(channels_last_activations(g));
  EXPECT_EQ(channels_last_values(g), 0u);
}

// The VAE's mid-block (ResNet, single-head attention over the GroupNorm's output flattened to
// tokens, ResNet) with bf16 where oneDNN's convolutions run it (AMX): the whole chain is
// channels-last, the flattening (reshape [B, C, H W], permute(0, 2, 1)) becomes permute(0, 2, 3, 1)
// then reshape [B, H W, C], both views with the tokens contiguous, and the attention's output seen
// back as [B, C, H, W] joins the group (channels-last already); within bf16's error of the graph
// without the pass.
TEST(ChannelsLastActivations, VaeAttentionFlatteningBecomesViews) {
  if (!ops::bf16_supported()) GTEST_SKIP() << "this CPU runs no bf16";
  nn::ParameterSet params;
  const models::VaeMidBlock mid(nn::Scope(params, "mid"), 32, 4, true);
  params.init_random(5);
  const Tensor w_in = random_tensor({32, 4, 3, 3}, 1, -0.3f, 0.3f),
               w_out = random_tensor({4, 32, 3, 3}, 2, -0.3f, 0.3f);
  const auto fn = [&](const std::vector<Tensor>& in) {
    const Tensor h = mid(ops::conv2d(in[0], w_in, Tensor(), ops::Conv2dParams::same(1)));
    return std::vector<Tensor>{ops::conv2d(h, w_out, Tensor(), ops::Conv2dParams::same(1))};
  };
  const std::vector<InputSpec> sig = {{{1, 4, 6, 5}, DType::F32}};
  CompileOptions bf16;
  bf16.compute = DType::BF16;
  ::setenv("TAIYI_CHANNELS_LAST", "0", 1);
  Graph plain = trace(fn, sig);
  run_passes(plain, bf16);
  ::unsetenv("TAIYI_CHANNELS_LAST");
  Graph g = trace(fn, sig);
  run_passes(g, bf16);
  const bool onednn = ops::conv2d_prefers_channels_last({1, 32, 6, 5}, random_tensor({32, 32, 3, 3}, 3),
                                                        ops::Conv2dParams::same(1), DType::BF16);
  size_t norms_nhwc = 0, flattenings = 0, adds_nhwc = 0;
  for (const Node& n : g.nodes) {
    const Value& out = g.values[n.output];
    if (n.kind == ops::OpKind::kGroupNorm || n.kind == ops::OpKind::kGroupNormSilu)
      norms_nhwc += value_layout(out) == ops::Layout::kNHWC;
    if (n.kind == ops::OpKind::kAdd) adds_nhwc += value_layout(out) == ops::Layout::kNHWC;
    if (n.kind == ops::OpKind::kPermute && n.attrs.dims == std::vector<int>{0, 2, 3, 1} &&
        out.shape == Shape{1, 6, 5, 32}) {
      ++flattenings;
      EXPECT_TRUE(node_is_alias(g, n));
      EXPECT_EQ(out.strides, contiguous_strides(out.shape));
    }
  }
  // 2 x 2 in the ResNets and the attention's; the residual add after the attention.
  EXPECT_EQ(norms_nhwc, onednn ? 5u : 0u) << g.dump();
  EXPECT_EQ(adds_nhwc, onednn ? 1u : 0u) << g.dump();
  EXPECT_EQ(flattenings, onednn ? 1u : 0u) << g.dump();
  EXPECT_EQ(layout_copies(g), 0u) << g.dump();
  const Tensor x = random_tensor({1, 4, 6, 5}, 4);
  const Tensor want = Executor(plain).run({x})[0], got = Executor(g).run({x})[0];
  EXPECT_LT(testing::relative_l2(got, want), 1e-2);
}

}  // namespace
}  // namespace taiyi::graph
