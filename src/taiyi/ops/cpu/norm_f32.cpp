// GroupNorm and LayerNorm, f32 (torch.nn.functional.group_norm / layer_norm).
//
// Statistics are summed in double in two passes (mean, then squared deviations), so
// large groups (10 channels x 4096 pixels in the UNet, 512 x 65536 in the VAE) lose
// no precision; variance is the biased one, as torch. Each channel is then
// y = (x - mean) * a + b with a = rstd * gamma, b = beta. Subtracting the mean first
// (torch folds it into b), as a two-float hi + lo pair, keeps full precision even when
// the mean is large against the spread: x - hi is exact for x near the mean.
// Bodies are compiled for AVX2+FMA and for baseline x86-64 and picked at run time
// (cpu_isa.h).
#include <cmath>

#include "taiyi/ops/cpu/cpu_isa.h"
#include "taiyi/ops/cpu/cpu_kernels.h"
#include "taiyi/ops/cpu/vector_math_f32.h"

namespace taiyi::ops::cpu {
namespace {

struct MeanRstd {
  double mean, rstd;
  float mean_hi() const { return static_cast<float>(mean); }
  float mean_lo() const { return static_cast<float>(mean - static_cast<double>(mean_hi())); }
};

TAIYI_ALWAYS_INLINE MeanRstd mean_rstd_body(const float* x, int64_t n, float eps) {
  double sum = 0.0;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) sum += static_cast<double>(x[i]);
  const double mean = sum / static_cast<double>(n);
  double sq = 0.0;
#pragma omp simd reduction(+ : sq)
  for (int64_t i = 0; i < n; ++i) {
    const double dx = static_cast<double>(x[i]) - mean;
    sq += dx * dx;
  }
  return {mean, 1.0 / std::sqrt(sq / static_cast<double>(n) + static_cast<double>(eps))};
}

TAIYI_ALWAYS_INLINE void affine_body(const float* x, float* y, int64_t n, float m_hi, float m_lo, float a, float b) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] = ((x[i] - m_hi) - m_lo) * a + b;
}

// The same with SiLU applied on the way out (GroupNorm + SiLU in one pass over memory).
TAIYI_ALWAYS_INLINE void affine_silu_body(const float* x, float* y, int64_t n, float m_hi, float m_lo, float a,
                                          float b) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] = silu_approx_f32(((x[i] - m_hi) - m_lo) * a + b);
}

// y = ((x - mean) * rstd) * gamma + beta, elementwise gamma/beta over the row.
TAIYI_ALWAYS_INLINE void layer_norm_row_body(const float* x, const float* gamma, const float* beta, float* y, int64_t c,
                                             float eps) {
  const MeanRstd s = mean_rstd_body(x, c, eps);
  const float m_hi = s.mean_hi(), m_lo = s.mean_lo(), rstd = static_cast<float>(s.rstd);
  if (gamma && beta) {
#pragma omp simd
    for (int64_t i = 0; i < c; ++i) y[i] = ((x[i] - m_hi) - m_lo) * rstd * gamma[i] + beta[i];
  } else if (gamma) {
#pragma omp simd
    for (int64_t i = 0; i < c; ++i) y[i] = ((x[i] - m_hi) - m_lo) * rstd * gamma[i];
  } else if (beta) {
#pragma omp simd
    for (int64_t i = 0; i < c; ++i) y[i] = ((x[i] - m_hi) - m_lo) * rstd + beta[i];
  } else {
#pragma omp simd
    for (int64_t i = 0; i < c; ++i) y[i] = ((x[i] - m_hi) - m_lo) * rstd;
  }
}

TAIYI_TARGET_AVX2_FMA MeanRstd mean_rstd_avx2(const float* x, int64_t n, float eps) {
  return mean_rstd_body(x, n, eps);
}
MeanRstd mean_rstd_generic(const float* x, int64_t n, float eps) { return mean_rstd_body(x, n, eps); }
TAIYI_TARGET_AVX2_FMA void affine_avx2(const float* x, float* y, int64_t n, float m_hi, float m_lo, float a, float b) {
  affine_body(x, y, n, m_hi, m_lo, a, b);
}
void affine_generic(const float* x, float* y, int64_t n, float m_hi, float m_lo, float a, float b) {
  affine_body(x, y, n, m_hi, m_lo, a, b);
}
TAIYI_TARGET_AVX2_FMA void affine_silu_avx2(const float* x, float* y, int64_t n, float m_hi, float m_lo, float a,
                                            float b) {
  affine_silu_body(x, y, n, m_hi, m_lo, a, b);
}
void affine_silu_generic(const float* x, float* y, int64_t n, float m_hi, float m_lo, float a, float b) {
  affine_silu_body(x, y, n, m_hi, m_lo, a, b);
}
TAIYI_TARGET_AVX2_FMA void layer_norm_row_avx2(const float* x, const float* gamma, const float* beta, float* y,
                                               int64_t c, float eps) {
  layer_norm_row_body(x, gamma, beta, y, c, eps);
}
void layer_norm_row_generic(const float* x, const float* gamma, const float* beta, float* y, int64_t c, float eps) {
  layer_norm_row_body(x, gamma, beta, y, c, eps);
}

}  // namespace

void group_norm_f32(const float* x, const float* gamma, const float* beta, float* y, int64_t n, int64_t c,
                    int64_t spatial, int64_t groups, float eps, bool silu) {
  const int64_t cg = c / groups, group_size = cg * spatial, tasks = n * groups;
  if (tasks == 0 || group_size == 0) return;
  const bool avx2 = cpu_has_avx2_fma();
#pragma omp parallel for schedule(static) if (tasks > 1 && tasks * group_size > 32768)
  for (int64_t t = 0; t < tasks; ++t) {
    const int64_t g = t % groups;
    const float* xg = x + t * group_size;
    float* yg = y + t * group_size;
    const MeanRstd s = avx2 ? mean_rstd_avx2(xg, group_size, eps) : mean_rstd_generic(xg, group_size, eps);
    const float m_hi = s.mean_hi(), m_lo = s.mean_lo();
    for (int64_t j = 0; j < cg; ++j) {
      const int64_t ch = g * cg + j;
      const float a = static_cast<float>(s.rstd * (gamma ? static_cast<double>(gamma[ch]) : 1.0));
      const float b = beta ? beta[ch] : 0.0f;
      const float* xc = xg + j * spatial;
      float* yc = yg + j * spatial;
      if (silu)
        (avx2 ? affine_silu_avx2 : affine_silu_generic)(xc, yc, spatial, m_hi, m_lo, a, b);
      else
        (avx2 ? affine_avx2 : affine_generic)(xc, yc, spatial, m_hi, m_lo, a, b);
    }
  }
}

void layer_norm_f32(const float* x, const float* gamma, const float* beta, float* y, int64_t rows, int64_t c,
                    float eps) {
  if (rows == 0 || c == 0) return;
  const bool avx2 = cpu_has_avx2_fma();
#pragma omp parallel for schedule(static) if (rows > 1 && rows * c > 32768)
  for (int64_t r = 0; r < rows; ++r) {
    if (avx2)
      layer_norm_row_avx2(x + r * c, gamma, beta, y + r * c, c, eps);
    else
      layer_norm_row_generic(x + r * c, gamma, beta, y + r * c, c, eps);
  }
}

}  // namespace taiyi::ops::cpu
