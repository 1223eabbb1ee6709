// The fused f32 flash-attention kernel, written once over a vector type and compiled once per
// instruction set: attention_f32_avx2.cpp (8 lanes) and attention_f32_avx512.cpp (16 lanes) each
// define TAIYI_FLASH_TARGET (the target attribute of their kernels) and a vector type V, then
// include this file and call flash_attention<V>. Everything here has internal linkage, so the two
// translation units never share an instantiation compiled for the other's instruction set.
//
// V: using T (the register type), kLanes, and static always-inline functions zero(), set1(float),
// load(const float*) (aligned), store(float*, T) (aligned), bcast(const float*), fmadd(a, b, c),
// add, sub, mul, max, exp2(x) (2^x to float precision for x <= 127, at most 2^-125 for x below -125) and
// any_greater(a, b) (whether some lane of a exceeds b's).
//
// Follows the forward pass of FlashAttention (Dao et al. 2022, Algorithm 1): for each (batch, head,
// block of 96 queries), in parallel over all three, walk the keys in blocks of 64, keep a running max
// m and sum l per query, and never hold more than one query-block x key-block tile of scores.
// Everything is computed transposed, with the queries of a block in the vector lanes (as DESIGN.md's
// AMX probe did), and in base 2 with log2(e) folded into the scale:
//   S^T = K_blk (c Q_blk)^T                             [keys x queries], c = scale * log2(e)
//   m'  = max(m, column max of S^T),  P^T = 2^(S^T - m'),  l = l 2^(m - m') + column sum of P^T
//   O^T = O^T 2^(m - m') + V_blk^T P^T                  [value channels x queries]
// and at the end out = (O^T / l)^T. With queries in lanes the max, the sum and the rescaling are
// vertical vector operations (no horizontal reductions), K and V are only read by broadcast loads,
// and D, Dv and Lk need no vector tails: only a block's queries are padded, with zeros, to whole
// vectors. After the first key block, the exponentials are taken in the score tile itself against
// the reference max m so far (see attend_query_block), so most blocks make one pass over S^T.
//
// Both products run as register tiles of 4 keys or 4 value channels by 3 vectors of queries (12
// accumulators + 3 query vectors + 1 broadcast: all 16 ymm registers on AVX2, 4 x 24 queries; on
// AVX-512, 4 x 48) streaming their operands:
//   Q^T    per block:  [D][96], scaled                       (per-thread scratch)
//   K      per head:   panels of 4 keys,      [Lk/4][D][4]   (packed once per head, shared)
//   V      per head:   groups of 4 channels,  [Dv/4][Lk][4]  (packed once per head, shared)
//   S^T, O^T per block: [64][96] and [Dv][96]                 (per-thread scratch)
// (K and V are read in place instead when at most 3 query blocks share a head, Lq <= 288.)
// Scratch is O(threads x (D + 96 + Dv) x 96) floats plus the packed K and V of a few heads at a time.
#pragma once

#if !defined(TAIYI_FLASH_TARGET)
#error "define TAIYI_FLASH_TARGET and the vector type before including attention_f32_flash.h"
#endif

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "taiyi/ops/cpu/cpu_isa.h"
#include "taiyi/ops/ops.h"
#include "taiyi/tensor/tensor.h"

namespace taiyi::ops::cpu {
namespace {

// The packing and the final transpose run on AVX2 for both kernels (they move data, 8 floats at a time).
constexpr int kAvx2Lanes = 8;
constexpr int kTileRows = 4;  // keys of a score tile, value channels of an output tile
constexpr int kTileVecs = 3;  // query vectors of either tile
// Queries per block, also the row length of every per-block buffer. Each block streams the head's K
// and V once, so bigger blocks read them less often; 96 keeps Q^T (D = 40) and O^T (Dv = 40) in L1.
constexpr int64_t kQueryBlock = 96;
constexpr int64_t kLd = kQueryBlock;
// Keys per block: S^T is kKeyBlock x kQueryBlock floats (24 KiB), between the two products. The last
// block takes up to half a block more rather than leave a short one (Lk = 77: one block, not 64 + 13).
constexpr int64_t kKeyBlock = 64;
constexpr int64_t kMaxKeyBlock = kKeyBlock + kKeyBlock / 2;
constexpr float kLog2e = 1.44269504088896341f;
// How far (in log2 units) a score may exceed its query's reference max m before the block is redone
// with a new m: up to 2^32 per probability, sums and O^T stay far from overflow. See attend_query_block.
constexpr float kMaxGrowth = 32.0f;

// In place, rows r[t] become columns.
TAIYI_TARGET_AVX2_FMA inline void transpose8x8_avx2(__m256 r[8]) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xee);
  const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xee);
  const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xee);
  const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xee);
  r[0] = _mm256_permute2f128_ps(u0, u4, 0x20);
  r[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
  r[2] = _mm256_permute2f128_ps(u2, u6, 0x20);
  r[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
  r[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
  r[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
  r[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
  r[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}

// A score tile, S^T rows [MR keys] x [NV vectors of queries]: s[r][i] = sum_c k[r k_row + c k_ch] qt[c kLd + i]
// over c < d, k a panel of packed K (k_row 1, k_ch 4) or K in place (k_row the row stride, k_ch 1).
// It folds the raw scores into the block's column max `col_max` (which the first tile of a block
// sets). With kExp it stores p = 2^(s - m_ref) instead of s and adds the p to `col_sum` (which the
// first tile sets): one pass, for blocks whose max does not outgrow m_ref.
template <class V, int MR, int NV, bool kExp>
TAIYI_FLASH_TARGET void score_tile(const float* k, int64_t k_row, int64_t k_ch, const float* qt, int64_t d, float* s,
                                   float* col_max, const float* m_ref, float* col_sum, bool first) {
  using Vec = typename V::T;
  Vec acc[MR][NV];
#pragma GCC unroll 4
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int u = 0; u < NV; ++u) acc[r][u] = V::zero();
  const float* kr[MR];
#pragma GCC unroll 4
  for (int r = 0; r < MR; ++r) kr[r] = k + r * k_row;
  for (int64_t c = 0, kc = 0; c < d; ++c, kc += k_ch) {
    Vec qv[NV];
#pragma GCC unroll 4
    for (int u = 0; u < NV; ++u) qv[u] = V::load(qt + c * kLd + u * V::kLanes);
#pragma GCC unroll 4
    for (int r = 0; r < MR; ++r) {
      const Vec kb = V::bcast(kr[r] + kc);
#pragma GCC unroll 4
      for (int u = 0; u < NV; ++u) acc[r][u] = V::fmadd(kb, qv[u], acc[r][u]);
    }
  }
#pragma GCC unroll 4
  for (int u = 0; u < NV; ++u) {
    Vec mx = first ? acc[0][u] : V::max(V::load(col_max + u * V::kLanes), acc[0][u]);
#pragma GCC unroll 4
    for (int r = 1; r < MR; ++r) mx = V::max(mx, acc[r][u]);
    V::store(col_max + u * V::kLanes, mx);
    if constexpr (kExp) {
      const Vec m = V::load(m_ref + u * V::kLanes);
      Vec sum = first ? V::zero() : V::load(col_sum + u * V::kLanes);
#pragma GCC unroll 4
      for (int r = 0; r < MR; ++r) {
        const Vec p = V::exp2(V::sub(acc[r][u], m));
        V::store(s + r * kLd + u * V::kLanes, p);
        sum = V::add(sum, p);
      }
      V::store(col_sum + u * V::kLanes, sum);
    } else {
#pragma GCC unroll 4
      for (int r = 0; r < MR; ++r) V::store(s + r * kLd + u * V::kLanes, acc[r][u]);
    }
  }
}

// How an output tile starts: from zero, from O^T rescaled by alpha (per query), or from O^T as is.
enum class OutputStart { kZero, kRescaled, kKept };

// An output tile, O^T rows [kTileRows value channels] x [NV vectors of queries]:
// o[r][i] += sum_j v[j v_key + r] p[j kLd + i] over j < nk, v a group of packed V (v_key 4) or V in
// place (v_key the row stride).
template <class V, int NV>
TAIYI_FLASH_TARGET void value_tile(const float* v, int64_t v_key, const float* p, int64_t nk, float* ot,
                                   const float* alpha, OutputStart start) {
  using Vec = typename V::T;
  Vec acc[kTileRows][NV];
#pragma GCC unroll 4
  for (int u = 0; u < NV; ++u) {
    const Vec a = start == OutputStart::kRescaled ? V::load(alpha + u * V::kLanes) : V::set1(1.0f);
#pragma GCC unroll 4
    for (int r = 0; r < kTileRows; ++r)
      acc[r][u] = start == OutputStart::kZero ? V::zero() : V::mul(V::load(ot + r * kLd + u * V::kLanes), a);
  }
  for (int64_t j = 0; j < nk; ++j) {
    Vec pv[NV];
#pragma GCC unroll 4
    for (int u = 0; u < NV; ++u) pv[u] = V::load(p + j * kLd + u * V::kLanes);
#pragma GCC unroll 4
    for (int r = 0; r < kTileRows; ++r) {
      const Vec vb = V::bcast(v + j * v_key + r);
#pragma GCC unroll 4
      for (int u = 0; u < NV; ++u) acc[r][u] = V::fmadd(vb, pv[u], acc[r][u]);
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < kTileRows; ++r)
#pragma GCC unroll 4
    for (int u = 0; u < NV; ++u) V::store(ot + r * kLd + u * V::kLanes, acc[r][u]);
}

using ScoreTileFn = void (*)(const float*, int64_t, int64_t, const float*, int64_t, float*, float*, const float*,
                             float*, bool);
using ValueTileFn = void (*)(const float*, int64_t, const float*, int64_t, float*, const float*, OutputStart);

// [exp][rows - 1][vectors - 1]: the full tile and every tail; [vectors - 1] for the output tiles,
// whose value channels are padded to whole tiles in packed V and in O^T.
template <class V>
struct Tiles {
  static constexpr ScoreTileFn score[2][kTileRows][kTileVecs] = {
      {
          {score_tile<V, 1, 1, false>, score_tile<V, 1, 2, false>, score_tile<V, 1, 3, false>},
          {score_tile<V, 2, 1, false>, score_tile<V, 2, 2, false>, score_tile<V, 2, 3, false>},
          {score_tile<V, 3, 1, false>, score_tile<V, 3, 2, false>, score_tile<V, 3, 3, false>},
          {score_tile<V, 4, 1, false>, score_tile<V, 4, 2, false>, score_tile<V, 4, 3, false>},
      },
      {
          {score_tile<V, 1, 1, true>, score_tile<V, 1, 2, true>, score_tile<V, 1, 3, true>},
          {score_tile<V, 2, 1, true>, score_tile<V, 2, 2, true>, score_tile<V, 2, 3, true>},
          {score_tile<V, 3, 1, true>, score_tile<V, 3, 2, true>, score_tile<V, 3, 3, true>},
          {score_tile<V, 4, 1, true>, score_tile<V, 4, 2, true>, score_tile<V, 4, 3, true>},
      },
  };
  static constexpr ValueTileFn value[kTileVecs] = {value_tile<V, 1>, value_tile<V, 2>, value_tile<V, 3>};
};

// The two-pass online-softmax step, for a block of raw scores: per query lane m' = max(m, col_max)
// (col_max alone for the first block), s = 2^(s - m') in place, l = l 2^(m - m') + column sum,
// alpha = 2^(m - m') for rescaling O^T.
template <class V>
TAIYI_FLASH_TARGET void softmax_step(float* s, int64_t nk, int64_t vecs, const float* col_max, float* m, float* l,
                                     float* alpha, bool first) {
  using Vec = typename V::T;
  for (int64_t u = 0; u < vecs; ++u) {
    const int64_t off = u * V::kLanes;
    const Vec m_new = first ? V::load(col_max + off) : V::max(V::load(m + off), V::load(col_max + off));
    // Two partial sums to halve the dependency chain of the additions.
    Vec sum0 = V::zero(), sum1 = V::zero();
    int64_t j = 0;
    for (; j + 2 <= nk; j += 2) {
      float* s0 = s + j * kLd + off;
      const Vec p0 = V::exp2(V::sub(V::load(s0), m_new));
      const Vec p1 = V::exp2(V::sub(V::load(s0 + kLd), m_new));
      V::store(s0, p0);
      V::store(s0 + kLd, p1);
      sum0 = V::add(sum0, p0);
      sum1 = V::add(sum1, p1);
    }
    if (j < nk) {
      float* s0 = s + j * kLd + off;
      const Vec p0 = V::exp2(V::sub(V::load(s0), m_new));
      V::store(s0, p0);
      sum0 = V::add(sum0, p0);
    }
    const Vec sum = V::add(sum0, sum1);
    if (first) {
      V::store(l + off, sum);
    } else {
      const Vec a = V::exp2(V::sub(V::load(m + off), m_new));
      V::store(l + off, V::fmadd(V::load(l + off), a, sum));
      V::store(alpha + off, a);
    }
    V::store(m + off, m_new);
  }
}

// After a one-pass block: if no query's block max exceeds its m by more than kMaxGrowth, adds the
// block's column sums to l and returns true; otherwise changes nothing and returns false.
template <class V>
TAIYI_FLASH_TARGET bool accept_one_pass(int64_t vecs, const float* col_max, const float* col_sum, const float* m,
                                        float* l) {
  const typename V::T growth = V::set1(kMaxGrowth);
  bool exceeded = false;
  for (int64_t u = 0; u < vecs; ++u)
    exceeded |= V::any_greater(V::load(col_max + u * V::kLanes), V::add(V::load(m + u * V::kLanes), growth));
  if (exceeded) return false;
  for (int64_t u = 0; u < vecs; ++u)
    V::store(l + u * V::kLanes, V::add(V::load(l + u * V::kLanes), V::load(col_sum + u * V::kLanes)));
  return true;
}

struct Problem {
  const float *q, *k, *v;
  float* out;
  int64_t lq, lk, d, dv, dv_pad;
  int64_t q_bs, q_rs, k_bs, k_rs, v_bs, v_rs, o_bs, o_rs;
  float c;  // scale * log2(e), folded into Q^T
  // Packed K and V of one head: the sizes of the two parts of its slot in the packing buffer.
  int64_t k_packed, v_packed;
};

// Keys per packing work item: enough to amortise the loop, small enough to balance the threads.
constexpr int64_t kPackKeys = 512;
// Heads with at most this many query blocks are not packed (see flash_attention).
constexpr int64_t kInPlaceBlocks = 3;

// Packs keys [j0, j1) of one head (j0 a multiple of kTileRows) into its packed K, panels of kTileRows
// keys, [ceil(Lk / 4)][D][4], the last panel zero-padded, so that a score tile's broadcasts are one
// contiguous run. Contiguity matters: in place, a head's rows sit H*D floats apart, which cost TLB and
// prefetch misses (single-threaded at 4096 x 4096, D = 40: 49 GFLOP/s in place, 72 packed).
TAIYI_TARGET_AVX2_FMA void pack_keys_avx2(const float* k, int64_t k_rs, int64_t d, int64_t j0, int64_t j1, float* kp) {
  for (int64_t j = j0; j < j1; j += kTileRows) {
    float* panel = kp + j * d;  // j / kTileRows panels of d * kTileRows floats before it
    const float* kj = k + j * k_rs;
    const int64_t n = std::min<int64_t>(kTileRows, j1 - j);
    int64_t c = 0;
    if (n == kTileRows) {
      // Four rows of 8 channels -> 8 groups of four keys (a 4 x 8 transpose).
      for (; c + kAvx2Lanes <= d; c += kAvx2Lanes) {
        const __m256 a0 = _mm256_loadu_ps(kj + c), a1 = _mm256_loadu_ps(kj + k_rs + c);
        const __m256 a2 = _mm256_loadu_ps(kj + 2 * k_rs + c), a3 = _mm256_loadu_ps(kj + 3 * k_rs + c);
        const __m256 t0 = _mm256_unpacklo_ps(a0, a1), t1 = _mm256_unpackhi_ps(a0, a1);
        const __m256 t2 = _mm256_unpacklo_ps(a2, a3), t3 = _mm256_unpackhi_ps(a2, a3);
        const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xee);  // ch 0|4, 1|5
        const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xee);  // ch 2|6, 3|7
        float* dst = panel + c * kTileRows;
        _mm256_storeu_ps(dst, _mm256_permute2f128_ps(u0, u1, 0x20));
        _mm256_storeu_ps(dst + 8, _mm256_permute2f128_ps(u2, u3, 0x20));
        _mm256_storeu_ps(dst + 16, _mm256_permute2f128_ps(u0, u1, 0x31));
        _mm256_storeu_ps(dst + 24, _mm256_permute2f128_ps(u2, u3, 0x31));
      }
    }
    for (; c < d; ++c)
      for (int64_t r = 0; r < kTileRows; ++r) panel[c * kTileRows + r] = r < n ? kj[r * k_rs + c] : 0.0f;
  }
}

// Packs keys [j0, j1) of one head into its packed V, groups of kTileRows value channels,
// [ceil(Dv / 4)][Lk][4], the last group zero-padded, so that an output tile's broadcasts are one run.
TAIYI_TARGET_AVX2_FMA void pack_values_avx2(const float* v, int64_t v_rs, int64_t dv, int64_t lk, int64_t j0,
                                            int64_t j1, float* vp) {
  const int64_t dv_pad = (dv + kTileRows - 1) / kTileRows * kTileRows;
  // Rows a chunk at a time, so that the chunk stays in L1 while each group gets one sequential run.
  constexpr int64_t kChunk = 32;
  for (int64_t jc = j0; jc < j1; jc += kChunk) {
    const int64_t je = std::min(j1, jc + kChunk);
    int64_t c = 0;
    for (; c + kAvx2Lanes <= dv; c += kAvx2Lanes) {
      float* g0 = vp + c * lk;  // group c / 4 starts at vp + (c / 4) * kTileRows * lk
      float* g1 = g0 + kTileRows * lk;
      for (int64_t j = jc; j < je; ++j) {
        const __m256 x = _mm256_loadu_ps(v + j * v_rs + c);
        _mm_storeu_ps(g0 + j * kTileRows, _mm256_castps256_ps128(x));
        _mm_storeu_ps(g1 + j * kTileRows, _mm256_extractf128_ps(x, 1));
      }
    }
    for (; c < dv_pad; ++c) {
      float* g = vp + c / kTileRows * kTileRows * lk + c % kTileRows;
      if (c < dv) {
        for (int64_t j = jc; j < je; ++j) g[j * kTileRows] = v[j * v_rs + c];
      } else {
        for (int64_t j = jc; j < je; ++j) g[j * kTileRows] = 0.0f;
      }
    }
  }
}

// Q^T [d][kLd] of `rows` queries with the factor c folded in; the lanes up to a multiple of `pad`
// (the kernel's vector) are zero, so they compute harmless finite values.
TAIYI_TARGET_AVX2_FMA void pack_queries_avx2(const float* q, int64_t q_rs, int64_t rows, int64_t d, float c,
                                             int64_t pad, float* qt) {
  const __m256 cv = _mm256_set1_ps(c);
  int64_t i = 0;
  for (; i + kAvx2Lanes <= rows; i += kAvx2Lanes) {
    int64_t ch = 0;
    for (; ch + kAvx2Lanes <= d; ch += kAvx2Lanes) {
      __m256 r[kAvx2Lanes];
      for (int t = 0; t < kAvx2Lanes; ++t) r[t] = _mm256_loadu_ps(q + (i + t) * q_rs + ch);
      transpose8x8_avx2(r);
      for (int t = 0; t < kAvx2Lanes; ++t) _mm256_store_ps(qt + (ch + t) * kLd + i, _mm256_mul_ps(r[t], cv));
    }
    for (; ch < d; ++ch)
      for (int64_t t = 0; t < kAvx2Lanes; ++t) qt[ch * kLd + i + t] = c * q[(i + t) * q_rs + ch];
  }
  const int64_t lanes = (rows + pad - 1) / pad * pad;
  for (int64_t ch = 0; ch < d; ++ch)
    for (int64_t t = i; t < lanes; ++t) qt[ch * kLd + t] = t < rows ? c * q[t * q_rs + ch] : 0.0f;
}

// out[i][c] = O^T[c][i] / l[i] for `rows` queries and dv channels.
TAIYI_TARGET_AVX2_FMA void store_output_avx2(const float* ot, const float* l, int64_t rows, int64_t dv, float* o,
                                             int64_t o_rs) {
  int64_t i = 0;
  for (; i + kAvx2Lanes <= rows; i += kAvx2Lanes) {
    const __m256 inv_l = _mm256_div_ps(_mm256_set1_ps(1.0f), _mm256_load_ps(l + i));
    int64_t c = 0;
    for (; c + kAvx2Lanes <= dv; c += kAvx2Lanes) {
      __m256 r[kAvx2Lanes];
      for (int t = 0; t < kAvx2Lanes; ++t) r[t] = _mm256_mul_ps(_mm256_load_ps(ot + (c + t) * kLd + i), inv_l);
      transpose8x8_avx2(r);
      for (int t = 0; t < kAvx2Lanes; ++t) _mm256_storeu_ps(o + (i + t) * o_rs + c, r[t]);
    }
    for (; c < dv; ++c)
      for (int64_t t = 0; t < kAvx2Lanes; ++t) o[(i + t) * o_rs + c] = ot[c * kLd + i + t] * (1.0f / l[i + t]);
  }
  for (; i < rows; ++i)
    for (int64_t c = 0; c < dv; ++c) o[i * o_rs + c] = ot[c * kLd + i] * (1.0f / l[i]);
}
// Where the tiles read one head's K and V: packed (pack_keys_avx2, pack_values_avx2) or in place.
// Key j (a multiple of 4) + r, channel c of K is at k + j k_key + r k_row + c k_ch; key j, channel
// c0 (a multiple of 4) + r of V at v + c0 v_group + j v_key + r.
struct HeadView {
  const float* k;
  int64_t k_key, k_row, k_ch;
  const float* v;
  int64_t v_group, v_key;
};

HeadView packed_view(const float* slot, int64_t d, int64_t lk, int64_t k_packed) {
  return {slot, d, 1, kTileRows, slot + k_packed, lk, kTileRows};
}
HeadView in_place_view(const Problem& pr, int64_t b, int64_t h) {
  return {pr.k + b * pr.k_bs + h * pr.d, pr.k_rs, pr.k_rs, 1, pr.v + b * pr.v_bs + h * pr.dv, 1, pr.v_rs};
}

// Per-thread buffers of one query block, each kLd floats wide; kLd is a multiple of 16, so every
// buffer starts 64-byte aligned after the first.
struct BlockScratch {
  float *qt, *s, *ot, *col_max, *col_sum, *m, *l, *alpha;
};

BlockScratch block_scratch(float* p, int64_t d, int64_t dv_pad) {
  BlockScratch w;
  w.qt = p;
  w.s = w.qt + d * kLd;
  w.ot = w.s + kMaxKeyBlock * kLd;
  w.col_max = w.ot + dv_pad * kLd;
  w.col_sum = w.col_max + kLd;
  w.m = w.col_sum + kLd;
  w.l = w.m + kLd;
  w.alpha = w.l + kLd;
  return w;
}
int64_t block_scratch_floats(int64_t d, int64_t dv_pad) { return (d + kMaxKeyBlock + dv_pad + 5) * kLd; }

// A thread's buffer for packed heads (the calling thread's, shared by the team) or for its block
// scratch: 64-byte aligned, kept between calls, since OpenMP's threads persist and fresh pages cost
// a fault each (DESIGN.md measured about 3 s per GiB on these machines).
enum class ThreadBuffer { kPackedHeads, kBlockScratch };
float* thread_buffer(ThreadBuffer which, size_t floats) {
  thread_local std::vector<float> bufs[2];
  std::vector<float>& buf = bufs[static_cast<int>(which)];
  if (buf.size() < floats + 16) buf.resize(floats + 16);
  return reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(buf.data()) + 63) & ~uintptr_t{63});
}

// Queries [i0, i0 + rows) of head h of batch b, rows <= kQueryBlock, against the head's packed K and V.
//
// The first key block takes two passes over its scores (raw scores and their max, then the
// exponentials), which sets each query's reference max m. Later blocks take one: a score tile
// exponentiates against the m it already has (the true max is only needed up to a common factor,
// which 1/l removes), and the block is kept unless some score exceeds its m by more than kMaxGrowth;
// only then is it redone in two passes with a new m, rescaling l and O^T.
template <class V>
TAIYI_FLASH_TARGET void attend_query_block(const Problem& pr, int64_t b, int64_t h, const HeadView& kv, int64_t i0,
                                           int64_t rows, const BlockScratch& w) {
  const int64_t d = pr.d, lk = pr.lk;
  const int64_t vecs = (rows + V::kLanes - 1) / V::kLanes;
  pack_queries_avx2(pr.q + b * pr.q_bs + i0 * pr.q_rs + h * d, pr.q_rs, rows, d, pr.c, V::kLanes, w.qt);

  for (int64_t kb = 0, nk = 0; kb < lk; kb += nk) {
    nk = lk - kb <= kMaxKeyBlock ? lk - kb : kKeyBlock;
    // Query tiles outside, key tiles inside: a tile's strip of Q^T stays in L1 across the key block.
    auto scores = [&](bool one_pass) {
      for (int64_t u0 = 0; u0 < vecs; u0 += kTileVecs) {
        for (int64_t j0 = 0; j0 < nk; j0 += kTileRows) {
          const int64_t mr = std::min<int64_t>(kTileRows, nk - j0);
          const int64_t nv = std::min<int64_t>(kTileVecs, vecs - u0);
          const int64_t off = u0 * V::kLanes;
          Tiles<V>::score[one_pass][mr - 1][nv - 1](kv.k + (kb + j0) * kv.k_key, kv.k_row, kv.k_ch, w.qt + off, d,
                                                    w.s + j0 * kLd + off, w.col_max + off, w.m + off, w.col_sum + off,
                                                    j0 == 0);
        }
      }
    };
    OutputStart start = OutputStart::kKept;
    if (kb == 0) {
      scores(false);
      softmax_step<V>(w.s, nk, vecs, w.col_max, w.m, w.l, w.alpha, true);
      start = OutputStart::kZero;
    } else {
      scores(true);
      if (!accept_one_pass<V>(vecs, w.col_max, w.col_sum, w.m, w.l)) {
        scores(false);
        softmax_step<V>(w.s, nk, vecs, w.col_max, w.m, w.l, w.alpha, false);
        start = OutputStart::kRescaled;
      }
    }
    for (int64_t c0 = 0; c0 < pr.dv; c0 += kTileRows) {
      for (int64_t u0 = 0; u0 < vecs; u0 += kTileVecs) {
        const int64_t nv = std::min<int64_t>(kTileVecs, vecs - u0);
        const int64_t off = u0 * V::kLanes;
        Tiles<V>::value[nv - 1](kv.v + c0 * kv.v_group + kb * kv.v_key, kv.v_key, w.s + off, nk, w.ot + c0 * kLd + off,
                                w.alpha + off, start);
      }
    }
  }
  store_output_avx2(w.ot, w.l, rows, pr.dv, pr.out + b * pr.o_bs + i0 * pr.o_rs + h * pr.dv, pr.o_rs);
}

template <class V>
void flash_attention(const Tensor& q, const Tensor& k, const Tensor& v, int heads, float scale, const Tensor& out) {
  Problem pr;
  pr.q = q.data<float>();
  pr.k = k.data<float>();
  pr.v = v.data<float>();
  pr.out = out.data<float>();
  const int64_t batch = q.size(0);
  pr.lq = q.size(1), pr.lk = k.size(1);
  pr.d = q.size(2) / heads;
  pr.dv = v.size(2) / heads;
  pr.dv_pad = (pr.dv + kTileRows - 1) / kTileRows * kTileRows;
  pr.q_bs = q.stride(0), pr.q_rs = q.stride(1);
  pr.k_bs = k.stride(0), pr.k_rs = k.stride(1);
  pr.v_bs = v.stride(0), pr.v_rs = v.stride(1);
  pr.o_rs = heads * pr.dv, pr.o_bs = pr.lq * pr.o_rs;
  pr.c = scale * kLog2e;
  pr.k_packed = (pr.lk + kTileRows - 1) / kTileRows * kTileRows * pr.d;
  pr.v_packed = pr.dv_pad * pr.lk;
  const int64_t head_floats = pr.k_packed + pr.v_packed;

  // Query blocks: whole tiles, smaller than kQueryBlock when there are few queries for the threads.
  const int64_t heads_total = batch * heads, threads = num_threads();
  constexpr int64_t kTileQueries = kTileVecs * V::kLanes;
  int64_t block = std::min(kQueryBlock, (pr.lq + kTileQueries - 1) / kTileQueries * kTileQueries);
  while (block > kTileQueries && heads_total * ((pr.lq + block - 1) / block) < 4 * threads) block -= kTileQueries;
  const int64_t blocks_per_head = (pr.lq + block - 1) / block;
  // Packing pays for itself only when many query blocks reuse it: heads read by at most
  // kInPlaceBlocks blocks (Lq <= 288) are read in place, where the reads overlap the arithmetic
  // (measured: packing was 10-25 % slower at Lq = 64 and 256, D = 160). V in place needs whole
  // groups of 4 channels, as a tile reads 4.
  const bool in_place = blocks_per_head <= kInPlaceBlocks && pr.dv % kTileRows == 0;
  // Otherwise heads are packed and attended a group at a time, the group big enough for ~32 tasks a
  // thread (the threads idle at most a task at the end of each group) and its packed K and V within
  // 4 MiB.
  int64_t group = std::clamp<int64_t>((32 * threads + blocks_per_head - 1) / blocks_per_head, 1, heads_total);
  group = std::max<int64_t>(1, std::min(group, (int64_t{1} << 20) / head_floats));
  if (in_place) group = heads_total;
  const int64_t pack_items_per_head = 2 * ((pr.lk + kPackKeys - 1) / kPackKeys);  // K and V, in key ranges
  // Shared by the team: the calling thread's buffer, kept for the next call up to 4 MiB; a bigger
  // one (one wide head, as the VAE's 4096 x 512) is freed after the call.
  const int64_t packed_floats = in_place ? 0 : group * head_floats;
  std::vector<float> big;
  float* packed = nullptr;
  if (packed_floats <= (int64_t{1} << 20)) {
    packed = thread_buffer(ThreadBuffer::kPackedHeads, static_cast<size_t>(packed_floats));
  } else {
    big.resize(static_cast<size_t>(packed_floats));
    packed = big.data();
  }

#pragma omp parallel if (heads_total * blocks_per_head > 1)
  {
    const BlockScratch w = block_scratch(
        thread_buffer(ThreadBuffer::kBlockScratch, static_cast<size_t>(block_scratch_floats(pr.d, pr.dv_pad))), pr.d,
        pr.dv_pad);
    for (int64_t bh0 = 0; bh0 < heads_total; bh0 += group) {
      const int64_t n = std::min(group, heads_total - bh0);
      if (!in_place) {
#pragma omp for schedule(dynamic, 1)
        for (int64_t item = 0; item < n * pack_items_per_head; ++item) {
          const int64_t bh = bh0 + item / pack_items_per_head, b = bh / heads, h = bh % heads;
          const int64_t part = item % pack_items_per_head, j0 = part / 2 * kPackKeys;
          const int64_t j1 = std::min(pr.lk, j0 + kPackKeys);
          float* slot = packed + (bh - bh0) * head_floats;
          if (part % 2 == 0) {
            pack_keys_avx2(pr.k + b * pr.k_bs + h * pr.d, pr.k_rs, pr.d, j0, j1, slot);
          } else {
            pack_values_avx2(pr.v + b * pr.v_bs + h * pr.dv, pr.v_rs, pr.dv, pr.lk, j0, j1, slot + pr.k_packed);
          }
        }
        // (implicit barrier: the group is packed)
      }
      // Consecutive tasks share a head, so the threads stream the same K and V.
#pragma omp for schedule(dynamic, 1)
      for (int64_t task = 0; task < n * blocks_per_head; ++task) {
        const int64_t bh = bh0 + task / blocks_per_head, b = bh / heads, h = bh % heads;
        const int64_t i0 = task % blocks_per_head * block;
        const HeadView kv = in_place ? in_place_view(pr, b, h)
                                     : packed_view(packed + (bh - bh0) * head_floats, pr.d, pr.lk, pr.k_packed);
        attend_query_block<V>(pr, b, h, kv, i0, std::min(block, pr.lq - i0), w);
      }
      // (implicit barrier: the group's slots may be packed over)
    }
  }
}

}  // namespace
}  // namespace taiyi::ops::cpu
