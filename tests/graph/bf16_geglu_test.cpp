// The bf16 GEGLU: the prepared kernel (ops::prepare_geglu_bf16) against the eager f32 GEGLU of the
// same bf16 values, within the error of its erf and exp approximations (its bf16 output is its f32
// output rounded); and in graph mode on AMX (ops::geglu_bf16_preferred), from 2048 rows, the
// feed-forward's projection left whole with a bf16 output and the kernel after it (bf16_geglu),
// within bf16's error of the split form with oneDNN post-ops (TAIYI_GEGLU_KERNEL=0). The same for
// the plain GELU (ops::prepare_gelu_bf16; BERT's intermediate dense keeps a bf16 output and the
// kernel follows instead of the gelu post-op).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <string>
#include <vector>

#include "small_blocks.h"
#include "taiyi/graph/executor.h"
#include "taiyi/graph/passes/passes.h"
#include "taiyi/graph/tracer.h"
#include "taiyi/ops/cpu/cpu_isa.h"
#include "taiyi/ops/ops.h"
#include "taiyi/ops/prepared.h"
#include "test_util.h"

namespace taiyi::graph {
namespace {

using testing::random_tensor;
using testing::relative_l2;

TEST(Bf16Geglu, KernelMatchesTheF32GegluOfItsInput) {
  if (!ops::geglu_bf16_supported()) GTEST_SKIP() << "this CPU runs no bf16 GEGLU kernel";
  // Hidden in [-2, 2], gate in [-6, 6] (both tails of the GELU); 40 values a half: a tail of 8 lanes.
  const Tensor hidden = random_tensor({3, 37, 40}, 1, -2.0f, 2.0f), gate = random_tensor({3, 37, 40}, 2, -6.0f, 6.0f);
  const Tensor x = ops::cast(ops::concat({hidden, gate}, 2), DType::BF16);
  const Tensor want = ops::geglu(ops::cast(x, DType::F32));
  const auto op = ops::prepare_geglu_bf16(x.shape());
  Tensor got = Tensor::empty({3, 37, 40}), got16 = Tensor::empty({3, 37, 40}, DType::BF16);
  op->run({x}, got, nullptr);
  op->run({x}, got16, nullptr);
  const Tensor xf = ops::cast(x, DType::F32);
  int64_t bad = 0, rounded_differently = 0;
  for (int64_t i = 0; i < want.numel(); ++i) {
    const int64_t r = i / 40, j = i % 40;
    const double h = xf.data<float>()[r * 80 + j], g = xf.data<float>()[r * 80 + 40 + j];
    const double err = std::fabs(got.data<float>()[i] - want.data<float>()[i]);
    bad += !(err <= 1e-4 * std::fabs(h * g) + 1e-6);
    rounded_differently += got16.data_u16()[i] != f32_to_bf16(got.data<float>()[i]);
  }
  EXPECT_EQ(bad, 0);
  EXPECT_EQ(rounded_differently, 0);
  // An odd last dim, or an f32 input, is refused.
  EXPECT_THROW(ops::prepare_geglu_bf16({2, 5}), Error);
  EXPECT_THROW(op->run({ops::cast(x, DType::F32)}, got, nullptr), Error);
}

TEST(Bf16Geglu, GeluKernelMatchesTheF32GeluOfItsInput) {
  if (!ops::geglu_bf16_supported()) GTEST_SKIP() << "this CPU runs no bf16 GELU kernel";
  // [-6, 6]: both tails; 40 values a row: a tail of 8 lanes.
  const Tensor x = ops::cast(random_tensor({3, 37, 40}, 3, -6.0f, 6.0f), DType::BF16);
  const Tensor xf = ops::cast(x, DType::F32), want = ops::gelu(xf);
  const auto op = ops::prepare_gelu_bf16(x.shape());
  EXPECT_EQ(op->describe(), "gelu bf16 avx512");
  Tensor got = Tensor::empty({3, 37, 40}), got16 = Tensor::empty({3, 37, 40}, DType::BF16);
  op->run({x}, got, nullptr);
  op->run({x}, got16, nullptr);
  int64_t bad = 0, rounded_differently = 0;
  for (int64_t i = 0; i < want.numel(); ++i) {
    const double err = std::fabs(got.data<float>()[i] - want.data<float>()[i]);
    bad += !(err <= 1e-4 * std::fabs(xf.data<float>()[i]) + 1e-6);
    rounded_differently += got16.data_u16()[i] != f32_to_bf16(got.data<float>()[i]);
  }
  EXPECT_EQ(bad, 0);
  EXPECT_EQ(rounded_differently, 0);
  // The wrong size, or an f32 input, is refused.
  EXPECT_THROW(op->run({x}, Tensor::empty({3, 37, 41}), nullptr), Error);
  EXPECT_THROW(op->run({xf}, got, nullptr), Error);
}

size_t count(const Graph& g, bool (*pred)(const Graph&, const Node&)) {
  size_t n = 0;
  for (const Node& node : g.nodes) n += pred(g, node);
  return n;
}

// BERT's feed-forward, layer norm -> linear -> gelu -> linear (+ residual), on AMX in bf16: by default the GELU is
// the first linear's post-op, computed in our AMX linear's epilogue (ops::linear_gelu_in_epilogue_bf16);
// with TAIYI_AMX_GELU=0 the first linear writes bf16 and the GELU kernel follows (its output bf16 too:
// only the second linear reads it); with TAIYI_GEGLU_KERNEL=0 as well, the GELU is oneDNN's post-op.
// All within bf16's error of f32.
TEST(Bf16Geglu, GeluAfterALinearGetsTheKernelOnAmx) {
  if (!ops::geglu_bf16_preferred()) GTEST_SKIP() << "the GELU is a post-op on this CPU";
  unsetenv("TAIYI_BF16_EMULATE");
  const Tensor w1 = random_tensor({96, 32}, 1), b1 = random_tensor({96}, 2);
  const Tensor w2 = random_tensor({32, 96}, 3), b2 = random_tensor({32}, 4);
  const Tensor gamma = random_tensor({32}, 6, 0.5f, 1.5f), beta = random_tensor({32}, 7);
  const auto fn = [&](const std::vector<Tensor>& in) {
    // (a LayerNorm first, as BERT's: it writes the bf16 input our AMX linear reads)
    const Tensor h = ops::layer_norm(in[0], gamma, beta, 1e-12f);
    return std::vector<Tensor>{ops::add(ops::linear(ops::gelu(ops::linear(h, w1, b1)), w2, b2), in[0])};
  };
  const std::vector<InputSpec> sig = {{{2, 40, 32}, DType::F32}};
  const Tensor x = random_tensor({2, 40, 32}, 5, -2.0f, 2.0f);
  const Tensor want = fn({x})[0];
  const auto compile = [&] {
    CompileOptions bf16;
    bf16.compute = DType::BF16;
    Graph g = trace(fn, sig);
    run_passes(g, bf16);
    return g;
  };
  const Graph epilogue = compile();
  ::setenv("TAIYI_AMX_GELU", "0", 1);
  const Graph g = compile();
  ::setenv("TAIYI_GEGLU_KERNEL", "0", 1);
  const Graph post_op = compile();
  ::unsetenv("TAIYI_GEGLU_KERNEL");
  ::unsetenv("TAIYI_AMX_GELU");
  const auto bound_gelu = [](const Graph& gr, const Node& n) {
    return n.kind == ops::OpKind::kGelu && n.prepared && n.prepared->describe() == "gelu bf16 avx512" &&
           gr.values[n.inputs[0]].dtype == DType::BF16 && gr.values[n.output].dtype == DType::BF16;
  };
  const auto gelu_post_op = [](const Graph&, const Node& n) { return n.attrs.post_op == ops::PostOp::kGelu; };
  const auto amx_gelu = [](const Graph& gr, const Node& n) {
    return n.attrs.post_op == ops::PostOp::kGelu && n.prepared &&
           n.prepared->describe().find("linear bf16 amx") != std::string::npos &&
           n.prepared->describe().find("+gelu") != std::string::npos && gr.values[n.output].dtype == DType::BF16;
  };
  const bool amx = ops::cpu::cpu_has_amx_bf16();
  EXPECT_EQ(count(epilogue, amx_gelu), amx ? 1u : 0u) << epilogue.dump();
  EXPECT_EQ(count(epilogue, bound_gelu), amx ? 0u : 1u);
  EXPECT_EQ(count(g, bound_gelu), 1u) << g.dump();
  EXPECT_EQ(count(g, gelu_post_op), 0u);
  EXPECT_EQ(count(post_op, bound_gelu), 0u);
  EXPECT_EQ(count(post_op, gelu_post_op), 1u) << post_op.dump();
  EXPECT_EQ(count(post_op, amx_gelu), 0u);
  const Tensor reference = Executor(post_op).run({x})[0];
  for (const Graph* gr : {&g, &epilogue}) {
    const Executor ex(*gr);
    for (int replay = 0; replay < 2; ++replay) {
      const Tensor got = ex.run({x})[0];
      EXPECT_LT(relative_l2(got, reference), 1e-2);                                  // bf16's roundings
      EXPECT_LT(relative_l2(got, want), 2.0 * relative_l2(reference, want) + 1e-3);  // no worse than the post-op
      EXPECT_GT(relative_l2(got, want), 1e-5) << "bf16 asked but not run";
    }
  }
}

Graph compiled_transformer(const nn::Transformer2DModel& block, const std::vector<InputSpec>& sig) {
  CompileOptions bf16;
  bf16.compute = DType::BF16;
  Graph g = trace([&](const std::vector<Tensor>& in) { return std::vector<Tensor>{block(in[0], in[1])}; }, sig);
  run_passes(g, bf16);
  return g;
}

TEST(Bf16Geglu, FeedForwardKeepsItsProjectionWholeOnAmx) {
  if (!ops::geglu_bf16_preferred()) GTEST_SKIP() << "the GEGLU is split into post-op linears on this CPU";
  unsetenv("TAIYI_BF16_EMULATE");
  nn::ParameterSet params;
  const nn::Transformer2DModel block = small_transformer(params);
  params.init_random(3);
  // 2 x 32 x 32 = 2048 rows: from there the projection stays whole (fuse_linear_gelu.cpp).
  const std::vector<InputSpec> sig = {{{2, 16, 32, 32}, DType::F32}, {{2, 6, 12}, DType::F32}};
  const Tensor x = random_tensor({2, 16, 32, 32}, 1), ctx = random_tensor({2, 6, 12}, 2);
  const Tensor f32 = block(x, ctx);
  const Graph g = compiled_transformer(block, sig);
  ::setenv("TAIYI_GEGLU_KERNEL", "0", 1);
  const Graph split = compiled_transformer(block, sig);
  ::unsetenv("TAIYI_GEGLU_KERNEL");
  const auto bound_geglu = [](const Graph& gr, const Node& n) {
    return n.kind == ops::OpKind::kGeglu && n.prepared && n.prepared->describe() == "geglu bf16 avx512" &&
           gr.values[n.inputs[0]].dtype == DType::BF16 && gr.values[n.output].dtype == DType::BF16;
  };
  const auto multiply = [](const Graph&, const Node& n) { return n.attrs.post_op == ops::PostOp::kMultiply; };
  EXPECT_EQ(count(g, bound_geglu), 1u) << g.dump();
  EXPECT_EQ(count(g, multiply), 0u);
  EXPECT_EQ(count(split, bound_geglu), 0u);
  EXPECT_EQ(count(split, multiply), 1u) << split.dump();
  // Below 2048 rows it is split there too.
  const Graph small = compiled_transformer(block, {{{2, 16, 31, 33}, DType::F32}, {{2, 6, 12}, DType::F32}});
  EXPECT_EQ(count(small, bound_geglu), 0u);
  EXPECT_EQ(count(small, multiply), 1u);
  const Tensor want = Executor(split).run({x, ctx})[0];
  const Executor ex(g);
  for (int replay = 0; replay < 2; ++replay) {
    const Tensor got = ex.run({x, ctx})[0];
    EXPECT_LT(relative_l2(got, want), 4e-3);                                // bf16's roundings, placed otherwise
    EXPECT_LT(relative_l2(got, f32), 2.0 * relative_l2(want, f32) + 1e-3);  // no worse than the split form
  }
}

}  // namespace
}  // namespace taiyi::graph
