// Prepared multi-head attention with bf16 products on AMX tiles (tdpbf16ps), for CPUs with AMX-BF16
// (Intel Sapphire Rapids and later). oneDNN's matmuls in attention_prepared_dnnl.cpp run the Taiyi
// UNet's 64x64 self-attention at about 250 GFLOP/s there: D = Dv = 40 is a short reduction and a
// narrow output, its P V product falls back to gemm:jit for the strided output, and the softmax
// between them is an AVX2 pass. Here one task is one (batch x head, 16 queries), and all of it
// stays in this core's L2:
//   1. S = Q K^T      tiles: Q [16 queries][32 d] (A), K pairs [16 d pairs][16 keys][2] (B), S
//                     [16 queries][16 keys] f32 (C); two key tiles at a time, the last d step
//                     narrow (D = 40 is 32 + 8), Q kept in its tiles when D <= 64.
//   2. P = bf16(2^(c s - c max)), row sums of the rounded P: AVX-512 over rows of S, c = scale
//      log2(e); the same arithmetic as attention_bf16_avx512.cpp and the oneDNN path.
//   3. O = P V        tiles: P [16 queries][32 keys] (A), V pairs [16 key pairs][16 e][2] (B),
//                     O [16 queries][16 e] f32 (C); up to three e tiles per sweep over the keys.
//      out = O / rowsum.
// Packed once per call: K as bf16 [B*H][D/2][Lk32][2] and V as bf16 [B*H][Lk32/2][Dv16][2] (Lk
// padded to 32 keys, Dv to 16 columns, with zeros); per thread, the task's Q, S, P and O. Padded
// keys get probability 0. Same contract and roundings as ops::prepare_attention_bf16: q, k, v
// rounded to bf16 (nearest even), scores in f32, probabilities over whole rows of keys.
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

#include "taiyi/ops/cpu/bf16_pairs_avx512.h"
#include "taiyi/ops/cpu/cpu_isa.h"
#include "taiyi/ops/cpu/prepared_kernels.h"

namespace taiyi::ops::cpu {

namespace {

constexpr int64_t kRows = 16;      // queries per task: the rows of a tile
constexpr int64_t kKeyStep = 32;   // keys per step of both products; Lk is padded to a multiple
constexpr int64_t kCols = 16;      // f32 columns of a result tile

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

// A [B, L, H * dim] input's element strides.
struct View {
  const float* p;
  int64_t s0, s1, s2;
};
View view(const Tensor& t) { return {t.data<float>(), t.stride(0), t.stride(1), t.stride(2)}; }

// 16 values x[i * stride], i < n (zeros past n), as f32.
TAIYI_TARGET_AMX inline __m512 load_strided(const float* x, int64_t stride, int64_t n) {
  const __mmask16 m = first_lanes(n);
  if (stride == 1) return _mm512_maskz_loadu_ps(m, x);
  const __m512i idx = _mm512_mullo_epi32(lane_index(), _mm512_set1_epi32(static_cast<int32_t>(stride)));
  return _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, idx, x, 4);
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
        dv16_(round_up(dv_, kCols)),
        lk32_(round_up(lk_, kKeyStep)),
        qblocks_((lq_ + kRows - 1) / kRows),
        c_(scale * 1.44269504088896341f),
        threads_(std::max(1, omp_get_max_threads())) {
    const size_t bh = static_cast<size_t>(batch_ * heads_);
    k_bytes_ = round_up64(bh * dp_ * lk32_ * 2);
    v_bytes_ = round_up64(bh * lk32_ * dv16_ * 2);
    q_bytes_ = round_up64(static_cast<size_t>(kRows * steps_ * 32) * 2);
    s_bytes_ = round_up64(static_cast<size_t>(kRows * lk32_) * 4);
    p_bytes_ = round_up64(static_cast<size_t>(kRows * lk32_) * 2);
    o_bytes_ = round_up64(static_cast<size_t>(kRows * dv16_) * 4);
    per_thread_bytes_ = q_bytes_ + s_bytes_ + p_bytes_ + o_bytes_;
    // Scores: t0 Q (32 d), t1 Q (the last d step), t2-t3 K (32 d), t4-t5 K (the last step), t6-t7 S.
    scores_cfg_.set(0, kRows, 64);
    scores_cfg_.set(1, kRows, static_cast<int>(last_ * 2));
    scores_cfg_.set(2, 16, 64);
    scores_cfg_.set(3, 16, 64);
    scores_cfg_.set(4, static_cast<int>(last_ / 2), 64);
    scores_cfg_.set(5, static_cast<int>(last_ / 2), 64);
    scores_cfg_.set(6, kRows, 64);
    scores_cfg_.set(7, kRows, 64);
    // Outputs: t0 P, t1-t3 V, t4-t6 O.
    output_cfg_.set(0, kRows, 64);
    for (int t = 1; t <= 6; ++t) output_cfg_.set(t, 16, 64);
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
    const View q = view(in.at(0)), k = view(in.at(1)), v = view(in.at(2));
    auto* kc = reinterpret_cast<uint16_t*>(scratch);
    auto* vc = reinterpret_cast<uint16_t*>(scratch + k_bytes_);
    std::byte* per_thread = scratch + k_bytes_ + v_bytes_;
    float* op = out.data<float>();
    const int threads = std::min(threads_, std::max(1, omp_get_max_threads()));
    const int64_t tasks = batch_ * heads_ * qblocks_;
    const int64_t key_groups = lk32_ / 16;

#pragma omp parallel num_threads(threads)
    {
      // K as [b][h][d pair][key][2]: 16 keys of one d pair at a time, by two gathers.
#pragma omp for schedule(static)
      for (int64_t r = 0; r < batch_ * heads_ * key_groups; ++r) {
        const int64_t b = r / (heads_ * key_groups), h = r / key_groups % heads_, j0 = r % key_groups * 16;
        const int64_t keys = std::clamp<int64_t>(lk_ - j0, 0, 16);
        const float* src = k.p + b * k.s0 + j0 * k.s1 + h * d_ * k.s2;
        uint16_t* dst = kc + (b * heads_ + h) * dp_ * lk32_ + j0 * 2;
        for (int64_t e = 0; e < dp_ / 2; ++e) {
          const __m512 lo = load_strided(src + 2 * e * k.s2, k.s1, keys);
          const __m512 hi = 2 * e + 1 < d_ ? load_strided(src + (2 * e + 1) * k.s2, k.s1, keys) : _mm512_setzero_ps();
          _mm512_store_si512(dst + e * lk32_ * 2, as_si(pair_rows(lo, hi)));
        }
      }
      // V as [b][h][key pair][e][2]: 16 columns of one key pair at a time.
#pragma omp for schedule(static)
      for (int64_t r = 0; r < batch_ * heads_ * (lk32_ / 2); ++r) {
        const int64_t b = r / (heads_ * (lk32_ / 2)), h = r / (lk32_ / 2) % heads_, t = r % (lk32_ / 2);
        const float* src = v.p + b * v.s0 + 2 * t * v.s1 + h * dv_ * v.s2;
        uint16_t* dst = vc + r * dv16_ * 2;
        for (int64_t e0 = 0; e0 < dv16_; e0 += kCols) {
          const int64_t cols = dv_ - e0;
          const __m512 lo = 2 * t < lk_ ? load_strided(src + e0 * v.s2, v.s2, cols) : _mm512_setzero_ps();
          const __m512 hi = 2 * t + 1 < lk_ ? load_strided(src + v.s1 + e0 * v.s2, v.s2, cols) : _mm512_setzero_ps();
          _mm512_store_si512(dst + e0 * 2, as_si(pair_rows(lo, hi)));
        }
      }  // the implicit barrier: all packing is done

      std::byte* mine = per_thread + static_cast<size_t>(omp_get_thread_num()) * per_thread_bytes_;
#pragma omp for schedule(dynamic, 1)
      for (int64_t task = 0; task < tasks; ++task) run_task(task, q, kc, vc, op, mine);
      _tile_release();
    }
  }

  // One (batch x head, block of 16 queries).
  TAIYI_TARGET_AMX void run_task(int64_t task, const View& q, const uint16_t* kc, const uint16_t* vc, float* out,
                                 std::byte* mine) const {
    const int64_t bh = task / qblocks_, i0 = task % qblocks_ * kRows;
    const int64_t b = bh / heads_, h = bh % heads_;
    const int64_t nq = std::min(kRows, lq_ - i0);
    const int64_t dq = steps_ * 32;  // bf16 per row of the task's Q
    auto* qb = reinterpret_cast<uint16_t*>(mine);
    auto* s = reinterpret_cast<float*>(mine + q_bytes_);
    auto* p = reinterpret_cast<uint16_t*>(mine + q_bytes_ + s_bytes_);
    auto* o = reinterpret_cast<float*>(mine + q_bytes_ + s_bytes_ + p_bytes_);

    // The task's queries as bf16 rows, zeros past D and Lq.
    for (int64_t i = 0; i < kRows; ++i) {
      const float* src = q.p + b * q.s0 + (i0 + i) * q.s1 + h * d_ * q.s2;
      for (int64_t c0 = 0; c0 < dq; c0 += 16) {
        const __m512 x = i < nq ? load_strided(src + c0 * q.s2, q.s2, d_ - c0) : _mm512_setzero_ps();
        _mm256_store_si256(reinterpret_cast<__m256i*>(qb + i * dq + c0), (__m256i)_mm512_cvtneps_pbh(x));
      }
    }

    // 1. S = Q K^T, 32 keys at a time.
    _tile_loadconfig(&scores_cfg_);
    const uint16_t* kh = kc + bh * dp_ * lk32_;
    const int64_t k_stride = lk32_ * 4, q_stride = dq * 2, s_stride = lk32_ * 4;
    const bool q_resident = steps_ <= 2;
    if (q_resident) {
      if (steps_ == 2) _tile_loadd(0, qb, q_stride);
      _tile_loadd(1, qb + (steps_ - 1) * 32, q_stride);
    }
    for (int64_t j0 = 0; j0 < lk32_; j0 += kKeyStep) {
      _tile_zero(6);
      _tile_zero(7);
      for (int64_t st = 0; st < steps_; ++st) {
        const uint16_t* kb = kh + (st * 16 * lk32_ + j0) * 2;
        if (st + 1 < steps_) {
          if (!q_resident) _tile_loadd(0, qb + st * 32, q_stride);
          _tile_loadd(2, kb, k_stride);
          _tile_loadd(3, kb + 32, k_stride);
          _tile_dpbf16ps(6, 0, 2);
          _tile_dpbf16ps(7, 0, 3);
        } else {
          if (!q_resident) _tile_loadd(1, qb + st * 32, q_stride);
          _tile_loadd(4, kb, k_stride);
          _tile_loadd(5, kb + 32, k_stride);
          _tile_dpbf16ps(6, 1, 4);
          _tile_dpbf16ps(7, 1, 5);
        }
      }
      _tile_stored(6, s + j0, s_stride);
      _tile_stored(7, s + j0 + 16, s_stride);
    }

    // 2. P = bf16(2^(c s - c max)) over the real keys, zeros past Lk; the sums of the rounded P.
    float inv_sum[kRows];
    const __m512i ones = _mm512_set1_epi16(0x3f80);  // bf16 1.0
    for (int64_t i = 0; i < kRows; ++i) {
      const float* si = s + i * lk32_;
      uint16_t* pi = p + i * lk32_;
      __m512 mx = _mm512_set1_ps(-INFINITY);
      for (int64_t j = 0; j < lk_; j += 16) mx = _mm512_mask_max_ps(mx, first_lanes(lk_ - j), mx, _mm512_load_ps(si + j));
      const __m512 c = _mm512_set1_ps(c_), neg_cmax = _mm512_set1_ps(-c_ * _mm512_reduce_max_ps(mx));
      __m512 sum0 = _mm512_setzero_ps(), sum1 = _mm512_setzero_ps();
      for (int64_t j = 0; j < lk32_; j += kKeyStep) {
        const __m512 e0 = _mm512_maskz_mov_ps(first_lanes(lk_ - j),
                                              exp2_avx512(_mm512_fmadd_ps(_mm512_load_ps(si + j), c, neg_cmax)));
        const __m512 e1 = _mm512_maskz_mov_ps(first_lanes(lk_ - j - 16),
                                              exp2_avx512(_mm512_fmadd_ps(_mm512_load_ps(si + j + 16), c, neg_cmax)));
        const __m512bh pj = _mm512_cvtne2ps_pbh(e1, e0);
        _mm512_store_si512(pi + j, as_si(pj));
        // vdpbf16ps adds each lane's pair of rounded values: the sum of the rounded P.
        if ((j / kKeyStep) % 2 == 0) {
          sum0 = _mm512_dpbf16_ps(sum0, pj, as_bh(ones));
        } else {
          sum1 = _mm512_dpbf16_ps(sum1, pj, as_bh(ones));
        }
      }
      inv_sum[i] = 1.0f / _mm512_reduce_add_ps(_mm512_add_ps(sum0, sum1));
    }

    // 3. O = P V, up to 48 columns per sweep over the keys; out = O / sum.
    _tile_loadconfig(&output_cfg_);
    const uint16_t* vh = vc + bh * lk32_ * dv16_;
    for (int64_t e0 = 0; e0 < dv16_; e0 += 3 * kCols) {
      switch (std::min<int64_t>(3, (dv16_ - e0) / kCols)) {
        case 1: output_sweep<1>(p, vh, e0, o); break;
        case 2: output_sweep<2>(p, vh, e0, o); break;
        default: output_sweep<3>(p, vh, e0, o); break;
      }
    }
    float* dst = out + (b * lq_ + i0) * heads_ * dv_ + h * dv_;
    for (int64_t i = 0; i < nq; ++i) {
      const __m512 f = _mm512_set1_ps(inv_sum[i]);
      for (int64_t e = 0; e < dv_; e += 16)
        _mm512_mask_storeu_ps(dst + i * heads_ * dv_ + e, first_lanes(dv_ - e), _mm512_mul_ps(_mm512_load_ps(o + i * dv16_ + e), f));
    }
  }

  // O[:, e0, e0 + 16 N) = P V[:, e0, e0 + 16 N), into o [16][Dv16].
  template <int N>
  TAIYI_TARGET_AMX void output_sweep(const uint16_t* p, const uint16_t* vh, int64_t e0, float* o) const {
    _tile_zero(4);
    if constexpr (N > 1) _tile_zero(5);
    if constexpr (N > 2) _tile_zero(6);
    const int64_t p_stride = lk32_ * 2, v_stride = dv16_ * 4;
    for (int64_t k0 = 0; k0 < lk32_; k0 += kKeyStep) {
      _tile_loadd(0, p + k0, p_stride);
      const uint16_t* vb = vh + (k0 / 2 * dv16_ + e0) * 2;
      _tile_loadd(1, vb, v_stride);
      _tile_dpbf16ps(4, 0, 1);
      if constexpr (N > 1) {
        _tile_loadd(2, vb + 32, v_stride);
        _tile_dpbf16ps(5, 0, 2);
      }
      if constexpr (N > 2) {
        _tile_loadd(3, vb + 64, v_stride);
        _tile_dpbf16ps(6, 0, 3);
      }
    }
    const int64_t o_stride = dv16_ * 4;
    _tile_stored(4, o + e0, o_stride);
    if constexpr (N > 1) _tile_stored(5, o + e0 + 16, o_stride);
    if constexpr (N > 2) _tile_stored(6, o + e0 + 32, o_stride);
  }

  int64_t batch_, lq_, lk_, heads_, d_, dv_, dp_, steps_, last_, dv16_, lk32_, qblocks_;
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
