// Multi-head scaled-dot-product attention, f32: the fused flash-attention kernel of
// attention_f32_flash.h on AVX2+FMA, 8 queries to a vector.
#include "taiyi/ops/cpu/attention_f32_kernels.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#include "taiyi/ops/cpu/cpu_isa.h"

#define TAIYI_FLASH_TARGET TAIYI_TARGET_AVX2_FMA

namespace taiyi::ops::cpu {
namespace {

struct Avx2F32 {
  using T = __m256;
  static constexpr int kLanes = 8;
  TAIYI_FLASH_TARGET static T zero() { return _mm256_setzero_ps(); }
  TAIYI_FLASH_TARGET static T set1(float x) { return _mm256_set1_ps(x); }
  TAIYI_FLASH_TARGET static T load(const float* p) { return _mm256_load_ps(p); }
  TAIYI_FLASH_TARGET static void store(float* p, T x) { _mm256_store_ps(p, x); }
  TAIYI_FLASH_TARGET static T bcast(const float* p) { return _mm256_broadcast_ss(p); }
  TAIYI_FLASH_TARGET static T fmadd(T a, T b, T c) { return _mm256_fmadd_ps(a, b, c); }
  TAIYI_FLASH_TARGET static T add(T a, T b) { return _mm256_add_ps(a, b); }
  TAIYI_FLASH_TARGET static T sub(T a, T b) { return _mm256_sub_ps(a, b); }
  TAIYI_FLASH_TARGET static T mul(T a, T b) { return _mm256_mul_ps(a, b); }
  TAIYI_FLASH_TARGET static T max(T a, T b) { return _mm256_max_ps(a, b); }
  TAIYI_FLASH_TARGET static bool any_greater(T a, T b) { return _mm256_movemask_ps(_mm256_cmp_ps(a, b, _CMP_GT_OQ)); }

  // 2^x for x <= 127 (below -125: clamped to it), relative error ~2e-7. Above 127 the result is
  // garbage; the kernel either has x <= 0 or discards blocks with x > kMaxGrowth.
  TAIYI_FLASH_TARGET static T exp2(T x) {
    // Below 2^-125 the result would leave the normal range; that is as good as 0 next to the max's 1.
    // The constant goes first because max returns its second operand for a NaN: NaN stays NaN.
    x = _mm256_max_ps(_mm256_set1_ps(-125.0f), x);
    // n = round(x) by adding 1.5 * 2^23, which also leaves n in the low mantissa bits of t (no
    // float-to-int conversion needed).
    const __m256 t = _mm256_add_ps(x, _mm256_set1_ps(12582912.0f));
    const __m256 r = _mm256_sub_ps(x, _mm256_sub_ps(t, _mm256_set1_ps(12582912.0f)));  // in [-0.5, 0.5], exact
    // Minimax polynomial for 2^r on [-0.5, 0.5] (Remez, degree 5): relative error 7.5e-8.
    __m256 p = _mm256_set1_ps(1.3276472167819944e-3f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(9.675541331021392e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.550713272875391e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(2.402211972396918e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(6.931469670652649e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0000000716546416f));
    // Times 2^n by adding n to the exponent field (p is in [0.7, 1.42]): shifting t's bits left by 23
    // keeps just n's two's-complement bits, in place.
    const __m256i e = _mm256_slli_epi32(_mm256_castps_si256(t), 23);
    return _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), e));
  }
};

}  // namespace
}  // namespace taiyi::ops::cpu

#include "taiyi/ops/cpu/attention_f32_flash.h"

namespace taiyi::ops::cpu {

void attention_f32_avx2(const Tensor& q, const Tensor& k, const Tensor& v, int heads, float scale, const Tensor& out) {
  flash_attention<Avx2F32>(q, k, v, heads, scale, out);
}

}  // namespace taiyi::ops::cpu

#else  // not x86: cpu_has_avx2_fma() is false, so this is never called.

namespace taiyi::ops::cpu {
void attention_f32_avx2(const Tensor& q, const Tensor& k, const Tensor& v, int heads, float scale, const Tensor& out) {
  attention_f32_sgemm(q, k, v, heads, scale, out);
}
}  // namespace taiyi::ops::cpu

#endif
