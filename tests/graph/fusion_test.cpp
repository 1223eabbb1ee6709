// The fusion passes: fuse_group_norm_silu, fuse_residual_add, fuse_bias_add, fuse_linear_gelu
// and fuse_sibling_linears. Each graph computes the same
// before and after (and as eager mode), the pattern is gone, and look-alikes that must not
// fuse (a second reader, a broadcasting add, a graph output in the middle) stay as they were.
#include <gtest/gtest.h>

#include <string>

#include "graph_testing.h"
#include "small_blocks.h"
#include "taiyi/graph/executor.h"
#include "taiyi/graph/passes/passes.h"
#include "taiyi/graph/tracer.h"
#include "taiyi/nn/resnet.h"
#include "taiyi/nn/transformer_2d.h"
#include "test_util.h"

namespace taiyi::graph {
namespace {

using testing::max_abs_diff;
using testing::random_tensor;
using testing::relative_l2;

size_t residual_epilogues(const Graph& g) {
  return count_nodes(g, [](const Node& n) { return ops::has_fused_residual(n.attrs, n.inputs); });
}

TEST(FuseGroupNormSilu, PairBecomesOneNode) {
  const Tensor gamma = random_tensor({12}, 1), beta = random_tensor({12}, 2);
  const auto fn = [&](const std::vector<Tensor>& in) {
    const Tensor a = ops::silu(ops::group_norm(in[0], 4, gamma, beta, 1e-5f));  // fuses
    const Tensor n2 = ops::group_norm(in[0], 3, Tensor(), Tensor(), 1e-6f);     // read twice: stays
    const Tensor b = ops::add(ops::silu(n2), n2);
    return std::vector<Tensor>{ops::add(a, b)};
  };
  Graph g = trace(fn, {{{2, 12, 5, 3}, DType::F32}});
  const Tensor x = random_tensor({2, 12, 5, 3}, 3, -3.0f, 3.0f);
  const Tensor want = fn({x})[0];
  const Tensor before = Executor(g).run({x})[0];
  EXPECT_TRUE(fuse_group_norm_silu(g));
  g.validate();
  EXPECT_EQ(g.count(ops::OpKind::kGroupNormSilu), 1u);
  EXPECT_EQ(g.count(ops::OpKind::kGroupNorm), 1u);
  EXPECT_EQ(g.count(ops::OpKind::kSilu), 1u);
  const Tensor after = Executor(g).run({x})[0];
  EXPECT_LE(max_abs_diff(after, before), 1e-6);
  EXPECT_LE(max_abs_diff(after, want), 1e-6);
  EXPECT_FALSE(fuse_group_norm_silu(g));
}

TEST(FuseGroupNormSilu, GraphOutputInTheMiddleStays) {
  const auto fn = [&](const std::vector<Tensor>& in) {
    const Tensor n = ops::group_norm(in[0], 2, Tensor(), Tensor(), 1e-5f);
    return std::vector<Tensor>{ops::silu(n), n};
  };
  Graph g = trace(fn, {{{1, 4, 3, 3}, DType::F32}});
  EXPECT_FALSE(fuse_group_norm_silu(g));
}

// conv + residual, residual + linear, a residual computed after the conv (as diffusers'
// conv_shortcut), a scale folded in, and three look-alikes that stay: a broadcasting add (the
// time embedding), a conv read twice, a weight computed in the graph.
TEST(FuseResidualAdd, ConvAndLinearTakeTheResidual) {
  const Tensor w1 = random_tensor({8, 8, 3, 3}, 1), b1 = random_tensor({8}, 2);
  const Tensor ws = random_tensor({8, 8, 1, 1}, 3), wl = random_tensor({8, 8}, 4), bl = random_tensor({8}, 5);
  const auto fn = [&](const std::vector<Tensor>& in) {
    const Tensor x = in[0];
    Tensor h = ops::conv2d(x, w1, b1, ops::Conv2dParams::same(1));
    const Tensor shortcut = ops::conv2d(x, ws, Tensor(), ops::Conv2dParams::same(0));  // after the conv
    h = ops::scale(ops::add(shortcut, h), 0.5f);                                       // fuses with the scale
    h = ops::add(h, ops::reshape(in[1], {2, 8, 1, 1}));                                // broadcast: stays
    const Tensor twice = ops::conv2d(h, w1, Tensor(), ops::Conv2dParams::same(1));     // read twice: stays
    h = ops::add(ops::add(twice, h), twice);
    const Tensor s = ops::reshape(ops::permute(h, {0, 2, 3, 1}), {2, 30, 8});
    const Tensor t = ops::add(s, ops::linear(s, wl, bl));           // fuses (residual first)
    const Tensor u = ops::add(ops::linear(t, in[2], Tensor()), t);  // weight an input: stays
    return std::vector<Tensor>{u};
  };
  Graph g = trace(fn, {{{2, 8, 5, 6}, DType::F32}, {{2, 8}, DType::F32}, {{8, 8}, DType::F32}});
  const Tensor x = random_tensor({2, 8, 5, 6}, 6), temb = random_tensor({2, 8}, 7), w = random_tensor({8, 8}, 8);
  const Tensor want = fn({x, temb, w})[0];
  const Tensor before = Executor(g).run({x, temb, w})[0];
  const size_t adds = g.count(ops::OpKind::kAdd);
  EXPECT_TRUE(fuse_residual_add(g));
  g.validate();
  EXPECT_EQ(residual_epilogues(g), 2u);
  EXPECT_EQ(g.count(ops::OpKind::kAdd), adds - 2);
  EXPECT_EQ(g.count(ops::OpKind::kScale), 0u);  // folded into the epilogue
  // Unprepared, the fused nodes run the eager op and the add; prepared, oneDNN post-ops.
  EXPECT_LE(max_abs_diff(Executor(g).run({x, temb, w})[0], before), 1e-5);
  EXPECT_TRUE(prepack_weights(g));
  const Executor ex(g);
  EXPECT_LE(max_abs_diff(ex.run({x, temb, w})[0], want), 1e-4);
  EXPECT_LE(max_abs_diff(ex.run({x, temb, w})[0], want), 1e-4);  // a replay gives the same
  EXPECT_FALSE(fuse_residual_add(g));
}

// The real blocks: a ResnetBlock2D with a shortcut and a Transformer2DModel, through every
// default pass, against eager mode.
TEST(FuseResidualAdd, ResnetAndTransformerBlocksThroughAllPasses) {
  nn::ParameterSet params;
  const nn::ResnetBlock2D resnet(nn::Scope(params, "r"), 8, 16, 12, 4, 1e-5f, 1.0f);
  const nn::Transformer2DModel block = small_transformer(params);
  params.init_random(5);
  const auto fn = [&](const std::vector<Tensor>& in) {
    return std::vector<Tensor>{block(resnet(in[0], in[1]), in[2])};
  };
  Graph g = trace(fn, {{{2, 8, 6, 5}, DType::F32}, {{2, 12}, DType::F32}, {{2, 7, 12}, DType::F32}});
  const Tensor x = random_tensor({2, 8, 6, 5}, 1), temb = random_tensor({2, 12}, 2), ctx = random_tensor({2, 7, 12}, 3);
  const Tensor want = fn({x, temb, ctx})[0];
  const auto reports = run_passes(g);
  EXPECT_EQ(g.count(ops::OpKind::kGroupNormSilu), 2u);  // norm1 + silu, norm2 + silu
  // conv2 + shortcut, attn1/attn2 to_out + input, ff + input, proj_out + input.
  EXPECT_EQ(residual_epilogues(g), 5u);
  EXPECT_LE(max_abs_diff(Executor(g).run({x, temb, ctx})[0], want), 1e-4);
}

// The time embedding's add into the bias of the convolution before it (fuse_bias_add): a
// per-channel value ([1, C, 1, 1], [C, 1, 1]) fuses where the convolution is oneDNN's (any 1x1;
// a 3x3 one where it is not our Winograd kernel: bf16 on AMX); one per batch item ([2, C, 1, 1])
// or per position stays. Unprepared (the eager op adds), prepared, and replayed, as eager mode.
TEST(FuseBiasAdd, PerChannelAddsJoinTheConvolutionsBias) {
  const Tensor w3 = random_tensor({8, 6, 3, 3}, 1), b3 = random_tensor({8}, 2), w1 = random_tensor({8, 8, 1, 1}, 3);
  const auto fn = [&](const std::vector<Tensor>& in) {
    Tensor h = ops::conv2d(in[0], w3, b3, ops::Conv2dParams::same(1));
    h = ops::add(h, ops::reshape(in[1], {1, 8, 1, 1}));                              // fuses (3x3: oneDNN's?)
    h = ops::add(ops::reshape(in[1], {8, 1, 1}), ops::conv2d(h, w1, Tensor(), {}));  // fuses, no bias
    h = ops::add(ops::conv2d(h, w1, b3, {}), ops::reshape(in[2], {2, 8, 1, 1}));     // per batch item: stays
    return std::vector<Tensor>{ops::add(ops::conv2d(h, w1, b3, {}), in[3])};         // per position: stays
  };
  const std::vector<InputSpec> sig = {
      {{2, 6, 4, 5}, DType::F32}, {{1, 8}, DType::F32}, {{2, 8}, DType::F32}, {{1, 1, 4, 5}, DType::F32}};
  const Tensor x = random_tensor({2, 6, 4, 5}, 4), t = random_tensor({1, 8}, 5), t2 = random_tensor({2, 8}, 6);
  const Tensor t3 = random_tensor({1, 1, 4, 5}, 7);
  const Tensor want = fn({x, t, t2, t3})[0];
  for (const DType compute : {DType::F32, DType::BF16}) {
    SCOPED_TRACE(dtype_name(compute));
    CompileOptions options;
    options.compute = compute;
    Graph g = trace(fn, sig);
    const size_t adds = g.count(ops::OpKind::kAdd);
    const bool conv3x3 = ops::conv2d_takes_bias_add({2, 6, 4, 5}, w3, ops::Conv2dParams::same(1),
                                                    prepared_compute(options), ops::Layout::kNCHW, ops::Layout::kNCHW);
    EXPECT_TRUE(fuse_bias_add(g, options));
    g.validate();
    size_t fused = 0;
    for (const Node& n : g.nodes) fused += n.kind == ops::OpKind::kConv2d && n.attrs.post_op == ops::PostOp::kBiasAdd;
    EXPECT_EQ(fused, conv3x3 ? 2u : 1u) << g.dump();
    EXPECT_EQ(g.count(ops::OpKind::kAdd), adds - fused);
    EXPECT_EQ(residual_epilogues(g), 0u);
    EXPECT_LE(max_abs_diff(Executor(g).run({x, t, t2, t3})[0], want), 1e-5);  // the eager op with its add
    EXPECT_FALSE(fuse_bias_add(g, options));
    run_passes(g, options);
    const Executor ex(g);
    const double bound = prepared_compute(options) == DType::BF16 ? 3e-2 : 1e-4;
    EXPECT_LE(relative_l2(ex.run({x, t, t2, t3})[0], want), bound);
    EXPECT_LE(relative_l2(ex.run({x, t, t2, t3})[0], want), bound);  // a replay gives the same
  }
}

// A ResnetBlock2D called with one time embedding for the batch (the UNet's) through every default
// pass in bf16: conv1 takes the embedding into its bias where it is oneDNN's.
TEST(FuseBiasAdd, ResnetBlockTimeEmbedding) {
  nn::ParameterSet params;
  const nn::ResnetBlock2D resnet(nn::Scope(params, "r"), 8, 16, 12, 4, 1e-5f, 1.0f);
  params.init_random(7);
  const auto fn = [&](const std::vector<Tensor>& in) { return std::vector<Tensor>{resnet(in[0], in[1])}; };
  const Tensor x = random_tensor({2, 8, 6, 5}, 1), temb = random_tensor({1, 12}, 2);
  const Tensor want = fn({x, temb})[0];
  CompileOptions bf16;
  bf16.compute = DType::BF16;
  Graph g = trace(fn, {{{2, 8, 6, 5}, DType::F32}, {{1, 12}, DType::F32}});
  run_passes(g, bf16);
  const bool fused =
      ops::conv2d_takes_bias_add({2, 8, 6, 5}, random_tensor({16, 8, 3, 3}, 3), ops::Conv2dParams::same(1),
                                 prepared_compute(bf16), ops::Layout::kNCHW, ops::Layout::kNCHW);
  EXPECT_EQ(g.count(ops::OpKind::kAdd), fused ? 0u : 1u) << g.dump();
  EXPECT_LE(relative_l2(Executor(g).run({x, temb})[0], want), 3e-2);
}

size_t post_ops(const Graph& g, ops::PostOp p) {
  size_t n = 0;
  for (const Node& node : g.nodes) n += node.kind == ops::OpKind::kLinear && node.attrs.post_op == p;
  return n;
}

// gelu(linear) and geglu(linear) (with and without bias, at two row counts) become post-ops; a
// linear read twice, a weight that is an input, and a gelu of a residual sum stay. Unprepared
// (the eager op replays the post-op), prepared f32, and prepared in the compute the CPU has.
TEST(FuseLinearGelu, GeluAndGegluBecomePostOps) {
  const Tensor w1 = random_tensor({24, 16}, 1), b1 = random_tensor({24}, 2);
  const Tensor w2 = random_tensor({40, 24}, 3), b2 = random_tensor({40}, 4), w3 = random_tensor({14, 20}, 5);
  const auto fn = [&](const std::vector<Tensor>& in) {
    const Tensor h = ops::gelu(ops::linear(in[0], w1, b1));       // fuses: [.., 24]
    const Tensor gg = ops::geglu(ops::linear(h, w2, b2));         // splits: [.., 20]
    const Tensor g2 = ops::geglu(ops::linear(gg, w3, Tensor()));  // splits, no bias: [.., 7]
    const Tensor twice = ops::linear(in[0], w1, Tensor());        // read twice: stays
    const Tensor t = ops::add(ops::gelu(twice), twice);
    const Tensor u = ops::gelu(ops::linear(in[0], in[1], Tensor()));  // weight an input: stays
    return std::vector<Tensor>{g2, ops::add(t, u)};
  };
  for (const int64_t rows : {3, 50}) {
    const Shape xs = {2, rows, 16};
    const Graph traced = trace(fn, {{xs, DType::F32}, {{24, 16}, DType::F32}});
    const Tensor x = random_tensor(xs, 6, -2.0f, 2.0f), w = random_tensor({24, 16}, 7);
    const auto want = fn({x, w});
    for (const DType compute : {DType::F32, DType::BF16}) {
      Graph g = traced;
      EXPECT_TRUE(fuse_linear_gelu(g));
      g.validate();
      EXPECT_EQ(g.count(ops::OpKind::kGeglu), 0u);
      EXPECT_EQ(g.count(ops::OpKind::kGelu), 2u);  // of `twice` and `u`
      EXPECT_EQ(post_ops(g, ops::PostOp::kGelu), 3u);
      EXPECT_EQ(post_ops(g, ops::PostOp::kMultiply), 2u);
      EXPECT_FALSE(fuse_linear_gelu(g));
      const auto unprepared = Executor(g).run({x, w});
      for (size_t o = 0; o < want.size(); ++o) EXPECT_LE(relative_l2(unprepared[o], want[o]), 1e-6);
      CompileOptions options;
      options.compute = compute;
      EXPECT_TRUE(prepack_weights(g, options));
      size_t described = 0;
      for (const Node& n : g.nodes)
        if (n.prepared) {
          const std::string d = n.prepared->describe();
          described += d.find(n.attrs.post_op == ops::PostOp::kGelu ? "+gelu" : "*input") != std::string::npos;
        }
      EXPECT_EQ(described, 5u);
      const Executor ex(g);
      const bool bf16 = compute == DType::BF16 && ops::bf16_supported();
      for (int replay = 0; replay < 2; ++replay) {
        const auto got = ex.run({x, w});
        for (size_t o = 0; o < want.size(); ++o) {
          // bf16: inputs and weights rounded to 8 bits (2^-9 relative) through up to three linears.
          const double err = relative_l2(got[o], want[o]);
          EXPECT_LE(err, bf16 ? 3e-2 : 1e-5) << "rows " << rows << " output " << o;
          if (bf16) {
            EXPECT_GE(err, 1e-4) << "bf16 asked but not run";
          }
        }
      }
    }
  }
}

size_t linears(const Graph& g) { return g.count(ops::OpKind::kLinear); }

// A transformer block in bf16: attn1's q, k, v (one hidden state) and attn2's k, v (the context)
// become two stacked linears whose outputs the attentions read as slices; attn2's q (the only
// linear on its input) and everything else stays. The graph computes the same, and replays the
// same. In f32 the pass leaves the graph alone.
TEST(FuseSiblingLinears, QkvAndContextKvBecomeOneLinearEach) {
  nn::ParameterSet params;
  const nn::Transformer2DModel block = small_transformer(params);
  params.init_random(9);
  const auto fn = [&](const std::vector<Tensor>& in) { return std::vector<Tensor>{block(in[0], in[1])}; };
  const std::vector<InputSpec> sig = {{{2, 16, 5, 6}, DType::F32}, {{2, 7, 12}, DType::F32}};
  const Tensor x = random_tensor({2, 16, 5, 6}, 1), ctx = random_tensor({2, 7, 12}, 2);
  const Tensor want = fn({x, ctx})[0];
  for (const DType compute : {DType::F32, DType::BF16}) {
    SCOPED_TRACE(compute == DType::F32 ? "f32" : "bf16");
    CompileOptions options;
    options.compute = compute;
    std::vector<Pass> without;
    for (const Pass& p : default_passes())
      if (std::string(p.name) != "fuse_sibling_linears") without.push_back(p);
    Graph plain = trace(fn, sig), fused = trace(fn, sig);
    run_passes(plain, options, without);
    run_passes(fused, options);
    if (compute == DType::F32 || !ops::bf16_supported()) {
      EXPECT_EQ(linears(plain), linears(fused));
      continue;
    }
    EXPECT_EQ(linears(plain) - linears(fused), 3u);  // 3 + 2 linears -> 2
    EXPECT_EQ(fused.count(ops::OpKind::kSlice) - plain.count(ops::OpKind::kSlice), 5u);
    size_t stacked = 0;
    for (const Node& n : fused.nodes) {
      if (n.kind != ops::OpKind::kLinear) continue;
      const int64_t width = fused.values[n.output].shape.back();
      stacked += width == 3 * 16 || width == 2 * 16;
    }
    EXPECT_EQ(stacked, 2u) << fused.dump();
    const Executor ex_plain(plain), ex_fused(fused);
    const Tensor a = ex_plain.run({x, ctx})[0];
    // The same products over the same weights; only oneDNN's blocking over N may differ.
    EXPECT_LE(max_abs_diff(ex_fused.run({x, ctx})[0], a), 1e-2);
    EXPECT_LE(max_abs_diff(ex_fused.run({x, ctx})[0], want), 5e-2);
    // The stacked f32 weights are gone once packed in bf16.
    for (const Node& n : fused.nodes) {
      if (n.kind == ops::OpKind::kLinear && n.prepared && n.prepared->packed_weight_bytes() > 0) {
        EXPECT_FALSE(fused.values[n.inputs[1]].constant.defined());
      }
    }
  }
}

// Two transformer blocks on one context: each cross-attention's k and v stack on their own (one
// product per attention, never all the context's projections in one: those run slower as one
// very wide product), so 4 stacked linears of widths 3C and 2C, none wider.
TEST(FuseSiblingLinears, ContextProjectionsStackPerAttention) {
  if (!ops::bf16_supported()) GTEST_SKIP() << "the pass runs with bf16 only";
  nn::ParameterSet p1, p2;
  const nn::Transformer2DModel first = small_transformer(p1), second = small_transformer(p2);
  p1.init_random(3);
  p2.init_random(4);
  const auto fn = [&](const std::vector<Tensor>& in) {
    return std::vector<Tensor>{second(first(in[0], in[1]), in[1])};
  };
  const std::vector<InputSpec> sig = {{{2, 16, 5, 6}, DType::F32}, {{2, 7, 12}, DType::F32}};
  CompileOptions options;
  options.compute = DType::BF16;
  Graph g = trace(fn, sig);
  run_passes(g, options);
  size_t three = 0, two = 0, wider = 0;
  const auto readers = g.readers();
  for (const Node& n : g.nodes) {
    // a stacked linear: its outputs are read as slices
    if (n.kind != ops::OpKind::kLinear || readers[n.output].empty() ||
        g.nodes[readers[n.output][0]].kind != ops::OpKind::kSlice)
      continue;
    const int64_t width = g.values[n.output].shape.back();
    three += width == 3 * 16;
    two += width == 2 * 16;
    wider += width > 3 * 16;
  }
  EXPECT_EQ(three, 2u) << g.dump();
  EXPECT_EQ(two, 2u) << g.dump();
  EXPECT_EQ(wider, 0u) << g.dump();
  const Tensor x = random_tensor({2, 16, 5, 6}, 1), ctx = random_tensor({2, 7, 12}, 2);
  EXPECT_LE(max_abs_diff(Executor(g).run({x, ctx})[0], fn({x, ctx})[0]), 5e-2);
}

// Siblings stay apart when one output has another reader, when one has a residual fused, or when
// their weights differ in K (here: different inputs, so never siblings), and a lone linear stays.
TEST(FuseSiblingLinears, LeavesLinearsWithOtherReadersAlone) {
  const Tensor wq = random_tensor({8, 6}, 1), wk = random_tensor({8, 6}, 2), wv = random_tensor({8, 6}, 3);
  const auto fn = [&](const std::vector<Tensor>& in) {
    const Tensor q = ops::linear(in[0], wq, Tensor()), k = ops::linear(in[0], wk, Tensor());
    const Tensor v = ops::linear(in[0], wv, Tensor());
    const Tensor o = ops::attention(q, k, v, 2, 0.5f);
    return std::vector<Tensor>{ops::add(o, v)};  // v also read by the add
  };
  if (!ops::bf16_supported()) GTEST_SKIP() << "no bf16 on this CPU: the pass does not run";
  CompileOptions bf16;
  bf16.compute = DType::BF16;
  Graph g = trace(fn, {{{2, 5, 6}, DType::F32}});
  const Tensor x = random_tensor({2, 5, 6}, 4);
  const Tensor want = fn({x})[0];
  EXPECT_FALSE(fuse_sibling_linears(g));       // f32: never
  EXPECT_TRUE(fuse_sibling_linears(g, bf16));  // q and k still fuse
  g.validate();
  EXPECT_EQ(linears(g), 2u);
  EXPECT_EQ(g.count(ops::OpKind::kSlice), 2u);
  EXPECT_LE(max_abs_diff(Executor(g).run({x})[0], want), 1e-5);

  const auto lone = [&](const std::vector<Tensor>& in) {
    return std::vector<Tensor>{ops::attention(ops::linear(in[0], wq, Tensor()), in[1], in[1], 2, 0.5f)};
  };
  Graph g2 = trace(lone, {{{2, 5, 6}, DType::F32}, {{2, 4, 8}, DType::F32}});
  EXPECT_FALSE(fuse_sibling_linears(g2, bf16));
}

TEST(FuseLinearGelu, PreparedLinearRefusesAResidualWithAPostOp) {
  ops::Epilogue e;
  e.residual = true;
  e.post_op = ops::PostOp::kGelu;
  EXPECT_THROW(ops::prepare_linear({2, 8}, random_tensor({4, 8}, 1), Tensor(), DType::F32, e), Error);
  e.residual = false;
  EXPECT_THROW(ops::prepare_conv2d({1, 8, 4, 4}, random_tensor({4, 8, 1, 1}, 1), Tensor(), ops::Conv2dParams::same(0),
                                   DType::F32, ops::Layout::kNCHW, ops::Layout::kNCHW, e),
               Error);
}

}  // namespace
}  // namespace taiyi::graph
