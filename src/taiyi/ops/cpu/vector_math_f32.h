// Branch-free f32 approximations of exp and erfc that GCC and Clang vectorise inside
// `#pragma omp simd` loops, for the kernels whose speed is set by transcendental math
// (softmax in attention, SiLU, GELU). Relative error: exp ~2 ulp (Cephes expf
// polynomial), erfc ~3e-7 (Numerical Recipes' Chebyshev fit).
//
// These are `always_inline` so that a kernel compiled with __attribute__((target("avx2,fma")))
// gets AVX2 code for them (see cpu_isa.h).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#define TAIYI_ALWAYS_INLINE inline __attribute__((always_inline))

namespace taiyi::ops::cpu {

// Clamps x to [-limit, limit] (limit > 0), NaN passing through, with integer operations on the bit
// pattern: GCC will not vectorise a float compare-and-select under -ftrapping-math (its default).
TAIYI_ALWAYS_INLINE float clamp_abs_f32(float x, float limit) {
  uint32_t u, l;
  std::memcpy(&u, &x, 4);
  std::memcpy(&l, &limit, 4);
  const int32_t a = static_cast<int32_t>(u & 0x7fffffffu), li = static_cast<int32_t>(l);
  const int32_t clamped = a < li ? a : li;
  const int32_t kept = a > 0x7f800000 ? a : clamped;  // NaN
  u = static_cast<uint32_t>(kept) | (u & 0x80000000u);
  float r;
  std::memcpy(&r, &u, 4);
  return r;
}

// e^x. Inputs are clamped to +-87.3 so that the result stays finite and normal: for x < -87.3
// it returns ~1e-38 instead of a subnormal or 0, which is harmless for softmax and sigmoid.
TAIYI_ALWAYS_INLINE float exp_approx_f32(float x) {
  x = clamp_abs_f32(x, 87.3f);
  // Round x / ln2 to the nearest integer with the 1.5 * 2^23 trick (|x / ln2| < 2^22 here).
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  // Cody-Waite: ln2 split in a part exact in f32 and a correction, so r = x - n ln2 is exact enough.
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float two_n;
  std::memcpy(&two_n, &bits, sizeof(two_n));
  return p * two_n;
}

// max(x[0..n)) for n >= 1, vectorised (a reduction GCC vectorises despite -ftrapping-math).
TAIYI_ALWAYS_INLINE float row_max_f32(const float* x, int64_t n) {
  float m = x[0];
#pragma omp simd reduction(max : m)
  for (int64_t i = 0; i < n; ++i) m = x[i] > m ? x[i] : m;
  return m;
}

// 2^x for x <= 0 (and -0.0), where it needs far fewer operations than exp_approx_f32: relative
// error 7.5e-5 (a degree-3 fit of 2^f on [0, 1), f = x - floor(x)), x below -125 taken as -125
// (so that the result, at least 2^-125 times the fit's 0.99993, is a normal float).
// For the probabilities of the bf16 attention, which are rounded to bf16 right after (relative
// step 2^-8, error up to 2^-9 = 2e-3: the fit adds at most 4% to it); the AVX-512 kernels compute the same (exp2_avx512
// in bf16_pairs_avx512.h: f by vreduceps, the power of two by vscalefps), so the tests' reference rounds as they do.
// Positive x gives garbage.
TAIYI_ALWAYS_INLINE float exp2_nonpositive_f32(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  u = u < 0xC2FA0000u ? u : 0xC2FA0000u;  // -125.0f: as unsigned, a more negative float is larger
  std::memcpy(&x, &u, 4);
  // x + 1.5 * 2^23 holds round(x) in its low mantissa bits, so its bit pattern shifted left by 23
  // is round(x) << 23: the exponent to add to 2^f, with no float-to-int conversion. One less
  // where round(x) is above x makes both floor(x).
  const float shifted = x + 12582912.0f;
  float r = shifted - 12582912.0f;
  uint32_t sb;
  std::memcpy(&sb, &shifted, 4);
  const bool up = r > x;
  r = up ? r - 1.0f : r;
  sb = up ? sb - 1u : sb;
  const float f = x - r;
  float p = 0.07802451401948929f;
  p = p * f + 0.2260671705007553f;
  p = p * f + 0.6958335638046265f;
  p = p * f + 0.9999251961708069f;
  uint32_t pb;
  std::memcpy(&pb, &p, 4);
  pb += sb << 23;
  std::memcpy(&p, &pb, 4);
  return p;
}

// erfc(z) for z >= 0 with relative error ~3e-7 in f32 (Numerical Recipes' erfcc Chebyshev
// fit, 1.2e-7 in exact arithmetic), including the far tail where erfc is tiny.
TAIYI_ALWAYS_INLINE float erfc_nonneg_approx_f32(float z) {
  const float t = 1.0f / (1.0f + 0.5f * z);
  float p = 0.17087277f;
  p = p * t + -0.82215223f;
  p = p * t + 1.48851587f;
  p = p * t + -1.13520398f;
  p = p * t + 0.27886807f;
  p = p * t + -0.18628806f;
  p = p * t + 0.09678418f;
  p = p * t + 0.37409196f;
  p = p * t + 1.00002368f;
  p = p * t + -1.26551223f;
  return t * exp_approx_f32(p - z * z);
}

// a where x has its sign bit set, else b; integer operations, for the same reason as clamp_abs_f32.
TAIYI_ALWAYS_INLINE float select_negative_f32(float x, float a, float b) {
  int32_t ix, ia, ib;
  std::memcpy(&ix, &x, 4);
  std::memcpy(&ia, &a, 4);
  std::memcpy(&ib, &b, 4);
  const int32_t mask = ix >> 31;  // all ones when negative
  const int32_t r = (ia & mask) | (ib & ~mask);
  float f;
  std::memcpy(&f, &r, 4);
  return f;
}

// x * sigmoid(x).
TAIYI_ALWAYS_INLINE float silu_approx_f32(float x) { return x / (1.0f + exp_approx_f32(-x)); }

// Exact-form GELU, x Phi(x) = 0.5 x (1 + erf(x / sqrt 2)), torch's default (approximate="none").
// Phi is taken from erfc of |x| / sqrt 2 so that the negative tail, where 1 + erf(x) would
// cancel, keeps its relative accuracy (~1e-6 down to x = -13, where GELU underflows).
TAIYI_ALWAYS_INLINE float gelu_approx_f32(float x) {
  const float tail = 0.5f * erfc_nonneg_approx_f32(std::fabs(x) * 0.70710678118654752f);
  return x * select_negative_f32(x, tail, 1.0f - tail);
}

}  // namespace taiyi::ops::cpu
