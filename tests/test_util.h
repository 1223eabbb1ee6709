// Helpers shared by the test suites: fixture paths, error measures, temp dirs.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <string>

#include "taiyi/tensor/tensor.h"

namespace taiyi::testing {

inline std::string fixture(const std::string& rel) { return std::string(TAIYI_FIXTURES) + "/" + rel; }

// max |a - b| over all elements; shapes must match.
inline double max_abs_diff(const Tensor& a, const Tensor& b) {
  EXPECT_EQ(a.shape(), b.shape()) << a.describe() << " vs " << b.describe();
  if (a.shape() != b.shape()) return INFINITY;
  double m = 0;
  const Tensor ac = a.to(DType::F32).contiguous(), bc = b.to(DType::F32).contiguous();
  const float* pa = ac.data<float>();
  const float* pb = bc.data<float>();
  for (int64_t i = 0; i < ac.numel(); ++i) {
    const double d = std::fabs(static_cast<double>(pa[i]) - pb[i]);
    if (std::isnan(d)) return INFINITY;
    m = std::max(m, d);
  }
  return m;
}

// ||a - b|| / ||b|| (L2 over all elements); shapes must match.
inline double relative_l2(const Tensor& a, const Tensor& b) {
  EXPECT_EQ(a.shape(), b.shape()) << a.describe() << " vs " << b.describe();
  if (a.shape() != b.shape()) return INFINITY;
  const Tensor ac = a.to(DType::F32).contiguous(), bc = b.to(DType::F32).contiguous();
  const float* pa = ac.data<float>();
  const float* pb = bc.data<float>();
  double num = 0, den = 0;
  for (int64_t i = 0; i < ac.numel(); ++i) {
    const double d = static_cast<double>(pa[i]) - pb[i];
    num += d * d;
    den += static_cast<double>(pb[i]) * pb[i];
  }
  return std::isnan(num) ? INFINITY : std::sqrt(num / std::max(den, 1e-300));
}

inline Tensor random_tensor(const Shape& shape, uint32_t seed, float lo = -1.0f, float hi = 1.0f) {
  Tensor t = Tensor::empty(shape);
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(lo, hi);
  float* d = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) d[i] = u(rng);
  return t;
}

// A fresh directory under the test temp dir, removed at destruction.
class TempDir {
 public:
  explicit TempDir(const std::string& name) {
    const char* base = std::getenv("TMPDIR");
    path_ = std::filesystem::path(base ? base : "/tmp") /
            ("taiyi-test-" + name + "-" + std::to_string(std::random_device{}()));
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  std::string path() const { return path_.string(); }
  std::string operator/(const std::string& rel) const { return (path_ / rel).string(); }

 private:
  std::filesystem::path path_;
};

// A gtest parameter name from any string (non-alphanumerics become '_').
inline std::string test_name(std::string s) {
  for (char& c : s)
    if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
  return s;
}

// Copies a fixture model folder to `dst` (so a test can break one file of it).
inline void copy_folder(const std::string& src, const std::string& dst) {
  std::filesystem::copy(src, dst, std::filesystem::copy_options::recursive);
}

}  // namespace taiyi::testing
