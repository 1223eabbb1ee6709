// Register-level pieces the AVX512-BF16 and AMX kernels share (attention_bf16_avx512.cpp, attention_bf16_amx.cpp,
// conv2d_winograd_bf16_avx512.cpp, conv2d_1x1_bf16_avx512.cpp). vdpbf16ps multiplies pairs of bf16
// in each 32-bit lane and adds both products to an f32 lane, so every operand is laid out as
// "pairs": lane l of a register holds (a[2k][l], a[2k + 1][l]), element 2k in the low half.
// pair_rows() makes such a register from two f32 rows. Include after <immintrin.h>, x86 only.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "taiyi/ops/cpu/cpu_isa.h"

namespace taiyi::ops::cpu {

// Vector casts (GCC and Clang convert between vector types of one size bit for bit).
TAIYI_TARGET_AVX512_BF16 inline __m512bh as_bh(__m512i x) { return (__m512bh)x; }
TAIYI_TARGET_AVX512_BF16 inline __m512i as_si(__m512bh x) { return (__m512i)x; }

// The 32-bit word at p (a pair of bf16) in every lane.
TAIYI_TARGET_AVX512_BF16 inline __m512bh broadcast_pair(const void* p) {
  int32_t pair;
  std::memcpy(&pair, p, 4);
  return as_bh(_mm512_set1_epi32(pair));
}

// Lane l of the result: (bf16(lo[l]), bf16(hi[l])), rounded to nearest even.
TAIYI_TARGET_AVX512_BF16 inline __m512bh pair_rows(__m512 lo, __m512 hi) {
  // vcvtne2ps2bf16 puts lo's 16 values in elements 0-15 and hi's in 16-31; interleave them.
  const __m512i interleave = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22,
                                              6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  return as_bh(_mm512_permutexvar_epi16(interleave, as_si(_mm512_cvtne2ps_pbh(hi, lo))));
}

// 0, 1, ..., 15.
TAIYI_TARGET_AVX512_BF16 inline __m512i lane_index() {
  return _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
}

// The mask of lanes [0, n), n clamped to [0, 16].
inline __mmask16 first_lanes(int64_t n) { return static_cast<__mmask16>((1u << std::clamp<int64_t>(n, 0, 16)) - 1u); }

// The 16 bf16 at p (those of m's lanes; zeros in the others) as f32, exactly.
TAIYI_TARGET_AVX512_BF16 inline __m512 load_bf16x16(const uint16_t* p, __mmask16 m = 0xffff) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p)), 16));
}
// v rounded to bf16 (nearest even) and widened back.
TAIYI_TARGET_AVX512_BF16 inline __m512 round_bf16x16(__m512 v) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(v)), 16));
}

// 2^x as exp2_nonpositive_f32 (vector_math_f32.h) computes it: the fraction f = x - floor(x) in
// one vreduceps, its polynomial, and 2^floor(x) applied by vscalefps (which floors x itself, and
// gives 0 for very negative x, the pads, with no clamp).
TAIYI_TARGET_AVX512_BF16 inline __m512 exp2_avx512(__m512 x) {
  const __m512 f = _mm512_reduce_ps(x, 0x09);  // imm 0x09: round down (01), suppress exceptions (8)
  __m512 p = _mm512_set1_ps(0.07802451401948929f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.2260671705007553f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.6958335638046265f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.9999251961708069f));
  return _mm512_scalef_ps(p, x);
}

// v sigmoid(v) for an output rounded to bf16 right after (relative step 2^-8): e^-v by
// exp2_avx512 (relative error 7.5e-5) and 1 / (1 + e^-v) by vrcp14ps (2^-14), about 2% of the
// rounding's error, where silu_approx_f32's division alone (vdivps) took the most time of a
// GroupNorm+SiLU pass (norm_f32.cpp; also the AMX Winograd convolution's GroupNorm+SiLU prologue): 16 operations per 16
// channels instead of about 40. Large -v gives 2^+inf = inf, its reciprocal 0, and silu 0 (-0), as the limit.
TAIYI_TARGET_AVX512_BF16 inline __m512 silu16_for_bf16(__m512 v) {
  const __m512 e = exp2_avx512(_mm512_mul_ps(v, _mm512_set1_ps(-1.4426950408889634f)));
  return _mm512_mul_ps(v, _mm512_rcp14_ps(_mm512_add_ps(_mm512_set1_ps(1.0f), e)));
}
// The exact GELU of 16 values, g Phi(g), in f32, for an output rounded to bf16 right after: Phi(g) =
// 1 / (1 + e^-l(g)) with l = logit(Phi), which is odd, fitted by g P(g^2), P of degree 5 (weighted
// least squares on [-4.5, 4.5], |error of l| <= 1.8e-4; the coefficients below are -log2(e) P's,
// so that e^-l = 2^(g P'(g^2))), g clamped to [-4.5, 4.5] in the polynomial (past it Phi differs
// from its end value by under 3.4e-6), 2^ by exp2_avx512 (7.5e-5) and 1 / (1 + .) by vrcp14ps
// (2^-14): relative error <= 3e-4 where |gelu| > 1e-3 and absolute <= 8e-5 |g| everywhere (bf16's
// step is 2^-8; 1.2% of the bf16 outputs in [-4, 4] round the other way, 0.9% before), in 16 vector
// operations where the Abramowitz-Stegun erfc with a Newton step took 23 (tools/gelu_fit.py makes
// the fit). The GEGLU / GELU kernel (geglu_bf16_avx512.cpp) and the AMX
// linear's gelu epilogue (BERT's intermediate dense: GELU was 4% of the text encoder).
TAIYI_TARGET_AVX512_BF16 inline __m512 gelu16(__m512 gate) {
  // sign(g) min(|g|, 4.5): vrangeps imm 0x02 takes the smaller magnitude with the first operand's sign
  const __m512 gc = _mm512_range_ps(gate, _mm512_set1_ps(4.5f), 0x02);
  const __m512 t = _mm512_mul_ps(gc, gc);
  __m512 p = _mm512_set1_ps(5.8386202539395526e-08f);
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-3.6534668197418796e-06f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(7.064460805850103e-05f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(0.0005841387319378555f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-0.10598734766244888f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-2.3014371395111084f));
  const __m512 e = exp2_avx512(_mm512_mul_ps(p, gc));  // e^-l(g)
  return _mm512_mul_ps(gate, _mm512_rcp14_ps(_mm512_add_ps(_mm512_set1_ps(1.0f), e)));
}

// Panels per chunk when at most `most` fit: as many chunks as needed, of equal size, so that
// threads taking whole chunks get the same work.
inline int64_t even_chunk(int64_t panels, int64_t most) {
  most = std::clamp<int64_t>(most, 1, std::max<int64_t>(panels, 1));
  const int64_t chunks = (panels + most - 1) / most;
  return (panels + chunks - 1) / chunks;
}

}  // namespace taiyi::ops::cpu
