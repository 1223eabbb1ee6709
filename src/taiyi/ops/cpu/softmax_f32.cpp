// Softmax over the last dim, f32 (torch.softmax(x, -1)): max-subtracted, exp, sum, scale.
// The exp is exp_approx_f32 (~2 ulp), vectorised; AVX2+FMA when the CPU has it.
#include <algorithm>

#include "taiyi/ops/cpu/cpu_isa.h"
#include "taiyi/ops/cpu/cpu_kernels.h"
#include "taiyi/ops/cpu/vector_math_f32.h"

namespace taiyi::ops::cpu {
namespace {

TAIYI_ALWAYS_INLINE float exp_minus_max_body(float* x, int64_t n) {
  const float m = row_max_f32(x, n);
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) {
    const float e = exp_approx_f32(x[i] - m);
    x[i] = e;
    sum += e;
  }
  return sum;
}

TAIYI_TARGET_AVX2_FMA float exp_minus_max_avx2(float* x, int64_t n) { return exp_minus_max_body(x, n); }
float exp_minus_max_generic(float* x, int64_t n) { return exp_minus_max_body(x, n); }

TAIYI_ALWAYS_INLINE void scale_row(float* x, int64_t n, float f) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) x[i] *= f;
}

}  // namespace

float exp_minus_max_f32(float* x, int64_t n) {
  return cpu_has_avx2_fma() ? exp_minus_max_avx2(x, n) : exp_minus_max_generic(x, n);
}

void softmax_f32(const float* x, float* y, int64_t rows, int64_t c) {
  if (rows == 0 || c == 0) return;
#pragma omp parallel for schedule(static) if (rows * c > 32768)
  for (int64_t r = 0; r < rows; ++r) {
    float* yr = y + r * c;
    if (yr != x + r * c) std::copy(x + r * c, x + (r + 1) * c, yr);
    scale_row(yr, c, 1.0f / exp_minus_max_f32(yr, c));
  }
}

}  // namespace taiyi::ops::cpu
