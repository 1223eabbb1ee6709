// Prepared multi-head attention with bf16 matrix products (graph mode, --dtype bf16): the two
// products go through oneDNN 2.6's matmul, which runs them on AMX or avx512_bf16; the softmax stays
// f32. Same contract and result as ops::attention (softmax(scale q_h k_h^T) v_h per head) up to
// bf16's rounding of q, k, v and the probabilities.
//
// Per call:
//   1. q, k and v are rounded to bf16 (nearest even) into head-major copies in scratch:
//      Q [B][H][Lq][D], K [B][H][Lk][D], V [B][H][Lk][Dv]. That costs about 1/Lk of the products.
//   2. For each (batch, head, block of queries), in parallel over all three, on one thread each
//      (oneDNN runs a primitive single-threaded inside our parallel region):
//        S = c Q_blk K^T                      matmul, bf16 x bf16 -> f32, c = scale log2(e) as an
//                                             output scale, so that exp(x) becomes 2^x
//        P = bf16(2^(S - rowmax S)), l = rowsum P      f32 arithmetic, one pass over S
//            (exp2_nonpositive_f32: a short polynomial, 7.5e-5 relative, since P is rounded to
//            bf16's 2^-8 steps anyway: about 1.5e9 per second per Zen 3 core with AVX2)
//        out_blk = P V                        matmul, f32 output written in place into out
//        out_blk /= l
//      S and P are block x Lk per thread: scratch never holds B*H*Lq*Lk scores. The f32 path's
//      flash kernel keeps an online softmax over blocks of keys instead; here whole rows of keys
//      make 2 large matmul calls per block rather than 2 per key block (oneDNN's per-call cost is
//      microseconds), and the block's S (1 MiB at Lk = 4096) stays in L2 for the one extra pass.
// The row sum is taken over the rounded probabilities, so the weights of each output row sum to 1.
//
// Bf16Arithmetic::kEmulated runs the same code with f32 matmuls on f32 buffers that hold
// bf16-rounded values: the arithmetic of the bf16 kernels up to the order of the f32 accumulation.
// It is how this file is tested on a CPU without bf16 (TAIYI_BF16_EMULATE, prepack_weights.cpp);
// the two modes differ only in the element type of the buffers and the matmuls' data type.
#include <omp.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <dnnl.hpp>
#include <string>
#include <unordered_map>

#include "taiyi/ops/cpu/cpu_isa.h"
#include "taiyi/ops/cpu/dnnl_context.h"
#include "taiyi/ops/cpu/prepared_kernels.h"
#include "taiyi/ops/cpu/vector_math_f32.h"
#include "taiyi/ops/prepared.h"
#include "taiyi/tensor/dtype.h"

namespace taiyi::ops {

namespace {

using dnnl::memory;
using tag = memory::format_tag;

size_t round_up(size_t n) { return (n + 63) / 64 * 64; }

// f32 bits rounded to the nearest bf16 (ties to even), low half zero. Inputs here are finite or NaN
// (a NaN stays a NaN: its top half is kept, plus at most a carry into the mantissa).
TAIYI_ALWAYS_INLINE uint32_t round_bits_to_bf16(uint32_t u) { return (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u; }

// The buffers' element: bf16 bits (native) or an f32 holding a bf16 value (emulated).
TAIYI_ALWAYS_INLINE void store_rounded(uint16_t* p, uint32_t rounded_bits) {
  *p = static_cast<uint16_t>(rounded_bits >> 16);
}
TAIYI_ALWAYS_INLINE void store_rounded(float* p, uint32_t rounded_bits) { std::memcpy(p, &rounded_bits, 4); }

// dst[i] = bf16(src[i * stride]) for i < n.
template <typename T>
TAIYI_ALWAYS_INLINE void round_row_body(const float* src, int64_t stride, T* dst, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    uint32_t u;
    std::memcpy(&u, src + i * stride, 4);
    store_rounded(dst + i, round_bits_to_bf16(u));
  }
}

// p[i] = bf16(2^(s[i] - max(s))) for i < n >= 1; returns the sum of the rounded p.
template <typename T>
TAIYI_ALWAYS_INLINE float softmax_numerators_body(const float* s, T* p, int64_t n) {
  const float m = cpu::row_max_f32(s, n);
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) {
    const float e = cpu::exp2_nonpositive_f32(s[i] - m);
    uint32_t u;
    std::memcpy(&u, &e, 4);
    u = round_bits_to_bf16(u);
    float r;
    std::memcpy(&r, &u, 4);
    sum += r;
    store_rounded(p + i, u);
  }
  return sum;
}

template <typename T>
TAIYI_TARGET_AVX2_FMA void round_row_avx2(const float* src, int64_t stride, T* dst, int64_t n) {
  round_row_body(src, stride, dst, n);
}
template <typename T>
void round_row_generic(const float* src, int64_t stride, T* dst, int64_t n) {
  round_row_body(src, stride, dst, n);
}
template <typename T>
TAIYI_TARGET_AVX2_FMA float softmax_numerators_avx2(const float* s, T* p, int64_t n) {
  return softmax_numerators_body(s, p, n);
}
template <typename T>
float softmax_numerators_generic(const float* s, T* p, int64_t n) {
  return softmax_numerators_body(s, p, n);
}

template <typename T>
void round_row(const float* src, int64_t stride, T* dst, int64_t n) {
  cpu::cpu_has_avx2_fma() ? round_row_avx2(src, stride, dst, n) : round_row_generic(src, stride, dst, n);
}
template <typename T>
float softmax_numerators(const float* s, T* p, int64_t n) {
  return cpu::cpu_has_avx2_fma() ? softmax_numerators_avx2(s, p, n) : softmax_numerators_generic(s, p, n);
}

// Queries per block: S and P (block x Lk) should stay in L2; 64 rows at Lk = 4096 (1.5 MiB of
// S and P in bf16), more for short keys (cross-attention, Lk = 77 or 512), at most 256.
int64_t query_block_rows(int64_t lk) { return std::clamp<int64_t>(256 * 1024 / std::max<int64_t>(lk, 1), 32, 256); }

// The two matmuls of a block of `rows` queries, made once at prepare time.
struct BlockPrimitives {
  memory::desc q, kt, s, p, v, o, qk_pad, pv_pad;
  dnnl::matmul qk, pv;
  size_t pad_bytes = 0;
};

class PreparedAttention : public PreparedOp {
 public:
  PreparedAttention(const Shape& qs, const Shape& ks, const Shape& vs, int heads, float scale, Bf16Arithmetic how)
      : emulated_(how == Bf16Arithmetic::kEmulated),
        elem_(emulated_ ? sizeof(float) : sizeof(uint16_t)),
        batch_(qs[0]),
        lq_(qs[1]),
        lk_(ks[1]),
        heads_(heads),
        d_(qs[2] / heads),
        dv_(vs[2] / heads),
        scale_(scale),
        threads_(std::max(1, omp_get_max_threads())) {
    block_ = std::min(query_block_rows(lk_), lq_);
    full_ = make_block(block_);
    if (lq_ % block_) tail_ = make_block(lq_ % block_);
    q_bytes_ = round_up(static_cast<size_t>(batch_ * lq_ * heads_ * d_) * elem_);
    k_bytes_ = round_up(static_cast<size_t>(batch_ * lk_ * heads_ * d_) * elem_);
    v_bytes_ = round_up(static_cast<size_t>(batch_ * lk_ * heads_ * dv_) * elem_);
    s_bytes_ = round_up(static_cast<size_t>(block_ * lk_) * sizeof(float));
    p_bytes_ = round_up(static_cast<size_t>(block_ * lk_) * elem_);
    pad_bytes_ = std::max(full_.pad_bytes, tail_.pad_bytes);
    per_thread_bytes_ = s_bytes_ + p_bytes_ + pad_bytes_;
    describe_ = std::string("attention ") + (emulated_ ? "f32 " : "bf16 ") + full_qk_impl_ +
                (emulated_ ? " (bf16 emulated)" : "");
  }

  void run(const std::vector<Tensor>& in, const Tensor& out, std::byte* scratch) const override {
    if (out.dtype() != DType::F32) throw Error("attention: oneDNN's bf16 attention writes f32, not " + out.describe());
    if (emulated_) {
      run_impl<float>(in, out, scratch);
    } else {
      run_impl<uint16_t>(in, out, scratch);
    }
  }

  size_t scratch_bytes() const override {
    return q_bytes_ + k_bytes_ + v_bytes_ + static_cast<size_t>(threads_) * per_thread_bytes_;
  }
  size_t packed_weight_bytes() const override { return 0; }
  std::string describe() const override { return describe_; }
  double flops() const override { return 2.0 * batch_ * heads_ * lq_ * lk_ * (d_ + dv_); }

 private:
  BlockPrimitives make_block(int64_t rows) {
    const memory::data_type dt = emulated_ ? memory::data_type::f32 : memory::data_type::bf16;
    const memory::data_type f32 = memory::data_type::f32;
    const dnnl::engine& eng = cpu::dnnl_cpu_engine();
    BlockPrimitives b;
    b.q = memory::desc({rows, d_}, dt, tag::ab);
    b.kt = memory::desc({d_, lk_}, dt, tag::ba);  // K [Lk][D] row-major, read as K^T
    b.s = memory::desc({rows, lk_}, f32, tag::ab);
    b.p = memory::desc({rows, lk_}, dt, tag::ab);
    b.v = memory::desc({lk_, dv_}, dt, tag::ab);
    b.o = memory::desc({rows, dv_}, f32, memory::dims{heads_ * dv_, 1});  // straight into out
    dnnl::primitive_attr qk_attr, pv_attr;
    qk_attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    qk_attr.set_output_scales(0, {scale_ * 1.44269504088896341f});  // log2(e): 2^x below
    pv_attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    const dnnl::matmul::primitive_desc qk(dnnl::matmul::desc(b.q, b.kt, b.s), qk_attr, eng);
    const dnnl::matmul::primitive_desc pv(dnnl::matmul::desc(b.p, b.v, b.o), pv_attr, eng);
    b.qk = dnnl::matmul(qk);
    b.pv = dnnl::matmul(pv);
    b.qk_pad = qk.scratchpad_desc();
    b.pv_pad = pv.scratchpad_desc();
    b.pad_bytes = round_up(std::max(b.qk_pad.get_size(), b.pv_pad.get_size()));
    if (full_qk_impl_.empty()) full_qk_impl_ = std::string(qk.impl_info_str()) + "/" + pv.impl_info_str();
    return b;
  }

  template <typename T>
  void run_impl(const std::vector<Tensor>& in, const Tensor& out, std::byte* scratch) const {
    const Tensor &q = in.at(0), &k = in.at(1), &v = in.at(2);
    T* qc = reinterpret_cast<T*>(scratch);
    T* kc = reinterpret_cast<T*>(scratch + q_bytes_);
    T* vc = reinterpret_cast<T*>(scratch + q_bytes_ + k_bytes_);
    std::byte* per_thread = scratch + q_bytes_ + k_bytes_ + v_bytes_;
    const int threads = std::min(threads_, std::max(1, omp_get_max_threads()));
    const int64_t blocks_per_head = (lq_ + block_ - 1) / block_;
    const int64_t tasks = batch_ * heads_ * blocks_per_head;
    const int64_t hdv = heads_ * dv_;
    const float* qp = q.data<float>();
    const float* kp = k.data<float>();
    const float* vp = v.data<float>();
    float* op = out.data<float>();

#pragma omp parallel num_threads(threads)
    {
      // 1. Head-major bf16 copies: row i of head h of sample b.
      const auto pack = [](const Tensor& x, const float* xp, int64_t len, int64_t heads, int64_t dim, T* dst) {
        const int64_t rows = x.size(0) * len;
#pragma omp for schedule(static)
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t b = r / len, i = r % len;
          const float* src = xp + b * x.stride(0) + i * x.stride(1);
          for (int64_t h = 0; h < heads; ++h)
            round_row(src + h * dim * x.stride(2), x.stride(2), dst + ((b * heads + h) * len + i) * dim, dim);
        }
      };
      pack(q, qp, lq_, heads_, d_, qc);
      pack(k, kp, lk_, heads_, d_, kc);
      pack(v, vp, lk_, heads_, dv_, vc);  // the omp for's implicit barrier: all copies are done

      // 2. Blocks of queries.
      std::byte* mine = per_thread + static_cast<size_t>(omp_get_thread_num()) * per_thread_bytes_;
      float* s = reinterpret_cast<float*>(mine);
      T* p = reinterpret_cast<T*>(mine + s_bytes_);
      std::byte* pad = mine + s_bytes_ + p_bytes_;
      const dnnl::engine& eng = cpu::dnnl_cpu_engine();
      dnnl::stream& strm = cpu::dnnl_cpu_stream();
      float inv_sum[256];
#pragma omp for schedule(dynamic, 1)
      for (int64_t task = 0; task < tasks; ++task) {
        const int64_t bh = task / blocks_per_head, i0 = task % blocks_per_head * block_;
        const int64_t b = bh / heads_, h = bh % heads_;
        const int64_t rows = std::min(block_, lq_ - i0);
        const BlockPrimitives& prim = rows == block_ ? full_ : tail_;
        T* q_blk = qc + (bh * lq_ + i0) * d_;
        float* o_blk = op + (b * lq_ + i0) * hdv + h * dv_;
        prim.qk.execute(strm, {{DNNL_ARG_SRC, memory(prim.q, eng, q_blk)},
                               {DNNL_ARG_WEIGHTS, memory(prim.kt, eng, kc + bh * lk_ * d_)},
                               {DNNL_ARG_DST, memory(prim.s, eng, s)},
                               {DNNL_ARG_SCRATCHPAD, memory(prim.qk_pad, eng, pad)}});
        for (int64_t r = 0; r < rows; ++r) inv_sum[r] = 1.0f / softmax_numerators(s + r * lk_, p + r * lk_, lk_);
        prim.pv.execute(strm, {{DNNL_ARG_SRC, memory(prim.p, eng, p)},
                               {DNNL_ARG_WEIGHTS, memory(prim.v, eng, vc + bh * lk_ * dv_)},
                               {DNNL_ARG_DST, memory(prim.o, eng, o_blk)},
                               {DNNL_ARG_SCRATCHPAD, memory(prim.pv_pad, eng, pad)}});
        strm.wait();
        for (int64_t r = 0; r < rows; ++r) {
          float* o_row = o_blk + r * hdv;
          const float f = inv_sum[r];
#pragma omp simd
          for (int64_t j = 0; j < dv_; ++j) o_row[j] *= f;
        }
      }
    }
  }

  bool emulated_;
  size_t elem_;
  int64_t batch_, lq_, lk_, heads_, d_, dv_;
  float scale_;
  int threads_;
  int64_t block_ = 0;
  BlockPrimitives full_, tail_;
  std::string full_qk_impl_;
  size_t q_bytes_ = 0, k_bytes_ = 0, v_bytes_ = 0, s_bytes_ = 0, p_bytes_ = 0, pad_bytes_ = 0, per_thread_bytes_ = 0;
  std::string describe_;
};

// Native bf16 attention runs our own kernels: on AMX tiles where the CPU has AMX-BF16, on
// vdpbf16ps where it has avx512_bf16 only; oneDNN's matmuls otherwise. TAIYI_ATTENTION=dnnl,
// avx512 or amx picks one where the CPU has it (A/B runs).
enum class AttentionKernel { kDnnl, kAvx512, kAmx };

AttentionKernel pick_kernel(float scale) {
  const char* env = std::getenv("TAIYI_ATTENTION");
  const std::string want = env ? env : "";
  const bool amx = cpu::attention_bf16_amx_applicable(scale), avx512 = cpu::attention_bf16_avx512_applicable(scale);
  if (want == "dnnl") return AttentionKernel::kDnnl;
  if (want == "avx512" && avx512) return AttentionKernel::kAvx512;
  if (amx && want != "avx512") return AttentionKernel::kAmx;
  return avx512 && !cpu::dnnl_uses_amx() ? AttentionKernel::kAvx512 : AttentionKernel::kDnnl;
}

}  // namespace

bool attention_bf16_writes_bf16(float scale) {
  return bf16_supported() && pick_kernel(scale) != AttentionKernel::kDnnl;
}

bool attention_bf16_reads_bf16(float scale, int64_t head_dim, int64_t element_stride) {
  return bf16_supported() && pick_kernel(scale) == AttentionKernel::kAmx && head_dim % 2 == 0 && element_stride == 1;
}

bool prepared_attention_applicable(const Shape& q, const Shape& k, const Shape& v, int heads) {
  return q.size() == 3 && k.size() == 3 && v.size() == 3 && heads > 0 && q[0] == k[0] && k[0] == v[0] && k[1] == v[1] &&
         q[2] == k[2] && q[2] % heads == 0 && v[2] % heads == 0 && q[0] > 0 && q[1] > 0 && k[1] > 0 && q[2] > 0 &&
         v[2] > 0;
}

std::unique_ptr<PreparedOp> prepare_attention_bf16(const Shape& q, const Shape& k, const Shape& v, int heads,
                                                   float scale, Bf16Arithmetic how) {
  if (!prepared_attention_applicable(q, k, v, heads))
    throw Error("attention: cannot prepare bf16 attention for q " + shape_str(q) + ", k " + shape_str(k) + ", v " +
                shape_str(v) + " with " + std::to_string(heads) + " heads");
  if (how == Bf16Arithmetic::kNative) {
    const AttentionKernel kernel = pick_kernel(scale);
    if (kernel == AttentionKernel::kAmx) return cpu::prepare_attention_bf16_amx(q, k, v, heads, scale);
    if (kernel == AttentionKernel::kAvx512) return cpu::prepare_attention_bf16_avx512(q, k, v, heads, scale);
  }
  try {
    return std::make_unique<PreparedAttention>(q, k, v, heads, scale, how);
  } catch (const dnnl::error& e) {
    throw Error(std::string("attention: oneDNN could not prepare a bf16 matmul (") + e.what() + ") for q " +
                shape_str(q) + ", k " + shape_str(k) + ", v " + shape_str(v));
  }
}

}  // namespace taiyi::ops
