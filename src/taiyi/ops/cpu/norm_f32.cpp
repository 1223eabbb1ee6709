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
#include <omp.h>
#if defined(__x86_64__)
// GCC 12's AVX-512 intrinsics pass an uninitialised _mm512_undefined_ps() as the unused merge
// source of their unmasked forms, which -Wmaybe-uninitialized reports at each use.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include "taiyi/ops/cpu/bf16_pairs_avx512.h"
#endif

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

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

// y[i] = bf16(x[i]), rounded to nearest even (x finite: layer norm outputs of finite inputs).
TAIYI_ALWAYS_INLINE void round_to_bf16_body(const float* x, uint16_t* y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    uint32_t u;
    std::memcpy(&u, x + i, 4);
    y[i] = static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
  }
}
void round_to_bf16_generic(const float* x, uint16_t* y, int64_t n) { round_to_bf16_body(x, y, n); }
// One pixel of c channels through the per-channel affine map (and SiLU), rounded to bf16 as it is
// written; without avx512_bf16 one value at a time (bf16 compute never runs there: for completeness).
void channel_affine_bf16_generic(const float* x, uint16_t* y, const float* m_hi, const float* m_lo, const float* a,
                                 const float* b, int64_t c, bool silu) {
  for (int64_t i = 0; i < c; ++i) {
    const float v = ((x[i] - m_hi[i]) - m_lo[i]) * a[i] + b[i];
    y[i] = f32_to_bf16(silu ? silu_approx_f32(v) : v);
  }
}
#if defined(__x86_64__)

// vcvtneps2bf16, 16 at a time: the same rounding; for CPUs with avx512_bf16 (all that run bf16).
TAIYI_TARGET_AVX512_BF16 void round_to_bf16_avx512(const float* x, uint16_t* y, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + i), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(x + i)));
  round_to_bf16_body(x + i, y + i, n - i);
}

// 16 lanes of one pixel, channels [c0, c0 + 16) masked by m, through the affine map.
TAIYI_TARGET_AVX512_BF16 inline __m512 channel_affine16(__m512 x, const float* m_hi, const float* m_lo, const float* a,
                                                        const float* b, __mmask16 m) {
  const __m512 d = _mm512_sub_ps(_mm512_sub_ps(x, _mm512_maskz_loadu_ps(m, m_hi)), _mm512_maskz_loadu_ps(m, m_lo));
  return _mm512_fmadd_ps(d, _mm512_maskz_loadu_ps(m, a), _mm512_maskz_loadu_ps(m, b));
}
// Channels [c0, c0 + 16) of one pixel (x, their f32 values; m, those that exist) through the
// affine map and SiLU, rounded into y + c0.
TAIYI_TARGET_AVX512_BF16 inline void channel_affine16_to_bf16(__m512 x, uint16_t* y, const float* m_hi,
                                                              const float* m_lo, const float* a, const float* b,
                                                              int64_t c0, __mmask16 m, bool silu) {
  __m512 v = channel_affine16(x, m_hi + c0, m_lo + c0, a + c0, b + c0, m);
  if (silu) v = silu16_for_bf16(v);
  _mm256_mask_storeu_epi16(y + c0, m, (__m256i)_mm512_cvtneps_pbh(v));
}
// channel_affine_bf16_generic 16 channels at a time in a register (SiLU by silu16_for_bf16).
TAIYI_TARGET_AVX512_BF16 void channel_affine_bf16_avx512(const float* x, uint16_t* y, const float* m_hi,
                                                         const float* m_lo, const float* a, const float* b, int64_t c,
                                                         bool silu) {
  for (int64_t c0 = 0; c0 < c; c0 += 16) {
    const __mmask16 m = first_lanes(c - c0);
    channel_affine16_to_bf16(_mm512_maskz_loadu_ps(m, x + c0), y, m_hi, m_lo, a, b, c0, m, silu);
  }
}
#endif

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

// ---- GroupNorm over channels-last memory: pixels of c channels, one row each ----

// s1[ch] += x[ch] - k[ch], s2[ch] += (x[ch] - k[ch])^2 for one pixel, in f32: the moments about a
// shift k near the data (one pixel of the sample), summed over short runs of pixels and then added
// to double totals, so one pass gives the variance without cancellation (see group_norm_nhwc).
TAIYI_ALWAYS_INLINE void shifted_moments_body(const float* x, const float* k, float* s1, float* s2, int64_t c) {
#pragma omp simd
  for (int64_t i = 0; i < c; ++i) {
    const float d = x[i] - k[i];
    s1[i] += d;
    s2[i] += d * d;
  }
}
// One pixel through the per-channel affine map (and SiLU).
TAIYI_ALWAYS_INLINE void channel_affine_body(const float* x, float* y, const float* m_hi, const float* m_lo,
                                             const float* a, const float* b, int64_t c, bool silu) {
  if (silu) {
#pragma omp simd
    for (int64_t i = 0; i < c; ++i) y[i] = silu_approx_f32(((x[i] - m_hi[i]) - m_lo[i]) * a[i] + b[i]);
  } else {
#pragma omp simd
    for (int64_t i = 0; i < c; ++i) y[i] = ((x[i] - m_hi[i]) - m_lo[i]) * a[i] + b[i];
  }
}

TAIYI_TARGET_AVX2_FMA void shifted_moments_avx2(const float* x, const float* k, float* s1, float* s2, int64_t c) {
  shifted_moments_body(x, k, s1, s2, c);
}
void shifted_moments_generic(const float* x, const float* k, float* s1, float* s2, int64_t c) {
  shifted_moments_body(x, k, s1, s2, c);
}
TAIYI_TARGET_AVX2_FMA void channel_affine_avx2(const float* x, float* y, const float* m_hi, const float* m_lo,
                                               const float* a, const float* b, int64_t c, bool silu) {
  channel_affine_body(x, y, m_hi, m_lo, a, b, c, silu);
}
void channel_affine_generic(const float* x, float* y, const float* m_hi, const float* m_lo, const float* a,
                            const float* b, int64_t c, bool silu) {
  channel_affine_body(x, y, m_hi, m_lo, a, b, c, silu);
}
// Software prefetch of a row of c floats (a pixel of channels-last memory, a LayerNorm row), every line of it: the
// hardware prefetchers of the Xeon VMs this was measured on keep a streaming pass at ~10 GB/s
// (the bf16 GEGLU kernel: 63 MB in 6.2 ms without, 2.4 ms with).
inline void prefetch_row(const float* x, int64_t c) {
  for (int64_t i = 0; i < c; i += 16) __builtin_prefetch(x + i, 0, 3);
}
// Rows of c floats ahead to prefetch: about 4 KiB.
inline int64_t prefetch_rows(int64_t c) { return std::max<int64_t>(1, 1024 / std::max<int64_t>(c, 1)); }

// y[i] = x[i] for n bf16 x (exact).
void widen_bf16_generic(const uint16_t* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = bf16_to_f32(x[i]);
}
#if defined(__x86_64__)
TAIYI_TARGET_AVX512_BF16 void widen_bf16_avx512(const uint16_t* x, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm512_storeu_ps(y + i,
                     _mm512_castsi512_ps(_mm512_slli_epi32(
                         _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i))), 16)));
  widen_bf16_generic(x + i, y + i, n - i);
}
#endif

#if defined(__x86_64__)
// shifted_moments_body of a run of `count` bf16 pixels (c channels each, consecutive), into s1 and
// s2 (set, not added to): per 64 channels the run's sums in 8 registers, pixel after pixel (the
// order of the sums of a pixel at a time into memory, whose masked stores the next pixel's loads
// wait for: 13 cycles per 16 channels; with one pair of registers per 16 channels, the additions'
// latency, 4 cycles).
TAIYI_TARGET_AVX512_BF16 void shifted_moments_run_bf16_avx512(const uint16_t* x, int64_t count, const float* k,
                                                              float* s1, float* s2, int64_t c) {
  for (int64_t i = 0; i < c; i += 64) {
    __mmask16 m[4];
    __m512 ki[4], a1[4], a2[4];
    for (int j = 0; j < 4; ++j) {
      m[j] = first_lanes(c - i - 16 * j);
      ki[j] = _mm512_maskz_loadu_ps(m[j], k + i + 16 * j);
      a1[j] = a2[j] = _mm512_setzero_ps();
    }
    for (int64_t p = 0; p < count; ++p)
      for (int j = 0; j < 4; ++j) {
        const __m512 d = _mm512_sub_ps(load_bf16x16(x + p * c + i + 16 * j, m[j]), ki[j]);
        a1[j] = _mm512_add_ps(a1[j], d);
        a2[j] = _mm512_fmadd_ps(d, d, a2[j]);
      }
    for (int j = 0; j < 4; ++j) {
      _mm512_mask_storeu_ps(s1 + i + 16 * j, m[j], a1[j]);
      _mm512_mask_storeu_ps(s2 + i + 16 * j, m[j], a2[j]);
    }
  }
}
// channel_affine_bf16_avx512 of a bf16 pixel, widened 16 channels at a time in a register.
TAIYI_TARGET_AVX512_BF16 void channel_affine_bf16_to_bf16_avx512(const uint16_t* x, uint16_t* y, const float* m_hi,
                                                                 const float* m_lo, const float* a, const float* b,
                                                                 int64_t c, bool silu) {
  for (int64_t c0 = 0; c0 < c; c0 += 16) {
    const __mmask16 m = first_lanes(c - c0);
    channel_affine16_to_bf16(load_bf16x16(x + c0, m), y, m_hi, m_lo, a, b, c0, m, silu);
  }
}
#endif

// The pixels of one sample of a channels-last GroupNorm input, c channels each: f32, or bf16 (the
// output of a bf16 convolution, graph/passes/bf16_inputs.cpp) widened row by row into a buffer
// (where no AVX-512 kernel below reads it directly).
struct PixelRows {
  const float* f;
  const uint16_t* h;
  int64_t c;
  void (*widen)(const uint16_t*, float*, int64_t);
  // Pixel p's c values (in buf, of c floats, where they are bf16).
  const float* row(int64_t p, float* buf) const {
    if (f) return f + p * c;
    widen(h + p * c, buf, c);
    return buf;
  }
  // Software prefetch of pixel p (see prefetch_row), and how many pixels ahead: about 4 KiB.
  void prefetch(int64_t p) const {
    if (f) return prefetch_row(f + p * c, c);
    for (int64_t i = 0; i < c; i += 32) __builtin_prefetch(h + p * c + i, 0, 3);
  }
  int64_t ahead() const { return f ? prefetch_rows(c) : std::max<int64_t>(1, 2048 / std::max<int64_t>(c, 1)); }
};

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

namespace {

// The statistics of one sample of a channels-last GroupNorm (x f32, or xb bf16: PixelRows), per
// channel: the group's mean as a hi + lo pair and a = rstd gamma, b = beta, so that the normalised
// value is ((x - m_hi) - m_lo) a + b. Parallel over pixels on `threads` threads.
struct NhwcGroupStats {
  std::vector<float> m_hi, m_lo, a, b;
  NhwcGroupStats(const float* x, const uint16_t* xb, const float* gamma, const float* beta, int64_t c, int64_t pixels,
                 int64_t groups, float eps, int threads);
  // From per-channel moments d1, d2 about shifts k over `pixels` pixels (what the constructor sums).
  NhwcGroupStats(const float* k, const double* d1, const double* d2, const float* gamma, const float* beta, int64_t c,
                 int64_t pixels, int64_t groups, float eps)
      : m_hi(static_cast<size_t>(c)),
        m_lo(static_cast<size_t>(c)),
        a(static_cast<size_t>(c)),
        b(static_cast<size_t>(c)) {
    finish(k, d1, d2, c, pixels, groups, eps, gamma, beta);
  }

 private:
  void finish(const float* shift, const double* total1, const double* total2, int64_t c, int64_t pixels, int64_t groups,
              float eps, const float* gamma, const float* beta);
};

NhwcGroupStats::NhwcGroupStats(const float* x, const uint16_t* xb, const float* gamma, const float* beta, int64_t c,
                               int64_t pixels, int64_t groups, float eps, int threads)
    : m_hi(static_cast<size_t>(c)), m_lo(static_cast<size_t>(c)), a(static_cast<size_t>(c)), b(static_cast<size_t>(c)) {
  const auto moments = cpu_has_avx2_fma() ? shifted_moments_avx2 : shifted_moments_generic;
#if defined(__x86_64__)
  const auto widen = cpu_has_avx512_bf16() ? widen_bf16_avx512 : widen_bf16_generic;
  const bool avx512_bf16 = cpu_has_avx512_bf16();
#else
  const auto widen = widen_bf16_generic;
#endif
  const PixelRows xs{x, xb, c, widen};
  const int64_t ahead = xs.ahead();
  std::vector<double> total1(static_cast<size_t>(c), 0.0), total2(static_cast<size_t>(c), 0.0);
  std::vector<float> shift(static_cast<size_t>(c));
  // Pixels per run of f32 sums: short enough that the f32 rounding stays near 1e-7 of the moments.
  constexpr int64_t kRun = 32;
  // One pass: per-channel moments about the sample's first pixel, each thread over its pixels in
  // runs of kRun (f32) added to its double totals, then the threads' totals added up. (Two passes,
  // the mean and then the squared deviations, read the activation once more: at [1, 128, 512,
  // 512], 134 MB per pass.)
  const float* first = xs.row(0, shift.data());
  std::copy(first, first + c, shift.begin());
#pragma omp parallel num_threads(threads)
  {
    const int64_t nt = omp_get_num_threads(), id = omp_get_thread_num();
    const int64_t p0 = pixels * id / nt, p1 = pixels * (id + 1) / nt;
    std::vector<float> f1(static_cast<size_t>(c)), f2(static_cast<size_t>(c)), buf(static_cast<size_t>(c));
    std::vector<double> d1(static_cast<size_t>(c), 0.0), d2(static_cast<size_t>(c), 0.0);
    for (int64_t r = p0; r < p1; r += kRun) {
      const int64_t end = std::min(p1, r + kRun);
#if defined(__x86_64__)
      if (xs.h && avx512_bf16) {
        for (int64_t p = end; p < std::min(p1, end + kRun); ++p) xs.prefetch(p);  // the next run
        // (sets f1 and f2)
        shifted_moments_run_bf16_avx512(xs.h + r * c, end - r, shift.data(), f1.data(), f2.data(), c);
      } else
#endif
      {
        std::fill(f1.begin(), f1.end(), 0.0f);
        std::fill(f2.begin(), f2.end(), 0.0f);
        for (int64_t p = r; p < end; ++p) {
          if (p + ahead < p1) xs.prefetch(p + ahead);
          moments(xs.row(p, buf.data()), shift.data(), f1.data(), f2.data(), c);
        }
      }
      for (int64_t i = 0; i < c; ++i) d1[i] += f1[i], d2[i] += f2[i];
    }
#pragma omp critical
    for (int64_t i = 0; i < c; ++i) total1[i] += d1[i], total2[i] += d2[i];
  }
  finish(shift.data(), total1.data(), total2.data(), c, pixels, groups, eps, gamma, beta);
}

void NhwcGroupStats::finish(const float* shift, const double* total1, const double* total2, int64_t c, int64_t pixels,
                            int64_t groups, float eps, const float* gamma, const float* beta) {
  const int64_t cg = c / groups;
  // Per group over its channels (shift k_c, moments d1_c and d2_c about it, P pixels):
  //   mean = sum_c (d1_c + P k_c) / (cg P),
  //   sum of (x - mean)^2 = sum_c d2_c + 2 (k_c - mean) d1_c + P (k_c - mean)^2.
  const double count = static_cast<double>(cg * pixels), pd = static_cast<double>(pixels);
  for (int64_t g = 0; g < groups; ++g) {
    double sum = 0.0;
    for (int64_t j = g * cg; j < (g + 1) * cg; ++j) sum += total1[j] + pd * static_cast<double>(shift[j]);
    const double mean = sum / count;
    double sq = 0.0;
    for (int64_t j = g * cg; j < (g + 1) * cg; ++j) {
      const double dk = static_cast<double>(shift[j]) - mean;
      sq += total2[j] + 2.0 * dk * total1[j] + pd * dk * dk;
    }
    const double rstd = 1.0 / std::sqrt(std::max(sq, 0.0) / count + static_cast<double>(eps));
    for (int64_t ch = g * cg; ch < (g + 1) * cg; ++ch) {
      m_hi[ch] = static_cast<float>(mean);
      m_lo[ch] = static_cast<float>(mean - static_cast<double>(m_hi[ch]));
      a[ch] = static_cast<float>(rstd * (gamma ? static_cast<double>(gamma[ch]) : 1.0));
      b[ch] = beta ? beta[ch] : 0.0f;
    }
  }
}

// group_norm_nhwc_f32 of x (f32) or xb (bf16) into y (f32) or yb (bf16, rounded to nearest even as
// written).
void group_norm_nhwc(const float* x, const uint16_t* xb, const float* gamma, const float* beta, float* y, uint16_t* yb,
                     int64_t n, int64_t c, int64_t pixels, int64_t groups, float eps, bool silu) {
  if (n == 0 || c == 0 || pixels == 0) return;
  const auto affine = cpu_has_avx2_fma() ? channel_affine_avx2 : channel_affine_generic;
#if defined(__x86_64__)
  const auto affine_bf16 = cpu_has_avx512_bf16() ? channel_affine_bf16_avx512 : channel_affine_bf16_generic;
  const auto widen = cpu_has_avx512_bf16() ? widen_bf16_avx512 : widen_bf16_generic;
  const bool avx512_bf16 = cpu_has_avx512_bf16();
#else
  const auto affine_bf16 = channel_affine_bf16_generic;
  const auto widen = widen_bf16_generic;
#endif
  const int threads = pixels * c > 32768 ? omp_get_max_threads() : 1;
  for (int64_t s = 0; s < n; ++s) {
    const PixelRows xs{x ? x + s * pixels * c : nullptr, xb ? xb + s * pixels * c : nullptr, c, widen};
    const int64_t ahead = xs.ahead();
    const NhwcGroupStats st(xs.f, xs.h, gamma, beta, c, pixels, groups, eps, threads);
    const float *m_hi = st.m_hi.data(), *m_lo = st.m_lo.data(), *a = st.a.data(), *b = st.b.data();
#pragma omp parallel num_threads(threads)
    {
      std::vector<float> buf(static_cast<size_t>(c));
      if (y) {
        float* ys = y + s * pixels * c;
#pragma omp for schedule(static)
        for (int64_t p = 0; p < pixels; ++p) {
          if (p + ahead < pixels) xs.prefetch(p + ahead);
          affine(xs.row(p, buf.data()), ys + p * c, m_hi, m_lo, a, b, c, silu);
        }
      } else {
        // Rounded as written (callers make sure the CPU has avx512_bf16: bf16_supported()).
        uint16_t* ys = yb + s * pixels * c;
#pragma omp for schedule(static)
        for (int64_t p = 0; p < pixels; ++p) {
          if (p + ahead < pixels) xs.prefetch(p + ahead);
#if defined(__x86_64__)
          if (xs.h && avx512_bf16) {
            channel_affine_bf16_to_bf16_avx512(xs.h + p * c, ys + p * c, m_hi, m_lo, a, b, c, silu);
            continue;
          }
#endif
          affine_bf16(xs.row(p, buf.data()), ys + p * c, m_hi, m_lo, a, b, c, silu);
        }
      }
    }
  }
}

}  // namespace

void group_norm_nhwc_f32(const float* x, const float* gamma, const float* beta, float* y, int64_t n, int64_t c,
                         int64_t pixels, int64_t groups, float eps, bool silu) {
  group_norm_nhwc(x, nullptr, gamma, beta, y, nullptr, n, c, pixels, groups, eps, silu);
}

void group_norm_nhwc_f32_to_bf16(const float* x, const float* gamma, const float* beta, uint16_t* y, int64_t n,
                                 int64_t c, int64_t pixels, int64_t groups, float eps, bool silu) {
  group_norm_nhwc(x, nullptr, gamma, beta, nullptr, y, n, c, pixels, groups, eps, silu);
}

void group_norm_nhwc_bf16(const uint16_t* x, const float* gamma, const float* beta, float* y, uint16_t* yb, int64_t n,
                          int64_t c, int64_t pixels, int64_t groups, float eps, bool silu) {
  group_norm_nhwc(nullptr, x, gamma, beta, y, yb, n, c, pixels, groups, eps, silu);
}

namespace {
void scale_shift_of(const NhwcGroupStats& st, int64_t c, float* scale, float* shift) {
  for (int64_t ch = 0; ch < c; ++ch) {
    // b - mean a in double from the hi + lo mean: one f32 rounding, of the shift.
    const double mean = static_cast<double>(st.m_hi[ch]) + static_cast<double>(st.m_lo[ch]);
    scale[ch] = st.a[ch];
    shift[ch] = static_cast<float>(static_cast<double>(st.b[ch]) - mean * static_cast<double>(st.a[ch]));
  }
}
}  // namespace

void group_norm_nhwc_scale_shift(const float* x, const uint16_t* xb, const float* gamma, const float* beta, int64_t c,
                                 int64_t pixels, int64_t groups, float eps, float* scale, float* shift) {
  if (c == 0 || pixels == 0) return;
  scale_shift_of(
      NhwcGroupStats(x, xb, gamma, beta, c, pixels, groups, eps, pixels * c > 32768 ? omp_get_max_threads() : 1), c,
      scale, shift);
}

namespace {
// d1 += s1 + P kb, d2 += s2 + 2 kb s1 + P kb^2: sums s1, s2 about kb (itself about k) to about k.
inline void add_about(double* d1, double* d2, double s1, double s2, double kb, double p) {
  *d1 += s1 + p * kb;
  *d2 += s2 + 2.0 * kb * s1 + p * kb * kb;
}
void add_moments_bf16_generic(const uint16_t* x, int64_t pixels, int64_t c, const float* k, double* d1, double* d2) {
  for (int64_t ch = 0; ch < c; ++ch) {
    const float kb = bf16_to_f32(x[ch]) - k[ch];
    float s1 = 0.0f, s2 = 0.0f;
    for (int64_t p = 0; p < pixels; ++p) {
      const float e = (bf16_to_f32(x[p * c + ch]) - k[ch]) - kb;
      s1 += e;
      s2 += e * e;
    }
    add_about(d1 + ch, d2 + ch, s1, s2, kb, static_cast<double>(pixels));
  }
}
#if defined(__x86_64__)
TAIYI_TARGET_AVX512_BF16 void add_moments_bf16_avx512(const uint16_t* x, int64_t pixels, int64_t c, const float* k,
                                                      double* d1, double* d2) {
  for (int64_t c0 = 0; c0 < c; c0 += 16) {
    const __mmask16 m = first_lanes(c - c0);
    const __m512 kk = _mm512_maskz_loadu_ps(m, k + c0);
    const __m512 kb = _mm512_sub_ps(load_bf16x16(x + c0, m), kk);
    __m512 s1[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()}, s2[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};
    int64_t p = 0;
    for (; p + 2 <= pixels; p += 2)  // two chains: the additions' latency
      for (int u = 0; u < 2; ++u) {
        const __m512 e = _mm512_sub_ps(_mm512_sub_ps(load_bf16x16(x + (p + u) * c + c0, m), kk), kb);
        s1[u] = _mm512_add_ps(s1[u], e);
        s2[u] = _mm512_fmadd_ps(e, e, s2[u]);
      }
    for (; p < pixels; ++p) {
      const __m512 e = _mm512_sub_ps(_mm512_sub_ps(load_bf16x16(x + p * c + c0, m), kk), kb);
      s1[0] = _mm512_add_ps(s1[0], e);
      s2[0] = _mm512_fmadd_ps(e, e, s2[0]);
    }
    alignas(64) float a1[16], a2[16], ak[16];
    _mm512_store_ps(a1, _mm512_add_ps(s1[0], s1[1]));
    _mm512_store_ps(a2, _mm512_add_ps(s2[0], s2[1]));
    _mm512_store_ps(ak, kb);
    for (int64_t i = 0; i < std::min<int64_t>(16, c - c0); ++i)
      add_about(d1 + c0 + i, d2 + c0 + i, a1[i], a2[i], ak[i], static_cast<double>(pixels));
  }
}
#endif
}  // namespace

void add_moments_bf16(const uint16_t* x, int64_t pixels, int64_t c, const float* k, double* d1, double* d2) {
  if (pixels <= 0) return;
#if defined(__x86_64__)
  if (cpu_has_avx512_bf16()) return add_moments_bf16_avx512(x, pixels, c, k, d1, d2);
#endif
  add_moments_bf16_generic(x, pixels, c, k, d1, d2);
}

void group_norm_scale_shift_from_moments(const float* k, const double* d1, const double* d2, const float* gamma,
                                         const float* beta, int64_t c, int64_t pixels, int64_t groups, float eps,
                                         float* scale, float* shift) {
  if (c == 0 || pixels == 0) return;
  scale_shift_of(NhwcGroupStats(k, d1, d2, gamma, beta, c, pixels, groups, eps), c, scale, shift);
}

void layer_norm_f32_to_bf16(const float* x, const float* gamma, const float* beta, uint16_t* y, int64_t rows, int64_t c,
                            float eps) {
  if (rows == 0 || c == 0) return;
  const bool avx2 = cpu_has_avx2_fma();
#pragma omp parallel if (rows > 1 && rows * c > 32768)
  {
    std::vector<float> row(static_cast<size_t>(c));
    const int64_t ahead = prefetch_rows(c);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      if (r + ahead < rows) prefetch_row(x + (r + ahead) * c, c);
      if (avx2) {
        layer_norm_row_avx2(x + r * c, gamma, beta, row.data(), c, eps);
        round_to_bf16(row.data(), y + r * c, c);
      } else {
        layer_norm_row_generic(x + r * c, gamma, beta, row.data(), c, eps);
        round_to_bf16(row.data(), y + r * c, c);
      }
    }
  }
}

#if defined(__x86_64__)
namespace {
// The sum of v's 16 lanes (through memory: GCC 12's _mm512_reduce_add_ps trips -Wuninitialized).
TAIYI_TARGET_AVX512_BF16 inline float lanes_sum_ps(__m512 v) {
  alignas(64) float d[16];
  _mm512_store_ps(d, v);
  float s = 0.0f;
  for (int i = 0; i < 16; i += 4) s += (d[i] + d[i + 1]) + (d[i + 2] + d[i + 3]);
  return s;
}
// One LayerNorm row of c bf16 (c a multiple of 16) into bf16, AVX-512: the row widened into buf
// as its sum is taken (f32, 4 partial sums), the squared deviations from the mean (f32), then per
// element (x - mean) rstd gamma + beta as one multiply-add, rounded to nearest even as stored. One
// pass over the bf16 row and two over buf (L1). In f32 rather than double (the f32 path's
// layer_norm_row_body): relative errors of ~1e-6 in the statistics, far below the output's 2^-9;
// BERT's 25 LayerNorms a text encoder 4.5-4.8 -> 3.9-4.0 ms (they are bound by their rows' traffic).
TAIYI_TARGET_AVX512_BF16 void layer_norm_row_bf16_avx512(const uint16_t* x, const float* gamma, const float* beta,
                                                         uint16_t* y, int64_t c, float eps, float* buf) {
  __m512 s[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
  for (int64_t i = 0; i < c; i += 16) {
    const __m512 v = load_bf16x16(x + i);
    _mm512_store_ps(buf + i, v);
    s[(i / 16) & 3] = _mm512_add_ps(s[(i / 16) & 3], v);
  }
  const float mean =
      lanes_sum_ps(_mm512_add_ps(_mm512_add_ps(s[0], s[1]), _mm512_add_ps(s[2], s[3]))) / static_cast<float>(c);
  const __m512 m = _mm512_set1_ps(mean);
  __m512 q[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
  for (int64_t i = 0; i < c; i += 16) {
    const __m512 d = _mm512_sub_ps(_mm512_load_ps(buf + i), m);
    q[(i / 16) & 3] = _mm512_fmadd_ps(d, d, q[(i / 16) & 3]);
  }
  const float var =
      lanes_sum_ps(_mm512_add_ps(_mm512_add_ps(q[0], q[1]), _mm512_add_ps(q[2], q[3]))) / static_cast<float>(c);
  const __m512 rstd = _mm512_set1_ps(static_cast<float>(1.0 / std::sqrt(static_cast<double>(var) + eps)));
  const __m512 shift = _mm512_mul_ps(m, rstd);  // y = x rstd - mean rstd, then gamma and beta
  for (int64_t i = 0; i < c; i += 16) {
    __m512 t = _mm512_fmsub_ps(_mm512_load_ps(buf + i), rstd, shift);
    if (gamma) t = _mm512_mul_ps(t, _mm512_loadu_ps(gamma + i));
    if (beta) t = _mm512_add_ps(t, _mm512_loadu_ps(beta + i));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + i), (__m256i)_mm512_cvtneps_pbh(t));
  }
}
}  // namespace
#endif

void layer_norm_bf16_rows(const uint16_t* x, const float* gamma, const float* beta, uint16_t* y, int64_t rows,
                          int64_t c, float eps) {
  if (rows <= 0 || c == 0) return;
  const bool avx2 = cpu_has_avx2_fma();
#if defined(__x86_64__)
  const auto widen = cpu_has_avx512_bf16() ? widen_bf16_avx512 : widen_bf16_generic;
  const bool fast = cpu_has_avx512_bf16() && c % 16 == 0;
#else
  const auto widen = widen_bf16_generic;
#endif
  std::vector<float> in(static_cast<size_t>(c) + 16), row(static_cast<size_t>(c));
  float* in64 = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(in.data()) + 63) / 64 * 64);
  const int64_t ahead = std::max<int64_t>(1, 2048 / c);  // rows of c bf16: about 4 KiB
  for (int64_t r = 0; r < rows; ++r) {
    if (r + ahead < rows)
      for (int64_t i = 0; i < c; i += 32) __builtin_prefetch(x + (r + ahead) * c + i, 0, 3);
#if defined(__x86_64__)
    if (fast) {
      layer_norm_row_bf16_avx512(x + r * c, gamma, beta, y + r * c, c, eps, in64);
      continue;
    }
#endif
    widen(x + r * c, in.data(), c);
    if (avx2) {
      layer_norm_row_avx2(in.data(), gamma, beta, row.data(), c, eps);
    } else {
      layer_norm_row_generic(in.data(), gamma, beta, row.data(), c, eps);
    }
    round_to_bf16(row.data(), y + r * c, c);
  }
}

void layer_norm_bf16_to_bf16(const uint16_t* x, const float* gamma, const float* beta, uint16_t* y, int64_t rows,
                             int64_t c, float eps) {
  if (rows == 0 || c == 0) return;
#pragma omp parallel if (rows > 1 && rows * c > 32768)
  {
    const int64_t nt = omp_get_num_threads(), id = omp_get_thread_num();
    const int64_t r0 = rows * id / nt, r1 = rows * (id + 1) / nt;
    layer_norm_bf16_rows(x + r0 * c, gamma, beta, y + r0 * c, r1 - r0, c, eps);
  }
}

void round_to_bf16(const float* x, uint16_t* y, int64_t n) {
#if defined(__x86_64__)
  if (cpu_has_avx512_bf16()) return round_to_bf16_avx512(x, y, n);
#endif
  round_to_bf16_generic(x, y, n);
}

}  // namespace taiyi::ops::cpu
