// Torch-CPU and A1111-Philox Gaussian generators, reproduced bit for bit (see generator.h).
//
// torch (1.13 - 2.x, x86; aten/src/ATen/native/cpu/DistributionTemplates.h normal_kernel):
//   * numel >= 16 (float, contiguous): normal_fill_AVX2. Every value first gets a uniform float
//     (mt19937 draw & 0xFFFFFF) * 2^-24; then each block of 16 becomes Box-Muller pairs (j, j + 8), j < 8:
//     u1 = 1 - data[j], u2 = data[j + 8], r = sqrt(-2 log u1), theta = 2pi u2,
//     data[j] = r cos theta, data[j + 8] = r sin theta, with log256_ps / sincos256_ps of avx_mathfun.h (Cephes
//     polynomials in float). When numel % 16 != 0 the last 16 values are redrawn (16 fresh uniforms) and
//     recomputed, overwriting the tail of the last full block. The AVX512 build registers no normal kernel,
//     so AVX512 machines run this AVX2 one too.
//   * numel < 16: at::normal_distribution<double> per element: u1, u2 from 53-bit doubles (two draws each),
//     r = sqrt(-2 log(1 - u2)), theta = 2pi u1; returns r cos theta and caches r sin theta in the generator.
//     (torch 2.x writes log1p(-u2); for these u2 the two agree after rounding to float in every golden.)
// PyTorch's CPU kernels are built by GCC with -mfma and contraction on, so GCC fuses each multiply whose only
// use is an add into an FMA inside the vector math; the scalar port below spells those FMAs out with std::fma
// (found by matching the goldens: the unfused port misses ~1% of the values by one ulp, as a clang-built
// torch would) and forbids the compiler from adding any others.
#include "taiyi/pipeline/generator.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <numbers>

// Every rounding must be where the reference has it: no implicit a * b + c -> fma (GCC contracts across
// statements by default when the target has FMA; clang within an expression).
#pragma STDC FP_CONTRACT OFF
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=off")
#endif

namespace taiyi::pipeline {
namespace {

float from_bits(uint32_t u) { return std::bit_cast<float>(u); }
uint32_t to_bits(float f) { return std::bit_cast<uint32_t>(f); }

// avx_mathfun.h's constants are double literals stored into float arrays: round the double, as it does.
constexpr float f32(double v) { return static_cast<float>(v); }

// log256_ps for one lane (Cephes logf). x is in [2^-24, 1] here, so the NaN/denormal guards never fire.
float cephes_logf(float x) {
  constexpr float kP[9] = {f32(7.0376836292E-2),  f32(-1.1514610310E-1), f32(1.1676998740E-1),
                           f32(-1.2420140846E-1), f32(+1.4249322787E-1), f32(-1.6668057665E-1),
                           f32(+2.0000714765E-1), f32(-2.4999993993E-1), f32(+3.3333331174E-1)};
  constexpr float kQ1 = f32(-2.12194440e-4), kQ2 = f32(0.693359375), kSqrtHalf = f32(0.707106781186547524);
  x = std::max(x, from_bits(0x00800000u));
  const int32_t exponent = static_cast<int32_t>(to_bits(x) >> 23) - 0x7f;
  x = from_bits((to_bits(x) & ~0x7f800000u) | to_bits(0.5f));  // mantissa in [0.5, 1)
  float e = static_cast<float>(exponent) + 1.0f;
  const bool below = x < kSqrtHalf;
  const float tmp = below ? x : 0.0f;
  x = x - 1.0f;
  e = e - (below ? 1.0f : 0.0f);
  x = x + tmp;
  const float z = x * x;
  float y = kP[0];
  for (int i = 1; i < 9; ++i) y = std::fma(y, x, kP[i]);
  y = y * x;
  y = std::fma(y, z, e * kQ1);  // GCC fuses y * z into the add of e * q1 (which stays a rounded product)
  y = y - z * 0.5f;
  x = x + y;
  return x + e * kQ2;  // e * q2 is exact: fused or not, the same
}

// sincos256_ps for one lane (Cephes sinf/cosf, shared range reduction). x is in [0, 2pi) here.
void cephes_sincosf(float x, float* s, float* c) {
  constexpr float kDP1 = f32(-0.78515625), kDP2 = f32(-2.4187564849853515625e-4), kDP3 = f32(-3.77489497744594108e-8);
  constexpr float kSin0 = f32(-1.9515295891E-4), kSin1 = f32(8.3321608736E-3), kSin2 = f32(-1.6666654611E-1);
  constexpr float kCos0 = f32(2.443315711809948E-005), kCos1 = f32(-1.388731625493765E-003),
                  kCos2 = f32(4.166664568298827E-002);
  constexpr float kFourOverPi = f32(1.27323954473516);
  uint32_t sign_sin = to_bits(x) & 0x80000000u;
  x = from_bits(to_bits(x) & 0x7fffffffu);
  int32_t j = static_cast<int32_t>(x * kFourOverPi);  // cvttps: truncation
  j = (j + 1) & ~1;
  const float y = static_cast<float>(j);
  sign_sin ^= static_cast<uint32_t>(j & 4) << 29;
  const uint32_t sign_cos = static_cast<uint32_t>(~(j - 2) & 4) << 29;
  const bool sin_poly = (j & 2) == 0;  // which polynomial gives the sine
  // Extended-precision reduction x - y * pi/4 in three parts.
  x = std::fma(y, kDP1, x);
  x = std::fma(y, kDP2, x);
  x = std::fma(y, kDP3, x);
  const float z = x * x;
  float yc = std::fma(kCos0, z, kCos1);
  yc = std::fma(yc, z, kCos2);
  yc = yc * z;
  yc = std::fma(yc, z, -(z * 0.5f));  // z * 0.5 is exact; y * z is the product GCC fuses
  yc = yc + 1.0f;
  float ys = std::fma(kSin0, z, kSin1);
  ys = std::fma(ys, z, kSin2);
  ys = ys * z;
  ys = std::fma(ys, x, x);
  // The vector code selects with and/andnot and recombines with add/sub; mirror it so signed zeros match.
  const float ysin2 = sin_poly ? ys : 0.0f, ysin1 = sin_poly ? 0.0f : yc;
  ys = ys - ysin2;
  yc = yc - ysin1;
  *s = from_bits(to_bits(ysin1 + ysin2) ^ sign_sin);
  *c = from_bits(to_bits(yc + ys) ^ sign_cos);
}

// normal_fill_16_AVX2 with mean 0, std 1.
void normal_fill_16(float* data) {
  const float two_pi = static_cast<float>(2.0 * std::numbers::pi);  // _mm256_set1_ps(2.0f * pi<double>)
  for (int j = 0; j < 8; ++j) {
    const float u1 = 1.0f - data[j];
    const float u2 = data[j + 8];
    const float radius = std::sqrt(-2.0f * cephes_logf(u1));
    float sin_theta, cos_theta;
    cephes_sincosf(two_pi * u2, &sin_theta, &cos_theta);
    // fmadd(n, std = 1, mean = 0): the + 0 turns a -0 into +0, as the reference does.
    data[j] = radius * cos_theta + 0.0f;
    data[j + 8] = radius * sin_theta + 0.0f;
  }
}

}  // namespace

TorchCpuGenerator::TorchCpuGenerator(uint64_t seed) : engine_(static_cast<uint32_t>(seed)) {}

float TorchCpuGenerator::uniform_float() {
  return static_cast<float>(engine_() & ((1u << 24) - 1)) * (1.0f / static_cast<float>(1u << 24));
}

double TorchCpuGenerator::uniform_double() {
  const uint64_t hi = engine_();
  const uint64_t lo = engine_();
  const uint64_t bits = (hi << 32) | lo;
  return static_cast<double>(bits & ((uint64_t{1} << 53) - 1)) * (1.0 / static_cast<double>(uint64_t{1} << 53));
}

double TorchCpuGenerator::normal_double() {
  if (next_double_normal_) {
    const double cached = *next_double_normal_;
    next_double_normal_.reset();
    return cached;
  }
  const double u1 = uniform_double();
  const double u2 = uniform_double();
  const double r = std::sqrt(-2.0 * std::log(1.0 - u2));
  const double theta = 2.0 * std::numbers::pi * u1;
  next_double_normal_ = r * std::sin(theta);
  return r * std::cos(theta);
}

void TorchCpuGenerator::normal_fill(float* data, int64_t n) {
  for (int64_t i = 0; i < n; ++i) data[i] = uniform_float();
  for (int64_t i = 0; i + 16 <= n; i += 16) normal_fill_16(data + i);
  if (n % 16 != 0) {
    float* tail = data + n - 16;
    for (int i = 0; i < 16; ++i) tail[i] = uniform_float();
    normal_fill_16(tail);
  }
}

Tensor TorchCpuGenerator::randn(const Shape& shape) {
  Tensor out = Tensor::empty(shape);
  const int64_t n = out.numel();
  float* data = out.data<float>();
  if (n >= 16) {
    normal_fill(data, n);
  } else {
    for (int64_t i = 0; i < n; ++i) data[i] = static_cast<float>(normal_double());
  }
  return out;
}

std::array<uint32_t, 4> philox4x32_10(std::array<uint32_t, 4> c, std::array<uint32_t, 2> key) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u, kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      key[0] += kW0;
      key[1] += kW1;
    }
    const uint64_t p0 = uint64_t{kM0} * c[0];
    const uint64_t p1 = uint64_t{kM1} * c[2];
    c = {static_cast<uint32_t>(p1 >> 32) ^ c[1] ^ key[0], static_cast<uint32_t>(p1),
         static_cast<uint32_t>(p0 >> 32) ^ c[3] ^ key[1], static_cast<uint32_t>(p0)};
  }
  return c;
}

Tensor PhiloxGenerator::randn(const Shape& shape) {
  Tensor out = Tensor::empty(shape);
  const int64_t n = out.numel();
  // rng_philox.py puts the element index in one 32-bit counter word.
  if (n > (int64_t{1} << 32))
    throw Error("philox generator: " + shape_str(shape) + " has more than 2^32 values, the most one call can draw");
  // rng_philox.py's constants are float32 arrays; uint32 * float32 array promotes to float64, so the
  // arithmetic is double with float-rounded constants.
  const float inv = static_cast<float>(2.3283064e-10), inv_2pi = static_cast<float>(2.3283064e-10 * 6.2831855);
  const std::array<uint32_t, 2> key = {static_cast<uint32_t>(seed_), static_cast<uint32_t>(seed_ >> 32)};
  float* data = out.data<float>();
  for (int64_t i = 0; i < n; ++i) {
    const auto g = philox4x32_10({offset_, 0, static_cast<uint32_t>(i), 0}, key);
    const double u = g[0] * static_cast<double>(inv) + static_cast<double>(inv / 2);
    const double v = g[1] * static_cast<double>(inv_2pi) + static_cast<double>(inv_2pi / 2);
    // Box-Muller's first value only; g[2], g[3] are discarded, as in rng_philox.py.
    data[i] = static_cast<float>(std::sqrt(-2.0 * std::log(u)) * std::sin(v));
  }
  ++offset_;
  return out;
}

std::unique_ptr<Generator> make_generator(const std::string& kind, uint64_t seed) {
  if (kind == "torch") return std::make_unique<TorchCpuGenerator>(seed);
  if (kind == "philox") return std::make_unique<PhiloxGenerator>(seed);
  throw Error("unknown random generator '" + kind + "' (expected \"torch\" or \"philox\")");
}

}  // namespace taiyi::pipeline
