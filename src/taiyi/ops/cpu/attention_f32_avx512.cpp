// Multi-head scaled-dot-product attention, f32: the fused flash-attention kernel of
// attention_f32_flash.h on AVX-512F, 16 queries to a vector. Twice the lanes of the AVX2 build with
// the same tiles: on the 2-core Xeon with AMX, 4096 x 4096, 8 heads of 40: see bench/RESULTS.md.
#include "taiyi/ops/cpu/attention_f32_kernels.h"

#if defined(__x86_64__)
// GCC 12's AVX-512 intrinsics pass an uninitialised _mm512_undefined_ps() as the unused merge
// source of their unmasked forms, which -W(maybe-)uninitialized reports at each use.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include "taiyi/ops/cpu/cpu_isa.h"

#define TAIYI_FLASH_TARGET TAIYI_TARGET_AVX512_F32

namespace taiyi::ops::cpu {
namespace {

struct Avx512F32 {
  using T = __m512;
  static constexpr int kLanes = 16;
  TAIYI_FLASH_TARGET static T zero() { return _mm512_setzero_ps(); }
  TAIYI_FLASH_TARGET static T set1(float x) { return _mm512_set1_ps(x); }
  TAIYI_FLASH_TARGET static T load(const float* p) { return _mm512_load_ps(p); }
  TAIYI_FLASH_TARGET static void store(float* p, T x) { _mm512_store_ps(p, x); }
  TAIYI_FLASH_TARGET static T bcast(const float* p) { return _mm512_set1_ps(*p); }
  TAIYI_FLASH_TARGET static T fmadd(T a, T b, T c) { return _mm512_fmadd_ps(a, b, c); }
  TAIYI_FLASH_TARGET static T add(T a, T b) { return _mm512_add_ps(a, b); }
  TAIYI_FLASH_TARGET static T sub(T a, T b) { return _mm512_sub_ps(a, b); }
  TAIYI_FLASH_TARGET static T mul(T a, T b) { return _mm512_mul_ps(a, b); }
  TAIYI_FLASH_TARGET static T max(T a, T b) { return _mm512_max_ps(a, b); }
  TAIYI_FLASH_TARGET static bool any_greater(T a, T b) { return _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ) != 0; }

  // 2^x, relative error ~2e-7: the AVX2 build's polynomial on the fraction, with the exponent
  // applied by vscalefps, which gives infinity above 127 (the kernel either has x <= 0 or discards
  // blocks with x > kMaxGrowth). Below -125 x is clamped, as in the AVX2 build, so that no result
  // is subnormal (as good as 0 next to the max's 1, and slow to multiply on some CPUs); the
  // constant goes first because max returns its second operand for a NaN: NaN stays NaN.
  TAIYI_FLASH_TARGET static T exp2(T x) {
    x = _mm512_max_ps(_mm512_set1_ps(-125.0f), x);
    const __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 r = _mm512_sub_ps(x, n);  // in [-0.5, 0.5], exact
    __m512 p = _mm512_set1_ps(1.3276472167819944e-3f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(9.675541331021392e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.550713272875391e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(2.402211972396918e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(6.931469670652649e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0000000716546416f));
    return _mm512_scalef_ps(p, n);
  }
};

}  // namespace
}  // namespace taiyi::ops::cpu

#include "taiyi/ops/cpu/attention_f32_flash.h"

namespace taiyi::ops::cpu {

void attention_f32_avx512(const Tensor& q, const Tensor& k, const Tensor& v, int heads, float scale,
                          const Tensor& out) {
  flash_attention<Avx512F32>(q, k, v, heads, scale, out);
}

}  // namespace taiyi::ops::cpu

#else  // not x86-64: cpu_has_avx512f() is false, so this is never called.

namespace taiyi::ops::cpu {
void attention_f32_avx512(const Tensor& q, const Tensor& k, const Tensor& v, int heads, float scale,
                          const Tensor& out) {
  attention_f32_sgemm(q, k, v, heads, scale, out);
}
}  // namespace taiyi::ops::cpu

#endif
