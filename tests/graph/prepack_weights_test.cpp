// prepack_weights: convolutions with constant weights run through a prepared oneDNN
// primitive (weights reordered once); the graph computes the same before and after.
#include <gtest/gtest.h>

#include "taiyi/graph/executor.h"
#include "taiyi/graph/passes/passes.h"
#include "taiyi/graph/tracer.h"
#include "test_util.h"

namespace taiyi::graph {
namespace {

using testing::max_abs_diff;
using testing::random_tensor;

TEST(PrepackWeights, PreparedConvolutionsComputeTheSame) {
  const Tensor w1 = random_tensor({16, 3, 3, 3}, 1), b1 = random_tensor({16}, 2);
  const Tensor w2 = random_tensor({16, 16, 1, 1}, 3);
  const Tensor w3 = random_tensor({8, 4, 3, 3}, 4);  // 4 groups of 4 input channels
  const auto fn = [&](const std::vector<Tensor>& in) {
    Tensor h = ops::conv2d(in[0], w1, b1, ops::Conv2dParams::same(1));
    h = ops::conv2d(ops::silu(h), w2, Tensor(), ops::Conv2dParams::same(0));
    ops::Conv2dParams strided{2, 2, 0, 0, 1, 1, 1, 1, 4};  // VAE-style (0, 1, 0, 1) padding, grouped
    h = ops::conv2d(h, w3, Tensor(), strided);
    // A convolution whose weight is computed in the graph stays an ordinary node.
    return std::vector<Tensor>{ops::conv2d(h, ops::scale(in[1], 0.5f), Tensor(), ops::Conv2dParams::same(1))};
  };
  Graph g = trace(fn, {{{2, 3, 9, 11}, DType::F32}, {{8, 8, 3, 3}, DType::F32}});
  const Tensor x = random_tensor({2, 3, 9, 11}, 5), wk = random_tensor({8, 8, 3, 3}, 6);
  const Tensor before = Executor(g).run({x, wk})[0];
  EXPECT_TRUE(prepack_weights(g));
  size_t prepared = 0;
  for (const Node& n : g.nodes) prepared += n.prepared != nullptr;
  EXPECT_EQ(prepared, 3u);
  const Executor ex(g);
  EXPECT_LE(max_abs_diff(ex.run({x, wk})[0], before), 1e-5);
  EXPECT_LE(max_abs_diff(ex.run({x, wk})[0], fn({x, wk})[0]), 1e-5);
  EXPECT_FALSE(prepack_weights(g));  // nothing left to do
}

}  // namespace
}  // namespace taiyi::graph
