// bf16_attention: with bf16 asked, attention nodes run the prepared bf16 kernel (natively, or
// emulated under TAIYI_BF16_EMULATE on a CPU without bf16); the graph computes the same as before
// within bf16's error. Without bf16 (and without emulation), or with f32 asked, nothing changes.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <string>
#include <vector>

#include "taiyi/graph/executor.h"
#include "taiyi/graph/passes/passes.h"
#include "taiyi/graph/tracer.h"
#include "test_util.h"

namespace taiyi::graph {
namespace {

using testing::random_tensor;
using testing::relative_l2;

// A cross-attention block as the UNet's: projections, attention, output projection plus residual.
std::vector<Tensor> block(const std::vector<Tensor>& in) {
  static const Tensor wq = random_tensor({16, 16}, 1), wk = random_tensor({16, 12}, 2), wv = random_tensor({16, 12}, 3);
  static const Tensor wo = random_tensor({16, 16}, 4), bo = random_tensor({16}, 5);
  const Tensor q = ops::linear(in[0], wq, Tensor()), k = ops::linear(in[1], wk, Tensor());
  const Tensor v = ops::linear(in[1], wv, Tensor());
  return {ops::add(ops::linear(ops::attention(q, k, v, 2, 1.0f / std::sqrt(8.0f)), wo, bo), in[0])};
}

size_t prepared_attention_nodes(const Graph& g) {
  size_t n = 0;
  for (const Node& node : g.nodes) n += node.kind == ops::OpKind::kAttention && node.prepared != nullptr;
  return n;
}

class Bf16Attention : public ::testing::Test {
 protected:
  void SetUp() override { unsetenv("TAIYI_BF16_EMULATE"); }
  void TearDown() override { unsetenv("TAIYI_BF16_EMULATE"); }
  Graph traced() const { return trace(block, {{{2, 40, 16}, DType::F32}, {{2, 7, 12}, DType::F32}}); }
  const Tensor x = random_tensor({2, 40, 16}, 6), ctx = random_tensor({2, 7, 12}, 7, -2.0f, 2.0f);
  CompileOptions bf16() const {
    CompileOptions o;
    o.compute = DType::BF16;
    return o;
  }
};

TEST_F(Bf16Attention, ComputesTheSameWithinBf16Error) {
  if (!ops::bf16_supported()) setenv("TAIYI_BF16_EMULATE", "1", 1);
  Graph g = traced();
  const Tensor before = Executor(g).run({x, ctx})[0];
  EXPECT_TRUE(bf16_attention(g, bf16()));
  EXPECT_EQ(prepared_attention_nodes(g), 1u);
  const Tensor after = Executor(g).run({x, ctx})[0];
  const double err = relative_l2(after, before);
  EXPECT_LT(err, 1e-2);
  EXPECT_GT(err, 1e-6);                     // the products did run in bf16
  EXPECT_FALSE(bf16_attention(g, bf16()));  // already bound

  // The whole pipeline of passes, linears and attention in bf16, runs twice to the same result.
  Graph all = traced();
  run_passes(all, bf16());
  EXPECT_EQ(prepared_attention_nodes(all), 1u);
  Executor ex(all);
  const Tensor first = ex.run({x, ctx})[0];
  EXPECT_LT(relative_l2(first, before), 2e-2);
  EXPECT_EQ(testing::max_abs_diff(ex.run({x, ctx})[0], first), 0.0);
}

TEST_F(Bf16Attention, LeavesF32AndUnrunnableBf16Alone) {
  Graph g = traced();
  EXPECT_FALSE(bf16_attention(g, CompileOptions{}));
  if (!ops::bf16_supported()) {
    EXPECT_FALSE(bf16_attention(g, bf16()));  // the plain f32 fallback
  } else {
    EXPECT_TRUE(bf16_attention(g, bf16()));
  }
  EXPECT_EQ(prepared_attention_nodes(g), ops::bf16_supported() ? 1u : 0u);
}

}  // namespace
}  // namespace taiyi::graph
