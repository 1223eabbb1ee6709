// linear and matmul against double loops: leading dims, bias or none, shared and batched
// b, transposed and sliced views (passed to oneDNN as strides), unmergeable batch dims
// (copied), FLOP counts, and bad shapes.
#include <gtest/gtest.h>

#include "op_testing.h"
#include "taiyi/ops/ops.h"

namespace taiyi::ops_test {
namespace {

// y[..., n] = sum_k x[..., k] w[n, k] + bias[n]
std::vector<double> linear_reference(const Tensor& x, const Tensor& w, const Tensor& bias) {
  const int64_t k = x.size(-1), n = w.size(0), m = x.numel() / k;
  const std::vector<double> xv = values(x), wv = values(w);
  std::vector<double> y(static_cast<size_t>(m * n));
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double acc = bias.defined() ? bias.item(j) : 0.0;
      for (int64_t t = 0; t < k; ++t) acc += xv[i * k + t] * wv[j * k + t];
      y[i * n + j] = acc;
    }
  return y;
}

// a [batch..., M, K] @ b [batch..., K, N] or b [K, N].
std::vector<double> matmul_reference(const Tensor& a, const Tensor& b) {
  const int64_t m = a.size(-2), k = a.size(-1), n = b.size(-1), batch = a.numel() / (m * k);
  const std::vector<double> av = values(a), bv = values(b);
  std::vector<double> y(static_cast<size_t>(batch * m * n));
  for (int64_t p = 0; p < batch; ++p) {
    const double* bp = bv.data() + (b.ndim() == 2 ? 0 : p * k * n);
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) {
        double acc = 0.0;
        for (int64_t t = 0; t < k; ++t) acc += av[(p * m + i) * k + t] * bp[t * n + j];
        y[(p * m + i) * n + j] = acc;
      }
  }
  return y;
}

TEST(Linear, MatchesLoop) {
  const Tensor w = random_tensor({13, 7}, 2), bias = random_tensor({13}, 3);
  for (const Shape& xs : {Shape{7}, Shape{5, 7}, Shape{2, 5, 7}, Shape{1, 3, 1, 7}}) {
    SCOPED_TRACE(shape_str(xs));
    const Tensor x = random_tensor(xs, 1);
    const Tensor y = ops::linear(x, w, bias);
    Shape expect = xs;
    expect.back() = 13;
    EXPECT_EQ(y.shape(), expect);
    EXPECT_TRUE(all_close(y, linear_reference(x, w, bias)));
    EXPECT_TRUE(all_close(ops::linear(x, w, Tensor()), linear_reference(x, w, Tensor())));
  }
}

TEST(Linear, LargerThanOneTile) {
  const Tensor x = random_tensor({3, 77, 96}, 4), w = random_tensor({130, 96}, 5), bias = random_tensor({130}, 6);
  EXPECT_TRUE(all_close(ops::linear(x, w, bias), linear_reference(x, w, bias)));
}

TEST(Linear, StridedInputs) {
  // x: a channel slice of a wider tensor (rows stay evenly spaced: no copy needed);
  // x2: a transposed view whose rows do not merge (copied); w: a transposed [K, N] storage.
  const Tensor wide = random_tensor({2, 5, 20}, 1);
  const Tensor x = wide.slice(2, 4, 11);
  const Tensor x2 = random_tensor({5, 2, 7}, 2).transpose(0, 1);
  const Tensor w = random_tensor({7, 9}, 3).transpose(0, 1);
  const Tensor bias = random_tensor({9}, 4);
  EXPECT_TRUE(all_close(ops::linear(x, w, bias), linear_reference(x, w, bias)));
  EXPECT_TRUE(all_close(ops::linear(x2, w, bias), linear_reference(x2, w, bias)));
  const Tensor x3 = random_tensor({7, 5}, 5).transpose(0, 1);  // unit stride down the rows: a transposed matrix
  EXPECT_TRUE(all_close(ops::linear(x3, w, bias), linear_reference(x3, w, bias)));
}

TEST(Linear, EmptyDims) {
  const Tensor w = random_tensor({3, 4}, 1), bias = random_tensor({3}, 2);
  EXPECT_EQ(ops::linear(random_tensor({0, 4}, 3), w, bias).shape(), (Shape{0, 3}));
  // K = 0: an empty sum, so the bias alone.
  const Tensor y = ops::linear(random_tensor({2, 0}, 3), random_tensor({3, 0}, 4), bias);
  EXPECT_TRUE(
      all_close(y, {bias.item(0), bias.item(1), bias.item(2), bias.item(0), bias.item(1), bias.item(2)}, 0.0, 0.0));
  EXPECT_TRUE(all_close(ops::matmul(random_tensor({2, 0}, 5), random_tensor({0, 3}, 6)), std::vector<double>(6, 0.0),
                        0.0, 0.0));
}

TEST(Matmul, MatchesLoop) {
  struct Case {
    Shape a, b;
  };
  const Case cases[] = {
      {{5, 7}, {7, 3}},              // plain 2-D
      {{1, 1}, {1, 1}},              // scalar-sized
      {{3, 5, 7}, {3, 7, 4}},        // batched
      {{2, 3, 5, 7}, {2, 3, 7, 4}},  // two batch dims
      {{2, 3, 5, 7}, {7, 4}},        // shared b
      {{4, 13, 1}, {4, 1, 6}},       // outer products
  };
  uint32_t seed = 10;
  for (const Case& c : cases) {
    SCOPED_TRACE(shape_str(c.a) + " @ " + shape_str(c.b));
    const Tensor a = random_tensor(c.a, seed++), b = random_tensor(c.b, seed++);
    const Tensor y = ops::matmul(a, b);
    Shape expect(c.a.begin(), c.a.end() - 1);
    expect.push_back(c.b.back());
    EXPECT_EQ(y.shape(), expect);
    EXPECT_TRUE(all_close(y, matmul_reference(a, b)));
  }
}

TEST(Matmul, StridedViews) {
  // Transposed last two dims (the k^T of attention scores), a column slice, permuted batch dims.
  const Tensor a = random_tensor({2, 3, 5, 7}, 1);
  const Tensor bt = random_tensor({2, 3, 4, 7}, 2).transpose(-1, -2);  // [2, 3, 7, 4], unit stride in K
  EXPECT_TRUE(all_close(ops::matmul(a, bt), matmul_reference(a, bt)));
  const Tensor at = random_tensor({2, 3, 7, 5}, 3).transpose(-1, -2);  // [2, 3, 5, 7], unit stride in M
  EXPECT_TRUE(all_close(ops::matmul(at, bt), matmul_reference(at, bt)));
  const Tensor a_cols = random_tensor({3, 5, 12}, 4).slice(2, 2, 9);  // [3, 5, 7], row stride 12
  const Tensor b2 = random_tensor({7, 6}, 5);
  EXPECT_TRUE(all_close(ops::matmul(a_cols, b2), matmul_reference(a_cols, b2)));
  const Tensor a_perm = random_tensor({3, 2, 5, 7}, 6).permute({1, 0, 2, 3});  // batch dims do not merge
  const Tensor b_perm = random_tensor({3, 2, 7, 4}, 7).permute({1, 0, 2, 3});
  EXPECT_TRUE(all_close(ops::matmul(a_perm, b_perm), matmul_reference(a_perm, b_perm)));
  EXPECT_TRUE(all_close(ops::matmul(a_perm, b2.slice(1, 0, 4)), matmul_reference(a_perm, b2.slice(1, 0, 4))));
  // Every other column: no unit stride in either dim, which oneDNN rejects; copied and retried.
  const Tensor a_step = random_tensor({5, 14}, 9).slice(1, 0, 14, 2);
  EXPECT_TRUE(all_close(ops::matmul(a_step, b2), matmul_reference(a_step, b2)));
  const Tensor a_heads = random_tensor({2, 5, 3, 7}, 8).transpose(1, 2);  // [2, 3, 5, 7]: heads split out of channels
  EXPECT_TRUE(all_close(ops::matmul(a_heads, bt), matmul_reference(a_heads, bt)));
}

TEST(Matmul, CountsFlops) {
  ops::reset_flop_count();
  ops::matmul(random_tensor({3, 5, 7}, 1), random_tensor({7, 4}, 2));
  EXPECT_EQ(ops::flop_count(), uint64_t{2} * 3 * 5 * 7 * 4);
  ops::reset_flop_count();
  ops::linear(random_tensor({2, 5, 7}, 1), random_tensor({9, 7}, 2), Tensor());
  EXPECT_EQ(ops::flop_count(), uint64_t{2} * 10 * 7 * 9);
}

TEST(Matmul, RejectsBadShapes) {
  EXPECT_TRUE(throws_error(
      [] {
        ops::matmul(random_tensor({5, 7}, 1), random_tensor({6, 3}, 2));
      },
      {"matmul", "f32[5, 7]", "7 columns", "f32[6, 3]", "6 rows"}));
  EXPECT_TRUE(throws_error(
      [] {
        ops::matmul(random_tensor({2, 5, 7}, 1), random_tensor({3, 7, 3}, 2));
      },
      {"matmul", "batch dims", "f32[2, 5, 7]", "f32[3, 7, 3]"}));
  EXPECT_TRUE(throws_error(
      [] {
        ops::matmul(random_tensor({7}, 1), random_tensor({7, 3}, 2));
      },
      {"matmul", "rank >= 2"}));
  EXPECT_TRUE(throws_error(
      [] {
        ops::linear(random_tensor({2, 5, 7}, 1), random_tensor({9, 8}, 2), Tensor());
      },
      {"linear", "f32[2, 5, 7]", "7 features", "f32[9, 8]", "expects 8"}));
  EXPECT_TRUE(throws_error(
      [] {
        ops::linear(random_tensor({2, 7}, 1), random_tensor({9, 7}, 2), random_tensor({8}, 3));
      },
      {"linear", "bias", "f32[8]", "[9]"}));
}

}  // namespace
}  // namespace taiyi::ops_test
