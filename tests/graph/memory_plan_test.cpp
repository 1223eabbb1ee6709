// The memory planner: buffers whose live ranges overlap never share bytes, memory is
// reused once a value is dead, views share their base's buffer, outputs get their own
// memory, a fused residual epilogue writes in place when its residual dies there; and an
// executor replaying from its arena gives the eager numbers every run.
#include "taiyi/graph/memory_plan.h"

#include <gtest/gtest.h>

#include "taiyi/graph/executor.h"
#include "taiyi/graph/passes/passes.h"
#include "taiyi/graph/tracer.h"
#include "test_util.h"

namespace taiyi::graph {
namespace {

using testing::max_abs_diff;
using testing::random_tensor;

std::vector<Tensor> chain(const std::vector<Tensor>& in) {
  Tensor h = in[0];
  std::vector<Tensor> keep;
  for (int i = 0; i < 6; ++i) {
    h = ops::silu(ops::add(h, in[1]));
    if (i % 2 == 0) keep.push_back(h);  // long-lived values, read at the end
  }
  Tensor t = ops::reshape(ops::permute(h, {1, 0}), {-1});  // a view chain of h
  h = ops::concat(keep, 0);
  return {ops::add(ops::reshape(h, {-1}), ops::concat({t, t, t}, 0)), ops::exp(in[0])};
}

TEST(MemoryPlan, LiveBuffersNeverOverlapAndDeadOnesAreReused) {
  const Graph g = trace(chain, {{{8, 16}, DType::F32}, {{8, 16}, DType::F32}});
  const MemoryPlan plan = plan_memory(g);
  EXPECT_GT(plan.arena_bytes, 0u);
  EXPECT_LT(plan.arena_bytes, plan.planned_bytes);  // something was reused
  // Live ranges, recomputed independently, against the offsets.
  std::vector<int> first(g.values.size(), -1), last(g.values.size(), -1);
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    if (!node_is_alias(g, g.nodes[i])) first[g.nodes[i].output] = static_cast<int>(i);
    for (int v : g.nodes[i].inputs)
      if (v >= 0) last[plan.alias_of[v]] = std::max(last[plan.alias_of[v]], static_cast<int>(i));
  }
  for (size_t a = 0; a < g.values.size(); ++a) {
    if (plan.offset[a] < 0) continue;
    const int64_t a_end = plan.offset[a] + shape_numel(g.values[a].shape) * 4;
    EXPECT_LE(a_end, static_cast<int64_t>(plan.arena_bytes));
    for (size_t b = a + 1; b < g.values.size(); ++b) {
      if (plan.offset[b] < 0) continue;
      const bool live_together = first[a] <= last[b] && first[b] <= last[a];
      const int64_t b_end = plan.offset[b] + shape_numel(g.values[b].shape) * 4;
      const bool share_bytes = plan.offset[a] < b_end && plan.offset[b] < a_end;
      EXPECT_FALSE(live_together && share_bytes) << "values " << a << " and " << b;
    }
  }
  for (int v : g.outputs) EXPECT_EQ(plan.offset[plan.alias_of[v]], MemoryPlan::kNotPlanned);
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    if (g.nodes[i].kind == ops::OpKind::kPermute) {
      EXPECT_NE(plan.alias_of[g.nodes[i].output], g.nodes[i].output);
    }
  }
}

TEST(MemoryPlan, ArenaReplaysMatchEagerEveryRun) {
  const Executor ex(trace(chain, {{{8, 16}, DType::F32}, {{8, 16}, DType::F32}}));
  for (uint32_t seed = 0; seed < 3; ++seed) {
    const Tensor a = random_tensor({8, 16}, seed), b = random_tensor({8, 16}, seed + 10);
    const auto got = ex.run({a, b});
    const auto want = chain({a, b});
    ASSERT_EQ(got.size(), 2u);
    EXPECT_EQ(max_abs_diff(got[0], want[0]), 0.0);
    EXPECT_EQ(max_abs_diff(got[1], want[1]), 0.0);
    // Outputs own their memory: the next run must not overwrite them.
    const Tensor kept = got[0].clone();
    ex.run({b, a});
    EXPECT_EQ(max_abs_diff(got[0], kept), 0.0);
  }
}

}  // namespace
}  // namespace taiyi::graph

namespace taiyi::graph {
namespace {

using testing::max_abs_diff;
using testing::random_tensor;

// A prepared conv2d or linear with a fused residual writes into the residual's memory when
// nothing reads the residual afterwards: a chain of residual blocks then lives in one buffer.
// Not when the residual is read later, is a graph input, or is also the op's input.
TEST(MemoryPlan, ResidualEpiloguesWriteInPlaceWhenTheResidualDies) {
  const Tensor w1 = random_tensor({8, 8, 3, 3}, 1, -0.2f, 0.2f), w2 = random_tensor({8, 8, 3, 3}, 2, -0.2f, 0.2f);
  const Tensor wl = random_tensor({8, 8}, 3, -0.3f, 0.3f), bl = random_tensor({8}, 4);
  const auto fn = [&](const std::vector<Tensor>& in) {
    const ops::Conv2dParams p = ops::Conv2dParams::same(1);
    const Tensor x0 = ops::silu(in[0]);
    const Tensor a = ops::add(ops::conv2d(ops::silu(x0), w1, Tensor(), p), x0);  // x0 dies: in place
    const Tensor b = ops::add(ops::conv2d(ops::silu(a), w2, Tensor(), p), a);    // a dies: in place
    const Tensor c = ops::add(ops::conv2d(b, w1, Tensor(), p), b);               // b is also x: a copy
    const Tensor d = ops::add(ops::conv2d(ops::silu(c), w2, Tensor(), p), c);    // c read below: a copy
    const Tensor t = ops::permute(d, {0, 2, 3, 1});                              // [1, 6, 6, 8]
    const Tensor e = ops::add(ops::linear(ops::gelu(t), wl, bl), t);             // t is a view: not fused
    const Tensor f = ops::add(ops::linear(ops::gelu(e), wl, bl), e);             // e dies: in place
    const Tensor g = ops::add(ops::linear(ops::gelu(f), wl, bl), in[1]);         // a graph input: a copy
    return std::vector<Tensor>{g, ops::mul(c, c)};
  };
  Graph g = trace(fn, {{{1, 8, 6, 6}, DType::F32}, {{1, 6, 6, 8}, DType::F32}});
  fuse_residual_add(g);
  prepack_weights(g);
  const MemoryPlan plan = plan_memory(g);
  std::vector<bool> in_place;  // per fused node, in order: a b c d f g
  for (const Node& n : g.nodes)
    if (n.prepared && n.inputs.size() > 3)
      in_place.push_back(plan.offset[n.output] >= 0 &&
                         plan.offset[n.output] == plan.offset[plan.alias_of[n.inputs[3]]]);
  EXPECT_EQ(in_place, (std::vector<bool>{true, true, false, false, true, false}));
  const Tensor x = random_tensor({1, 8, 6, 6}, 5), r = random_tensor({1, 6, 6, 8}, 6);
  const auto want = fn({x, r});
  const Executor ex(g);
  for (int run = 0; run < 2; ++run) {
    const auto got = ex.run({x, r});
    EXPECT_LE(max_abs_diff(got[0], want[0]), 1e-4);
    EXPECT_LE(max_abs_diff(got[1], want[1]), 1e-4);
  }
}

// A residual that is a reshape of a whole buffer (the transformer's input, [B, H W, C] over the
// proj_in convolution's output) is taken in place like the buffer itself; one that is a slice of a
// buffer (a part of it, at an offset) is copied.
TEST(MemoryPlan, WholeViewResidualsAreTakenInPlaceSlicesAreNot) {
  const Tensor wl = random_tensor({8, 8}, 3, -0.3f, 0.3f), bl = random_tensor({8}, 4);
  const auto fn = [&](const std::vector<Tensor>& in) {
    const Tensor v = ops::reshape(ops::silu(in[0]), {1, 36, 8});      // a whole view of a buffer
    const Tensor a = ops::add(ops::linear(ops::gelu(v), wl, bl), v);  // v dies: in place
    const Tensor s = ops::slice(ops::silu(in[1]), 0, 1, 2);           // the second half of a buffer
    const Tensor b = ops::add(ops::linear(ops::gelu(s), wl, bl), s);  // a copy
    return std::vector<Tensor>{ops::mul(a, b)};
  };
  Graph g = trace(fn, {{{1, 6, 6, 8}, DType::F32}, {{2, 36, 8}, DType::F32}});
  fuse_residual_add(g);
  prepack_weights(g);
  const MemoryPlan plan = plan_memory(g);
  std::vector<bool> in_place;
  for (const Node& n : g.nodes)
    if (n.prepared && n.inputs.size() > 3)
      in_place.push_back(plan.offset[n.output] >= 0 &&
                         plan.offset[n.output] == plan.offset[plan.alias_of[n.inputs[3]]]);
  EXPECT_EQ(in_place, (std::vector<bool>{true, false})) << g.dump();
  const Tensor x = random_tensor({1, 6, 6, 8}, 5), y = random_tensor({2, 36, 8}, 6);
  const Tensor want = fn({x, y})[0];
  const Executor ex(g);
  for (int run = 0; run < 2; ++run) EXPECT_LE(max_abs_diff(ex.run({x, y})[0], want), 1e-4);
}

}  // namespace
}  // namespace taiyi::graph
