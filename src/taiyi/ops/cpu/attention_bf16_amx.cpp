// Prepared multi-head attention with bf16 products on AMX tiles (tdpbf16ps), for CPUs with AMX-BF16
// (Intel Sapphire Rapids and later). oneDNN's matmuls in attention_prepared_dnnl.cpp run the Taiyi
// UNet's 64x64 self-attention at about 250 GFLOP/s there: D = Dv = 40 is a short reduction and a
// narrow output, its P V product falls back to gemm:jit for the strided output, and the softmax
// between them is an AVX2 pass over rows. Here one task is one (batch x head, 16 queries), and the
// queries are the 16 columns of every tile, so that the softmax works on 16 queries per register
// with no horizontal reductions (as in attention_bf16_avx512.cpp). Flash attention over chunks of
// 128 keys, whose scores and probabilities stay in L1 (run_task has the steps):
//   S^T = K Q^T   A: K [16 keys][32 d], B: Q pairs [16 d pairs][16 queries][2], C: S^T [16 keys][16
//                 queries] f32; the last d step narrow (D = 40 is 32 + 8); Q stays in its tiles
//                 when D <= 64.
//   P = bf16(2^(c s - c m)), c = scale log2(e), m a running reference (per query: per lane): the
//       first chunk's max, moved to the max of the keys so far only where that passes m by more
//       than kLazyLog2 / c (then O^T and the sums are scaled by 2^(c m_old - c m)), so P may reach
//       2^kLazyLog2 (bf16 is as exact there, the f32 sums as safe); as (key 2t, key 2t+1) pairs.
//       With random scores at 4096 keys the max grows in most chunks by a little: rescaling only
//       past 2^8 took the 64x64 self-attention from 36.6-38.5 to 34.9-36.0 ms.
//   O^T += V^T P^T  A: V^T [16 e][32 keys], B: P pairs [16 key pairs][16 queries][2], C: O^T [16 e]
//                 [16 queries] f32, up to three tiles at a time, in L1 between chunks.
//   out = O / sum, transposed back by gathers. The sums: vdpbf16ps of P's pairs with ones, or, where
//       Dv is no multiple of 16, a row of ones in V^T under the last tile's padding, so that O^T's
//       row Dv is the sum.
// On this core the tile unit and the AVX-512 units do not overlap (bench/RESULTS.md, 2026-12-07):
// what counts is the number of tile loads, stores and products and of vector operations, and that
// the tile stores land in L1 (a tile store to a line not in L1 costs four times one that is: the
// kernel before this one kept all of a task's scores, 256 KB at 4096 keys).
// Where D = Dv = 64 (BERT) and a task has several blocks of queries, two blocks go together
// (scores_pair, output_pair): each K and V^T tile loaded serves both, so that a pair loads 12
// tiles per 32 keys where two single blocks load 20 (attention_bench BERT 1.40-1.46 -> 1.33-1.41
// ms; TAIYI_ATTENTION_PAIRS=0 turns it off).
// Packed once per call: K as bf16 [B*H][d step][Lk32][32 d, or the last step's width] and V^T as
// bf16 blocks [B*H][Lk32 / 32][Dv16][32 keys] (zeros past Lk, D and Dv); per thread, the task's Q
// pairs, one chunk's S^T and P pairs, and O^T. Padded keys get scores of -1e30, so probability 0.
// Roundings as ops::prepare_attention_bf16's: q, k, v rounded to bf16 (nearest even), scores in
// f32, each output divided by the sum of its rounded weights; the weights are relative to the
// running reference above (the tests' reference does the same), rounded to nearest with ties up
// (probabilities() in attention_bf16_lanes.h; the reference rounds ties to even: ~1 in 2^16 differ).
#if defined(__x86_64__)
// GCC 12's AVX-512 intrinsics pass an uninitialised _mm512_undefined_ps() as the unused
// merge source of their unmasked forms, which -Wmaybe-uninitialized reports at each use.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#include "taiyi/ops/cpu/amx_tile_config.h"
#include "taiyi/ops/cpu/attention_bf16_lanes.h"
#include "taiyi/ops/cpu/bf16_pairs_avx512.h"
#include "taiyi/ops/cpu/cpu_isa.h"
#include "taiyi/ops/cpu/prepared_kernels.h"

namespace taiyi::ops::cpu {

namespace {

constexpr int64_t kRows = 16;     // queries per task: the columns of the S^T and O^T tiles
constexpr int64_t kKeyStep = 32;  // keys per block of both products; Lk is padded to a multiple
constexpr int64_t kChunk = 128;   // keys per chunk: scores and probabilities of a chunk stay in L1
constexpr int64_t kCols = 16;     // f32 columns of a result tile: the task's queries
constexpr float kPadScore = -1e30f;
constexpr float kLazyLog2 = 8.0f;  // how far a chunk's max may pass the running one, in log2 units
constexpr int64_t kGroup = 4;      // blocks of queries a task takes where a head's K and V^T pass L1
constexpr size_t kGroupBytes = size_t{1} << 16;

int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }
size_t round_up64(size_t n) { return (n + 63) / 64 * 64; }

using View = AttentionView;

// max(m, rows of s^T [n][16]) for n rows.
TAIYI_TARGET_AMX inline __m512 rows_max(const float* s, int64_t n, __m512 m) {
  __m512 m4[4] = {m, m, m, m};
  int64_t j = 0;
  for (; j + 4 <= n; j += 4)
    for (int u = 0; u < 4; ++u) m4[u] = _mm512_max_ps(m4[u], _mm512_load_ps(s + (j + u) * kCols));
  for (; j < n; ++j) m4[0] = _mm512_max_ps(m4[0], _mm512_load_ps(s + j * kCols));
  return _mm512_max_ps(_mm512_max_ps(m4[0], m4[1]), _mm512_max_ps(m4[2], m4[3]));
}

class AttentionBf16Amx : public PreparedOp {
 public:
  AttentionBf16Amx(const Shape& qs, const Shape& ks, const Shape& vs, int heads, float scale)
      : batch_(qs[0]),
        lq_(qs[1]),
        lk_(ks[1]),
        heads_(heads),
        d_(qs[2] / heads),
        dv_(vs[2] / heads),
        dp_(round_up(d_, 2)),
        steps_((dp_ + 31) / 32),
        last_(dp_ - 32 * (steps_ - 1)),
        dq_(steps_ * 32),
        dv16_(round_up(dv_, kCols)),
        lk32_(round_up(lk_, kKeyStep)),
        qblocks_((lq_ + kRows - 1) / kRows),
        sum_row_(dv_ < dv16_),
        c_(scale * 1.44269504088896341f),
        threads_(std::max(1, omp_get_max_threads())) {
    const size_t bh = static_cast<size_t>(batch_ * heads_);
    k_bytes_ = round_up64(bh * lk32_ * dp_ * 2);
    v_bytes_ = round_up64(bh * lk32_ * dv16_ * 2);
    q_bytes_ = static_cast<size_t>(dq_ / 2) * 64;
    s_bytes_ = static_cast<size_t>(kChunk) * 64;
    p_bytes_ = static_cast<size_t>(kChunk / 2) * 64;
    o_bytes_ = static_cast<size_t>(dv16_) * 64;
    // Blocks of queries per task: where a head's packed K and V^T pass kGroupBytes (more than L1), a
    // task runs kGroup blocks chunk by chunk, so that each chunk of K and V^T comes from L2 or
    // memory once for all of them (then from L1). The VAE's attention (one head, D = 512, 4096 keys:
    // 8 MiB) read them from memory once per 16 queries; the UNet's cross-attention (512 keys, 90-330
    // KiB a head) from L2: with 4 blocks a task, [2,4096,320] x 512 keys 6.6-6.8 -> 5.8 ms and
    // [2,1024,640] x 512 2.7-2.8 -> 2.5 ms (attention_bench), the UNet step's attention 0.25-0.28 ->
    // 0.245-0.247 s. (Up to stop 22 only from 1 MiB.)
    const auto head_bytes = static_cast<size_t>(lk32_ * (dp_ + dv16_) * 2);
    group_ = head_bytes > kGroupBytes ? kGroup : 1;
    // Pairs of blocks where D = Dv = 64 (BERT's heads) and a task has several: see scores_pair.
    pair_ = d_ == 64 && dv_ == 64 && group_ > 1 &&
            !(std::getenv("TAIYI_ATTENTION_PAIRS") && std::string(std::getenv("TAIYI_ATTENTION_PAIRS")) == "0");
    per_thread_bytes_ = static_cast<size_t>(group_) * (q_bytes_ + o_bytes_) + (pair_ ? 2 : 1) * (s_bytes_ + p_bytes_);
    // One configuration for both products: t0 Q (32 d), t1 Q (the last d step), t2 K (the last
    // step), t3 K (32 d) or V^T, t4 S^T or P pairs, t5 S^T or O^T, t6 K (32 d) or O^T, t7 O^T.
    cfg_.set(0, 16, 64);
    cfg_.set(1, static_cast<int>(last_ / 2), 64);
    cfg_.set(2, 16, static_cast<int>(last_ * 2));
    for (int t = 3; t <= 7; ++t) cfg_.set(t, 16, 64);
  }

  void run(const std::vector<Tensor>& in, const Tensor& out, std::byte* scratch) const override {
    run_amx(in, out, scratch);
  }
  size_t scratch_bytes() const override {
    return k_bytes_ + v_bytes_ + static_cast<size_t>(threads_) * per_thread_bytes_;
  }
  size_t packed_weight_bytes() const override { return 0; }
  std::string describe() const override {
    return std::string("attention bf16 amx (") + std::to_string(16 * group_) + " queries" +
           (pair_ ? " in pairs of blocks" : "") + ", online softmax per 128 keys)";
  }
  double flops() const override { return 2.0 * batch_ * heads_ * lq_ * lk_ * (d_ + dv_); }

 private:
  TAIYI_TARGET_AMX void run_amx(const std::vector<Tensor>& in, const Tensor& out, std::byte* scratch) const {
    const View q = attention_view(in.at(0)), k = attention_view(in.at(1)), v = attention_view(in.at(2));
    auto* kc = reinterpret_cast<uint16_t*>(scratch);
    auto* vc = reinterpret_cast<uint16_t*>(scratch + k_bytes_);
    std::byte* per_thread = scratch + k_bytes_ + v_bytes_;
    const LaneRowsOut op = lane_rows_out(out);
    const int threads = std::min(threads_, std::max(1, omp_get_max_threads()));
    const int64_t tasks = batch_ * heads_ * ((qblocks_ + group_ - 1) / group_);
    const int64_t vblocks = lk32_ / kKeyStep;

#pragma omp parallel num_threads(threads)
    {
      // K as bf16 [b][h][d step][key][32 d, or the last step's width], zeros past D and Lk: the
      // rows of every tile lie next to each other.
#pragma omp for schedule(static)
      for (int64_t r = 0; r < batch_ * lk32_; ++r) {
        const int64_t b = r / lk32_, j = r % lk32_;
        for (int64_t h = 0; h < heads_; ++h) {
          uint16_t* head = kc + (b * heads_ + h) * lk32_ * dp_;
          if (k.h) {  // bf16 rows (element stride 1, D even: takes_bf16_inputs): copied
            const uint16_t* src = k.h + b * k.s0 + j * k.s1 + h * d_;
            for (int64_t st = 0; st < steps_; ++st) {
              const int64_t width = st + 1 < steps_ ? 32 : last_;
              const __mmask32 lanes = static_cast<__mmask32>((uint64_t{1} << width) - 1);
              const __m512i x = j < lk_ ? _mm512_maskz_loadu_epi16(lanes, src + st * 32) : _mm512_setzero_si512();
              _mm512_mask_storeu_epi16(head + st * lk32_ * 32 + j * width, lanes, x);
            }
            continue;
          }
          const float* src = k.p + b * k.s0 + j * k.s1 + h * d_ * k.s2;
          for (int64_t st = 0; st < steps_; ++st) {
            const int64_t width = st + 1 < steps_ ? 32 : last_;
            uint16_t* dst = head + st * lk32_ * 32 + j * width;
            for (int64_t c0 = 0; c0 < width; c0 += 16) {
              const int64_t at = st * 32 + c0;
              const __m512 x = j < lk_ ? load_strided(src + at * k.s2, k.s2, d_ - at) : _mm512_setzero_ps();
              _mm256_mask_storeu_epi16(dst + c0, first_lanes(width - c0), (__m256i)_mm512_cvtneps_pbh(x));
            }
          }
        }
      }
      // V^T as bf16 blocks [b][h][block of 32 keys][e][32 keys], zeros past Lk and Dv; row Dv all
      // ones where Dv is no multiple of 16.
#pragma omp for schedule(static)
      for (int64_t r = 0; r < batch_ * heads_ * vblocks; ++r) {
        const int64_t b = r / (heads_ * vblocks), h = r / vblocks % heads_, j0 = r % vblocks * kKeyStep;
        const int64_t keys = lk_ - j0;
        uint16_t* dst = vc + r * dv16_ * kKeyStep;
        if (v.h) {
          pack_bf16_value_block(v.h + b * v.s0 + j0 * v.s1 + h * dv_, v.s1, keys, dst);
          continue;
        }
        const float* src = v.p + b * v.s0 + j0 * v.s1 + h * dv_ * v.s2;
        for (int64_t e = 0; e < dv16_; ++e) {
          __m512 lo = _mm512_setzero_ps(), hi = _mm512_setzero_ps();
          if (e < dv_) {
            lo = load_strided(src + e * v.s2, v.s1, keys);
            hi = load_strided(src + e * v.s2 + 16 * v.s1, v.s1, keys - 16);
          } else if (e == dv_) {  // the sums' row (sum_row_), ones for every key (padded keys get P = 0)
            lo = hi = _mm512_set1_ps(1.0f);
          }
          _mm512_store_si512(dst + e * kKeyStep, as_si(_mm512_cvtne2ps_pbh(hi, lo)));
        }
      }  // the implicit barrier: all packing is done

      std::byte* mine = per_thread + static_cast<size_t>(omp_get_thread_num()) * per_thread_bytes_;
      _tile_loadconfig(&cfg_);
#pragma omp for schedule(dynamic, 1)
      for (int64_t task = 0; task < tasks; ++task) {
        if (group_ == 1) {
          run_task<1>(task, q, kc, vc, op, mine);
        } else {
          run_task<kGroup>(task, q, kc, vc, op, mine);
        }
      }
      _tile_release();
    }
  }

  // One block of 32 keys of V^T, [Dv16][32 keys] bf16, from bf16 rows of v (src: key 0's element
  // 0 of the head, row stride s1, element stride 1, Dv even): 16 keys' rows of 16 element pairs
  // (32-bit words) transposed in registers bring a pair (e, e + 1) of 16 keys per register, and one
  // permutation of 16-bit halves puts each of rows e and e + 1 together from the two halves of the
  // block (keys 0-15 and 16-31). Zeros past `keys` and Dv; row Dv all ones where sum_row_. (Gathers
  // before: BERT's attention 1.43 -> 1.40 ms.)
  TAIYI_TARGET_AMX void pack_bf16_value_block(const uint16_t* src, int64_t s1, int64_t keys, uint16_t* dst) const {
    alignas(64) uint16_t even[32];
    for (int k = 0; k < 16; ++k) {
      even[k] = static_cast<uint16_t>(2 * k);
      even[16 + k] = static_cast<uint16_t>(32 + 2 * k);
    }
    const __m512i lo_idx = _mm512_load_si512(even), hi_idx = _mm512_add_epi16(lo_idx, _mm512_set1_epi16(1));
    for (int64_t p0 = 0; p0 < dv_ / 2; p0 += 16) {
      const __mmask16 pairs = first_lanes(dv_ / 2 - p0);
      __m512i r0[16], r1[16];
      for (int64_t j = 0; j < 16; ++j) {
        r0[j] = j < keys ? _mm512_maskz_loadu_epi32(pairs, src + j * s1 + 2 * p0) : _mm512_setzero_si512();
        r1[j] = j + 16 < keys ? _mm512_maskz_loadu_epi32(pairs, src + (j + 16) * s1 + 2 * p0) : _mm512_setzero_si512();
      }
      transpose16x16_epi32(r0);
      transpose16x16_epi32(r1);
      for (int64_t p = 0; p < std::min<int64_t>(16, dv_ / 2 - p0); ++p) {
        const int64_t e = 2 * (p0 + p);
        _mm512_store_si512(dst + e * kKeyStep, _mm512_permutex2var_epi16(r0[p], lo_idx, r1[p]));
        _mm512_store_si512(dst + (e + 1) * kKeyStep, _mm512_permutex2var_epi16(r0[p], hi_idx, r1[p]));
      }
    }
    for (int64_t e = dv_; e < dv16_; ++e) {
      const __m512 fill = _mm512_set1_ps(e == dv_ && sum_row_ ? 1.0f : 0.0f);
      _mm512_store_si512(dst + e * kKeyStep, as_si(_mm512_cvtne2ps_pbh(fill, fill)));
    }
  }

  // S^T of keys [j0, j0 + 32) into s [32][16]; Q's pairs in t0 (first step, when D takes two) and
  // t1 (the last step) when D <= 64, else from qp.
  TAIYI_TARGET_AMX void scores(const uint16_t* kh, int64_t j0, const __m512bh* qp, float* s) const {
    _tile_zero(4);
    _tile_zero(5);
    for (int64_t st = 0; st + 1 < steps_; ++st) {
      const uint16_t* kb = kh + st * lk32_ * 32 + j0 * 32;
      if (steps_ > 2) _tile_loadd(0, qp + st * 16, 64);
      _tile_loadd(3, kb, 64);
      _tile_loadd(6, kb + 16 * 32, 64);
      _tile_dpbf16ps(4, 3, 0);
      _tile_dpbf16ps(5, 6, 0);
    }
    const uint16_t* kl = kh + (steps_ - 1) * lk32_ * 32 + j0 * last_;
    if (steps_ > 2) _tile_loadd(1, qp + (steps_ - 1) * 16, 64);
    _tile_loadd(2, kl, last_ * 2);
    _tile_dpbf16ps(4, 2, 1);
    _tile_loadd(2, kl + 16 * last_, last_ * 2);
    _tile_dpbf16ps(5, 2, 1);
    _tile_stored(4, s, 64);
    _tile_stored(5, s + 16 * kCols, 64);
  }

  // One block of 16 queries' running state: its queries as bf16 pairs (qp), O^T (o), the reference
  // m (and -c m) and the sums of the rounded P, per query (lane).
  struct Block {
    int64_t i0 = 0, nq = 0;
    __m512bh* qp = nullptr;
    float* o = nullptr;
    __m512 m, neg_cmax, sum0, sum1;
  };

  // Step 2 of run_task for one block and chunk: the reference m and the rescaling of O^T and the
  // sums where it moves, P = bf16(2^(c s - c m)) into pp and the sums of the rounded P.
  TAIYI_TARGET_AMX void softmax_chunk(Block& blk, float* st, __m512bh* pp, int64_t c0, int64_t end,
                                      int64_t real) const {
    const __m512 c = _mm512_set1_ps(c_), neg_c = _mm512_set1_ps(-c_);
    const __m512bh ones = as_bh(_mm512_set1_epi16(0x3f80));  // bf16 1.0
    // (the running state in registers while the chunk runs: blk may alias the stores below)
    __m512 m = blk.m, neg_cmax = blk.neg_cmax, sum0 = blk.sum0, sum1 = blk.sum1;
    const __m512 chunk_max = rows_max(st, real, m);
    for (int64_t j = real; j < end - c0; ++j) _mm512_store_ps(st + j * kCols, _mm512_set1_ps(kPadScore));
    if (c0 == 0) {
      m = chunk_max;
      neg_cmax = _mm512_mul_ps(m, neg_c);
    } else {
      // Lazy: m moves only where the chunk's max exceeds it by more than kLazyLog2 (in log2
      // units: its probabilities up to 2^kLazyLog2, as exact in bf16 and the f32 sums as any).
      const __mmask16 grew =
          _mm512_cmp_ps_mask(_mm512_fmadd_ps(chunk_max, c, neg_cmax), _mm512_set1_ps(kLazyLog2), _CMP_GT_OQ);
      if (grew) {
        const __m512 m_new = _mm512_mask_blend_ps(grew, m, chunk_max);
        const __m512 neg_cmax_new = _mm512_mul_ps(m_new, neg_c);
        const __m512 alpha =
            _mm512_mask_blend_ps(grew, _mm512_set1_ps(1.0f), exp2_avx512(_mm512_fmadd_ps(m, c, neg_cmax_new)));
        sum0 = _mm512_mul_ps(sum0, alpha);
        sum1 = _mm512_mul_ps(sum1, alpha);
        for (int64_t e = 0; e < dv_ + sum_row_; ++e)
          _mm512_store_ps(blk.o + e * kCols, _mm512_mul_ps(_mm512_load_ps(blk.o + e * kCols), alpha));
        m = m_new;
        neg_cmax = neg_cmax_new;
      }
    }
    if (sum_row_) {
      for (int64_t t = 0; t < (end - c0) / 2; ++t) pp[t] = probabilities(st + 2 * t * kCols, c, neg_cmax);
    } else {
      for (int64_t t = 0; t < (end - c0) / 2; t += 2) {
        sum0 = _mm512_dpbf16_ps(sum0, pp[t] = probabilities(st + 2 * t * kCols, c, neg_cmax), ones);
        sum1 = _mm512_dpbf16_ps(sum1, pp[t + 1] = probabilities(st + (2 * t + 2) * kCols, c, neg_cmax), ones);
      }
    }
    blk.m = m;
    blk.neg_cmax = neg_cmax;
    blk.sum0 = sum0;
    blk.sum1 = sum1;
  }

  // One (batch x head, group_ blocks of 16 queries): flash attention over chunks of 128 keys, each
  // chunk for every block of the group in turn (its K and V^T then in L2 for all but the first).
  // For each chunk and block: 1. S^T = K Q^T (A: K [16 keys][32 d], B: Q pairs [16 d pairs][16
  // queries][2], C: S^T [16 keys][16 queries] f32) into s, in L1; 2. per query (lane) the reference
  // m (lazy: see the top), and where it moved, O^T and the sums scaled by 2^(c m_old - c m); P =
  // bf16(2^(c s - c m)) as pairs of keys, and the sums of the rounded P (vdpbf16ps adds each lane's
  // pair); 3. O^T += V^T P^T (A: V^T [16 e][32 keys], B: P pairs [16 key pairs][16 queries][2]), up
  // to three tiles of O^T at a time, kept in memory between chunks. Then out = O / sum.
  // G: group_ as a constant (1 keeps the single block's state in registers: 3-5 % faster at the
  // UNet's 64x64 self-attention than the general loop).
  template <int64_t G>
  TAIYI_TARGET_AMX void run_task(int64_t task, const View& q, const uint16_t* kc, const uint16_t* vc,
                                 const LaneRowsOut& out, std::byte* mine) const {
    const int64_t groups = (qblocks_ + G - 1) / G;
    const int64_t bh = task / groups, first_block = task % groups * G;
    const int64_t b = bh / heads_, h = bh % heads_;
    const int64_t nblocks = std::min(G, qblocks_ - first_block);
    // [group_ x Q pairs][S^T][P pairs][group_ x O^T]
    const size_t q_all = static_cast<size_t>(group_) * q_bytes_;
    auto* st = reinterpret_cast<float*>(mine + q_all);
    auto* pp = reinterpret_cast<__m512bh*>(mine + q_all + s_bytes_);
    std::byte* o_all = mine + q_all + s_bytes_ + p_bytes_;
    // (pair_: a second S^T and P after the group's O^T)
    auto* st_b = reinterpret_cast<float*>(o_all + static_cast<size_t>(group_) * o_bytes_);
    auto* pp_b = reinterpret_cast<__m512bh*>(o_all + static_cast<size_t>(group_) * o_bytes_ + s_bytes_);
    const uint16_t* kh = kc + bh * lk32_ * dp_;
    const uint16_t* vh = vc + bh * lk32_ * dv16_;

    Block blocks[G];
    for (int64_t g = 0; g < nblocks; ++g) {
      Block& blk = blocks[g];
      blk.i0 = (first_block + g) * kRows;
      blk.nq = std::min(kRows, lq_ - blk.i0);
      blk.qp = reinterpret_cast<__m512bh*>(mine + static_cast<size_t>(g) * q_bytes_);
      blk.o = reinterpret_cast<float*>(o_all + static_cast<size_t>(g) * o_bytes_);
      blk.m = _mm512_set1_ps(kPadScore);
      blk.neg_cmax = blk.sum0 = blk.sum1 = _mm512_setzero_ps();
      // The block's queries as pairs: qp[e] lane i = (q[i0 + i, 2e], q[i0 + i, 2e + 1]) in bf16;
      // zeros past Lq and D.
      if (q.h) {  // bf16 (element stride 1, D even): 16 pairs of each query's row, transposed
        const uint16_t* src = q.h + b * q.s0 + blk.i0 * q.s1 + h * d_;
        for (int64_t e0 = 0; e0 < dq_ / 2; e0 += 16) {
          const __mmask16 pairs = first_lanes(d_ / 2 - e0);
          __m512i r[16];
          for (int64_t i = 0; i < 16; ++i)
            r[i] = i < blk.nq ? _mm512_maskz_loadu_epi32(pairs, src + i * q.s1 + 2 * e0) : _mm512_setzero_si512();
          transpose16x16_epi32(r);
          for (int64_t e = e0; e < std::min(dq_ / 2, e0 + 16); ++e) blk.qp[e] = as_bh(r[e - e0]);
        }
      } else {
        gather_query_pairs(q.p + b * q.s0 + blk.i0 * q.s1 + h * d_ * q.s2, q.s1, q.s2, blk.nq, d_, dq_ / 2, blk.qp);
      }
    }

    for (int64_t c0 = 0; c0 < lk32_; c0 += kChunk) {
      const int64_t end = std::min(lk32_, c0 + kChunk), real = std::min(end, lk_) - c0;
      for (int64_t g = 0; g < nblocks; ++g) {
        Block& blk = blocks[g];
        // 1. (Q in t0 and t1 when D <= 64: loaded for each block in turn)
        if (pair_ && g + 1 < nblocks) {  // blocks g and g + 1 together (pair_)
          Block& other = blocks[g + 1];
          scores_pair(kh, c0, end, blk, other, st, st_b);
          softmax_chunk(blk, st, pp, c0, end, real);
          softmax_chunk(other, st_b, pp_b, c0, end, real);
          output_pair(pp, pp_b, vh, c0, end, blk.o, other.o);
          ++g;
          continue;
        }
        if (steps_ <= 2 && (c0 == 0 || G > 1)) {
          if (steps_ == 2) _tile_loadd(0, blk.qp, 64);
          _tile_loadd(1, blk.qp + (steps_ - 1) * 16, 64);
        }
        for (int64_t j0 = c0; j0 < end; j0 += kKeyStep) scores(kh, j0, blk.qp, st + (j0 - c0) * kCols);
        // 2.
        softmax_chunk(blk, st, pp, c0, end, real);
        // 3.
        for (int64_t e0 = 0; e0 < dv16_; e0 += 3 * kCols) {
          switch (std::min<int64_t>(3, (dv16_ - e0) / kCols)) {
            case 1: output_sweep<1>(pp, vh, c0, end, e0, blk.o); break;
            case 2: output_sweep<2>(pp, vh, c0, end, e0, blk.o); break;
            default: output_sweep<3>(pp, vh, c0, end, e0, blk.o); break;
          }
        }
      }
    }

    // out = O / sum, lanes back to rows of out [B, Lq, H * Dv].
    for (int64_t g = 0; g < nblocks; ++g) {
      const Block& blk = blocks[g];
      const __m512 sum = sum_row_ ? _mm512_load_ps(blk.o + dv_ * kCols) : _mm512_add_ps(blk.sum0, blk.sum1);
      const __m512 inv_sum = _mm512_div_ps(_mm512_set1_ps(1.0f), sum);
      for (int64_t e = 0; e < dv_; ++e)
        _mm512_store_ps(blk.o + e * kCols, _mm512_mul_ps(_mm512_load_ps(blk.o + e * kCols), inv_sum));
      store_lanes_as_rows(blk.o, blk.nq, dv_, out, (b * lq_ + blk.i0) * heads_ * dv_ + h * dv_);
    }
  }

  // S^T of a chunk's keys for two blocks at once (pair_: D = 64, all tiles 16 x 64 bytes): Q of
  // block a in t0 (d 0-31) and t1 (d 32-63), of block b in t2 and t3; each K tile (t6: d 0-31, t7:
  // d 32-63, 16 keys) serves both blocks' products (C: t4 for a, t5 for b), so that a pair loads
  // half the K tiles of two blocks one after the other. The tile loads and stores, not the products,
  // set the pace here (bench/RESULTS.md, stop 25).
  TAIYI_TARGET_AMX void scores_pair(const uint16_t* kh, int64_t c0, int64_t end, const Block& a, const Block& b,
                                    float* sa, float* sb) const {
    _tile_loadd(0, a.qp, 64);
    _tile_loadd(1, a.qp + 16, 64);
    _tile_loadd(2, b.qp, 64);
    _tile_loadd(3, b.qp + 16, 64);
    const uint16_t* k_lo = kh + c0 * 32;            // d step 0, key c0
    const uint16_t* k_hi = kh + (lk32_ + c0) * 32;  // d step 1
    for (int64_t j = 0; j < end - c0; j += 16) {
      _tile_zero(4);
      _tile_zero(5);
      _tile_loadd(6, k_lo + j * 32, 64);
      _tile_dpbf16ps(4, 6, 0);
      _tile_dpbf16ps(5, 6, 2);
      _tile_loadd(7, k_hi + j * 32, 64);
      _tile_dpbf16ps(4, 7, 1);
      _tile_dpbf16ps(5, 7, 3);
      _tile_stored(4, sa + j * kCols, 64);
      _tile_stored(5, sb + j * kCols, 64);
    }
  }

  // O^T of blocks a and b += V^T P^T over a chunk's keys (pair_: Dv = 64), 32 e at a time: C t4, t5
  // (a's e0 and e0 + 16), t6, t7 (b's); B: a's P pairs in t0, b's in t1; A: V^T in t2 and t3, each
  // tile serving both blocks. O^T in memory between chunks as in output_sweep.
  TAIYI_TARGET_AMX void output_pair(const __m512bh* pa, const __m512bh* pb, const uint16_t* vh, int64_t c0, int64_t end,
                                    float* oa, float* ob) const {
    for (int64_t e0 = 0; e0 < 64; e0 += 32) {
      float* ta = oa + e0 * kCols;
      float* tb = ob + e0 * kCols;
      if (c0 == 0) {
        _tile_zero(4);
        _tile_zero(5);
        _tile_zero(6);
        _tile_zero(7);
      } else {
        _tile_loadd(4, ta, 64);
        _tile_loadd(5, ta + 16 * kCols, 64);
        _tile_loadd(6, tb, 64);
        _tile_loadd(7, tb + 16 * kCols, 64);
      }
      for (int64_t k0 = c0; k0 < end; k0 += kKeyStep) {
        _tile_loadd(0, pa + (k0 - c0) / 2, 64);
        _tile_loadd(1, pb + (k0 - c0) / 2, 64);
        const uint16_t* vb = vh + (k0 * dv16_ + e0 * kKeyStep);  // block k0 / 32, row e0
        _tile_loadd(2, vb, 64);
        _tile_loadd(3, vb + 16 * kKeyStep, 64);
        _tile_dpbf16ps(4, 2, 0);
        _tile_dpbf16ps(5, 3, 0);
        _tile_dpbf16ps(6, 2, 1);
        _tile_dpbf16ps(7, 3, 1);
      }
      _tile_stored(4, ta, 64);
      _tile_stored(5, ta + 16 * kCols, 64);
      _tile_stored(6, tb, 64);
      _tile_stored(7, tb + 16 * kCols, 64);
    }
  }

  // O^T[e0, e0 + 16 N) += V^T[e0, e0 + 16 N) P^T over the keys [c0, end) of a chunk, in t5-t7; o
  // [Dv16][16] (not read for the first chunk).
  template <int N>
  TAIYI_TARGET_AMX void output_sweep(const __m512bh* pp, const uint16_t* vh, int64_t c0, int64_t end, int64_t e0,
                                     float* o) const {
    float* ot = o + e0 * kCols;
    if (c0 == 0) {
      _tile_zero(5);
      if constexpr (N > 1) _tile_zero(6);
      if constexpr (N > 2) _tile_zero(7);
    } else {
      _tile_loadd(5, ot, 64);
      if constexpr (N > 1) _tile_loadd(6, ot + 16 * kCols, 64);
      if constexpr (N > 2) _tile_loadd(7, ot + 32 * kCols, 64);
    }
    for (int64_t k0 = c0; k0 < end; k0 += kKeyStep) {
      _tile_loadd(4, pp + (k0 - c0) / 2, 64);
      const uint16_t* vb = vh + (k0 * dv16_ + e0 * kKeyStep);  // block k0 / 32, row e0
      _tile_loadd(3, vb, 64);
      _tile_dpbf16ps(5, 3, 4);
      if constexpr (N > 1) {
        _tile_loadd(3, vb + 16 * kKeyStep, 64);
        _tile_dpbf16ps(6, 3, 4);
      }
      if constexpr (N > 2) {
        _tile_loadd(3, vb + 32 * kKeyStep, 64);
        _tile_dpbf16ps(7, 3, 4);
      }
    }
    _tile_stored(5, ot, 64);
    if constexpr (N > 1) _tile_stored(6, ot + 16 * kCols, 64);
    if constexpr (N > 2) _tile_stored(7, ot + 32 * kCols, 64);
  }

  int64_t batch_, lq_, lk_, heads_, d_, dv_, dp_, steps_, last_, dq_, dv16_, lk32_, qblocks_, group_ = 1;
  // Where Dv is no multiple of 16, V^T's row Dv is all ones, so that O^T's row Dv is the sum of the
  // rounded P (the tiles add them in f32 as vdpbf16ps would): no vector work for the sums.
  bool sum_row_;
  bool pair_ = false;
  float c_;
  int threads_;
  TileConfig cfg_;
  size_t k_bytes_ = 0, v_bytes_ = 0, q_bytes_ = 0, s_bytes_ = 0, p_bytes_ = 0, o_bytes_ = 0, per_thread_bytes_ = 0;
};

}  // namespace

bool attention_bf16_amx_applicable(float scale) { return cpu_has_amx_bf16() && scale > 0.0f; }

std::unique_ptr<PreparedOp> prepare_attention_bf16_amx(const Shape& q, const Shape& k, const Shape& v, int heads,
                                                       float scale) {
  if (!cpu_has_amx_bf16()) throw Error("attention: the AMX kernel needs a CPU with AMX-BF16 that Linux lets us use");
  if (!(scale > 0.0f)) throw Error("attention: the AMX kernel needs a positive scale");
  return std::make_unique<AttentionBf16Amx>(q, k, v, heads, scale);
}

}  // namespace taiyi::ops::cpu

#else  // not x86: no AMX, so never applicable.

#include "taiyi/ops/cpu/prepared_kernels.h"

namespace taiyi::ops::cpu {
bool attention_bf16_amx_applicable(float) { return false; }
std::unique_ptr<PreparedOp> prepare_attention_bf16_amx(const Shape& q, const Shape&, const Shape&, int, float) {
  throw Error("attention: the AMX kernel needs an x86 CPU with AMX-BF16, not available for q " + shape_str(q));
}
}  // namespace taiyi::ops::cpu

#endif
