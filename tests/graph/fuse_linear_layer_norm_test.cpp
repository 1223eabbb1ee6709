// fuse_linear_layer_norm: with bf16 on AMX, BERT's post-LN pattern, layer_norm(linear(h) + h), goes
// into the linear's epilogue (OpAttrs eps, gamma and beta its 5th and 6th inputs): the LayerNorm
// node is gone, the linear is bound to our AMX kernel with a LayerNorm epilogue, and the graph
// computes the same to the bit as the graph without the pass (TAIYI_FUSE_LINEAR_LN=0), on replay
// too. A linear whose output something else also reads keeps its LayerNorm; f32 compute changes
// nothing; eager replay of such a node normalises last.
#include <gtest/gtest.h>

#include <cstdlib>

#include "graph_testing.h"
#include "taiyi/graph/executor.h"
#include "taiyi/graph/passes/passes.h"
#include "taiyi/graph/tracer.h"
#include "taiyi/ops/cpu/cpu_isa.h"
#include "taiyi/ops/op_call.h"
#include "taiyi/ops/ops.h"
#include "taiyi/ops/prepared.h"
#include "test_util.h"

namespace taiyi::graph {
namespace {

using testing::max_abs_diff;
using testing::random_tensor;

size_t epilogues(const Graph& g) {
  return count_nodes(g, [](const Node& n) { return ops::has_norm_epilogue(n.kind, n.attrs); });
}

struct Layer {
  Tensor w1 = random_tensor({96, 96}, 1, -0.1f, 0.1f), b1 = random_tensor({96}, 2);
  Tensor g1 = random_tensor({96}, 3, 0.5f, 1.5f), be1 = random_tensor({96}, 4);
  Tensor w2 = random_tensor({96, 96}, 5, -0.1f, 0.1f), b2 = random_tensor({96}, 6);
  Tensor g2 = random_tensor({96}, 7, 0.5f, 1.5f), be2 = random_tensor({96}, 8);
  Tensor w3 = random_tensor({64, 96}, 9, -0.1f, 0.1f);
};

// BERT's attention sublayer with a linear for the attention: h0 = LN0(x), t = linear(linear(h0)) +
// h0, h1 = LN1(t), then a linear reads h1 (so that it is bf16). `shared`: t is also read by another
// linear (its LayerNorm stays).
std::vector<Tensor> layer(const Layer& p, const Tensor& x, bool shared) {
  const Tensor h0 = ops::layer_norm(x, p.g1, p.be1, 1e-12f);
  const Tensor t = ops::add(ops::linear(ops::linear(h0, p.w1, p.b1), p.w2, p.b2), h0);
  std::vector<Tensor> r = {ops::linear(ops::layer_norm(t, p.g2, p.be2, 1e-12f), p.w3, Tensor())};
  if (shared) r.push_back(ops::linear(t, p.w3, Tensor()));
  return r;
}

TEST(FuseLinearLayerNorm, PostLnLayerTheSameToTheBit) {
  const Layer p;
  const auto fn = [&](const std::vector<Tensor>& in) { return layer(p, in[0], false); };
  const std::vector<InputSpec> sig = {{{2, 40, 96}, DType::F32}};
  const Tensor x = random_tensor({2, 40, 96}, 9, -2.0f, 2.0f);
  Graph f32 = trace(fn, sig);
  run_passes(f32, CompileOptions{});
  EXPECT_EQ(epilogues(f32), 0u);
  if (!ops::bf16_supported()) GTEST_SKIP() << "this CPU runs no bf16";
  unsetenv("TAIYI_BF16_EMULATE");
  ::setenv("TAIYI_FUSE_LINEAR_LN", "0", 1);
  Graph plain = trace(fn, sig);
  run_passes(plain, bf16());
  ::unsetenv("TAIYI_FUSE_LINEAR_LN");
  EXPECT_EQ(epilogues(plain), 0u);
  EXPECT_EQ(plain.count(ops::OpKind::kLayerNorm), 2u) << plain.dump();
  Graph g = trace(fn, sig);
  run_passes(g, bf16());
  const bool fuses = ops::cpu::cpu_has_amx_bf16();
  EXPECT_EQ(epilogues(g), fuses ? 1u : 0u) << g.dump();
  EXPECT_EQ(g.count(ops::OpKind::kLayerNorm), fuses ? 1u : 2u);
  for (const Node& n : g.nodes) {
    if (!ops::has_norm_epilogue(n.kind, n.attrs)) continue;
    ASSERT_EQ(n.inputs.size(), 6u);
    EXPECT_GE(n.inputs[3], 0);  // the residual
    ASSERT_TRUE(n.prepared);
    EXPECT_NE(n.prepared->describe().find("+layer norm"), std::string::npos) << n.prepared->describe();
    EXPECT_EQ(g.values[n.output].dtype, DType::BF16);
  }
  const Tensor want = Executor(plain).run({x})[0];
  const Executor ex(g);
  for (int replay = 0; replay < 2; ++replay) EXPECT_EQ(max_abs_diff(ex.run({x})[0], want), 0.0);
  EXPECT_LT(testing::relative_l2(want, fn({x})[0]), 2e-2);  // bf16's error of the f32 layer
}

TEST(FuseLinearLayerNorm, LeavesSharedOutputsAlone) {
  if (!ops::bf16_supported()) GTEST_SKIP() << "this CPU runs no bf16";
  unsetenv("TAIYI_BF16_EMULATE");
  const Layer p;
  Graph g = trace([&](const std::vector<Tensor>& in) { return layer(p, in[0], true); }, {{{2, 40, 96}, DType::F32}});
  run_passes(g, bf16());
  EXPECT_EQ(epilogues(g), 0u) << g.dump();
  EXPECT_EQ(g.count(ops::OpKind::kLayerNorm), 2u);
}

TEST(FuseLinearLayerNorm, EagerReplayNormalisesLast) {
  // A linear node with the epilogue, replayed eagerly (ops::run_op): the linear, the residual, then
  // the LayerNorm; with or without a residual (its 4th input absent or present).
  const Tensor x = random_tensor({2, 5, 32}, 1), w = random_tensor({48, 32}, 2), b = random_tensor({48}, 3);
  const Tensor gamma = random_tensor({48}, 4), beta = random_tensor({48}, 5), r = random_tensor({2, 5, 48}, 6);
  ops::OpAttrs a;
  a.eps = 1e-5f;
  const Tensor y = ops::linear(x, w, b);
  EXPECT_EQ(max_abs_diff(ops::run_op(ops::OpKind::kLinear, {x, w, b, Tensor(), gamma, beta}, a),
                         ops::layer_norm(y, gamma, beta, 1e-5f)),
            0.0);
  EXPECT_EQ(max_abs_diff(ops::run_op(ops::OpKind::kLinear, {x, w, b, r, gamma, beta}, a),
                         ops::layer_norm(ops::add(y, r), gamma, beta, 1e-5f)),
            0.0);
}

}  // namespace
}  // namespace taiyi::graph
