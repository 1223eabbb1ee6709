// link_linear_tiles: with bf16 on AMX, a linear + GELU (BERT's intermediate dense, after a
// LayerNorm whose bf16 output it reads, as there) read only by a
// linear in its K-block mode (K >= 1280: the output dense) writes its output in 32-row blocks of A
// tiles and the second reads them in place; the graph's output is the same to the bit as without
// the pass (TAIYI_LINK_LINEAR_TILES=0), also on replay. No link where the value is also a graph
// output, where another op reads it too, or where its rows are no multiple of 32.
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include "graph_testing.h"
#include "taiyi/graph/executor.h"
#include "taiyi/graph/passes/passes.h"
#include "taiyi/graph/tracer.h"
#include "taiyi/ops/cpu/cpu_isa.h"
#include "taiyi/ops/ops.h"
#include "taiyi/ops/prepared.h"
#include "test_util.h"

namespace taiyi::graph {
namespace {

using testing::max_abs_diff;
using testing::random_tensor;

class LinkLinearTiles : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!ops::bf16_supported() || !ops::cpu::cpu_has_amx_bf16())
      GTEST_SKIP() << "no bf16 compute here, or no AMX-BF16: no AMX linears";
    unsetenv("TAIYI_BF16_EMULATE");
  }
  const Tensor w1 = random_tensor({1280, 256}, 1, -0.1f, 0.1f), b1 = random_tensor({1280}, 2);
  const Tensor w2 = random_tensor({96, 1280}, 3, -0.05f, 0.05f), b2 = random_tensor({96}, 4);
};

TEST_F(LinkLinearTiles, TheOutputDenseReadsTheIntermediatesTiles) {
  const auto fn = [&](const std::vector<Tensor>& in) {
    const Tensor h = ops::gelu(ops::linear(ops::layer_norm(in[0], Tensor(), Tensor(), 1e-5f), w1, b1));
    return std::vector<Tensor>{ops::add(ops::linear(h, w2, b2), in[1])};
  };
  const std::vector<InputSpec> sig = {{{2, 48, 256}, DType::F32}, {{2, 48, 96}, DType::F32}};
  ::setenv("TAIYI_LINK_LINEAR_TILES", "0", 1);
  Graph plain = trace(fn, sig);
  run_passes(plain, bf16());
  ::unsetenv("TAIYI_LINK_LINEAR_TILES");
  EXPECT_EQ(described(plain, "A tiles"), 0u);
  Graph g = trace(fn, sig);
  run_passes(g, bf16());
  ASSERT_EQ(described(g, "(writes A tiles)"), 1u) << g.dump();
  ASSERT_EQ(described(g, "(reads A tiles)"), 1u) << g.dump();
  EXPECT_EQ(described(g, "K blocks of 256) bf16-in"), 1u) << g.dump();
  const Executor ex(g), ex_plain(plain);
  for (uint32_t seed : {5u, 6u}) {
    const Tensor x = random_tensor({2, 48, 256}, seed), r = random_tensor({2, 48, 96}, seed + 10);
    const Tensor want = ex_plain.run({x, r})[0], got = ex.run({x, r})[0];
    EXPECT_EQ(max_abs_diff(got, want), 0.0);
    EXPECT_EQ(max_abs_diff(ex.run({x, r})[0], got), 0.0);
  }
}

TEST_F(LinkLinearTiles, NoLinkWhereOthersSeeTheValueOrRowsAreNoMultipleOf32) {
  // the intermediate also a graph output
  const auto both = [&](const std::vector<Tensor>& in) {
    const Tensor h = ops::gelu(ops::linear(ops::layer_norm(in[0], Tensor(), Tensor(), 1e-5f), w1, b1));
    return std::vector<Tensor>{ops::linear(h, w2, b2), h};
  };
  Graph g1 = trace(both, {{{2, 48, 256}, DType::F32}});
  run_passes(g1, bf16());
  EXPECT_EQ(described(g1, "A tiles"), 0u) << g1.dump();
  // another reader of the intermediate
  const auto shared = [&](const std::vector<Tensor>& in) {
    const Tensor h = ops::gelu(ops::linear(ops::layer_norm(in[0], Tensor(), Tensor(), 1e-5f), w1, b1));
    return std::vector<Tensor>{ops::add(ops::linear(h, w2, b2), ops::linear(h, w2, Tensor()))};
  };
  Graph g2 = trace(shared, {{{2, 48, 256}, DType::F32}});
  run_passes(g2, bf16());
  EXPECT_EQ(described(g2, "A tiles"), 0u) << g2.dump();
  // 2 x 17 rows
  const auto pair = [&](const std::vector<Tensor>& in) {
    return std::vector<Tensor>{
        ops::linear(ops::gelu(ops::linear(ops::layer_norm(in[0], Tensor(), Tensor(), 1e-5f), w1, b1)), w2, b2)};
  };
  Graph g3 = trace(pair, {{{2, 17, 256}, DType::F32}});
  run_passes(g3, bf16());
  EXPECT_EQ(described(g3, "A tiles"), 0u) << g3.dump();
}

}  // namespace
}  // namespace taiyi::graph
