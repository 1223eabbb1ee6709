// link_norm_moments: with bf16 on AMX, in two VAE-like ResNet blocks (channels-last bf16, each
// convolution with its GroupNorm+SiLU prologue), each convolution whose input another Winograd
// convolution wrote takes its GroupNorm statistics from the moments that one sums as it writes:
// the second convolution of each block, and the second block's first (the first block's output,
// written with its residual). The graph computes within a few flipped bf16 roundings of the graph
// without the pass (TAIYI_LINK_NORM_MOMENTS=0), the same on replay, and a new input's statistics
// on the next run (none left from the run before).
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include "graph_testing.h"
#include "taiyi/graph/executor.h"
#include "taiyi/graph/passes/passes.h"
#include "taiyi/graph/tracer.h"
#include "taiyi/nn/resnet.h"
#include "taiyi/ops/cpu/dnnl_context.h"
#include "taiyi/ops/op_call.h"
#include "taiyi/ops/prepared.h"
#include "test_util.h"

namespace taiyi::graph {
namespace {

using testing::max_abs_diff;
using testing::random_tensor;

TEST(LinkNormMoments, ConvolutionsTakeTheirWritersMoments) {
  if (!ops::bf16_supported()) GTEST_SKIP() << "this CPU runs no bf16";
  unsetenv("TAIYI_BF16_EMULATE");
  nn::ParameterSet params;
  const nn::ResnetBlock2D b1(nn::Scope(params, "b1"), 64, 64, 0, 32, 1e-6f);
  const nn::ResnetBlock2D b2(nn::Scope(params, "b2"), 64, 64, 0, 32, 1e-6f);
  params.init_random(7);
  const Tensor w_in = random_tensor({64, 4, 3, 3}, 1, -0.3f, 0.3f), w_out = random_tensor({4, 64, 3, 3}, 2);
  const auto fn = [&](const std::vector<Tensor>& in) {
    const Tensor h = b2(b1(ops::conv2d(in[0], w_in, Tensor(), ops::Conv2dParams::same(1)), Tensor()), Tensor());
    return std::vector<Tensor>{ops::conv2d(h, w_out, Tensor(), ops::Conv2dParams::same(1))};
  };
  const std::vector<InputSpec> sig = {{{2, 4, 8, 64}, DType::F32}};
  ::setenv("TAIYI_LINK_NORM_MOMENTS", "0", 1);
  Graph plain = trace(fn, sig);
  run_passes(plain, bf16());
  ::unsetenv("TAIYI_LINK_NORM_MOMENTS");
  EXPECT_EQ(described(plain, "from its input's writer"), 0u);
  Graph g = trace(fn, sig);
  run_passes(g, bf16());
  if (!ops::cpu::dnnl_uses_amx()) {
    EXPECT_EQ(described(g, "from its input's writer"), 0u);
    GTEST_SKIP() << "no AMX: no Winograd convolutions with the GroupNorm prologue";
  }
  EXPECT_EQ(described(g, "from its input's writer"), 3u) << g.dump();
  EXPECT_EQ(described(g, "sums its output's moments"), 3u);
  Graph f32 = trace(fn, sig);
  run_passes(f32, CompileOptions{});
  const Executor ex(g), ex_plain(plain), ex_f32(f32);
  Tensor x = random_tensor({2, 4, 8, 64}, 3);
  // Another input, of other statistics: this run's moments, not the last run's. (A GroupNorm
  // undoes a scale and shift of the input, so x2 is x in its left quarter only, zero elsewhere:
  // every activation's statistics change, and moments left from x's run fail this.)
  Tensor x2 = Tensor::empty(x.shape());
  x2.copy_from(x);
  for (int64_t i = 0; i < x2.numel(); ++i)
    if (i % 64 >= 16) x2.data<float>()[i] = 0.0f;
  for (const Tensor& in : {x, x2}) {
    const Tensor exact = ex_f32.run({in})[0], want = ex_plain.run({in})[0], got = ex.run({in})[0];
    // The statistics agree to ~1e-6 (summed about other shifts, in another order); through four
    // bf16 convolutions the roundings they flip leave ~1e-3 between the two graphs, each as
    // close to f32 as the other.
    const double plain_err = testing::relative_l2(want, exact), err = testing::relative_l2(got, exact);
    EXPECT_LT(testing::relative_l2(got, want), 5e-3);
    EXPECT_LT(err, 1.25 * plain_err + 1e-3) << "plain " << plain_err;
    EXPECT_EQ(max_abs_diff(ex.run({in})[0], got), 0.0);
  }
}

}  // namespace
}  // namespace taiyi::graph
