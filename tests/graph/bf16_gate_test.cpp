// bf16_gate: the GEGLU's gate (the gelu linear's output that the value linear's epilogue multiplies
// by) is written and read in bf16 when bf16 runs. The prepared linear's bf16 factor computes exactly
// what an f32 factor holding the same rounded values does; in a Transformer2DModel the pass makes
// the feed-forward's gate bf16 and the block's output stays within bf16's error of the graph
// without it (and is not identical: the rounding happens); gates anything else reads stay f32.
#include <gtest/gtest.h>

#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "small_blocks.h"
#include "taiyi/graph/executor.h"
#include "taiyi/graph/passes/passes.h"
#include "taiyi/graph/tracer.h"
#include "taiyi/ops/ops.h"
#include "taiyi/ops/prepared.h"
#include "test_util.h"

namespace taiyi::graph {
namespace {

using testing::max_abs_diff;
using testing::random_tensor;
using testing::relative_l2;

Tensor run_linear(const Shape& xs, const Tensor& w, const Tensor& b, const ops::Epilogue& e, const Tensor& x,
                  const Tensor& factor) {
  const auto op = ops::prepare_linear(xs, w, b, DType::BF16, e, DType::F32, DType::F32);
  Tensor out = Tensor::empty({xs[0], xs[1], w.size(0)});
  const auto scratch = Storage::allocate(op->scratch_bytes() + 64);
  op->run({x, factor}, out, scratch->data());
  if (e.factor == DType::BF16) {
    EXPECT_NE(op->describe().find("*bf16 input"), std::string::npos) << op->describe();
  }
  return out;
}

TEST(Bf16Gate, LinearWithBf16FactorComputesTheRoundedF32Factor) {
  if (!ops::bf16_supported()) GTEST_SKIP() << "this CPU runs no bf16";
  const Tensor w = random_tensor({24, 16}, 1), b = random_tensor({24}, 2);
  const Tensor x = random_tensor({2, 37, 16}, 3), factor = random_tensor({2, 37, 24}, 4, -3.0f, 3.0f);
  ops::Epilogue e;
  e.post_op = ops::PostOp::kMultiply;
  const Tensor rounded = factor.to(DType::BF16);
  const Tensor want = run_linear(x.shape(), w, b, e, x, rounded.to(DType::F32));
  e.factor = DType::BF16;
  EXPECT_EQ(max_abs_diff(run_linear(x.shape(), w, b, e, x, rounded), want), 0.0);
  // A factor of the wrong dtype is refused, naming it.
  const auto op = ops::prepare_linear(x.shape(), w, b, DType::BF16, e);
  Tensor out = Tensor::empty({2, 37, 24});
  const auto scratch = Storage::allocate(op->scratch_bytes() + 64);
  EXPECT_THROW(op->run({x, factor}, out, scratch->data()), Error);
  // f32 compute has no bf16 factor.
  EXPECT_THROW(ops::prepare_linear(x.shape(), w, b, DType::F32, e), Error);
}

Graph compiled(const std::function<std::vector<Tensor>(const std::vector<Tensor>&)>& fn,
               const std::vector<InputSpec>& sig, bool with_gate) {
  CompileOptions bf16;
  bf16.compute = DType::BF16;
  std::vector<Pass> passes;
  for (const Pass& p : default_passes())
    if (with_gate || std::string(p.name) != "bf16_gate") passes.push_back(p);
  Graph g = trace(fn, sig);
  run_passes(g, bf16, passes);
  return g;
}

size_t bf16_gates(const Graph& g) {
  size_t n = 0;
  for (const Node& node : g.nodes)
    n += node.kind == ops::OpKind::kLinear && node.attrs.post_op == ops::PostOp::kGelu &&
         g.values[node.output].dtype == DType::BF16;
  return n;
}

TEST(Bf16Gate, FeedForwardGateBecomesBf16WithinBf16Error) {
  if (!ops::bf16_supported()) GTEST_SKIP() << "this CPU runs no bf16";
  unsetenv("TAIYI_BF16_EMULATE");
  unsetenv("TAIYI_BF16_GATE");
  setenv("TAIYI_GEGLU_KERNEL", "0", 1);  // the split GEGLU (on AMX the whole one: bf16_geglu_test.cpp)
  nn::ParameterSet params;
  const nn::Transformer2DModel block = small_transformer(params);
  params.init_random(3);
  const auto fn = [&](const std::vector<Tensor>& in) { return std::vector<Tensor>{block(in[0], in[1])}; };
  const std::vector<InputSpec> sig = {{{2, 16, 5, 7}, DType::F32}, {{2, 6, 12}, DType::F32}};
  const Tensor x = random_tensor({2, 16, 5, 7}, 1), ctx = random_tensor({2, 6, 12}, 2);
  const Graph plain = compiled(fn, sig, false), g = compiled(fn, sig, true);
  EXPECT_EQ(bf16_gates(plain), 0u);
  EXPECT_EQ(bf16_gates(g), 1u) << g.dump();
  const Tensor want = Executor(plain).run({x, ctx})[0], f32 = fn({x, ctx})[0];
  const Executor ex(g);
  for (int replay = 0; replay < 2; ++replay) {
    const Tensor got = ex.run({x, ctx})[0];
    EXPECT_GT(max_abs_diff(got, want), 0.0);                                // one more rounding happens
    EXPECT_LT(relative_l2(got, want), 4e-3);                                // of bf16's size (2^-9 on the gate)
    EXPECT_LT(relative_l2(got, f32), 2.0 * relative_l2(want, f32) + 1e-3);  // no worse than bf16 already is
  }
  Graph off = trace(fn, sig);
  EXPECT_FALSE(bf16_gate(off, CompileOptions{}));  // f32 compute: nothing to do
  unsetenv("TAIYI_GEGLU_KERNEL");
}

// A gate something else reads too (here: a graph output) stays f32.
TEST(Bf16Gate, LeavesGatesOtherOpsReadAlone) {
  if (!ops::bf16_supported()) GTEST_SKIP() << "this CPU runs no bf16";
  const Tensor w = random_tensor({16, 8}, 1), b = random_tensor({16}, 2);
  const auto fn = [&](const std::vector<Tensor>& in) {
    return std::vector<Tensor>{ops::geglu(ops::linear(in[0], w, b))};
  };
  CompileOptions bf16;
  bf16.compute = DType::BF16;
  Graph g = trace(fn, {{{2, 5, 8}, DType::F32}});
  setenv("TAIYI_GEGLU_KERNEL", "0", 1);  // the split GEGLU
  for (const Pass& p : default_passes()) {
    if (std::string(p.name) == "bf16_gate") break;
    p.run(g, bf16);
  }
  unsetenv("TAIYI_GEGLU_KERNEL");
  int gate = -1;
  for (const Node& n : g.nodes)
    if (n.kind == ops::OpKind::kLinear && n.attrs.post_op == ops::PostOp::kGelu) gate = n.output;
  ASSERT_GE(gate, 0) << g.dump();
  Graph alone = g;
  EXPECT_TRUE(bf16_gate(alone, bf16));
  g.outputs.push_back(gate);
  EXPECT_FALSE(bf16_gate(g, bf16)) << g.dump();
}

}  // namespace
}  // namespace taiyi::graph
