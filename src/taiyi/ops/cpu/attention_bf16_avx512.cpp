// Prepared multi-head attention with bf16 products on AVX512-BF16 (vdpbf16ps), for CPUs that have
// avx512_bf16 but no AMX (AMD Zen 4): there oneDNN's bf16 matmul runs the two products of
// attention_prepared_dnnl.cpp at about half the machine's bf16 peak (D = 40 is a short reduction,
// Dv = 40 a narrow output, and S and P make a round trip through memory per block), while this
// kernel keeps everything of one block of queries in L1 and L2. Same contract and arithmetic as
// ops::prepare_attention_bf16: q, k, v rounded to bf16 (nearest even); scores accumulated in f32;
// probabilities bf16(2^(c s - max(c s))), c = scale log2(e), over whole rows of keys (no online
// rescaling, so the same roundings as the oneDNN path and the test's reference); each output row
// divided by the sum of its rounded probabilities.
//
// Queries sit in the 16 f32 lanes of a zmm register ("transposed" products), so a query's row max
// and row sum are vertical operations with no horizontal reductions, and one task is one
// (batch, head, 16 queries):
//   Qp[d/2]      q pairs (q[i, 2e], q[i, 2e+1]) for lane i, bf16 x 2 per 32-bit lane
//   S[j]  (zmm)  = sum_e vdpbf16ps(Qp[e], broadcast(K[j, 2e..2e+1]))      8 keys at a time
//   P[j/2] (zmm) = bf16 pairs (p[j][i], p[j+1][i]): vcvtne2ps2bf16, then vpermw interleaves
//   O[d]  (zmm)  = sum_j/2 vdpbf16ps(P[j/2], broadcast(V^T[d, j..j+1]))  8 or 16 rows of d at a time
// S (Lk x 64 bytes: 256 KiB at Lk = 4096) and P stay in this core's L2. K is packed once per call
// as bf16 rows [B*H][Lk][D], V transposed as bf16 [B*H][Lk/64][Dv][64] so that the 16 rows of V^T
// an O chunk reads lie in one 2 KiB stretch (whole rows of V^T 8 KiB apart would fall into the
// same L1 sets). Pads (D and Lk to even and to 8, Dv to 8, queries to 16) are zeros, and padded
// keys get scores of -1e30, so probability 0.
#if defined(__x86_64__)
// GCC 12's AVX-512 intrinsics pass an uninitialised _mm512_undefined_ps() as the unused
// merge source of their unmasked forms, which -Wmaybe-uninitialized reports at each use.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>

#include "taiyi/ops/cpu/attention_bf16_lanes.h"
#include "taiyi/ops/cpu/bf16_pairs_avx512.h"
#include "taiyi/ops/cpu/cpu_isa.h"
#include "taiyi/ops/cpu/prepared_kernels.h"
#include "taiyi/tensor/dtype.h"

namespace taiyi::ops::cpu {

namespace {

constexpr int64_t kLanes = 16;    // queries per task
constexpr int64_t kKeyGroup = 8;  // keys per register group of S; Lk is padded to a multiple
constexpr int64_t kVBlock = 64;   // keys per block of packed V^T
constexpr float kPadScore = -1e30f;

int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }
size_t round_up64(size_t n) { return (n + 63) / 64 * 64; }

// dst[i] = bf16(src[i * stride]) for i < n, then zeros up to n_padded.
TAIYI_TARGET_AVX512_BF16 void round_row(const float* src, int64_t stride, uint16_t* dst, int64_t n, int64_t n_padded) {
  int64_t i = 0;
  if (stride == 1) {
    for (; i < n; i += 16) {
      const __mmask16 m = first_lanes(n - i);
      _mm256_mask_storeu_epi16(dst + i, m, (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, src + i)));
    }
  }
  for (; i < n; ++i) dst[i] = f32_to_bf16(src[i * stride]);
  for (; i < n_padded; ++i) dst[i] = 0;
}

class AttentionBf16Avx512 : public PreparedOp {
 public:
  AttentionBf16Avx512(const Shape& qs, const Shape& ks, const Shape& vs, int heads, float scale)
      : batch_(qs[0]),
        lq_(qs[1]),
        lk_(ks[1]),
        heads_(heads),
        d_(qs[2] / heads),
        dv_(vs[2] / heads),
        dp_(round_up(d_, 2)),
        dvp_(round_up(dv_, 8)),
        lkp_(round_up(lk_, kKeyGroup)),
        vblocks_((lkp_ + kVBlock - 1) / kVBlock),
        qblocks_((lq_ + kLanes - 1) / kLanes),
        c_(scale * 1.44269504088896341f),
        threads_(std::max(1, omp_get_max_threads())) {
    const size_t bh = static_cast<size_t>(batch_ * heads_);
    k_bytes_ = round_up64(bh * lkp_ * dp_ * 2);
    v_bytes_ = round_up64(bh * vblocks_ * dvp_ * kVBlock * 2);
    s_bytes_ = static_cast<size_t>(lkp_) * 64;
    p_bytes_ = static_cast<size_t>(lkp_ / 2) * 64;
    o_bytes_ = static_cast<size_t>(dvp_) * 64;
    const size_t qp_bytes = static_cast<size_t>(dp_ / 2) * 64;
    per_thread_bytes_ = s_bytes_ + p_bytes_ + o_bytes_ + qp_bytes;
  }

  void run(const std::vector<Tensor>& in, const Tensor& out, std::byte* scratch) const override {
    run_avx512(in, out, scratch);
  }
  size_t scratch_bytes() const override {
    return k_bytes_ + v_bytes_ + static_cast<size_t>(threads_) * per_thread_bytes_;
  }
  size_t packed_weight_bytes() const override { return 0; }
  std::string describe() const override { return "attention bf16 avx512_bf16 (16 queries x all keys)"; }
  double flops() const override { return 2.0 * batch_ * heads_ * lq_ * lk_ * (d_ + dv_); }

 private:
  using View = AttentionView;
  static View view(const Tensor& t) {
    if (t.dtype() != DType::F32) throw Error("attention: the AVX512-BF16 kernel reads f32 inputs, not " + t.describe());
    return attention_view(t);
  }

  TAIYI_TARGET_AVX512_BF16 void run_avx512(const std::vector<Tensor>& in, const Tensor& out, std::byte* scratch) const {
    const View q = view(in.at(0)), k = view(in.at(1)), v = view(in.at(2));
    auto* kc = reinterpret_cast<uint16_t*>(scratch);
    auto* vc = reinterpret_cast<uint16_t*>(scratch + k_bytes_);
    std::byte* per_thread = scratch + k_bytes_ + v_bytes_;
    const LaneRowsOut op = lane_rows_out(out);
    const int threads = std::min(threads_, std::max(1, omp_get_max_threads()));
    const int64_t tasks = batch_ * heads_ * qblocks_;

#pragma omp parallel num_threads(threads)
    {
      // K as bf16 rows [b][h][j][0, dp), zero rows past Lk.
#pragma omp for schedule(static)
      for (int64_t r = 0; r < batch_ * lkp_; ++r) {
        const int64_t b = r / lkp_, j = r % lkp_;
        for (int64_t h = 0; h < heads_; ++h) {
          uint16_t* dst = kc + ((b * heads_ + h) * lkp_ + j) * dp_;
          if (j < lk_) {
            round_row(k.p + b * k.s0 + j * k.s1 + h * d_ * k.s2, k.s2, dst, d_, dp_);
          } else {
            std::memset(dst, 0, static_cast<size_t>(dp_) * 2);
          }
        }
      }
      // V^T as bf16 blocks [b][h][block][d][64 keys], zeros past Lk and Dv: 16 keys of a column
      // at a time by a gather.
#pragma omp for schedule(static)
      for (int64_t r = 0; r < batch_ * heads_ * vblocks_; ++r) {
        const int64_t b = r / (heads_ * vblocks_), h = r / vblocks_ % heads_, blk = r % vblocks_;
        uint16_t* dst = vc + r * dvp_ * kVBlock;
        const int64_t keys = std::min(kVBlock, lk_ - blk * kVBlock);
        const float* src = v.p + b * v.s0 + blk * kVBlock * v.s1 + h * dv_ * v.s2;
        const __m512i rows = _mm512_mullo_epi32(lane_index(), _mm512_set1_epi32(static_cast<int32_t>(v.s1)));
        for (int64_t d = 0; d < dvp_; ++d)
          for (int64_t j0 = 0; j0 < kVBlock; j0 += 16) {
            const int64_t n = d < dv_ ? std::clamp<int64_t>(keys - j0, 0, 16) : 0;
            const __m512 x =
                _mm512_mask_i32gather_ps(_mm512_setzero_ps(), first_lanes(n), rows, src + j0 * v.s1 + d * v.s2, 4);
            _mm256_store_si256(reinterpret_cast<__m256i*>(dst + d * kVBlock + j0), (__m256i)_mm512_cvtneps_pbh(x));
          }
      }  // the implicit barrier: all packing is done

      std::byte* mine = per_thread + static_cast<size_t>(omp_get_thread_num()) * per_thread_bytes_;
#pragma omp for schedule(dynamic, 1)
      for (int64_t task = 0; task < tasks; ++task) run_task(task, q, kc, vc, op, mine);
    }
  }

  // One (batch x head, block of 16 queries).
  TAIYI_TARGET_AVX512_BF16 void run_task(int64_t task, const View& q, const uint16_t* kc, const uint16_t* vc,
                                         const LaneRowsOut& out, std::byte* mine) const {
    const int64_t bh = task / qblocks_, i0 = task % qblocks_ * kLanes;
    const int64_t b = bh / heads_, h = bh % heads_;
    const int64_t nq = std::min(kLanes, lq_ - i0);
    auto* s = reinterpret_cast<float*>(mine);
    auto* p = reinterpret_cast<__m512bh*>(mine + s_bytes_);
    auto* o = reinterpret_cast<float*>(mine + s_bytes_ + p_bytes_);
    auto* qp = reinterpret_cast<__m512bh*>(mine + s_bytes_ + p_bytes_ + o_bytes_);

    // This block's queries as pairs: qp[e] lane i = (q[i0 + i, 2e], q[i0 + i, 2e + 1]) in bf16.
    gather_query_pairs(q.p + b * q.s0 + i0 * q.s1 + h * d_ * q.s2, q.s1, q.s2, nq, d_, dp_ / 2, qp);

    // S = Q K^T, 8 keys at a time, and the row max over real keys.
    const uint16_t* kh = kc + bh * lkp_ * dp_;
    __m512 mx = _mm512_set1_ps(kPadScore);
    for (int64_t j0 = 0; j0 < lkp_; j0 += kKeyGroup) {
      __m512 acc[kKeyGroup];
      for (auto& a : acc) a = _mm512_setzero_ps();
      const uint16_t* kr = kh + j0 * dp_;
      for (int64_t e = 0; e < dp_ / 2; ++e) {
        const __m512bh qv = qp[e];
        for (int64_t j = 0; j < kKeyGroup; ++j)
          acc[j] = _mm512_dpbf16_ps(acc[j], qv, broadcast_pair(kr + j * dp_ + 2 * e));
      }
      const int64_t valid = std::min(kKeyGroup, lk_ - j0);
      for (int64_t j = 0; j < kKeyGroup; ++j) {
        if (j < valid) {
          mx = _mm512_max_ps(mx, acc[j]);
        } else {
          acc[j] = _mm512_set1_ps(kPadScore);
        }
        _mm512_store_ps(s + (j0 + j) * kLanes, acc[j]);
      }
    }

    // P = bf16(2^(c s - c max)) as (key 2t, key 2t+1) pairs per lane; the sum of the rounded values.
    const __m512 c = _mm512_set1_ps(c_), neg_cmax = _mm512_mul_ps(mx, _mm512_set1_ps(-c_));
    const __m512bh ones = as_bh(_mm512_set1_epi16(0x3f80));  // bf16 1.0
    // Two partial sums, so that each add does not wait on the one before (Lk is padded to 8:
    // pairs of keys come in twos).
    __m512 sum0 = _mm512_setzero_ps(), sum1 = _mm512_setzero_ps();
    for (int64_t t = 0; t < lkp_ / 2; t += 2) {
      sum0 = _mm512_dpbf16_ps(sum0, p[t] = probabilities(s + 2 * t * kLanes, c, neg_cmax), ones);
      sum1 = _mm512_dpbf16_ps(sum1, p[t + 1] = probabilities(s + (2 * t + 2) * kLanes, c, neg_cmax), ones);
    }
    const __m512 inv_sum = _mm512_div_ps(_mm512_set1_ps(1.0f), _mm512_add_ps(sum0, sum1));

    // O^T = V^T P^T, 16 (or 8) rows of d at a time, scaled by 1 / sum.
    const uint16_t* vh = vc + bh * vblocks_ * dvp_ * kVBlock;
    int64_t d0 = 0;
    for (; d0 + 16 <= dvp_; d0 += 16) o_chunk<16>(vh, d0, p, inv_sum, o);
    if (d0 < dvp_) o_chunk<8>(vh, d0, p, inv_sum, o);

    // Lanes back to rows of out [B, Lq, H * Dv].
    store_lanes_as_rows(o, nq, dv_, out, (b * lq_ + i0) * heads_ * dv_ + h * dv_);
  }

  template <int ND>
  TAIYI_TARGET_AVX512_BF16 void o_chunk(const uint16_t* vh, int64_t d0, const __m512bh* p, __m512 inv_sum,
                                        float* o) const {
    __m512 acc[ND];
    for (auto& a : acc) a = _mm512_setzero_ps();
    for (int64_t blk = 0; blk < vblocks_; ++blk) {
      const uint16_t* vb = vh + (blk * dvp_ + d0) * kVBlock;
      const __m512bh* pb = p + blk * kVBlock / 2;
      const int64_t pairs = std::min(kVBlock, lkp_ - blk * kVBlock) / 2;
      for (int64_t t = 0; t < pairs; ++t) {
        const __m512bh pv = pb[t];
        for (int d = 0; d < ND; ++d) acc[d] = _mm512_dpbf16_ps(acc[d], pv, broadcast_pair(vb + d * kVBlock + 2 * t));
      }
    }
    for (int d = 0; d < ND; ++d) _mm512_store_ps(o + (d0 + d) * kLanes, _mm512_mul_ps(acc[d], inv_sum));
  }

  int64_t batch_, lq_, lk_, heads_, d_, dv_, dp_, dvp_, lkp_, vblocks_, qblocks_;
  float c_;
  int threads_;
  size_t k_bytes_ = 0, v_bytes_ = 0, s_bytes_ = 0, p_bytes_ = 0, o_bytes_ = 0, per_thread_bytes_ = 0;
};

}  // namespace

bool attention_bf16_avx512_applicable(float scale) { return cpu_has_avx512_bf16() && scale > 0.0f; }

std::unique_ptr<PreparedOp> prepare_attention_bf16_avx512(const Shape& q, const Shape& k, const Shape& v, int heads,
                                                          float scale) {
  if (!cpu_has_avx512_bf16()) throw Error("attention: the AVX512-BF16 kernel needs a CPU with avx512_bf16");
  if (!(scale > 0.0f)) throw Error("attention: the AVX512-BF16 kernel needs a positive scale");
  return std::make_unique<AttentionBf16Avx512>(q, k, v, heads, scale);
}

}  // namespace taiyi::ops::cpu

#else  // not x86: no AVX512-BF16, so never applicable.

#include "taiyi/ops/cpu/prepared_kernels.h"

namespace taiyi::ops::cpu {
bool attention_bf16_avx512_applicable(float) { return false; }
std::unique_ptr<PreparedOp> prepare_attention_bf16_avx512(const Shape& q, const Shape&, const Shape&, int, float) {
  throw Error("attention: the AVX512-BF16 kernel needs an x86 CPU with avx512_bf16, not available for q " +
              shape_str(q));
}
}  // namespace taiyi::ops::cpu

#endif
