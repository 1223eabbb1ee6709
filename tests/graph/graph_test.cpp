// Graph mode's core: tracing records the model code's op calls (views included), folds
// what depends on constants only, and the executor replays the graph to the same numbers
// as eager mode; GraphFunction compiles once per input signature.
#include <gtest/gtest.h>

#include "taiyi/graph/graph_function.h"
#include "test_util.h"

namespace taiyi::graph {
namespace {

using testing::max_abs_diff;
using testing::random_tensor;

// A miniature of the UNet's building blocks: conv, group norm + SiLU, a residual,
// a transformer-style attention over H*W, and views in between.
struct Block {
  Tensor conv_w = random_tensor({8, 4, 3, 3}, 1, -0.3f, 0.3f), conv_b = random_tensor({8}, 2);
  Tensor gamma = random_tensor({8}, 3, 0.5f, 1.5f), beta = random_tensor({8}, 4);
  Tensor wq = random_tensor({8, 8}, 5, -0.3f, 0.3f), wo = random_tensor({8, 8}, 6, -0.3f, 0.3f);
  Tensor bo = random_tensor({8}, 7);
  Tensor table = random_tensor({10, 8}, 8);

  Tensor operator()(const Tensor& x) const {
    Tensor h = ops::conv2d(x, conv_w, conv_b, ops::Conv2dParams::same(1));
    h = ops::silu(ops::group_norm(h, 2, gamma, beta, 1e-5f));
    const int64_t b = h.size(0), c = h.size(1), hw = h.size(2) * h.size(3);
    Tensor seq = ops::reshape(ops::permute(h, {0, 2, 3, 1}), {b, hw, c});
    const Tensor q = ops::linear(seq, wq, Tensor());
    seq = ops::add(ops::linear(ops::attention(q, q, seq, 2, 0.5f), wo, bo), seq);
    // A slice of a constant: folded while tracing, not a node.
    seq = ops::add(seq, ops::slice(table, 0, 3, 4));
    h = ops::contiguous(ops::permute(ops::reshape(seq, {b, x.size(2), x.size(3), c}), {0, 3, 1, 2}));
    const auto halves = ops::chunk(h, 2, 1);
    return ops::concat({ops::upsample_nearest(halves[1], 2 * x.size(2), 2 * x.size(3)),
                        ops::upsample_nearest(halves[0], 2 * x.size(2), 2 * x.size(3))},
                       1);
  }
};

TEST(Graph, TraceRecordsOpsAndReplayEqualsEager) {
  const Block block;
  const Tensor x = random_tensor({2, 4, 5, 6}, 11);
  const Graph g = trace([&](const std::vector<Tensor>& in) { return std::vector<Tensor>{block(in[0])}; },
                        {{x.shape(), DType::F32}});
  EXPECT_EQ(g.count(ops::OpKind::kConv2d), 1u);
  EXPECT_EQ(g.count(ops::OpKind::kAttention), 1u);
  EXPECT_EQ(g.count(ops::OpKind::kPermute), 2u);
  EXPECT_EQ(g.count(ops::OpKind::kSlice), 2u);  // the two chunks; the constant's slice was folded
  EXPECT_EQ(g.count(ops::OpKind::kUpsampleNearest), 2u);
  const Executor ex(g);
  const Tensor graph_out = ex.run({x})[0];
  const Tensor eager_out = block(x);
  EXPECT_EQ(max_abs_diff(graph_out, eager_out), 0.0);
  // Replays see new inputs.
  const Tensor x2 = random_tensor({2, 4, 5, 6}, 12);
  EXPECT_EQ(max_abs_diff(ex.run({x2})[0], block(x2)), 0.0);
}

TEST(Graph, ReadingDataWhileTracingIsAClearError) {
  try {
    trace([](const std::vector<Tensor>& in) { return std::vector<Tensor>{ops::scale(in[0], in[0].item(0))}; },
          {{{3}, DType::F32}});
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("graph-mode trace value"), std::string::npos) << e.what();
  }
}

TEST(Graph, InputsMustMatchTheTracedSignature) {
  const Graph g = trace([](const std::vector<Tensor>& in) { return std::vector<Tensor>{ops::silu(in[0])}; },
                        {{{2, 3}, DType::F32}});
  const Executor ex(g);
  EXPECT_THROW(ex.run({Tensor::zeros({3, 2})}), Error);
  EXPECT_THROW(ex.run({}), Error);
}

TEST(Graph, DeadValueEliminationDropsUnusedWorkOnly) {
  Graph g = trace(
      [](const std::vector<Tensor>& in) {
        ops::exp(in[0]);  // computed and thrown away
        return std::vector<Tensor>{ops::add(ops::silu(in[0]), in[0])};
      },
      {{{4, 5}, DType::F32}});
  ASSERT_EQ(g.nodes.size(), 3u);
  const Tensor x = random_tensor({4, 5}, 3);
  const Tensor before = Executor(g).run({x})[0];
  EXPECT_TRUE(dead_value_elimination(g));
  EXPECT_EQ(g.nodes.size(), 2u);
  EXPECT_EQ(g.count(ops::OpKind::kExp), 0u);
  EXPECT_EQ(max_abs_diff(Executor(g).run({x})[0], before), 0.0);
  EXPECT_FALSE(dead_value_elimination(g));
}

TEST(GraphFunction, CompilesOncePerSignature) {
  int traces = 0;
  GraphFunction f(
      [&](const std::vector<Tensor>& in) {
        ++traces;
        return std::vector<Tensor>{ops::scale(in[0], 2.0f)};
      },
      "double");
  const Tensor a = random_tensor({3}, 1), b = random_tensor({4}, 2);
  EXPECT_EQ(f({a})[0].item(1), a.item(1) * 2.0f);
  f({random_tensor({3}, 5)});
  EXPECT_EQ(traces, 1);
  EXPECT_EQ(f({b})[0].item(3), b.item(3) * 2.0f);
  EXPECT_EQ(traces, 2);
  EXPECT_EQ(f.compiles().size(), 2u);
  EXPECT_EQ(f.compiles()[0].nodes, 1u);
  EXPECT_EQ(parse_mode("graph"), Mode::kGraph);
  EXPECT_THROW(parse_mode("static"), Error);
}

// Functions that take turns share one workspace: it grows to the largest arena + scratch, not
// their sum, and each call still computes what eager mode does, whatever ran in between (graph
// outputs live outside the workspace, so earlier results stay intact).
TEST(GraphFunction, FunctionsTakingTurnsShareOneWorkspace) {
  const Block block;
  const auto big_fn = [&](const std::vector<Tensor>& in) { return std::vector<Tensor>{block(in[0])}; };
  const auto small_fn = [&](const std::vector<Tensor>& in) {
    return std::vector<Tensor>{ops::silu(ops::scale(ops::add(in[0], in[0]), 0.5f))};
  };
  const auto workspace = std::make_shared<Workspace>();
  GraphFunction big(big_fn, "big", {}, workspace), small(small_fn, "small", {}, workspace);
  const Tensor x = random_tensor({2, 4, 8, 8}, 11), y = random_tensor({3, 40}, 12);
  const Tensor want_big = big_fn({x})[0], want_small = small_fn({y})[0];
  const Tensor s1 = small({y})[0];
  const size_t after_small = workspace->bytes();
  const Tensor b1 = big({x})[0];
  const size_t after_big = workspace->bytes();
  const Tensor s2 = small({y})[0];
  const Tensor b2 = big({x})[0];
  for (const Tensor& t : {s1, s2}) EXPECT_LE(max_abs_diff(t, want_small), 1e-6);
  for (const Tensor& t : {b1, b2}) EXPECT_LE(max_abs_diff(t, want_big), 1e-5);
  // Each on its own would need: the shared one holds the larger, not the sum.
  const auto own_big = std::make_shared<Workspace>(), own_small = std::make_shared<Workspace>();
  GraphFunction(big_fn, "big", {}, own_big)({x});
  GraphFunction(small_fn, "small", {}, own_small)({y});
  EXPECT_GT(own_small->bytes(), 0u);
  EXPECT_GT(own_big->bytes(), own_small->bytes());
  EXPECT_GE(own_big->bytes(), big.compiles()[0].arena_bytes);
  EXPECT_EQ(after_small, own_small->bytes());
  EXPECT_EQ(after_big, own_big->bytes());
  EXPECT_EQ(workspace->bytes(), own_big->bytes());  // the small function reuses the big one's memory
}

}  // namespace
}  // namespace taiyi::graph
