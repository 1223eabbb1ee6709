// Prepared multi-head attention with bf16 products on AMX tiles (tdpbf16ps), for CPUs with AMX-BF16
// (Intel Sapphire Rapids and later). oneDNN's matmuls in attention_prepared_dnnl.cpp run the Taiyi
// UNet's 64x64 self-attention at about 250 GFLOP/s there: D = Dv = 40 is a short reduction and a
// narrow output, its P V product falls back to gemm:jit for the strided output, and the softmax
// between them is an AVX2 pass over rows. Here one task is one (batch x head, 16 queries), all of
// it in this core's L1 and L2, and the queries are the 16 columns of every tile, so that the
// softmax works on 16 queries per register with no horizontal reductions (as in
// attention_bf16_avx512.cpp):
//   1. S^T = K Q^T    A: K [16 keys][32 d], B: Q pairs [16 d pairs][16 queries][2], C: S^T [16
//                     keys][16 queries] f32; two key tiles at a time; the last d step narrow (D = 40
//                     is 32 + 8); Q stays in its tiles when D <= 64. Each stored block's row max
//                     (per query: per lane) is taken while the tiles compute the next block.
//   2. P = bf16(2^(c s - c max)) per query over all keys, c = scale log2(e), as (key 2t, key 2t+1)
//      pairs per query, and the sums of the rounded P: AVX-512, one register per key.
//   3. O^T = V^T P^T  A: V^T [16 e][32 keys], B: P pairs [16 key pairs][16 queries][2], C: O^T
//                     [16 e][16 queries] f32; each 32-key block of P goes to the tiles as soon as
//                     2. has made it (up to three e tiles; further ones sweep the whole P after).
//      out = O / sum, transposed back by gathers.
// Every tile is 16 rows of 64 contiguous bytes in memory (rows 64 bytes apart, or K's 2 Dq bytes):
// tiles whose rows lie kilobytes apart fall into the same L1 sets. Packed once per call: K as bf16
// rows [B*H][Lk32][Dq] (Dq = D rounded up to 32) and V^T as bf16 blocks [B*H][Lk32 / 32][Dv16][32
// keys] (zeros past Lk, D and Dv); per thread, the task's Q pairs, S^T, P pairs and O^T. Padded
// keys get scores of -1e30, so probability 0. Same contract and roundings as
// ops::prepare_attention_bf16: q, k, v rounded to bf16 (nearest even), scores in f32,
// probabilities over whole rows of keys, each output divided by the sum of its rounded weights.
#if defined(__x86_64__)
// GCC 12's AVX-512 intrinsics pass an uninitialised _mm512_undefined_ps() as the unused
// merge source of their unmasked forms, which -Wmaybe-uninitialized reports at each use.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>

#include "taiyi/ops/cpu/attention_bf16_lanes.h"
#include "taiyi/ops/cpu/bf16_pairs_avx512.h"
#include "taiyi/ops/cpu/cpu_isa.h"
#include "taiyi/ops/cpu/prepared_kernels.h"

namespace taiyi::ops::cpu {

namespace {

constexpr int64_t kRows = 16;      // queries per task: the columns of the S^T and O^T tiles
constexpr int64_t kKeyStep = 32;   // keys per step of both products; Lk is padded to a multiple
constexpr int64_t kCols = 16;      // f32 columns of a result tile: the task's queries
constexpr float kPadScore = -1e30f;

int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }
size_t round_up64(size_t n) { return (n + 63) / 64 * 64; }

// ldtilecfg's 64-byte operand (palette 1).
struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
  void set(int tile, int rows_, int bytes_per_row) {
    rows[tile] = static_cast<uint8_t>(rows_);
    colsb[tile] = static_cast<uint16_t>(bytes_per_row);
  }
};

using View = AttentionView;

// m8[u] = max(m8[u], rows of s^T [n][16]) for the first n of a block's 32 rows.
TAIYI_TARGET_AMX inline void block_max(const float* s, int64_t n, __m512 m8[8]) {
  if (n == kKeyStep) {
    for (int64_t j = 0; j < kKeyStep; j += 8)
      for (int u = 0; u < 8; ++u) m8[u] = _mm512_max_ps(m8[u], _mm512_load_ps(s + (j + u) * kCols));
    return;
  }
  for (int64_t j = 0; j < n; ++j) m8[j % 8] = _mm512_max_ps(m8[j % 8], _mm512_load_ps(s + j * kCols));
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
        c_(scale * 1.44269504088896341f),
        threads_(std::max(1, omp_get_max_threads())) {
    const size_t bh = static_cast<size_t>(batch_ * heads_);
    k_bytes_ = round_up64(bh * lk32_ * dq_ * 2);
    v_bytes_ = round_up64(bh * lk32_ * dv16_ * 2);
    q_bytes_ = static_cast<size_t>(dq_ / 2) * 64;
    s_bytes_ = static_cast<size_t>(lk32_) * 64;
    p_bytes_ = static_cast<size_t>(lk32_ / 2) * 64;
    o_bytes_ = static_cast<size_t>(dv16_) * 64;
    per_thread_bytes_ = q_bytes_ + s_bytes_ + p_bytes_ + o_bytes_;
    // Scores: t0 Q (32 d), t1 Q (the last d step), t2-t3 K (32 d), t4-t5 K (the last step), t6-t7 S^T.
    scores_cfg_.set(0, 16, 64);
    scores_cfg_.set(1, static_cast<int>(last_ / 2), 64);
    scores_cfg_.set(2, 16, 64);
    scores_cfg_.set(3, 16, 64);
    scores_cfg_.set(4, 16, static_cast<int>(last_ * 2));
    scores_cfg_.set(5, 16, static_cast<int>(last_ * 2));
    scores_cfg_.set(6, 16, 64);
    scores_cfg_.set(7, 16, 64);
    // Outputs: t0 P pairs, t1-t3 V^T, t4-t6 O^T.
    for (int t = 0; t <= 6; ++t) output_cfg_.set(t, 16, 64);
  }

  void run(const std::vector<Tensor>& in, const Tensor& out, std::byte* scratch) const override {
    run_amx(in, out, scratch);
  }
  size_t scratch_bytes() const override {
    return k_bytes_ + v_bytes_ + static_cast<size_t>(threads_) * per_thread_bytes_;
  }
  size_t packed_weight_bytes() const override { return 0; }
  std::string describe() const override { return "attention bf16 amx (16 queries x all keys)"; }
  double flops() const override { return 2.0 * batch_ * heads_ * lq_ * lk_ * (d_ + dv_); }

 private:
  TAIYI_TARGET_AMX void run_amx(const std::vector<Tensor>& in, const Tensor& out, std::byte* scratch) const {
    const View q = attention_view(in.at(0)), k = attention_view(in.at(1)), v = attention_view(in.at(2));
    auto* kc = reinterpret_cast<uint16_t*>(scratch);
    auto* vc = reinterpret_cast<uint16_t*>(scratch + k_bytes_);
    std::byte* per_thread = scratch + k_bytes_ + v_bytes_;
    const LaneRowsOut op = lane_rows_out(out);
    const int threads = std::min(threads_, std::max(1, omp_get_max_threads()));
    const int64_t tasks = batch_ * heads_ * qblocks_;
    const int64_t vblocks = lk32_ / kKeyStep;

#pragma omp parallel num_threads(threads)
    {
      // K as bf16 rows [b][h][key][Dq], zeros past D and Lk.
#pragma omp for schedule(static)
      for (int64_t r = 0; r < batch_ * lk32_; ++r) {
        const int64_t b = r / lk32_, j = r % lk32_;
        for (int64_t h = 0; h < heads_; ++h) {
          const float* src = k.p + b * k.s0 + j * k.s1 + h * d_ * k.s2;
          uint16_t* dst = kc + ((b * heads_ + h) * lk32_ + j) * dq_;
          for (int64_t c0 = 0; c0 < dq_; c0 += 16) {
            const __m512 x = j < lk_ ? load_strided(src + c0 * k.s2, k.s2, d_ - c0) : _mm512_setzero_ps();
            _mm256_store_si256(reinterpret_cast<__m256i*>(dst + c0), (__m256i)_mm512_cvtneps_pbh(x));
          }
        }
      }
      // V^T as bf16 blocks [b][h][block of 32 keys][e][32 keys], zeros past Lk and Dv.
#pragma omp for schedule(static)
      for (int64_t r = 0; r < batch_ * heads_ * vblocks; ++r) {
        const int64_t b = r / (heads_ * vblocks), h = r / vblocks % heads_, j0 = r % vblocks * kKeyStep;
        const int64_t keys = lk_ - j0;
        const float* src = v.p + b * v.s0 + j0 * v.s1 + h * dv_ * v.s2;
        uint16_t* dst = vc + r * dv16_ * kKeyStep;
        for (int64_t e = 0; e < dv16_; ++e) {
          __m512 lo = _mm512_setzero_ps(), hi = _mm512_setzero_ps();
          if (e < dv_) {
            lo = load_strided(src + e * v.s2, v.s1, keys);
            hi = load_strided(src + e * v.s2 + 16 * v.s1, v.s1, keys - 16);
          }
          _mm512_store_si512(dst + e * kKeyStep, as_si(_mm512_cvtne2ps_pbh(hi, lo)));
        }
      }  // the implicit barrier: all packing is done

      std::byte* mine = per_thread + static_cast<size_t>(omp_get_thread_num()) * per_thread_bytes_;
#pragma omp for schedule(dynamic, 1)
      for (int64_t task = 0; task < tasks; ++task) run_task(task, q, kc, vc, op, mine);
      _tile_release();
    }
  }

  // One (batch x head, block of 16 queries).
  TAIYI_TARGET_AMX void run_task(int64_t task, const View& q, const uint16_t* kc, const uint16_t* vc, const LaneRowsOut& out,
                                 std::byte* mine) const {
    const int64_t bh = task / qblocks_, i0 = task % qblocks_ * kRows;
    const int64_t b = bh / heads_, h = bh % heads_;
    const int64_t nq = std::min(kRows, lq_ - i0);
    auto* qp = reinterpret_cast<__m512bh*>(mine);
    auto* st = reinterpret_cast<float*>(mine + q_bytes_);
    auto* pp = reinterpret_cast<__m512bh*>(mine + q_bytes_ + s_bytes_);
    auto* o = reinterpret_cast<float*>(mine + q_bytes_ + s_bytes_ + p_bytes_);

    // The task's queries as pairs: qp[e] lane i = (q[i0 + i, 2e], q[i0 + i, 2e + 1]) in bf16; zeros
    // past Lq and D.
    gather_query_pairs(q.p + b * q.s0 + i0 * q.s1 + h * d_ * q.s2, q.s1, q.s2, nq, d_, dq_ / 2, qp);

    // 1. S^T = K Q^T, 32 keys at a time, and per query (lane) the running max over the real keys,
    // taken from the block just stored (in L1) while the tiles compute the next one. Eight maxima:
    // one would wait on the latency of each max before it.
    _tile_loadconfig(&scores_cfg_);
    const uint16_t* kh = kc + bh * lk32_ * dq_;
    const int64_t k_stride = dq_ * 2;
    const bool q_resident = steps_ <= 2;
    if (q_resident) {
      if (steps_ == 2) _tile_loadd(0, qp, 64);
      _tile_loadd(1, qp + (steps_ - 1) * 16, 64);
    }
    __m512 m8[8];
    for (auto& m : m8) m = _mm512_set1_ps(kPadScore);
    for (int64_t j0 = 0; j0 < lk32_; j0 += kKeyStep) {
      _tile_zero(6);
      _tile_zero(7);
      const uint16_t* kb = kh + j0 * dq_;
      for (int64_t s = 0; s < steps_; ++s) {
        if (s + 1 < steps_) {
          if (!q_resident) _tile_loadd(0, qp + s * 16, 64);
          _tile_loadd(2, kb + s * 32, k_stride);
          _tile_loadd(3, kb + 16 * dq_ + s * 32, k_stride);
          _tile_dpbf16ps(6, 2, 0);
          _tile_dpbf16ps(7, 3, 0);
        } else {
          if (!q_resident) _tile_loadd(1, qp + s * 16, 64);
          _tile_loadd(4, kb + s * 32, k_stride);
          _tile_loadd(5, kb + 16 * dq_ + s * 32, k_stride);
          _tile_dpbf16ps(6, 4, 1);
          _tile_dpbf16ps(7, 5, 1);
        }
      }
      _tile_stored(6, st + j0 * kCols, 64);
      _tile_stored(7, st + (j0 + 16) * kCols, 64);
      if (j0 > 0) block_max(st + (j0 - kKeyStep) * kCols, kKeyStep, m8);
    }
    const int64_t last_block = lk32_ - kKeyStep;
    block_max(st + last_block * kCols, lk_ - last_block, m8);
    for (int u = 1; u < 8; ++u) m8[0] = _mm512_max_ps(m8[0], m8[u]);
    for (int64_t j = lk_; j < lk32_; ++j) _mm512_store_ps(st + j * kCols, _mm512_set1_ps(kPadScore));

    // 2. P = bf16(2^(c s - c max)) as pairs of keys, and the sums of the rounded P (vdpbf16ps adds
    // each lane's pair); 3. O^T = V^T P^T. Each block of 32 keys' P goes to the tiles as soon as it
    // is made, so that they multiply it while the next block's exponentials are computed. The first
    // 48 rows of e here, any further ones in sweeps over the whole P after.
    const __m512 c = _mm512_set1_ps(c_), neg_cmax = _mm512_mul_ps(m8[0], _mm512_set1_ps(-c_));
    const __m512bh ones = as_bh(_mm512_set1_epi16(0x3f80));  // bf16 1.0
    __m512 sum0 = _mm512_setzero_ps(), sum1 = _mm512_setzero_ps();
    _tile_loadconfig(&output_cfg_);
    const uint16_t* vh = vc + bh * lk32_ * dv16_;
    const int first = static_cast<int>(std::min<int64_t>(3, dv16_ / kCols));
    _tile_zero(4);
    _tile_zero(5);
    _tile_zero(6);
    for (int64_t k0 = 0; k0 < lk32_; k0 += kKeyStep) {
      for (int64_t t = k0 / 2; t < (k0 + kKeyStep) / 2; t += 2) {
        sum0 = _mm512_dpbf16_ps(sum0, pp[t] = probabilities(st + 2 * t * kCols, c, neg_cmax), ones);
        sum1 = _mm512_dpbf16_ps(sum1, pp[t + 1] = probabilities(st + (2 * t + 2) * kCols, c, neg_cmax), ones);
      }
      _tile_loadd(0, pp + k0 / 2, 64);
      const uint16_t* vb = vh + k0 * dv16_;  // block k0 / 32, row 0
      _tile_loadd(1, vb, 64);
      _tile_dpbf16ps(4, 1, 0);
      if (first > 1) {
        _tile_loadd(2, vb + 16 * kKeyStep, 64);
        _tile_dpbf16ps(5, 2, 0);
      }
      if (first > 2) {
        _tile_loadd(3, vb + 32 * kKeyStep, 64);
        _tile_dpbf16ps(6, 3, 0);
      }
    }
    _tile_stored(4, o, 64);
    if (first > 1) _tile_stored(5, o + 16 * kCols, 64);
    if (first > 2) _tile_stored(6, o + 32 * kCols, 64);
    const __m512 inv_sum = _mm512_div_ps(_mm512_set1_ps(1.0f), _mm512_add_ps(sum0, sum1));
    for (int64_t e0 = 3 * kCols; e0 < dv16_; e0 += 3 * kCols) {
      switch (std::min<int64_t>(3, (dv16_ - e0) / kCols)) {
        case 1: output_sweep<1>(pp, vh, e0, o); break;
        case 2: output_sweep<2>(pp, vh, e0, o); break;
        default: output_sweep<3>(pp, vh, e0, o); break;
      }
    }

    // out = O / sum, lanes back to rows of out [B, Lq, H * Dv].
    for (int64_t e = 0; e < dv_; ++e) _mm512_store_ps(o + e * kCols, _mm512_mul_ps(_mm512_load_ps(o + e * kCols), inv_sum));
    store_lanes_as_rows(o, nq, dv_, out, (b * lq_ + i0) * heads_ * dv_ + h * dv_);
  }

  // O^T[e0, e0 + 16 N) = V^T[e0, e0 + 16 N) P^T, into o [Dv16][16].
  template <int N>
  TAIYI_TARGET_AMX void output_sweep(const __m512bh* pp, const uint16_t* vh, int64_t e0, float* o) const {
    _tile_zero(4);
    if constexpr (N > 1) _tile_zero(5);
    if constexpr (N > 2) _tile_zero(6);
    for (int64_t k0 = 0; k0 < lk32_; k0 += kKeyStep) {
      _tile_loadd(0, pp + k0 / 2, 64);
      const uint16_t* vb = vh + (k0 * dv16_ + e0 * kKeyStep);  // block k0 / 32, row e0
      _tile_loadd(1, vb, 64);
      _tile_dpbf16ps(4, 1, 0);
      if constexpr (N > 1) {
        _tile_loadd(2, vb + 16 * kKeyStep, 64);
        _tile_dpbf16ps(5, 2, 0);
      }
      if constexpr (N > 2) {
        _tile_loadd(3, vb + 32 * kKeyStep, 64);
        _tile_dpbf16ps(6, 3, 0);
      }
    }
    _tile_stored(4, o + e0 * kCols, 64);
    if constexpr (N > 1) _tile_stored(5, o + (e0 + 16) * kCols, 64);
    if constexpr (N > 2) _tile_stored(6, o + (e0 + 32) * kCols, 64);
  }

  int64_t batch_, lq_, lk_, heads_, d_, dv_, dp_, steps_, last_, dq_, dv16_, lk32_, qblocks_;
  float c_;
  int threads_;
  TileConfig scores_cfg_, output_cfg_;
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
