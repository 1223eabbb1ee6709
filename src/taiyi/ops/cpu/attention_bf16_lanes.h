// Pieces the two bf16 attention kernels with queries in the 16 f32 lanes share
// (attention_bf16_avx512.cpp, attention_bf16_amx.cpp): a task is 16 queries of one (batch, head),
// its scores are rows of 16 lanes (one per query), and its output comes back to rows of out by
// gathers. Include after <immintrin.h>, x86 only.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "taiyi/ops/cpu/bf16_pairs_avx512.h"
#include "taiyi/tensor/tensor.h"

namespace taiyi::ops::cpu {

// A [B, L, H * dim] input's element strides, and its data: f32 (p), or bf16 (h; the AMX kernel
// reads q, k and v in bf16 where graph/passes/bf16_inputs.cpp made them so).
struct AttentionView {
  const float* p;
  int64_t s0, s1, s2;
  const uint16_t* h = nullptr;
};
inline AttentionView attention_view(const Tensor& t) {
  if (t.dtype() == DType::BF16) return {nullptr, t.stride(0), t.stride(1), t.stride(2), t.data_u16()};
  return {t.data<float>(), t.stride(0), t.stride(1), t.stride(2)};
}

// 16 values x[i * stride], i < n (zeros past n).
TAIYI_TARGET_AVX512_BF16 inline __m512 load_strided(const float* x, int64_t stride, int64_t n) {
  const __mmask16 m = first_lanes(n);
  if (stride == 1) return _mm512_maskz_loadu_ps(m, x);
  const __m512i idx = _mm512_mullo_epi32(lane_index(), _mm512_set1_epi32(static_cast<int32_t>(stride)));
  return _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, idx, x, 4);
}

// nq (<= 16) queries from q (row stride s1, element stride s2) as bf16 pairs:
// qp[e] lane i = (q[i, 2e], q[i, 2e + 1]) for e < pairs; zeros past nq and d.
TAIYI_TARGET_AVX512_BF16 inline void gather_query_pairs(const float* q, int64_t s1, int64_t s2, int64_t nq, int64_t d,
                                                        int64_t pairs, __m512bh* qp) {
  for (int64_t e = 0; e < pairs; ++e) {
    const __m512 lo = 2 * e < d ? load_strided(q + 2 * e * s2, s1, nq) : _mm512_setzero_ps();
    const __m512 hi = 2 * e + 1 < d ? load_strided(q + (2 * e + 1) * s2, s1, nq) : _mm512_setzero_ps();
    qp[e] = pair_rows(lo, hi);
  }
}

// 2^x as exp2_avx512 (bf16_pairs_avx512.h), its bits, with half a bf16 step of [1, 2) (2^-8)
// added to the fit's constant: the top 16 bits of 2^f (in [1, 2) before vscalefps, which only adds
// to the exponent) are then 2^f rounded to bf16, to nearest (ties up, where vcvtne2ps2bf16 rounds
// them to even: f32 results within one f32 step of a tie are what can differ, about one in 2^16).
TAIYI_TARGET_AVX512_BF16 inline __m512i exp2_bf16_rounding_bits(__m512 x) {
  const __m512 f = _mm512_reduce_ps(x, 0x09);
  __m512 p = _mm512_set1_ps(0.07802451401948929f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.2260671705007553f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.6958335638046265f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.9999251961708069f + 0.00390625f));
  return _mm512_castps_si512(_mm512_scalef_ps(p, x));
}

// Two keys' probabilities bf16(2^(c s - c max)) from their f32 scores s[0, 16) and s[16, 32), as
// bf16 pairs per lane (pair_rows' layout). The rounding costs 2 vector operations per 32 instead
// of pair_rows' 3 (vcvtne2ps2bf16's two and the interleave): one shift and one ternary logic put
// key 2t's high half under key 2t + 1's. 64x64 self-attention on AMX 40.2-41.7 -> 37.0-38.8 ms.
TAIYI_TARGET_AVX512_BF16 inline __m512bh probabilities(const float* s, __m512 c, __m512 neg_cmax) {
  const __m512i lo = exp2_bf16_rounding_bits(_mm512_fmadd_ps(_mm512_load_ps(s), c, neg_cmax));
  const __m512i hi = exp2_bf16_rounding_bits(_mm512_fmadd_ps(_mm512_load_ps(s + 16), c, neg_cmax));
  // (lo >> 16) | (hi & 0xffff0000): imm 0xF8 is A | (B & C) (bit 4A + 2B + C of the imm).
  return as_bh(_mm512_ternarylogic_epi32(_mm512_srli_epi32(lo, 16), hi,
                                         _mm512_set1_epi32(static_cast<int32_t>(0xffff0000u)), 0xF8));
}

// Where a kernel's rows of output go: out [B, Lq, H * Dv] in f32, or in bf16 (rounded to nearest
// even as written, for the bf16 linear that reads it: graph/passes/bf16_inputs.cpp).
struct LaneRowsOut {
  float* f32 = nullptr;
  uint16_t* bf16 = nullptr;
  int64_t row_stride = 0;
};
inline LaneRowsOut lane_rows_out(const Tensor& out) {
  if (out.dtype() != DType::F32 && out.dtype() != DType::BF16)
    throw Error("attention: the output is f32 or bf16, not " + out.describe());
  LaneRowsOut r;
  if (out.dtype() == DType::BF16) {
    r.bf16 = out.data_u16();
  } else {
    r.f32 = out.data<float>();
  }
  r.row_stride = out.size(2);
  return r;
}

// r[i] lane j <- r[j] lane i: a 16 x 16 transpose of 32-bit values in 64 shuffles (unpacks of
// 32 and 64 bits, then 128-bit lanes twice). 3-4 cycles a row where a 16-lane gather takes ~14:
// the BERT attention's output rows and query pairs, 0.23 of its 1.5 ms by gathers
// (attention_bench, 2026-12-08).
TAIYI_TARGET_AVX512_BF16 inline void transpose16x16_epi32(__m512i r[16]) {
  __m512i t[16];
  for (int k = 0; k < 16; k += 2) {
    t[k] = _mm512_unpacklo_epi32(r[k], r[k + 1]);
    t[k + 1] = _mm512_unpackhi_epi32(r[k], r[k + 1]);
  }
  for (int k = 0; k < 16; k += 4) {
    r[k] = _mm512_unpacklo_epi64(t[k], t[k + 2]);
    r[k + 1] = _mm512_unpackhi_epi64(t[k], t[k + 2]);
    r[k + 2] = _mm512_unpacklo_epi64(t[k + 1], t[k + 3]);
    r[k + 3] = _mm512_unpackhi_epi64(t[k + 1], t[k + 3]);
  }
  for (int h = 0; h < 16; h += 8)
    for (int k = 0; k < 4; ++k) {
      t[h + k] = _mm512_shuffle_i32x4(r[h + k], r[h + k + 4], 0x88);
      t[h + k + 4] = _mm512_shuffle_i32x4(r[h + k], r[h + k + 4], 0xdd);
    }
  for (int k = 0; k < 8; ++k) {
    r[k] = _mm512_shuffle_i32x4(t[k], t[k + 8], 0x88);
    r[k + 8] = _mm512_shuffle_i32x4(t[k], t[k + 8], 0xdd);
  }
}

// Lanes back to rows: out[offset + i * row_stride + e] = o[e * 16 + i] for i < nq, e < dv: 16
// values of e at a time, o's rows e0 .. e0 + 15 transposed in registers.
TAIYI_TARGET_AVX512_BF16 inline void store_lanes_as_rows(const float* o, int64_t nq, int64_t dv, const LaneRowsOut& out,
                                                         int64_t offset) {
  for (int64_t e0 = 0; e0 < dv; e0 += 16) {
    __m512i r[16];
    for (int64_t k = 0; k < 16; ++k)
      r[k] = e0 + k < dv ? _mm512_loadu_si512(o + (e0 + k) * 16) : _mm512_setzero_si512();
    transpose16x16_epi32(r);
    const __mmask16 lanes = first_lanes(dv - e0);
    for (int64_t i = 0; i < nq; ++i) {
      const int64_t at = offset + i * out.row_stride + e0;
      const __m512 v = _mm512_castsi512_ps(r[i]);
      if (out.bf16) {
        _mm256_mask_storeu_epi16(out.bf16 + at, lanes, (__m256i)_mm512_cvtneps_pbh(v));
      } else {
        _mm512_mask_storeu_ps(out.f32 + at, lanes, v);
      }
    }
  }
}

}  // namespace taiyi::ops::cpu
