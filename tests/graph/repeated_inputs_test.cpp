// Repeated inputs (CompileOptions::repeated_inputs): what is computed from them and constants
// alone is kept between runs and reused while their content stays the same; any change of
// content (a new tensor, or the old one overwritten in place) recomputes it; kept values survive
// other functions overwriting a shared workspace; results always match eager mode.
#include <gtest/gtest.h>

#include <memory>
#include <vector>

#include "taiyi/graph/graph_function.h"
#include "test_util.h"

namespace taiyi::graph {
namespace {

using testing::max_abs_diff;
using testing::random_tensor;

// Cross-attention as in the UNet: queries from x (changes every call), keys and values from the
// context (repeats), through views of the context and of its projections.
struct CrossAttention {
  Tensor wq = random_tensor({16, 8}, 1, -0.4f, 0.4f), wk = random_tensor({16, 12}, 2, -0.4f, 0.4f);
  Tensor wv = random_tensor({16, 12}, 3, -0.4f, 0.4f), wo = random_tensor({8, 16}, 4, -0.4f, 0.4f);

  std::vector<Tensor> operator()(const std::vector<Tensor>& in) const {
    const Tensor& x = in[0];
    const Tensor ctx = ops::reshape(in[1], {in[1].size(0), in[1].size(1), 12});  // a view
    const Tensor k = ops::linear(ctx, wk, Tensor()), v = ops::linear(ops::silu(ctx), wv, Tensor());
    const Tensor a = ops::attention(ops::linear(x, wq, Tensor()), k, v, 2, 0.35f);
    return {ops::add(ops::linear(a, wo, Tensor()), x)};
  }
};

int64_t linear_calls(const Profile& p) {
  const auto it = p.find("linear");
  return it == p.end() ? 0 : it->second.calls;
}

TEST(RepeatedInputs, KeptWhileTheContentRepeats) {
  const CrossAttention fn;
  CompileOptions options;
  options.repeated_inputs = {1};
  GraphFunction f([&](const std::vector<Tensor>& in) { return fn(in); }, "xattn", options);
  const Tensor ctx = random_tensor({2, 5, 3, 4}, 10);
  const Tensor x1 = random_tensor({2, 9, 8}, 11), x2 = random_tensor({2, 9, 8}, 12);

  Profile first, second;
  EXPECT_LE(max_abs_diff(f({x1, ctx}, &first)[0], fn({x1, ctx})[0]), 1e-5);
  const Executor* ex = f.executor_for({x1, ctx});
  ASSERT_NE(ex, nullptr);
  EXPECT_EQ(ex->kept_nodes(), 3u);  // k, silu, v: not the context's view
  EXPECT_EQ(ex->reused_runs(), 0);
  // Same content in a different tensor: the K and V projections are not run again.
  EXPECT_LE(max_abs_diff(f({x2, ctx.clone()}, &second)[0], fn({x2, ctx})[0]), 1e-5);
  EXPECT_EQ(ex->reused_runs(), 1);
  EXPECT_EQ(linear_calls(first), 4);
  EXPECT_EQ(linear_calls(second), 2);

  // New content: recomputed.
  const Tensor ctx2 = random_tensor({2, 5, 3, 4}, 13);
  EXPECT_LE(max_abs_diff(f({x2, ctx2})[0], fn({x2, ctx2})[0]), 1e-5);
  EXPECT_EQ(ex->reused_runs(), 1);
  // The same tensor overwritten in place (one element): recomputed too.
  Tensor mutated = ctx2.clone();
  EXPECT_LE(max_abs_diff(f({x1, mutated})[0], fn({x1, mutated})[0]), 1e-5);
  EXPECT_EQ(ex->reused_runs(), 2);
  mutated.data<float>()[17] += 0.5f;
  EXPECT_LE(max_abs_diff(f({x1, mutated})[0], fn({x1, mutated})[0]), 1e-5);
  EXPECT_EQ(ex->reused_runs(), 2);
}

TEST(RepeatedInputs, KeptValuesSurviveASharedWorkspace) {
  // Another function running in between overwrites the shared arena; the kept K and V live in
  // memory of their own.
  const CrossAttention fn;
  CompileOptions options;
  options.repeated_inputs = {1};
  const auto workspace = std::make_shared<Workspace>();
  GraphFunction f([&](const std::vector<Tensor>& in) { return fn(in); }, "xattn", options, workspace);
  const auto other_fn = [](const std::vector<Tensor>& in) {
    return std::vector<Tensor>{ops::silu(ops::scale(ops::add(in[0], in[0]), 3.0f))};
  };
  GraphFunction other(other_fn, "other", {}, workspace);
  const Tensor ctx = random_tensor({2, 5, 3, 4}, 20), big = random_tensor({64, 1024}, 21);
  // `other` runs first, so the workspace has its final size and both arenas start in one block.
  for (uint32_t step = 0; step < 3; ++step) {
    const Tensor x = random_tensor({2, 9, 8}, 30 + step);
    EXPECT_LE(max_abs_diff(other({big})[0], other_fn({big})[0]), 1e-6);
    EXPECT_LE(max_abs_diff(f({x, ctx})[0], fn({x, ctx})[0]), 1e-5) << "step " << step;
  }
  EXPECT_EQ(f.executor_for({big, ctx}), nullptr);
  EXPECT_EQ(f.compiles().size(), 1u);
  EXPECT_EQ(f.executor_for({random_tensor({2, 9, 8}, 1), ctx})->reused_runs(), 2);
}

TEST(RepeatedInputs, OutputsAndBadPositions) {
  // A graph output computed from the repeated input alone is not kept: the caller owns it and
  // may write to it.
  const Tensor w = random_tensor({6, 4}, 40);
  const auto fn = [&](const std::vector<Tensor>& in) {
    return std::vector<Tensor>{ops::linear(in[1], w, Tensor()), ops::add(in[0], in[0])};
  };
  CompileOptions options;
  options.repeated_inputs = {1};
  GraphFunction f(fn, "outputs", options);
  const Tensor x = random_tensor({3, 6}, 41), c = random_tensor({3, 4}, 42);
  Tensor first = f({x, c})[0];
  first.data<float>()[0] = 1e9f;
  EXPECT_LE(max_abs_diff(f({x, c})[0], fn({x, c})[0]), 1e-6);

  Graph g = trace(fn, {{{3, 6}, DType::F32}, {{3, 4}, DType::F32}});
  EXPECT_THROW(Executor(g, nullptr, {2}), Error);
  EXPECT_THROW(Executor(g, nullptr, {-1}), Error);
}

}  // namespace
}  // namespace taiyi::graph
