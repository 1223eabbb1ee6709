// The noise generators: TorchCpuGenerator bit for bit against the torch goldens (golden/rng.*), and
// PhiloxGenerator against Random123's known answers and values from tools/philox_reference.py, an independent
// re-implementation of AUTOMATIC1111's rng_philox.py in plain Python.
#include "taiyi/pipeline/generator.h"

#include <gtest/gtest.h>

#include <bit>
#include <cstring>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "taiyi/io/config.h"
#include "taiyi/io/tensor_file.h"

namespace taiyi::pipeline {
namespace {

std::string fixture(const std::string& rel) { return std::string(TAIYI_FIXTURES) + "/" + rel; }

std::vector<uint32_t> bits_of(const Tensor& t) {
  const Tensor c = t.contiguous();
  std::vector<uint32_t> bits(static_cast<size_t>(c.numel()));
  if (!bits.empty()) std::memcpy(bits.data(), c.data<float>(), bits.size() * sizeof(uint32_t));
  return bits;
}

// Number of values whose float32 bit patterns differ (shapes must match).
int64_t mismatches(const Tensor& got, const Tensor& want) {
  EXPECT_EQ(got.shape(), want.shape());
  if (got.shape() != want.shape()) return want.numel();
  const auto a = bits_of(got), b = bits_of(want);
  int64_t n = 0;
  for (size_t i = 0; i < a.size(); ++i) n += a[i] != b[i];
  return n;
}

Shape shape_of(const nlohmann::json& j) { return j.get<Shape>(); }

class TorchGoldens : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    tensors_ = new io::TensorMap(io::read_safetensors(fixture("golden/rng.safetensors")));
    manifest_ = new nlohmann::json(io::read_json_file(fixture("golden/rng.json")));
  }
  static void TearDownTestSuite() {
    delete tensors_;
    delete manifest_;
  }
  static io::TensorMap* tensors_;
  static nlohmann::json* manifest_;
};
io::TensorMap* TorchGoldens::tensors_ = nullptr;
nlohmann::json* TorchGoldens::manifest_ = nullptr;

TEST_F(TorchGoldens, EverySeedAndShapeIsBitExact) {
  int cases = 0;
  for (const auto& c : manifest_->at("cases")) {
    if (!c.contains("shape")) continue;  // the sequential case, below
    const std::string name = c.at("name").get<std::string>();
    const uint64_t seed = c.at("seed").get<uint64_t>();
    const Shape shape = shape_of(c.at("shape"));
    TorchCpuGenerator gen(seed);
    const Tensor got = gen.randn(shape);
    EXPECT_EQ(got.dtype(), DType::F32);
    EXPECT_TRUE(got.is_contiguous());
    const int64_t bad = mismatches(got, tensors_->at(name));
    EXPECT_EQ(bad, 0) << name << ": " << bad << " of " << got.numel() << " values differ from torch";
    ++cases;
  }
  // 4 seeds x {1x4x64x64, 2x4x8x12 (vectorised), 7 (scalar)}: the test must not pass by finding nothing.
  EXPECT_EQ(cases, 12);
}

TEST_F(TorchGoldens, OneGeneratorCarriesItsStateAcrossCalls) {
  const nlohmann::json* seq = nullptr;
  for (const auto& c : manifest_->at("cases"))
    if (c.at("name") == "sequential/<i>") seq = &c;
  ASSERT_NE(seq, nullptr);
  TorchCpuGenerator gen(seq->at("seed").get<uint64_t>());
  const auto& shapes = seq->at("shapes");
  ASSERT_EQ(shapes.size(), 5u);  // 3 (scalar), 20 (vectorised with a tail), 256, 5 (uses the cached value), 768
  for (size_t i = 0; i < shapes.size(); ++i) {
    const std::string name = "sequential/" + std::to_string(i);
    const Tensor got = gen.randn(shape_of(shapes[i]));
    const int64_t bad = mismatches(got, tensors_->at(name));
    EXPECT_EQ(bad, 0) << name << ": " << bad << " of " << got.numel() << " values differ from torch";
  }
}

TEST(TorchCpuGenerator, SeedKeepsOnlyItsLow32Bits) {
  for (const Shape& shape : {Shape{7}, Shape{2, 4, 8, 12}}) {
    TorchCpuGenerator a(42), b(4294967338ull);
    EXPECT_EQ(bits_of(a.randn(shape)), bits_of(b.randn(shape))) << shape_str(shape);
    EXPECT_EQ(bits_of(a.randn(shape)), bits_of(b.randn(shape))) << shape_str(shape) << ", second draw";
  }
  TorchCpuGenerator a(42), c(43);
  EXPECT_NE(bits_of(a.randn({16})), bits_of(c.randn({16})));
}

// Box-Muller makes values in pairs and torch keeps the second in the generator, so small draws of 3 + 5 are
// the same values as one draw of 8.
TEST(TorchCpuGenerator, SmallDrawsShareTheCachedSecondValue) {
  TorchCpuGenerator split(7), whole(7);
  const auto first = bits_of(split.randn({3}));
  const auto second = bits_of(split.randn({5}));
  std::vector<uint32_t> joined = first;
  joined.insert(joined.end(), second.begin(), second.end());
  EXPECT_EQ(joined, bits_of(whole.randn({8})));
}

// numel % 16 != 0: the last 16 values are redrawn and recomputed; only the head before them survives.
TEST(TorchCpuGenerator, TailRecomputesTheLastSixteen) {
  TorchCpuGenerator a(5), b(5);
  const auto sixteen = bits_of(a.randn({16}));
  const auto seventeen = bits_of(b.randn({17}));
  ASSERT_EQ(seventeen.size(), 17u);
  EXPECT_EQ(seventeen[0], sixteen[0]);
  EXPECT_NE(std::vector<uint32_t>(seventeen.begin() + 1, seventeen.end()),
            std::vector<uint32_t>(sixteen.begin(), sixteen.end()));
}

TEST(TorchCpuGenerator, EmptyShapeDrawsNothing) {
  TorchCpuGenerator a(3), b(3);
  EXPECT_EQ(a.randn({0, 4}).numel(), 0);
  EXPECT_EQ(bits_of(a.randn({20})), bits_of(b.randn({20})));
}

// Random123 kat_vectors, philox4x32 10: counter, key -> output.
TEST(Philox, Random123KnownAnswers) {
  using C = std::array<uint32_t, 4>;
  using K = std::array<uint32_t, 2>;
  EXPECT_EQ(philox4x32_10(C{0, 0, 0, 0}, K{0, 0}), (C{0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}));
  EXPECT_EQ(philox4x32_10(C{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff}, K{0xffffffff, 0xffffffff}),
            (C{0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}));
  EXPECT_EQ(philox4x32_10(C{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}, K{0xa4093822, 0x299f31d0}),
            (C{0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}));
}

// float32 bit patterns printed by `python3 tools/philox_reference.py`.
TEST(Philox, MatchesTheRngPhiloxPyReimplementation) {
  PhiloxGenerator gen(0);
  EXPECT_EQ(bits_of(gen.randn({3, 4})),
            (std::vector<uint32_t>{0xbf6cb6ad, 0xbed9c6af, 0xc02934c5, 0x3e14ab15, 0xbdf788dc, 0xbf1468e7, 0xbf1f732f,
                                   0xbea8225c, 0xbf898a98, 0xbeb9ee06, 0xbfd5e4fb, 0x4010fe09}));
  // The second call advances the offset (counter word 0).
  EXPECT_EQ(bits_of(gen.randn({5})),
            (std::vector<uint32_t>{0x3e392a6c, 0xbf0d6117, 0x3f6c7f09, 0xbf3c2704, 0x3fb0a3aa}));
  PhiloxGenerator g42(42);
  EXPECT_EQ(bits_of(g42.randn({2, 4})), (std::vector<uint32_t>{0x3e46ace2, 0x400a53f3, 0xbe302e20, 0x3f595bff,
                                                               0xbff652b7, 0x3f272a0b, 0xbf2641c5, 0xbf51494a}));
  // Unlike torch's, the whole 64-bit seed is the key: 2^32 + 42 is not 42.
  PhiloxGenerator g_big(4294967338ull);
  EXPECT_EQ(bits_of(g_big.randn({8})), (std::vector<uint32_t>{0xbf361ef8, 0x3fd320e9, 0x3f89242d, 0xc000036c,
                                                              0xbfaeb588, 0x3d1cd51a, 0x3f87034f, 0xbec79b3f}));
  PhiloxGenerator g_max(~uint64_t{0});
  EXPECT_EQ(bits_of(g_max.randn({4})), (std::vector<uint32_t>{0x3f21de90, 0x3d093850, 0x3f56ce73, 0xc0040fdd}));
}

// rng_philox.py's docstring prints seed 0, shape (3, 4) from an earlier float64 variant of its constants
// (exact 2pi / 2^32); the float32 constants the code uses move each value by < 3e-7.
TEST(Philox, CloseToTheRngPhiloxPyDocstring) {
  const std::vector<double> doc = {-0.92466259, -0.42534415, -2.6438457,  0.14518388,  -0.12086647, -0.57972564,
                                   -0.62285122, -0.32838709, -1.07454231, -0.36314407, -1.67105067, 2.26550497};
  PhiloxGenerator gen(0);
  const Tensor t = gen.randn({3, 4});
  for (size_t i = 0; i < doc.size(); ++i) EXPECT_NEAR(t.item(static_cast<int64_t>(i)), doc[i], 5e-7) << i;
}

TEST(Philox, DeterministicAndSuccessiveCallsDiffer) {
  PhiloxGenerator a(1234), b(1234);
  const auto a1 = bits_of(a.randn({1, 4, 8, 8}));
  EXPECT_EQ(a1, bits_of(b.randn({1, 4, 8, 8})));
  const auto a2 = bits_of(a.randn({1, 4, 8, 8}));
  EXPECT_NE(a1, a2);
  EXPECT_EQ(a2, bits_of(b.randn({1, 4, 8, 8})));
  // The value at index i of a call does not depend on the shape: a prefix of a longer draw.
  PhiloxGenerator c(1234);
  const auto c1 = bits_of(c.randn({10}));
  EXPECT_EQ(c1, std::vector<uint32_t>(a1.begin(), a1.begin() + 10));
}

TEST(Philox, LooksStandardNormal) {
  PhiloxGenerator gen(99);
  const Tensor t = gen.randn({1, 4, 64, 64});
  double sum = 0, sq = 0;
  for (int64_t i = 0; i < t.numel(); ++i) {
    sum += t.item(i);
    sq += t.item(i) * t.item(i);
  }
  const double mean = sum / static_cast<double>(t.numel());
  EXPECT_NEAR(mean, 0.0, 0.05);
  EXPECT_NEAR(sq / static_cast<double>(t.numel()) - mean * mean, 1.0, 0.05);
}

TEST(MakeGenerator, KnowsTorchAndPhiloxOnly) {
  EXPECT_STREQ(make_generator("torch", 1)->name(), "torch");
  EXPECT_STREQ(make_generator("philox", 1)->name(), "philox");
  EXPECT_EQ(bits_of(make_generator("torch", 42)->randn({7})), bits_of(TorchCpuGenerator(42).randn({7})));
  try {
    make_generator("cuda", 1);
    FAIL() << "no error for an unknown generator kind";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'cuda'"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace taiyi::pipeline
