#include "taiyi/tensor/tensor.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>

namespace taiyi {
namespace {

TEST(DType, Bf16RoundTripAndRounding) {
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(1.0f)), 1.0f);
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(-2.5f)), -2.5f);
  // 1 + 2^-8 is exactly halfway between two bf16 values: ties go to even (1.0).
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(1.0f + 1.0f / 256)), 1.0f);
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(1.0f + 3.0f / 256)), 1.0f + 4.0f / 256);
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(std::numeric_limits<float>::quiet_NaN()))));
  EXPECT_TRUE(std::isinf(bf16_to_f32(f32_to_bf16(std::numeric_limits<float>::infinity()))));
}

TEST(DType, F16ExactValuesAndSpecials) {
  EXPECT_EQ(f32_to_f16(1.0f), 0x3c00);
  EXPECT_EQ(f32_to_f16(-2.0f), 0xc000);
  EXPECT_EQ(f32_to_f16(65504.0f), 0x7bff);
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7c00);  // rounds up to inf
  EXPECT_EQ(f32_to_f16(5.960464477539063e-08f), 0x0001);  // smallest subnormal
  EXPECT_EQ(f32_to_f16(2.98e-08f), 0x0000);  // just below half of it
  EXPECT_EQ(f16_to_f32(0x0001), 5.960464477539063e-08f);
  EXPECT_EQ(f16_to_f32(0x03ff), 6.097555160522461e-05f);
  EXPECT_EQ(f16_to_f32(0x7bff), 65504.0f);
  EXPECT_TRUE(std::isinf(f16_to_f32(0xfc00)));
  EXPECT_TRUE(std::isnan(f16_to_f32(0x7e00)));
}

TEST(DType, F16RoundTripsEveryHalf) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const uint16_t x = static_cast<uint16_t>(h);
    if ((x & 0x7c00) == 0x7c00 && (x & 0x3ff)) continue;  // NaN payloads
    ASSERT_EQ(f32_to_f16(f16_to_f32(x)), x) << std::hex << h;
  }
}

TEST(DType, F16RoundsToNearestEven) {
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(-70000.f, 70000.f);
  for (int i = 0; i < 100000; ++i) {
    const float f = u(rng) * (i % 3 == 0 ? 1e-6f : 1.0f);
    const uint16_t h = f32_to_f16(f);
    const float back = f16_to_f32(h);
    if (std::isinf(back)) {
      EXPECT_GE(std::fabs(f), 65520.f);
      continue;
    }
    // No other half is closer.
    const float up = f16_to_f32(static_cast<uint16_t>(h + 1));
    const float down = f16_to_f32(static_cast<uint16_t>(h - 1));
    if (!std::isinf(up) && !std::isnan(up)) {
      EXPECT_LE(std::fabs(back - f), std::fabs(up - f)) << f;
    }
    if ((h & 0x7fff) != 0 && !std::isnan(down)) {
      EXPECT_LE(std::fabs(back - f), std::fabs(down - f)) << f;
    }
  }
}

TEST(Tensor, ViewsShareStorageAndCopiesDoNot) {
  std::vector<float> v(24);
  for (int i = 0; i < 24; ++i) v[i] = static_cast<float>(i);
  Tensor t = Tensor::from_vector(v, {2, 3, 4});
  Tensor p = t.permute({2, 0, 1});
  EXPECT_EQ(p.shape(), (Shape{4, 2, 3}));
  EXPECT_FALSE(p.is_contiguous());
  EXPECT_EQ(p.item(0 * 6 + 1 * 3 + 2), t.item(1 * 12 + 2 * 4 + 0));
  Tensor c = p.contiguous();
  EXPECT_TRUE(c.is_contiguous());
  for (int64_t i = 0; i < 24; ++i) EXPECT_EQ(c.item(i), p.item(i));
  t.data<float>()[0] = 100.f;
  EXPECT_EQ(p.item(0), 100.f);
  EXPECT_EQ(c.item(0), 0.f);
}

TEST(Tensor, SliceReshapeTransposeExpand) {
  std::vector<float> v(30);
  for (int i = 0; i < 30; ++i) v[i] = static_cast<float>(i);
  Tensor t = Tensor::from_vector(v, {5, 6});
  Tensor s = t.slice(1, 1, 6, 2);  // columns 1,3,5
  EXPECT_EQ(s.shape(), (Shape{5, 3}));
  EXPECT_EQ(s.item(4), 9.f);  // row 1, col 3
  Tensor r = s.reshape({15});
  EXPECT_EQ(r.item(4), 9.f);
  EXPECT_THROW(s.view({15}), Error);
  Tensor tr = t.transpose(0, 1);
  EXPECT_EQ(tr.item(1 * 5 + 2), 13.f);
  Tensor e = Tensor::from_vector<float>({1, 2, 3}, {3, 1}).expand({2, 3, 4});
  EXPECT_EQ(e.item(1 * 12 + 2 * 4 + 3), 3.f);
  EXPECT_EQ(t.reshape({-1, 10}).shape(), (Shape{3, 10}));
  EXPECT_THROW(t.reshape({7, -1}), Error);
  EXPECT_THROW(t.norm_dim(2), Error);
  EXPECT_EQ(t.unsqueeze(-1).shape(), (Shape{5, 6, 1}));
  EXPECT_EQ(t.unsqueeze(0).squeeze(0).shape(), (Shape{5, 6}));
}

TEST(Tensor, ConversionsBetweenDtypes) {
  Tensor f = Tensor::from_vector<float>({1.5f, -2.25f, 3.0f, 65504.f}, {4});
  Tensor h = f.to(DType::F16);
  Tensor b = f.to(DType::BF16);
  EXPECT_EQ(h.data_u16()[1], f32_to_f16(-2.25f));
  Tensor back = h.to(DType::F32);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(back.item(i), f.item(i));
  EXPECT_EQ(b.to(DType::F32).item(0), 1.5);
  Tensor i64 = f.slice(0, 0, 3).to(DType::I64);
  EXPECT_EQ(i64.data<int64_t>()[1], -2);
  // Strided source through the generic path.
  Tensor strided = f.slice(0, 0, 4, 2).to(DType::F16).to(DType::F32);
  EXPECT_EQ(strided.item(1), 3.0);
}

TEST(Tensor, FromStorageRefusesOutOfRangeViews) {
  auto st = Storage::allocate(64);
  EXPECT_NO_THROW(Tensor::from_storage(st, 0, {4, 4}, {4, 1}, DType::F32));
  EXPECT_THROW(Tensor::from_storage(st, 4, {4, 4}, {4, 1}, DType::F32), Error);
  EXPECT_THROW(Tensor::from_storage(st, 0, {4, 5}, {5, 1}, DType::F32), Error);
  EXPECT_NO_THROW(Tensor::from_storage(st, 0, {0, 5}, {5, 1}, DType::F32));
  // Hostile shapes and strides must not overflow into an accepted view.
  EXPECT_THROW(Tensor::from_storage(st, 0, {int64_t{1} << 62, 4}, {4, 1}, DType::F32), Error);
  EXPECT_THROW(Tensor::from_storage(st, 0, {3, 3}, {int64_t{1} << 62, 1}, DType::F32), Error);
  EXPECT_THROW(Tensor::from_storage(st, 0, {2}, {-(int64_t{1} << 62)}, DType::F32), Error);
  EXPECT_THROW(Tensor::from_storage(st, size_t{1} << 63, {1}, {1}, DType::F32), Error);
  EXPECT_THROW(shape_numel({int64_t{1} << 40, int64_t{1} << 40}), Error);
  EXPECT_THROW(Tensor::empty({int64_t{1} << 31, int64_t{1} << 31, 4}), Error);
}

TEST(Tensor, AccessWithWrongDtypeThrows) {
  Tensor t = Tensor::zeros({3}, DType::I64);
  EXPECT_THROW(t.data<float>(), Error);
  EXPECT_THROW(Tensor().data<float>(), Error);
}

}  // namespace
}  // namespace taiyi
