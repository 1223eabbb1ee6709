// Shared pieces of the op tests: seeded random tensors, logical-order reads, and a
// closeness check that reports the worst elements. References themselves are
// written out in each test file, in double, as plain loops.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "taiyi/ops/prepared.h"
#include "taiyi/tensor/tensor.h"

namespace taiyi::ops_test {

// Uniform in [lo, hi), f32, contiguous; a different seed gives different data.
inline Tensor random_tensor(const Shape& shape, uint32_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(static_cast<size_t>(shape_numel(shape)));
  for (float& x : v) x = dist(gen);
  return Tensor::from_vector(v, shape);
}

// Values in logical (row-major) order, whatever the strides.
inline std::vector<double> values(const Tensor& t) {
  std::vector<double> v(static_cast<size_t>(t.numel()));
  for (int64_t i = 0; i < t.numel(); ++i) v[i] = t.item(i);
  return v;
}

// Every |actual - expected| <= atol + rtol * |expected|, with atol = atol_frac * max|expected|:
// products that sum many terms carry rounding of the largest terms, not of each result.
inline ::testing::AssertionResult all_close(const Tensor& actual, const std::vector<double>& expected,
                                            double rtol = 1e-5, double atol_frac = 1e-5) {
  if (actual.numel() != static_cast<int64_t>(expected.size()))
    return ::testing::AssertionFailure() << "size " << actual.numel() << " != expected " << expected.size();
  double max_abs = 0.0;
  for (double e : expected) max_abs = std::max(max_abs, std::abs(e));
  const double atol = atol_frac * max_abs;
  const std::vector<double> got = values(actual);
  int64_t bad = 0, worst = -1;
  double worst_excess = 0.0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double err = std::abs(got[i] - expected[i]), tol = atol + rtol * std::abs(expected[i]);
    if (!(err <= tol)) {  // also catches NaN
      ++bad;
      const double excess = std::isnan(err) ? INFINITY : err / std::max(tol, 1e-300);
      if (worst < 0 || excess > worst_excess) worst = static_cast<int64_t>(i), worst_excess = excess;
    }
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  std::ostringstream os;
  os.precision(9);
  os << bad << " of " << got.size() << " elements of " << actual.describe() << " differ; worst at flat index " << worst
     << ": got " << got[worst] << ", expected " << expected[worst] << " (rtol " << rtol << ", atol " << atol << ")";
  return ::testing::AssertionFailure() << os.str();
}

// Runs f and checks that it throws taiyi::Error whose message contains every piece of `parts`.
template <class F>
::testing::AssertionResult throws_error(F&& f, const std::vector<std::string>& parts) {
  try {
    f();
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const std::string& p : parts)
      if (msg.find(p) == std::string::npos)
        return ::testing::AssertionFailure() << "message \"" << msg << "\" lacks \"" << p << "\"";
    return ::testing::AssertionSuccess();
  }
  return ::testing::AssertionFailure() << "no taiyi::Error thrown";
}

// The moments a writer summed (ops::ChannelMoments, write_moments) against the sums of its output y
// ([n, c, h, w] in any layout) about the bias: per sample and channel, within f32's rounding.
inline void expect_moments_of(const ops::ChannelMoments& m, const Tensor& y, const Tensor& bias) {
  ASSERT_EQ(m.n, y.size(0));
  ASSERT_EQ(m.c, y.size(1));
  ASSERT_EQ(m.pixels, y.size(2) * y.size(3));
  const std::vector<double> yv = values(y), bv = values(bias);
  for (int64_t s = 0; s < m.n; ++s)
    for (int64_t c = 0; c < m.c; ++c) {
      double d1 = 0, d2 = 0, abs1 = 0;
      for (int64_t i = 0; i < m.pixels; ++i) {
        const double d = yv[static_cast<size_t>((s * m.c + c) * m.pixels + i)] - bv[static_cast<size_t>(c)];
        d1 += d;
        d2 += d * d;
        abs1 += std::abs(d);
      }
      const auto at = static_cast<size_t>(s * m.c + c);
      EXPECT_EQ(m.shift[static_cast<size_t>(c)], bv[static_cast<size_t>(c)]);
      ASSERT_NEAR(m.d1[at], d1, 1e-5 * abs1 + 1e-6) << "sample " << s << " channel " << c;
      ASSERT_NEAR(m.d2[at], d2, 1e-5 * d2 + 1e-6) << "sample " << s << " channel " << c;
    }
}

}  // namespace taiyi::ops_test
