// Shape ops: concat (any dim, many inputs, strided, other dtypes), split/chunk as views,
// upsample_nearest with torch's index rule, the view wrappers, and bad arguments.
#include <gtest/gtest.h>

#include <cmath>

#include "op_testing.h"
#include "taiyi/ops/ops.h"

namespace taiyi::ops_test {
namespace {

// concat by logical indices: out[..., i, ...] comes from the input whose range covers i.
std::vector<double> concat_reference(const std::vector<Tensor>& xs, int dim, const Shape& out) {
  std::vector<std::vector<double>> vs;
  for (const Tensor& x : xs) vs.push_back(values(x));
  int64_t outer = 1, inner = 1;
  for (int d = 0; d < dim; ++d) outer *= out[d];
  for (int d = dim + 1; d < static_cast<int>(out.size()); ++d) inner *= out[d];
  std::vector<double> y;
  for (int64_t o = 0; o < outer; ++o)
    for (size_t i = 0; i < xs.size(); ++i) {
      const int64_t len = xs[i].size(dim) * inner;
      y.insert(y.end(), vs[i].begin() + o * len, vs[i].begin() + (o + 1) * len);
    }
  return y;
}

TEST(Concat, AlongEveryDim) {
  const Shape base = {2, 3, 4, 5};
  for (int dim = 0; dim < 4; ++dim) {
    SCOPED_TRACE("dim " + std::to_string(dim));
    std::vector<Tensor> xs;
    Shape out = base;
    out[dim] = 0;
    for (int64_t extra : {1, 3, 2}) {
      Shape s = base;
      s[dim] = extra;
      xs.push_back(random_tensor(s, static_cast<uint32_t>(10 * dim + extra)));
      out[dim] += extra;
    }
    const Tensor y = ops::concat(xs, dim);
    EXPECT_EQ(y.shape(), out);
    EXPECT_TRUE(all_close(y, concat_reference(xs, dim, out), 0.0, 0.0));
    EXPECT_TRUE(all_close(ops::concat(xs, dim - 4), concat_reference(xs, dim, out), 0.0, 0.0));  // negative dim
  }
}

TEST(Concat, StridedInputsAndOtherDtypes) {
  const Tensor a = random_tensor({2, 5, 3}, 1).transpose(1, 2);  // [2, 3, 5], strided
  const Tensor b = random_tensor({2, 3, 8}, 2).slice(2, 1, 3);   // [2, 3, 2]
  const Tensor c = random_tensor({2, 3, 1}, 3);
  EXPECT_TRUE(all_close(ops::concat({a, b, c}, 2), concat_reference({a, b, c}, 2, {2, 3, 8}), 0.0, 0.0));
  EXPECT_TRUE(all_close(ops::concat({a}, 1), values(a), 0.0, 0.0));  // one input: a copy
  const Tensor i1 = Tensor::from_vector<int64_t>({1, 2, 3, 4}, {2, 2}),
               i2 = Tensor::from_vector<int64_t>({5, 6}, {2, 1});
  const Tensor y = ops::concat({i1, i2}, 1);
  EXPECT_EQ(y.dtype(), DType::I64);
  EXPECT_EQ(values(y), (std::vector<double>{1, 2, 5, 3, 4, 6}));
  // A large concat (parallel path) along the channel dim, as the UNet's skip connections.
  const Tensor big1 = random_tensor({2, 64, 32, 32}, 4), big2 = random_tensor({2, 32, 32, 32}, 5);
  EXPECT_TRUE(all_close(ops::concat({big1, big2}, 1), concat_reference({big1, big2}, 1, {2, 96, 32, 32}), 0.0, 0.0));
}

TEST(Concat, RejectsMismatches) {
  EXPECT_TRUE(throws_error(
      [] {
        ops::concat({random_tensor({2, 3}, 1), random_tensor({3, 3}, 2)}, 1);
      },
      {"concat", "input 1", "f32[3, 3]", "input 0 f32[2, 3]", "outside dim 1"}));
  EXPECT_TRUE(throws_error([] { ops::concat({}, 0); }, {"concat", "no inputs"}));
  EXPECT_TRUE(throws_error(
      [] {
        ops::concat({random_tensor({2}, 1), Tensor::zeros({2}, DType::I64)}, 0);
      },
      {"concat", "i64[2]"}));
  EXPECT_THROW(ops::concat({random_tensor({2, 3}, 1)}, 2), Error);
}

TEST(Split, ViewsOfTheInput) {
  const Tensor x = random_tensor({3, 10, 2}, 1);
  const std::vector<Tensor> parts = ops::split(x, {2, 0, 5, 3}, 1);
  ASSERT_EQ(parts.size(), 4u);
  EXPECT_EQ(parts[0].shape(), (Shape{3, 2, 2}));
  EXPECT_EQ(parts[1].shape(), (Shape{3, 0, 2}));
  EXPECT_EQ(parts[3].shape(), (Shape{3, 3, 2}));
  EXPECT_EQ(parts[2].storage(), x.storage());  // a view, not a copy
  EXPECT_TRUE(all_close(parts[2], values(x.slice(1, 2, 7)), 0.0, 0.0));
  EXPECT_TRUE(all_close(ops::concat(parts, 1), values(x), 0.0, 0.0));
  EXPECT_TRUE(throws_error([&] { ops::split(x, {4, 5}, 1); }, {"split", "[4, 5]", "add up to 9", "is 10"}));
}

TEST(Chunk, EqualAndUnevenPieces) {
  const Tensor x = random_tensor({2, 8, 3}, 2);
  const std::vector<Tensor> halves = ops::chunk(x, 2, -2);  // CFG / GEGLU style
  ASSERT_EQ(halves.size(), 2u);
  EXPECT_EQ(halves[1].shape(), (Shape{2, 4, 3}));
  EXPECT_TRUE(all_close(halves[1], values(x.slice(1, 4, 8)), 0.0, 0.0));
  // torch.chunk: pieces of ceil(5 / 3) = 2, so [2, 2, 1]; and ceil(5 / 4) = 2 gives only 3 pieces.
  const Tensor y = random_tensor({5}, 3);
  const std::vector<Tensor> three = ops::chunk(y, 3, 0);
  ASSERT_EQ(three.size(), 3u);
  EXPECT_EQ(three[2].size(0), 1);
  EXPECT_EQ(ops::chunk(y, 4, 0).size(), 3u);
  EXPECT_EQ(ops::chunk(y, 9, 0).size(), 5u);
  EXPECT_TRUE(throws_error([&] { ops::chunk(y, 0, 0); }, {"chunk", ">= 1"}));
}

TEST(UpsampleNearest, TorchIndexRule) {
  // Indices torch.nn.functional.interpolate(mode="nearest", size=...) reads, worked out by hand:
  // 3 -> 5: scale 0.6, floor(0, 0.6, 1.2, 1.8, 2.4); 7 -> 3: scale 7/3, floor(0, 2.33, 4.67).
  const Tensor x = Tensor::from_vector<float>({0, 1, 2, 10, 11, 12, 20, 21, 22}, {1, 1, 3, 3});
  EXPECT_EQ(values(ops::upsample_nearest(x, 1, 5)), (std::vector<double>{0, 0, 1, 1, 2}));
  EXPECT_EQ(values(ops::upsample_nearest(x, 5, 1)), (std::vector<double>{0, 0, 10, 10, 20}));
  const Tensor row = Tensor::from_vector<float>({0, 1, 2, 3, 4, 5, 6}, {1, 1, 1, 7});
  EXPECT_EQ(values(ops::upsample_nearest(row, 1, 3)), (std::vector<double>{0, 2, 4}));
}

TEST(UpsampleNearest, MatchesFloatIndexLoop) {
  struct Case {
    Shape x;
    int64_t oh, ow;
  };
  for (const Case& c : {Case{{2, 3, 5, 7}, 10, 14}, Case{{1, 2, 4, 4}, 7, 9}, Case{{1, 1, 13, 6}, 5, 6},
                        Case{{2, 4, 32, 32}, 64, 64}}) {
    SCOPED_TRACE(shape_str(c.x) + " -> " + std::to_string(c.oh) + "x" + std::to_string(c.ow));
    const Tensor x = random_tensor({c.x[0], c.x[1], c.x[3], c.x[2]}, 4).transpose(2, 3);  // strided view
    const int64_t h = c.x[2], w = c.x[3];
    auto src = [](int64_t o, int64_t in, int64_t out) {
      const float s = static_cast<float>(in) / static_cast<float>(out);
      return std::min(static_cast<int64_t>(std::floor(static_cast<float>(o) * s)), in - 1);
    };
    const std::vector<double> xv = values(x);
    std::vector<double> ref;
    for (int64_t p = 0; p < c.x[0] * c.x[1]; ++p)
      for (int64_t i = 0; i < c.oh; ++i)
        for (int64_t j = 0; j < c.ow; ++j) ref.push_back(xv[(p * h + src(i, h, c.oh)) * w + src(j, w, c.ow)]);
    const Tensor y = ops::upsample_nearest(x, c.oh, c.ow);
    EXPECT_EQ(y.shape(), (Shape{c.x[0], c.x[1], c.oh, c.ow}));
    EXPECT_TRUE(all_close(y, ref, 0.0, 0.0));
  }
  EXPECT_TRUE(throws_error(
      [] {
        ops::upsample_nearest(random_tensor({2, 3, 4}, 1), 8, 8);
      },
      {"upsample_nearest", "rank 4"}));
  EXPECT_TRUE(throws_error(
      [] {
        ops::upsample_nearest(random_tensor({1, 1, 2, 2}, 1), 0, 4);
      },
      {"upsample_nearest", "positive"}));
}

TEST(Views, WrapTensorMethods) {
  const Tensor x = random_tensor({2, 3, 4}, 5);
  const Tensor r = ops::reshape(x, {6, -1});
  EXPECT_EQ(r.shape(), (Shape{6, 4}));
  EXPECT_EQ(r.storage(), x.storage());
  const Tensor p = ops::permute(x, {2, 0, 1});
  EXPECT_EQ(p.shape(), (Shape{4, 2, 3}));
  EXPECT_EQ(p.item(1 * 6 + 1 * 3 + 2), x.item(1 * 12 + 2 * 4 + 1));
  const Tensor t = ops::transpose(x, 0, 2);
  EXPECT_EQ(t.shape(), (Shape{4, 3, 2}));
  const Tensor s = ops::slice(x, 1, 1, 3);
  EXPECT_EQ(s.shape(), (Shape{2, 2, 4}));
  EXPECT_EQ(s.item(0), x.item(4));
  const Tensor c = ops::contiguous(t);
  EXPECT_TRUE(c.is_contiguous());
  EXPECT_TRUE(all_close(c, values(t), 0.0, 0.0));
  EXPECT_EQ(ops::reshape(t, {24}).numel(), 24);  // non-contiguous reshape copies
  EXPECT_THROW(ops::reshape(x, {5, 5}), Error);
  EXPECT_TRUE(throws_error([] { ops::permute(Tensor(), {0}); }, {"permute", "undefined"}));
}

}  // namespace
}  // namespace taiyi::ops_test
