// timestep_embedding against values worked out independently in Python with float32
// emulation (struct round-trips after every torch f32 operation; exp/sin/cos in double,
// rounded once), and against the formula re-evaluated in f32 for every element.
#include <gtest/gtest.h>

#include <cmath>

#include "op_testing.h"
#include "taiyi/ops/ops.h"

namespace taiyi::ops_test {
namespace {

// diffusers get_timestep_embedding, step by step in f32 as torch computes it on CPU.
std::vector<float> embedding_formula(const std::vector<float>& ts, int dim, bool flip, float shift, float scale,
                                     float max_period) {
  const int half = dim / 2;
  std::vector<float> out;
  for (float t : ts) {
    std::vector<float> s(half), c(half);
    for (int i = 0; i < half; ++i) {
      float e = static_cast<float>(-std::log(static_cast<double>(max_period))) * static_cast<float>(i);
      e = e / (static_cast<float>(half) - shift);
      const float freq = static_cast<float>(std::exp(static_cast<double>(e)));
      float arg = t * freq;
      arg = arg * scale;
      s[i] = static_cast<float>(std::sin(static_cast<double>(arg)));
      c[i] = static_cast<float>(std::cos(static_cast<double>(arg)));
    }
    const std::vector<float>& first = flip ? c : s;
    const std::vector<float>& second = flip ? s : c;
    out.insert(out.end(), first.begin(), first.end());
    out.insert(out.end(), second.begin(), second.end());
    if (dim % 2) out.push_back(0.0f);
  }
  return out;
}

void expect_bits(const Tensor& y, int64_t row, const std::vector<std::pair<int, float>>& expected) {
  for (const auto& [col, value] : expected)
    EXPECT_EQ(static_cast<float>(y.item(row * y.size(1) + col)), value) << "row " << row << " col " << col;
}

TEST(TimestepEmbedding, StableDiffusionUNetSettings) {
  // UNet2DConditionModel: dim 320, flip_sin_to_cos=True, freq_shift=0; i64 timesteps as the schedulers give.
  const Tensor t = Tensor::from_vector<int64_t>({999, 1, 0}, {3});
  const Tensor y = ops::timestep_embedding(t, 320, true, 0.0f);
  ASSERT_EQ(y.shape(), (Shape{3, 320}));
  expect_bits(y, 0,
              {{0, 0x1.ffd21cp-1f},
               {1, 0x1.9af88cp-1f},
               {2, -0x1.1ccbbp-2f},
               {80, -0x1.b05e5ap-1f},
               {159, 0x1.fd22d4p-1f},
               {160, -0x1.b1887p-6f},
               {161, 0x1.315d14p-1f},
               {300, 0x1.3e23b4p-2f},
               {319, 0x1.b0a0c2p-4f}});
  expect_bits(y, 1,
              {{0, 0x1.14a28p-1f},
               {1, 0x1.2c4a3ap-1f},
               {80, 0x1.fff972p-1f},
               {159, 1.0f},
               {160, 0x1.aed548p-1f},
               {300, 0x1.4b96c2p-12f},
               {319, 0x1.bc488p-14f}});
  expect_bits(y, 2, {{0, 1.0f}, {159, 1.0f}, {160, 0.0f}, {319, 0.0f}});
}

TEST(TimestepEmbedding, OddDimShiftScaleAndFloatTimesteps) {
  // dim 7 (odd: a zero column), freq_shift 1, scale 2, no flip, f32 timesteps.
  const Tensor t = Tensor::from_vector<float>({17.25f, 0.5f}, {2});
  const Tensor y = ops::timestep_embedding(t, 7, false, 1.0f, 2.0f);
  ASSERT_EQ(y.shape(), (Shape{2, 7}));
  expect_bits(y, 0,
              {{0, 0x1.d6effap-5f},
               {1, 0x1.5a503ap-2f},
               {2, 0x1.c4328ep-9f},
               {3, -0x1.ff273cp-1f},
               {4, 0x1.e1d4a4p-1f},
               {5, 0x1.ffff38p-1f},
               {6, 0.0f}});
  expect_bits(y, 1, {{0, 0x1.aed548p-1f}, {1, 0x1.47acaep-7f}, {2, 0x1.a36e2cp-14f}, {3, 0x1.14a28p-1f}, {6, 0.0f}});
}

TEST(TimestepEmbedding, Int32Timesteps) {
  const Tensor y = ops::timestep_embedding(Tensor::from_vector<int32_t>({500}, {1}), 8, false, 1.0f);
  expect_bits(y, 0,
              {{0, -0x1.deff92p-2f},
               {1, -0x1.e040b2p-1f},
               {2, 0x1.c2e39ep-1f},
               {3, 0x1.996de6p-5f},
               {4, -0x1.c487e4p-1f},
               {5, -0x1.62f8e4p-2f},
               {6, 0x1.e526c6p-2f},
               {7, 0x1.ff5c32p-1f}});
}

TEST(TimestepEmbedding, EveryElementFollowsTheF32Formula) {
  struct Case {
    int dim;
    bool flip;
    float shift, scale, max_period;
  };
  const std::vector<float> ts = {0.0f, 1.0f, 13.0f, 261.0f, 999.0f, 0.37f};
  for (const Case& c : {Case{320, true, 0.0f, 1.0f, 10000.0f}, Case{33, false, 1.0f, 1.0f, 10000.0f},
                        Case{64, true, 1.0f, 1000.0f, 100.0f}, Case{1, false, 0.0f, 1.0f, 10000.0f}}) {
    SCOPED_TRACE("dim " + std::to_string(c.dim));
    const Tensor y =
        ops::timestep_embedding(Tensor::from_vector(ts, {6}), c.dim, c.flip, c.shift, c.scale, c.max_period);
    const std::vector<float> ref = embedding_formula(ts, c.dim, c.flip, c.shift, c.scale, c.max_period);
    ASSERT_EQ(y.numel(), static_cast<int64_t>(ref.size()));
    for (size_t i = 0; i < ref.size(); ++i) ASSERT_EQ(static_cast<float>(y.item(i)), ref[i]) << "element " << i;
  }
}

TEST(TimestepEmbedding, RejectsBadArguments) {
  EXPECT_TRUE(throws_error(
      [] {
        ops::timestep_embedding(Tensor::zeros({2, 1}, DType::I64), 8, true, 0.0f);
      },
      {"timestep_embedding", "i64[2, 1]", "rank 1"}));
  EXPECT_TRUE(throws_error([] { ops::timestep_embedding(Tensor::zeros({2}, DType::I64), 0, true, 0.0f); },
                           {"timestep_embedding", "dim"}));
}

}  // namespace
}  // namespace taiyi::ops_test
