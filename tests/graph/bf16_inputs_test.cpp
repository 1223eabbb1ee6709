// bf16_inputs: in a Transformer2DModel (the diffusers module, random weights) compiled for bf16,
// the LayerNorm outputs (read by q, k, v and by the feed-forward's two halves), the feed-forward's
// gated value (read by its output linear), the attention outputs (read by to_out, where the
// attention kernel writes bf16) and the feed-forward's output (read by proj_out, a 1x1
// convolution, through views, where it is oneDNN's) and q, k, v (where the attention kernel reads
// bf16) become bf16 values; in ResNet blocks over
// channels-last activations, the GroupNorm(+SiLU) outputs read by oneDNN convolutions do (where the
// convolution is oneDNN's: on AMX). Either way the graph computes what it computes without the
// pass: the readers round the same values the same way (exactly, but for a GroupNorm+SiLU that
// writes bf16: its SiLU is coarser, within a bound). The exceptions, tested apart: a ResNet's
// first convolution writes bf16 for the GroupNorm after it (TAIYI_BF16_CONV_OUT), which adds a
// rounding; the prepared convolution's bf16 output and the GroupNorm's bf16 input have their own
// tests here.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "small_blocks.h"
#include "taiyi/graph/executor.h"
#include "taiyi/graph/passes/passes.h"
#include "taiyi/graph/tracer.h"
#include "taiyi/models/bert_model.h"
#include "taiyi/nn/resnet.h"
#include "taiyi/nn/transformer_2d.h"
#include "taiyi/ops/ops.h"
#include "taiyi/ops/prepared.h"
#include "test_util.h"

namespace taiyi::graph {
namespace {

using testing::max_abs_diff;
using testing::random_tensor;

size_t bf16_values(const Graph& g) {
  size_t n = 0;
  for (const Value& v : g.values) n += v.kind == ValueKind::kNode && v.dtype == DType::BF16;
  return n;
}

TEST(Bf16Inputs, LayerNormAndGatedValuesBecomeBf16AndComputeTheSame) {
  if (!ops::bf16_supported()) GTEST_SKIP() << "this CPU runs no bf16 (the pass leaves f32 fallbacks alone)";
  unsetenv("TAIYI_BF16_EMULATE");
  nn::ParameterSet params;
  const nn::Transformer2DModel block = small_transformer(params);
  params.init_random(3);
  const auto fn = [&](const std::vector<Tensor>& in) { return std::vector<Tensor>{block(in[0], in[1])}; };
  const Tensor x = random_tensor({2, 16, 5, 7}, 1), ctx = random_tensor({2, 6, 12}, 2);
  CompileOptions bf16;
  bf16.compute = DType::BF16;
  // (bf16_gate and bf16_geglu, which round the feed-forward's gate or projection, have their own
  // tests: bf16_gate_test.cpp, bf16_geglu_test.cpp; so does the residual stream in bf16, which
  // adds roundings: below)
  ::setenv("TAIYI_BF16_STREAM", "0", 1);
  std::vector<Pass> without, with;
  for (const Pass& p : default_passes()) {
    if (std::string(p.name) == "bf16_gate" || std::string(p.name) == "bf16_geglu") continue;
    with.push_back(p);
    if (std::string(p.name) != "bf16_inputs") without.push_back(p);
  }
  Graph plain = trace(fn, {{{2, 16, 5, 7}, DType::F32}, {{2, 6, 12}, DType::F32}});
  run_passes(plain, bf16, without);
  Graph g = trace(fn, {{{2, 16, 5, 7}, DType::F32}, {{2, 6, 12}, DType::F32}});
  run_passes(g, bf16, with);
  EXPECT_EQ(bf16_values(plain), 0u);
  // norm1 (q, k, v), norm2 (q of the cross-attention), norm3 (the GEGLU's two halves), the gated
  // value (the feed-forward's output linear), and where the CPU's bf16 attention kernel writes
  // bf16 (AMX, AVX512-BF16) both attentions' outputs (their to_out linears).
  // And where proj_out (a 1x1 convolution from the channels-last view of the feed-forward's output
  // to the NCHW graph output) is oneDNN's, the feed-forward's output with its residual, and the
  // reshape and permute that view it: the linear adds the residual in f32 and rounds once.
  const bool attention_bf16 = ops::attention_bf16_writes_bf16(1.0f / std::sqrt(8.0f));
  const bool proj_out_bf16 =
      ops::conv2d_takes_bf16_input({2, 16, 5, 7}, random_tensor({16, 16, 1, 1}, 4), ops::Conv2dParams{}, DType::BF16,
                                   ops::Layout::kNHWC, ops::Layout::kNCHW, {.residual = true});
  // And where the attention kernel reads bf16 (AMX), q, k and v: the stacked q, k, v projection and
  // its three slices, the cross-attention's q, the context's stacked k, v and its two slices.
  const bool attention_reads = ops::attention_bf16_reads_bf16(1.0f / std::sqrt(8.0f), 8, 1);
  // Where the GEGLU stays whole (AMX; with bf16_geglu, tested on its own, left out here) there is
  // no gated value: the GEGLU's output stays f32.
  const size_t geglu_whole = g.count(ops::OpKind::kGeglu);
  EXPECT_EQ(bf16_values(g),
            (attention_bf16 ? 6u : 4u) - geglu_whole + (proj_out_bf16 ? 3u : 0u) + (attention_reads ? 8u : 0u))
      << g.dump();
  if (proj_out_bf16) {
    const Node& proj_out = g.nodes.back();
    EXPECT_EQ(proj_out.kind, ops::OpKind::kConv2d);
    EXPECT_EQ(g.values[proj_out.inputs[0]].dtype, DType::BF16) << g.dump();
  }
  const Tensor want = Executor(plain).run({x, ctx})[0];
  const Executor ex(g);
  EXPECT_EQ(max_abs_diff(ex.run({x, ctx})[0], want), 0.0);
  EXPECT_EQ(max_abs_diff(ex.run({x, ctx})[0], want), 0.0);  // a replay gives the same
  // f32 compute: nothing to do.
  Graph f32 = trace(fn, {{{2, 16, 5, 7}, DType::F32}, {{2, 6, 12}, DType::F32}});
  EXPECT_FALSE(bf16_inputs(f32, CompileOptions{}));
  ::unsetenv("TAIYI_BF16_STREAM");
}

CompileOptions bf16_compute() {
  CompileOptions bf16;
  bf16.compute = DType::BF16;
  return bf16;
}

// fn compiled for bf16 with every default pass, the residual stream in bf16 (the default) or
// not (TAIYI_BF16_STREAM=0).
Graph compiled_for_bf16(const std::function<std::vector<Tensor>(const std::vector<Tensor>&)>& fn,
                        const std::vector<InputSpec>& sig, bool bf16_stream) {
  if (!bf16_stream) ::setenv("TAIYI_BF16_STREAM", "0", 1);
  Graph g = trace(fn, sig);
  run_passes(g, bf16_compute());
  ::unsetenv("TAIYI_BF16_STREAM");
  return g;
}

// The transformer's residual stream in bf16 (the default): proj_in's output and the two to_out
// linears' outputs (residual sums) become bf16, read by the LayerNorms and as the next linear's
// residual; each sum is rounded once, so the block computes within bf16's error of the f32 stream
// (TAIYI_BF16_STREAM=0), and replays the same.
TEST(Bf16Inputs, TransformerResidualStreamBecomesBf16) {
  if (!ops::bf16_supported()) GTEST_SKIP() << "this CPU runs no bf16";
  unsetenv("TAIYI_BF16_EMULATE");
  nn::ParameterSet params;
  const nn::Transformer2DModel block = small_transformer(params);
  params.init_random(3);
  const auto fn = [&](const std::vector<Tensor>& in) { return std::vector<Tensor>{block(in[0], in[1])}; };
  const std::vector<InputSpec> sig = {{{2, 16, 5, 7}, DType::F32}, {{2, 6, 12}, DType::F32}};
  const Tensor x = random_tensor({2, 16, 5, 7}, 1), ctx = random_tensor({2, 6, 12}, 2);
  const Graph f32_stream = compiled_for_bf16(fn, sig, false), g = compiled_for_bf16(fn, sig, true);
  size_t stream_sums = 0, layer_norms_of_bf16 = 0;
  for (const Node& n : g.nodes) {
    if (n.kind == ops::OpKind::kLinear && ops::has_fused_residual(n.attrs, n.inputs) &&
        g.values[n.inputs[3]].dtype == DType::BF16)
      ++stream_sums;
    layer_norms_of_bf16 += n.kind == ops::OpKind::kLayerNorm && g.values[n.inputs[0]].dtype == DType::BF16;
  }
  // to_out of both attentions and the feed-forward's output linear read a bf16 residual; the
  // three LayerNorms read bf16.
  EXPECT_EQ(stream_sums, 3u) << g.dump();
  EXPECT_EQ(layer_norms_of_bf16, 3u);
  // A bf16 residual is summed into a bf16 output in place (oneDNN's sum post-op) where nothing
  // reads it later (here all three); a residual of the other dtype never is (a binary post-op).
  const Executor probe(g);
  size_t in_place = 0;
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    const Node& n = g.nodes[i];
    if (n.kind != ops::OpKind::kLinear || !ops::has_fused_residual(n.attrs, n.inputs)) continue;
    const bool shared = probe.memory_plan().alias_of[n.output] == probe.memory_plan().alias_of[n.inputs[3]];
    if (g.values[n.output].dtype != g.values[n.inputs[3]].dtype) {
      EXPECT_FALSE(shared) << i;
    }
    in_place += shared && g.values[n.output].dtype == DType::BF16;
  }
  EXPECT_EQ(in_place, 3u) << g.dump();
  const Tensor want = Executor(f32_stream).run({x, ctx})[0];
  const Executor ex(g);
  const Tensor got = ex.run({x, ctx})[0];
  EXPECT_GT(max_abs_diff(got, want), 0.0);
  EXPECT_LT(testing::relative_l2(got, want), 1e-2);
  EXPECT_EQ(max_abs_diff(ex.run({x, ctx})[0], got), 0.0);
  // A bf16 LayerNorm input needs a bf16 output planned for it (graph mode).
  EXPECT_THROW(ops::layer_norm(ops::cast(random_tensor({4, 8}, 6), DType::BF16), Tensor(), Tensor(), 1e-5f), Error);
}

// A prepared linear adds a bf16 residual into an f32 output (a binary post-op; BERT's last sum of
// a bf16 stream) and into a bf16 output (summed into the output it was copied into, or shares
// memory with), computing what it computes from the same residual in f32; f32 compute refuses it.
TEST(Bf16Inputs, LinearAddsABf16Residual) {
  if (!ops::bf16_supported()) GTEST_SKIP() << "this CPU runs no bf16";
  unsetenv("TAIYI_BF16_EMULATE");
  const Tensor x = random_tensor({2, 5, 16}, 1), w = random_tensor({24, 16}, 2), b = random_tensor({24}, 3);
  const Tensor rb = ops::cast(random_tensor({2, 5, 24}, 4), DType::BF16), rf = ops::cast(rb, DType::F32);
  ops::Epilogue e;
  e.residual = true;
  const auto run = [&](const Tensor& r, DType dst) {
    e.residual_dtype = r.dtype();
    const auto op = ops::prepare_linear(x.shape(), w, b, DType::BF16, e, DType::F32, dst);
    std::vector<std::byte> scratch(op->scratch_bytes() + 64);
    const Tensor out = Tensor::empty({2, 5, 24}, dst);
    op->run({x, r}, out, scratch.data());
    return ops::cast(out, DType::F32);
  };
  for (const DType dst : {DType::F32, DType::BF16}) {
    const Tensor from_bf16 = run(rb, dst), from_f32 = run(rf, dst);
    EXPECT_LE(testing::relative_l2(from_bf16, from_f32), 1e-6) << dtype_name(dst);
    EXPECT_GT(testing::relative_l2(from_bf16, rf), 0.1);  // the product is in it
  }
  e.residual_dtype = DType::BF16;
  EXPECT_THROW(ops::prepare_linear(x.shape(), w, b, DType::F32, e), Error);
}

// BERT's residual stream (post-LN): each LayerNorm's output, read by the next q, k, v (or the
// intermediate dense) and as the residual of the dense after it, and each residual sum, read by
// the next LayerNorm, become bf16, but for the last sum and the last LayerNorm (the graph's
// output, f32): the last output dense reads its residual in bf16 and writes f32. Within bf16's
// error of the f32 stream (TAIYI_BF16_STREAM=0).
TEST(Bf16Inputs, BertResidualStreamBecomesBf16) {
  if (!ops::bf16_supported()) GTEST_SKIP() << "this CPU runs no bf16";
  unsetenv("TAIYI_BF16_EMULATE");
  models::BertConfig c;
  c.hidden_size = 32;
  c.num_attention_heads = 2;
  c.intermediate_size = 64;
  nn::ParameterSet params;
  const models::BertLayer l0(nn::Scope(params, "l0"), c), l1(nn::Scope(params, "l1"), c);
  params.init_random(9);
  const auto fn = [&](const std::vector<Tensor>& in) { return std::vector<Tensor>{l1(l0(in[0], {}), {})}; };
  const std::vector<InputSpec> sig = {{{2, 9, 32}, DType::F32}};
  const Tensor x = random_tensor({2, 9, 32}, 1);
  const Graph f32_stream = compiled_for_bf16(fn, sig, false), g = compiled_for_bf16(fn, sig, true);
  size_t norms_out = 0, norms_in = 0, bf16_residuals = 0, f32_out_of_bf16_residual = 0;
  for (const Node& n : g.nodes) {
    if (n.kind == ops::OpKind::kLayerNorm) {
      norms_out += g.values[n.output].dtype == DType::BF16;
      norms_in += g.values[n.inputs[0]].dtype == DType::BF16;
    }
    if (n.kind == ops::OpKind::kLinear && ops::has_fused_residual(n.attrs, n.inputs) &&
        g.values[n.inputs[3]].dtype == DType::BF16) {
      ++bf16_residuals;
      f32_out_of_bf16_residual += g.values[n.output].dtype == DType::F32;
    }
  }
  // LayerNorms: l0's two and l1's first write bf16; all but l0's first (the input x + attention,
  // whose residual is the graph's input) and l1's last read bf16. Residuals: l0's output dense
  // (l0's first LayerNorm), l1's attention dense (l0's output), l1's output dense (f32 out).
  EXPECT_EQ(norms_out, 3u) << g.dump();
  EXPECT_EQ(norms_in, 3u) << g.dump();
  EXPECT_EQ(bf16_residuals, 3u) << g.dump();
  EXPECT_EQ(f32_out_of_bf16_residual, 1u) << g.dump();
  const Tensor want = Executor(f32_stream).run({x})[0], got = Executor(g).run({x})[0];
  EXPECT_GT(max_abs_diff(got, want), 0.0);
  EXPECT_LT(testing::relative_l2(got, want), 1e-2);
}

// A graph compiled for bf16 with every default pass but bf16_inputs.
Graph without_bf16_inputs(const std::function<std::vector<Tensor>(const std::vector<Tensor>&)>& fn,
                          const std::vector<InputSpec>& sig, const CompileOptions& options) {
  std::vector<Pass> passes;
  for (const Pass& p : default_passes())
    if (std::string(p.name) != "bf16_inputs") passes.push_back(p);
  Graph g = trace(fn, sig);
  run_passes(g, options, passes);
  return g;
}

TEST(Bf16Inputs, GroupNormOutputsReadByOneDnnConvolutionsBecomeBf16) {
  if (!ops::bf16_supported()) GTEST_SKIP() << "this CPU runs no bf16";
  unsetenv("TAIYI_BF16_EMULATE");
  nn::ParameterSet params;
  const Tensor w_in = random_tensor({16, 4, 3, 3}, 1, -0.3f, 0.3f);
  const nn::ResnetBlock2D first(nn::Scope(params, "r0"), 16, 16, 12, 4, 1e-5f, 1.0f);
  const nn::ResnetBlock2D second(nn::Scope(params, "r1"), 16, 24, 12, 4, 1e-5f, 1.0f);
  params.init_random(5);
  const auto fn = [&](const std::vector<Tensor>& in) {
    const Tensor h = ops::conv2d(in[0], w_in, Tensor(), ops::Conv2dParams::same(1));
    return std::vector<Tensor>{second(first(h, in[1]), in[1])};
  };
  // One time embedding for the batch (the UNet's: one timestep), which fuse_bias_add puts into the
  // first convolution's bias.
  const std::vector<InputSpec> sig = {{{2, 4, 6, 7}, DType::F32}, {{1, 12}, DType::F32}};
  const Tensor x = random_tensor({2, 4, 6, 7}, 2), temb = random_tensor({1, 12}, 3);
  CompileOptions bf16;
  bf16.compute = DType::BF16;
  Graph plain = without_bf16_inputs(fn, sig, bf16);
  // (the first convolutions' outputs, read by norm2, stay f32 here: the next test)
  ::setenv("TAIYI_BF16_CONV_OUT", "0", 1);
  Graph g = trace(fn, sig);
  run_passes(g, bf16);
  // norm1 + silu and norm2 + silu of both blocks, channels-last, each read by a 3x3 convolution;
  // bf16 where that convolution is oneDNN's (not the Winograd kernel of CPUs without AMX).
  const bool onednn =
      ops::conv2d_takes_bf16_input({2, 16, 6, 7}, random_tensor({16, 16, 3, 3}, 4), ops::Conv2dParams::same(1),
                                   DType::BF16, ops::Layout::kNHWC, ops::Layout::kNHWC, {});
  EXPECT_EQ(bf16_values(g), onednn ? 4u : 0u) << g.dump();
  const Tensor want = Executor(plain).run({x, temb})[0];
  // The same rounding of the same values but for the SiLU: written in bf16 it is computed with an
  // exp2 fit and vrcp14ps (ops/cpu/norm_f32.cpp, about 1e-4 relative), which moves a few percent of
  // the roundings by one bf16 step: measured 1.1e-3 here, against 3.0e-3 for a graph that rounds
  // the GroupNorm's input too (below).
  EXPECT_LT(testing::relative_l2(Executor(g).run({x, temb})[0], want), 2e-3);

  // With the switch on (the default), each block's first convolution (its per-call bias the time
  // embedding) writes bf16 for norm2 where oneDNN runs it: one more rounding, so close, not equal.
  // (The spatial residual stream, which would make the blocks' input and the first one's output
  // bf16 too, is off here: VaeSpatialResidualStreamBecomesBf16.)
  ::unsetenv("TAIYI_BF16_CONV_OUT");
  ::setenv("TAIYI_BF16_STREAM", "0", 1);
  Graph g2 = trace(fn, sig);
  run_passes(g2, bf16);
  ::unsetenv("TAIYI_BF16_STREAM");
  size_t conv_bf16 = 0;
  for (const Node& n : g2.nodes)
    conv_bf16 += n.kind == ops::OpKind::kConv2d && g2.values[n.output].dtype == DType::BF16 && n.prepared &&
                 n.prepared->describe().find("bf16-out") != std::string::npos;
  EXPECT_EQ(conv_bf16, onednn ? 2u : 0u) << g2.dump();
  EXPECT_EQ(bf16_values(g2), onednn ? 6u : 0u) << g2.dump();
  const Tensor got = Executor(g2).run({x, temb})[0];
  if (onednn) {
    EXPECT_GT(max_abs_diff(got, want), 0.0);
    EXPECT_LT(testing::relative_l2(got, want), 8e-3);  // the GroupNorm's input rounded: ~2^-9 relative
  }
}

// Whether the 1x1 shortcut of a 24 -> 16 channel ResNet block over [2, 24, 6, 7] reads bf16 here
// (oneDNN's kernel, on AMX).
bool shortcut_reads_bf16() {
  return ops::conv2d_takes_bf16_input({2, 24, 6, 7}, random_tensor({16, 24, 1, 1}, 5), ops::Conv2dParams::same(0),
                                      DType::BF16, ops::Layout::kNHWC, ops::Layout::kNHWC, {});
}

// g computes within bf16's error of plain (the same function without bf16_inputs), and not the
// same where it rounds one value more.
void expect_one_more_rounding(const Graph& plain, const Graph& g, const std::vector<Tensor>& in, bool rounds) {
  const Tensor want = Executor(plain).run(in)[0], got = Executor(g).run(in)[0];
  EXPECT_LT(testing::relative_l2(got, want), 8e-3);
  if (rounds) {
    EXPECT_GT(max_abs_diff(got, want), 0.0);
  }
}

// An up block's skip concat (f32 inputs along the channels, channels-last) read by its ResNet's
// norm1 and 1x1 shortcut becomes bf16, rounded as the concat copies: the shortcut computes what it
// did (it rounded its input anyway), norm1 gets the rounding of its input.
TEST(Bf16Inputs, SkipConcatReadByNormAndShortcutBecomesBf16) {
  if (!ops::bf16_supported()) GTEST_SKIP() << "this CPU runs no bf16";
  unsetenv("TAIYI_BF16_EMULATE");
  nn::ParameterSet params;
  const Tensor w_h = random_tensor({16, 4, 3, 3}, 1, -0.3f, 0.3f), w_skip = random_tensor({8, 4, 3, 3}, 2, -0.3f, 0.3f);
  const nn::ResnetBlock2D block(nn::Scope(params, "up"), 24, 16, 12, 4, 1e-5f, 1.0f);  // 24 -> 16: a shortcut
  params.init_random(7);
  const auto fn = [&](const std::vector<Tensor>& in) {
    const Tensor h = ops::conv2d(in[0], w_h, Tensor(), ops::Conv2dParams::same(1));
    const Tensor skip = ops::conv2d(in[0], w_skip, Tensor(), ops::Conv2dParams::same(1));
    return std::vector<Tensor>{block(ops::concat({h, skip}, 1), in[1])};
  };
  const std::vector<InputSpec> sig = {{{2, 4, 6, 7}, DType::F32}, {{1, 12}, DType::F32}};
  const Tensor x = random_tensor({2, 4, 6, 7}, 3), temb = random_tensor({1, 12}, 4);
  const Graph plain = without_bf16_inputs(fn, sig, bf16_compute()), g = compiled_for_bf16(fn, sig, true);
  const bool onednn = shortcut_reads_bf16();
  size_t concat_bf16 = 0;
  for (const Node& n : g.nodes)
    concat_bf16 += n.kind == ops::OpKind::kConcat && g.values[n.output].dtype == DType::BF16 &&
                   value_layout(g.values[n.output]) == ops::Layout::kNHWC;
  EXPECT_EQ(concat_bf16, onednn ? 1u : 0u) << g.dump();
  expect_one_more_rounding(plain, g, {x, temb}, onednn);
}

// A down- or upsampler's convolution read by the next ResNet's norm1 and 1x1 shortcut writes bf16
// (as a concat would): the shortcut rounded its input anyway, norm1 gets one more rounding.
TEST(Bf16Inputs, SamplerConvolutionReadByNormAndShortcutWritesBf16) {
  if (!ops::bf16_supported()) GTEST_SKIP() << "this CPU runs no bf16";
  unsetenv("TAIYI_BF16_EMULATE");
  nn::ParameterSet params;
  const Tensor w = random_tensor({24, 4, 3, 3}, 1, -0.3f, 0.3f), b = random_tensor({24}, 2);
  const nn::ResnetBlock2D block(nn::Scope(params, "down"), 24, 16, 12, 4, 1e-5f, 1.0f);  // 24 -> 16: a shortcut
  params.init_random(8);
  const auto fn = [&](const std::vector<Tensor>& in) {
    const Tensor h = ops::conv2d(in[0], w, b, ops::Conv2dParams::same(1, 2));
    return std::vector<Tensor>{block(h, in[1])};
  };
  const std::vector<InputSpec> sig = {{{2, 4, 12, 14}, DType::F32}, {{1, 12}, DType::F32}};
  const Tensor x = random_tensor({2, 4, 12, 14}, 3), temb = random_tensor({1, 12}, 4);
  const Graph plain = without_bf16_inputs(fn, sig, bf16_compute()), g = compiled_for_bf16(fn, sig, true);
  const bool onednn = shortcut_reads_bf16();
  const auto readers = g.readers();
  size_t sampler_bf16 = 0;
  for (const Node& n : g.nodes) {
    if (n.kind != ops::OpKind::kConv2d || g.values[n.output].dtype != DType::BF16) continue;
    bool norm = false, conv = false;
    for (int r : readers[n.output]) {
      norm = norm || g.nodes[r].kind == ops::OpKind::kGroupNormSilu;
      conv = conv || g.nodes[r].kind == ops::OpKind::kConv2d;
    }
    sampler_bf16 += norm && conv && n.prepared && n.prepared->describe().find("bf16-out") != std::string::npos;
  }
  EXPECT_EQ(sampler_bf16, onednn ? 1u : 0u) << g.dump();
  expect_one_more_rounding(plain, g, {x, temb}, onednn);
}

// The prepared convolution's bf16 output is its f32 output rounded (to within one bf16 step where
// oneDNN's two kernels add in another order), with a per-call bias; where the kernel cannot write
// bf16 (a residual, a split by input channels), conv2d_writes_bf16 says no and preparing throws.
TEST(Bf16Inputs, PreparedConvolutionWritesBf16) {
  if (!ops::bf16_supported()) GTEST_SKIP() << "this CPU runs no bf16";
  const Shape xs = {2, 16, 6, 7};
  const Tensor w = random_tensor({24, 16, 3, 3}, 1, -0.3f, 0.3f), b = random_tensor({24}, 2);
  const auto p = ops::Conv2dParams::same(1);
  const auto nhwc = ops::Layout::kNHWC;
  const Tensor x = ops::permute(random_tensor({2, 6, 7, 16}, 3), {0, 3, 1, 2});  // channels-last [2, 16, 6, 7]
  ops::Epilogue bias_add;
  bias_add.post_op = ops::PostOp::kBiasAdd;
  const Tensor t = random_tensor({24}, 4);
  if (!ops::conv2d_writes_bf16(xs, w, p, DType::BF16, nhwc, nhwc, bias_add, DType::F32))
    GTEST_SKIP() << "the prepared convolution is not oneDNN's here";
  const auto f32 = ops::prepare_conv2d(xs, w, b, p, DType::BF16, nhwc, nhwc, bias_add);
  const auto bf16 = ops::prepare_conv2d(xs, w, b, p, DType::BF16, nhwc, nhwc, bias_add, DType::F32, DType::BF16);
  EXPECT_NE(bf16->describe().find("bf16-out"), std::string::npos);
  const Shape ys = {2, 24, 6, 7};
  // Channels-last outputs: NHWC memory seen as [2, 24, 6, 7].
  const Tensor y = ops::permute(Tensor::empty({2, 6, 7, 24}), {0, 3, 1, 2});
  const Tensor yb = ops::permute(Tensor::empty({2, 6, 7, 24}, DType::BF16), {0, 3, 1, 2});
  ASSERT_EQ(y.strides(), ops::layout_strides(ys, nhwc));
  std::vector<std::byte> scratch(std::max(f32->scratch_bytes(), bf16->scratch_bytes()) + 64);
  std::byte* aligned = reinterpret_cast<std::byte*>((reinterpret_cast<uintptr_t>(scratch.data()) + 63) / 64 * 64);
  f32->run({x, t}, y, aligned);
  bf16->run({x, t}, yb, aligned);
  const Tensor yc = y.contiguous(), ybc = ops::cast(yb, DType::F32).contiguous();
  int64_t off = 0;
  for (int64_t i = 0; i < yc.numel(); ++i) {
    const float want = bf16_to_f32(f32_to_bf16(yc.data<float>()[i])), got = ybc.data<float>()[i];
    off += std::fabs(got - want) > std::ldexp(std::fabs(want), -7);
  }
  EXPECT_EQ(off, 0);
  EXPECT_THROW(bf16->run({x, t}, y, aligned), Error);  // an f32 output where bf16 was prepared
  // An f32 residual: no bf16 output (oneDNN would add it by a binary post-op, off its fast kernels).
  ops::Epilogue residual;
  residual.residual = true;
  EXPECT_FALSE(ops::conv2d_writes_bf16(xs, w, p, DType::BF16, nhwc, nhwc, residual, DType::F32));
  EXPECT_THROW(ops::prepare_conv2d(xs, w, b, p, DType::BF16, nhwc, nhwc, residual, DType::F32, DType::BF16), Error);
  // A bf16 residual into a bf16 output (the VAE's spatial residual stream): summed in f32, then
  // rounded once; into an f32 output it is refused.
  ops::Epilogue bf16_residual = residual;
  bf16_residual.residual_dtype = DType::BF16;
  ASSERT_TRUE(ops::conv2d_writes_bf16(xs, w, p, DType::BF16, nhwc, nhwc, bf16_residual, DType::F32));
  EXPECT_THROW(ops::prepare_conv2d(xs, w, b, p, DType::BF16, nhwc, nhwc, bf16_residual), Error);
  const auto plain = ops::prepare_conv2d(xs, w, b, p, DType::BF16, nhwc, nhwc);
  const auto summed = ops::prepare_conv2d(xs, w, b, p, DType::BF16, nhwc, nhwc, bf16_residual, DType::F32, DType::BF16);
  EXPECT_NE(summed->describe().find("+bf16 residual"), std::string::npos) << summed->describe();
  const Tensor r = ops::permute(ops::cast(random_tensor({2, 6, 7, 24}, 6, -2.0f, 2.0f), DType::BF16), {0, 3, 1, 2});
  std::vector<std::byte> scratch2(std::max(plain->scratch_bytes(), summed->scratch_bytes()) + 64);
  std::byte* aligned2 = reinterpret_cast<std::byte*>((reinterpret_cast<uintptr_t>(scratch2.data()) + 63) / 64 * 64);
  plain->run({x}, y, aligned2);
  const Tensor ys_bf16 = ops::permute(Tensor::empty({2, 6, 7, 24}, DType::BF16), {0, 3, 1, 2});
  summed->run({x, r}, ys_bf16, aligned2);
  const Tensor conv = y.contiguous(), res = ops::cast(r, DType::F32).contiguous();
  const Tensor sum = ops::cast(ys_bf16, DType::F32).contiguous();
  int64_t far = 0;
  for (int64_t i = 0; i < conv.numel(); ++i) {
    const float want = conv.data<float>()[i] + res.data<float>()[i], got = sum.data<float>()[i];
    far += std::fabs(got - want) > std::ldexp(std::fabs(want), -7) + 1e-6f;
  }
  EXPECT_EQ(far, 0);
  // In place (the memory plan's choice where nothing reads the residual later): the same sums.
  const Tensor shared = ops::permute(Tensor::empty({2, 6, 7, 24}, DType::BF16), {0, 3, 1, 2});
  Tensor(shared).copy_from(r);
  summed->run({x, shared}, shared, aligned2);
  EXPECT_EQ(max_abs_diff(ops::cast(shared, DType::F32), sum), 0.0);
  EXPECT_THROW(summed->run({x, r}, y, aligned2), Error);  // an f32 output where bf16 was prepared
  // 1280 input channels are split into slices of 640 on oneDNN's path (they sum into the output).
  const Shape big = {1, 1280, 4, 4};
  EXPECT_FALSE(
      ops::conv2d_writes_bf16(big, random_tensor({8, 1280, 3, 3}, 5), p, DType::BF16, nhwc, nhwc, {}, DType::BF16));
}

// The VAE's spatial residual stream (the default): in an up block of the decoder's shape (ResNets
// without time embedding, the first with a 1x1 shortcut, an upsampler, and the next level's
// ResNet), each ResNet's output, the shortcut's output and the upsampler's input become bf16:
// written by convolutions that sum a bf16 residual and round once, read by GroupNorms, a 1x1
// shortcut, the upsample and as the next residual. The decoder's f32 output and the first
// ResNet's input (a graph input, f32) stay f32, and so does the first ResNet's output, whose
// residual is that f32 input. Within bf16's error of the f32 stream (TAIYI_BF16_STREAM=0), the same on replay.
TEST(Bf16Inputs, VaeSpatialResidualStreamBecomesBf16) {
  if (!ops::bf16_supported()) GTEST_SKIP() << "this CPU runs no bf16";
  unsetenv("TAIYI_BF16_EMULATE");
  nn::ParameterSet params;
  const nn::ResnetBlock2D r0(nn::Scope(params, "r0"), 16, 16, 0, 4, 1e-6f);
  const nn::ResnetBlock2D r1(nn::Scope(params, "r1"), 16, 24, 0, 4, 1e-6f);  // a 1x1 shortcut
  const nn::ResnetBlock2D r2(nn::Scope(params, "r2"), 24, 24, 0, 4, 1e-6f);
  const nn::Upsample2D up(nn::Scope(params, "up"), 24);
  const nn::ResnetBlock2D r3(nn::Scope(params, "r3"), 24, 24, 0, 4, 1e-6f);
  const Tensor w_out = random_tensor({3, 24, 3, 3}, 1, -0.3f, 0.3f);
  params.init_random(11);
  const auto fn = [&](const std::vector<Tensor>& in) {
    const Tensor h = r3(up(r2(r1(r0(in[0], Tensor()), Tensor()), Tensor())), Tensor());
    return std::vector<Tensor>{ops::conv2d(ops::group_norm_silu(h, 4, Tensor(), Tensor(), 1e-6f), w_out, Tensor(),
                                           ops::Conv2dParams::same(1))};
  };
  const std::vector<InputSpec> sig = {{{1, 16, 6, 7}, DType::F32}};
  const Tensor x = random_tensor({1, 16, 6, 7}, 2);
  const Graph f32_stream = compiled_for_bf16(fn, sig, false), g = compiled_for_bf16(fn, sig, true);
  const Shape shortcut_x = {1, 16, 6, 7};
  ops::Epilogue bf16_residual;
  bf16_residual.residual = true;
  bf16_residual.residual_dtype = DType::BF16;
  const bool onednn =
      ops::conv2d_writes_bf16({1, 24, 12, 14}, random_tensor({24, 24, 3, 3}, 3), ops::Conv2dParams::same(1),
                              DType::BF16, ops::Layout::kNHWC, ops::Layout::kNHWC, bf16_residual, DType::BF16);
  size_t bf16_sums = 0, f32_sums = 0, bf16_upsample_in = 0;
  for (const Node& n : g.nodes) {
    if (n.kind == ops::OpKind::kConv2d && ops::has_fused_residual(n.attrs, n.inputs)) {
      const bool in_bf16 = g.values[n.inputs[3]].dtype == DType::BF16,
                 out_bf16 = g.values[n.output].dtype == DType::BF16;
      EXPECT_EQ(in_bf16, out_bf16) << g.dump();  // never mixed
      bf16_sums += out_bf16;
      f32_sums += !out_bf16;
    }
    // (the upsample, or the upsampler's convolution that took it in: fuse_upsample_conv)
    bf16_upsample_in +=
        (n.kind == ops::OpKind::kUpsampleNearest || (n.kind == ops::OpKind::kConv2d && n.attrs.conv.upsample == 2)) &&
        g.values[n.inputs[0]].dtype == DType::BF16;
  }
  // r1, r2 and r3 sum a bf16 residual (r1's: its shortcut's bf16 output); r0 its f32 input.
  EXPECT_EQ(bf16_sums, onednn ? 3u : 0u) << g.dump();
  EXPECT_EQ(f32_sums, onednn ? 1u : 4u) << g.dump();
  EXPECT_EQ(bf16_upsample_in, onednn ? 1u : 0u) << g.dump();
  const Tensor want = Executor(f32_stream).run({x})[0];
  const Executor ex(g);
  const Tensor got = ex.run({x})[0];
  if (onednn) {
    EXPECT_GT(max_abs_diff(got, want), 0.0);
  }
  EXPECT_LT(testing::relative_l2(got, want), 1e-2);
  EXPECT_EQ(max_abs_diff(ex.run({x})[0], got), 0.0);
  // A bf16 upsample input needs a channels-last bf16 output planned for it (graph mode).
  const Tensor nhwc = ops::permute(ops::cast(random_tensor({1, 6, 7, 8}, 4), DType::BF16), {0, 3, 1, 2});
  EXPECT_THROW(ops::upsample_nearest(nhwc, 12, 14), Error);
}

// GroupNorm(+SiLU) over channels-last bf16 input computes what it computes from the same values in
// f32 (the widening is exact), into f32 and into bf16.
TEST(Bf16Inputs, GroupNormReadsBf16) {
  // Channels-last [2, 48, 5, 7]: NHWC memory seen through a permute, in bf16 and the same in f32.
  const Tensor nhwc = ops::cast(random_tensor({2, 5, 7, 48}, 1, -3.0f, 3.0f), DType::BF16);
  const Tensor xb = ops::permute(nhwc, {0, 3, 1, 2}), xf = ops::permute(ops::cast(nhwc, DType::F32), {0, 3, 1, 2});
  ASSERT_EQ(xb.strides(), xf.strides());
  const Tensor gamma = random_tensor({48}, 2), beta = random_tensor({48}, 3);
  for (const bool silu : {false, true}) {
    const Tensor want =
        silu ? ops::group_norm_silu(xf, 4, gamma, beta, 1e-5f) : ops::group_norm(xf, 4, gamma, beta, 1e-5f);
    const Tensor got =
        silu ? ops::group_norm_silu(xb, 4, gamma, beta, 1e-5f) : ops::group_norm(xb, 4, gamma, beta, 1e-5f);
    EXPECT_EQ(got.dtype(), DType::F32);
    EXPECT_EQ(max_abs_diff(got, want), 0.0) << "silu " << silu;
  }
  // NCHW bf16 is refused (only graph mode's channels-last memory is bf16).
  EXPECT_THROW(ops::group_norm(ops::cast(random_tensor({2, 48, 5, 7}, 4), DType::BF16), 4, gamma, beta, 1e-5f), Error);
}

// A nearest upsample between channels-last convolutions (the upsamplers' convolutions read it)
// writes bf16 where the convolution after it is oneDNN's, at 2x and at sizes whose source rows and
// columns repeat unevenly; the graph computes exactly what it does without the pass.
TEST(Bf16Inputs, UpsampleOutputsReadByOneDnnConvolutionsBecomeBf16) {
  if (!ops::bf16_supported()) GTEST_SKIP() << "this CPU runs no bf16";
  unsetenv("TAIYI_BF16_EMULATE");
  const Tensor w1 = random_tensor({24, 4, 3, 3}, 1, -0.3f, 0.3f), w2 = random_tensor({8, 24, 3, 3}, 2, -0.3f, 0.3f);
  for (const auto& [oh, ow] : {std::pair<int64_t, int64_t>{12, 14}, std::pair<int64_t, int64_t>{11, 19}}) {
    const auto fn = [&](const std::vector<Tensor>& in) {
      const Tensor h = ops::conv2d(in[0], w1, Tensor(), ops::Conv2dParams::same(1));
      return std::vector<Tensor>{
          ops::conv2d(ops::upsample_nearest(h, oh, ow), w2, Tensor(), ops::Conv2dParams::same(1))};
    };
    const std::vector<InputSpec> sig = {{{2, 4, 6, 7}, DType::F32}};
    const Tensor x = random_tensor({2, 4, 6, 7}, 3);
    CompileOptions bf16;
    bf16.compute = DType::BF16;
    // (the upsample stays a node of its own: at 2x fuse_upsample_conv would take it into the convolution)
    ::setenv("TAIYI_FUSE_UPSAMPLE", "0", 1);
    Graph plain = without_bf16_inputs(fn, sig, bf16);
    Graph g = trace(fn, sig);
    run_passes(g, bf16);
    ::unsetenv("TAIYI_FUSE_UPSAMPLE");
    const bool onednn = ops::conv2d_takes_bf16_input({2, 24, oh, ow}, w2, ops::Conv2dParams::same(1), DType::BF16,
                                                     ops::Layout::kNHWC, ops::Layout::kNHWC, {});
    size_t upsampled_bf16 = 0;
    for (const Node& n : g.nodes)
      upsampled_bf16 += n.kind == ops::OpKind::kUpsampleNearest && g.values[n.output].dtype == DType::BF16 &&
                        value_layout(g.values[n.output]) == ops::Layout::kNHWC;
    EXPECT_EQ(upsampled_bf16, onednn ? 1u : 0u) << g.dump();
    const Tensor want = Executor(plain).run({x})[0];
    EXPECT_EQ(max_abs_diff(Executor(g).run({x})[0], want), 0.0) << oh << "x" << ow;
  }
}

// Values something else reads (a residual, a graph output) stay f32.
TEST(Bf16Inputs, LeavesValuesOtherOpsReadAlone) {
  if (!ops::bf16_supported()) GTEST_SKIP() << "this CPU runs no bf16";
  const Tensor w1 = random_tensor({8, 8}, 1), w2 = random_tensor({8, 8}, 2);
  const auto fn = [&](const std::vector<Tensor>& in) {
    const Tensor n = ops::layer_norm(in[0], Tensor(), Tensor(), 1e-5f);
    const Tensor h = ops::linear(n, w1, Tensor());
    return std::vector<Tensor>{ops::add(ops::linear(h, w2, Tensor()), n), h};  // n: a residual; h: an output
  };
  Graph g = trace(fn, {{{3, 8}, DType::F32}});
  CompileOptions bf16;
  bf16.compute = DType::BF16;
  EXPECT_FALSE(bf16_inputs(g, bf16));
}

}  // namespace
}  // namespace taiyi::graph
