// bf16_linear_inputs: in a Transformer2DModel (the diffusers module, random weights) compiled for
// bf16, the LayerNorm outputs (read by q, k, v and by the feed-forward's two halves) and the
// feed-forward's gated value (read by its output linear) become bf16 values, and the graph computes
// exactly what it computes without the pass: the readers round the same values the same way.
#include <gtest/gtest.h>

#include <cstdlib>
#include <vector>

#include "taiyi/graph/executor.h"
#include "taiyi/graph/passes/passes.h"
#include "taiyi/graph/tracer.h"
#include "taiyi/nn/transformer_2d.h"
#include "taiyi/ops/ops.h"
#include "small_blocks.h"
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

TEST(Bf16LinearInputs, LayerNormAndGatedValuesBecomeBf16AndComputeTheSame) {
  if (!ops::bf16_supported()) GTEST_SKIP() << "this CPU runs no bf16 (the pass leaves f32 fallbacks alone)";
  unsetenv("TAIYI_BF16_EMULATE");
  nn::ParameterSet params;
  const nn::Transformer2DModel block = small_transformer(params);
  params.init_random(3);
  const auto fn = [&](const std::vector<Tensor>& in) { return std::vector<Tensor>{block(in[0], in[1])}; };
  const Tensor x = random_tensor({2, 16, 5, 7}, 1), ctx = random_tensor({2, 6, 12}, 2);
  CompileOptions bf16;
  bf16.compute = DType::BF16;
  std::vector<Pass> without;
  for (const Pass& p : default_passes())
    if (std::string(p.name) != "bf16_linear_inputs") without.push_back(p);
  Graph plain = trace(fn, {{{2, 16, 5, 7}, DType::F32}, {{2, 6, 12}, DType::F32}});
  run_passes(plain, bf16, without);
  Graph g = trace(fn, {{{2, 16, 5, 7}, DType::F32}, {{2, 6, 12}, DType::F32}});
  run_passes(g, bf16);
  EXPECT_EQ(bf16_values(plain), 0u);
  // norm1 (q, k, v), norm2 (q of the cross-attention), norm3 (the GEGLU's two halves), and the
  // gated value (the feed-forward's output linear).
  EXPECT_EQ(bf16_values(g), 4u) << g.dump();
  const Tensor want = Executor(plain).run({x, ctx})[0];
  const Executor ex(g);
  EXPECT_EQ(max_abs_diff(ex.run({x, ctx})[0], want), 0.0);
  EXPECT_EQ(max_abs_diff(ex.run({x, ctx})[0], want), 0.0);  // a replay gives the same
  // f32 compute: nothing to do.
  Graph f32 = trace(fn, {{{2, 16, 5, 7}, DType::F32}, {{2, 6, 12}, DType::F32}});
  EXPECT_FALSE(bf16_linear_inputs(f32, CompileOptions{}));
}

// Values something else reads (a residual, a graph output) stay f32.
TEST(Bf16LinearInputs, LeavesValuesOtherOpsReadAlone) {
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
  EXPECT_FALSE(bf16_linear_inputs(g, bf16));
}

}  // namespace
}  // namespace taiyi::graph
