// Element-wise ops against double formulas: SiLU, exact GELU, GEGLU, exp, scale, add_scalar,
// clamp, cast, and add/sub/mul under numpy broadcasting (equal shapes, per-channel,
// trailing vectors, outer products, rank-0, strided operands, sizes that cross work chunks).
#include <gtest/gtest.h>

#include <cmath>
#include <functional>

#include "op_testing.h"
#include "taiyi/ops/cpu/cpu_isa.h"
#include "taiyi/ops/ops.h"

namespace taiyi::ops_test {
namespace {

std::vector<double> map(const Tensor& x, const std::function<double(double)>& f) {
  std::vector<double> v = values(x);
  for (double& e : v) e = f(e);
  return v;
}

// 0.5 x (1 + erf(x / sqrt 2)) written with erfc, which does not cancel for negative x.
double gelu_ref(double x) { return 0.5 * x * std::erfc(-x / std::sqrt(2.0)); }

TEST(Unary, SiluAndGelu) {
  // Odd size, wide range (sigmoid saturation, GELU tails), then a size that spans several work chunks.
  for (const Shape& s : {Shape{3, 5, 7}, Shape{5, 40000}}) {
    SCOPED_TRACE(shape_str(s));
    const Tensor x = random_tensor(s, 1, -12.0f, 12.0f);
    const std::vector<double> silu = map(x, [](double v) { return v / (1.0 + std::exp(-v)); });
    const std::vector<double> gelu = map(x, gelu_ref);
    for (bool generic : {false, true}) {
      ops::cpu::set_kernel_level(generic ? ops::cpu::KernelLevel::kPortable : ops::cpu::KernelLevel::kAll);
      EXPECT_TRUE(all_close(ops::silu(x), silu, 1e-6, 0.0));
      // Relative accuracy holds in the negative tail too (values down to ~1e-32 here).
      EXPECT_TRUE(all_close(ops::gelu(x), gelu, 1e-5, 1e-30));
    }
    ops::cpu::set_kernel_level(ops::cpu::KernelLevel::kAll);
  }
}

TEST(Unary, NanPropagates) {
  const Tensor x = Tensor::from_vector<float>({NAN, 1.0f, -100.0f, 100.0f}, {4});
  for (bool generic : {false, true}) {
    ops::cpu::set_kernel_level(generic ? ops::cpu::KernelLevel::kPortable : ops::cpu::KernelLevel::kAll);
    const Tensor s = ops::silu(x), g = ops::gelu(x);
    EXPECT_TRUE(std::isnan(s.item(0)));
    EXPECT_TRUE(std::isnan(g.item(0)));
    EXPECT_EQ(s.item(3), 100.0);
    EXPECT_EQ(g.item(3), 100.0);
    EXPECT_LE(std::abs(s.item(2)), 1e-30);
    EXPECT_LE(std::abs(g.item(2)), 1e-30);
    const Tensor sm = ops::softmax(x.view({1, 4}));
    for (int i = 0; i < 4; ++i) EXPECT_TRUE(std::isnan(sm.item(i))) << i;  // as torch: the whole row
  }
  ops::cpu::set_kernel_level(ops::cpu::KernelLevel::kAll);
}

TEST(Unary, GeluSmallValues) {
  const Tensor x = random_tensor({1000}, 2, -1e-3f, 1e-3f);
  EXPECT_TRUE(all_close(ops::gelu(x), map(x, gelu_ref), 1e-6, 0.0));
}

TEST(Unary, GegluMatchesChunkedGelu) {
  for (const Shape& s : {Shape{2, 3, 10}, Shape{1, 2}, Shape{4, 77, 64}}) {
    SCOPED_TRACE(shape_str(s));
    const Tensor x = random_tensor(s, 3, -4.0f, 4.0f);
    const int64_t n = s.back() / 2, rows = x.numel() / s.back();
    const std::vector<double> xv = values(x);
    std::vector<double> ref(static_cast<size_t>(rows * n));
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 0; j < n; ++j) ref[r * n + j] = xv[r * 2 * n + j] * gelu_ref(xv[r * 2 * n + n + j]);
    const Tensor y = ops::geglu(x);
    Shape expect = s;
    expect.back() = n;
    EXPECT_EQ(y.shape(), expect);
    EXPECT_TRUE(all_close(y, ref, 1e-5, 1e-30));
  }
  EXPECT_TRUE(throws_error([] { ops::geglu(random_tensor({2, 5}, 1)); }, {"geglu", "f32[2, 5]", "odd"}));
}

TEST(Unary, SimpleMaps) {
  const Tensor x = random_tensor({4, 9, 5}, 4, -5.0f, 5.0f).transpose(0, 2);  // strided input
  EXPECT_TRUE(all_close(ops::exp(x), map(x, [](double v) { return std::exp(v); }), 2e-7, 0.0));
  EXPECT_TRUE(all_close(ops::scale(x, 0.18215f), map(x, [](double v) { return v * double{0.18215f}; }), 1e-7, 0.0));
  EXPECT_TRUE(all_close(ops::add_scalar(x, 2.5f), map(x, [](double v) { return v + 2.5; }), 1e-7, 0.0));
  EXPECT_TRUE(all_close(ops::clamp(x, -1.0f, 2.0f), map(x, [](double v) { return std::min(std::max(v, -1.0), 2.0); }),
                        0.0, 0.0));
  const Tensor y = ops::clamp(Tensor::from_vector<float>({NAN, -3.0f, 3.0f}, {3}), -1.0f, 1.0f);
  EXPECT_TRUE(std::isnan(y.item(0)));
  EXPECT_EQ(y.item(1), -1.0);
  EXPECT_EQ(y.item(2), 1.0);
  EXPECT_TRUE(throws_error([] { ops::silu(Tensor::zeros({3}, DType::I64)); }, {"silu", "i64[3]", "must be f32"}));
}

TEST(Unary, Cast) {
  const Tensor x = random_tensor({3, 4}, 5).transpose(0, 1);
  const Tensor same = ops::cast(x, DType::F32);
  EXPECT_TRUE(same.is_contiguous());
  EXPECT_TRUE(all_close(same, values(x), 0.0, 0.0));
  const Tensor bf = ops::cast(x, DType::BF16);
  EXPECT_EQ(bf.dtype(), DType::BF16);
  EXPECT_TRUE(all_close(ops::cast(bf, DType::F32), values(x), 1.0 / 256, 0.0));
  const Tensor ints = ops::cast(Tensor::from_vector<int64_t>({3, -7, 999}, {3}), DType::F32);
  EXPECT_EQ(values(ints), (std::vector<double>{3, -7, 999}));
}

// y = op(a, b) with numpy broadcasting, by explicit index arithmetic.
std::vector<double> broadcast_reference(const Tensor& a, const Tensor& b, const Shape& out,
                                        const std::function<double(double, double)>& op) {
  const std::vector<double> av = values(a), bv = values(b);
  const int nd = static_cast<int>(out.size());
  std::vector<double> y(static_cast<size_t>(shape_numel(out)));
  for (int64_t i = 0; i < static_cast<int64_t>(y.size()); ++i) {
    int64_t rem = i, ia = 0, ib = 0, sa = 1, sb = 1;
    for (int d = nd - 1; d >= 0; --d) {
      const int64_t idx = rem % out[d];
      rem /= out[d];
      const int da = d - (nd - a.ndim()), db = d - (nd - b.ndim());
      if (da >= 0) {
        ia += (a.size(da) == 1 ? 0 : idx) * sa;
        sa *= a.size(da);
      }
      if (db >= 0) {
        ib += (b.size(db) == 1 ? 0 : idx) * sb;
        sb *= b.size(db);
      }
    }
    y[i] = op(av[ia], bv[ib]);
  }
  return y;
}

TEST(Binary, Broadcasting) {
  struct Case {
    Shape a, b, out;
  };
  const Case cases[] = {
      {{2, 3, 5, 7}, {2, 3, 5, 7}, {2, 3, 5, 7}},  // same shape
      {{2, 3, 5, 7}, {2, 3, 1, 1}, {2, 3, 5, 7}},  // per-(sample, channel): time embedding into a ResNet block
      {{2, 5, 7}, {7}, {2, 5, 7}},                 // bias over the last dim
      {{7}, {2, 5, 7}, {2, 5, 7}},                 // the same, reversed
      {{5, 1}, {1, 7}, {5, 7}},                    // outer
      {{3, 1, 4}, {5, 1}, {3, 5, 4}},              // both broadcast, ranks differ
      {{}, {3, 2}, {3, 2}},                        // rank-0
      {{4, 3}, {}, {4, 3}},
      {{3, 50, 300}, {50, 1}, {3, 50, 300}},  // more than one work chunk, per-row scalar
      {{2, 40000}, {2, 40000}, {2, 40000}},   // flat, several chunks
      {{1, 1}, {1}, {1, 1}},
  };
  uint32_t seed = 10;
  for (const Case& c : cases) {
    SCOPED_TRACE(shape_str(c.a) + " with " + shape_str(c.b));
    const Tensor a = random_tensor(c.a, seed++), b = random_tensor(c.b, seed++, 0.5f, 2.0f);
    const Tensor sum = ops::add(a, b), diff = ops::sub(a, b), prod = ops::mul(a, b);
    EXPECT_EQ(sum.shape(), c.out);
    EXPECT_TRUE(all_close(sum, broadcast_reference(a, b, c.out, std::plus<double>()), 1e-7, 1e-7));
    EXPECT_TRUE(all_close(diff, broadcast_reference(a, b, c.out, std::minus<double>()), 1e-7, 1e-7));
    EXPECT_TRUE(all_close(prod, broadcast_reference(a, b, c.out, std::multiplies<double>()), 1e-7, 0.0));
  }
}

TEST(Binary, StridedOperands) {
  const Tensor a = random_tensor({7, 5, 3}, 1).permute({2, 1, 0});  // [3, 5, 7]
  const Tensor b = random_tensor({5, 14}, 2).slice(1, 0, 14, 2);    // [5, 7], column stride 2
  EXPECT_TRUE(all_close(ops::add(a, b), broadcast_reference(a, b, {3, 5, 7}, std::plus<double>()), 1e-7, 1e-7));
  const Tensor c = random_tensor({3, 1, 7}, 3).expand({3, 5, 7});  // already-expanded view
  EXPECT_TRUE(all_close(ops::mul(a, c), broadcast_reference(a, c, {3, 5, 7}, std::multiplies<double>()), 1e-7, 0.0));
}

// A channels-last view added to an NCHW tensor (the VAE attention's output and its residual):
// a transposed operand, small (the general path) and large (the 32 x 32 tiles, sizes off them), either side.
TEST(Binary, TransposedOperandTiles) {
  const Tensor nhwc = random_tensor({2, 9, 11, 37}, 1).permute({0, 3, 1, 2});  // [2, 37, 9, 11]
  const Tensor nchw = random_tensor({2, 37, 9, 11}, 2);
  EXPECT_TRUE(all_close(ops::add(nhwc, nchw), broadcast_reference(nhwc, nchw, {2, 37, 9, 11}, std::plus<double>()),
                        1e-7, 1e-7));
  const Tensor wide = random_tensor({1, 70, 90, 50}, 3).permute({0, 3, 1, 2}), flat = random_tensor({1, 50, 70, 90}, 4);
  EXPECT_TRUE(all_close(ops::sub(flat, wide), broadcast_reference(flat, wide, {1, 50, 70, 90}, std::minus<double>()),
                        1e-7, 1e-7));
  EXPECT_TRUE(all_close(ops::mul(wide, flat),
                        broadcast_reference(wide, flat, {1, 50, 70, 90}, std::multiplies<double>()), 1e-7, 0.0));
}

TEST(Binary, RejectsBadShapes) {
  EXPECT_TRUE(throws_error(
      [] {
        ops::add(random_tensor({2, 3}, 1), random_tensor({4}, 2));
      },
      {"add", "f32[2, 3]", "f32[4]", "broadcast"}));
  EXPECT_TRUE(throws_error([] { ops::mul(random_tensor({2, 3}, 1), Tensor()); }, {"mul", "undefined"}));
  EXPECT_TRUE(throws_error([] { ops::sub(random_tensor({2}, 1), Tensor::zeros({2}, DType::I32)); },
                           {"sub", "i32[2]", "must be f32"}));
}

}  // namespace
}  // namespace taiyi::ops_test
