// Multi-head scaled dot-product attention, f32: the entry point, which picks the fused kernel of
// attention_f32_flash.h built for AVX-512F (attention_f32_avx512.cpp) or for AVX2+FMA
// (attention_f32_avx2.cpp) when the CPU has either, and the portable path below otherwise.
//
// Both follow torch.nn.functional.scaled_dot_product_attention without mask or dropout,
// with diffusers' head packing (heads side by side in the channel dim). The portable path,
// for each (batch, head, block of queries), in parallel over all three:
//   S = scale * Q_blk K^T          (dnnl_sgemm, single-threaded inside our region)
//   S = exp(S - rowmax(S))          (vectorised, see softmax_f32.cpp)
//   O_blk = (S V) / rowsum          (dnnl_sgemm writes straight into the output)
// so scratch is block x Lk floats per thread, never B*H*Lq*Lk. Normalising after the
// second product costs block*Dv multiplies instead of block*Lk.
#include <dnnl.h>
#include <omp.h>

#include <algorithm>
#include <string>
#include <vector>

#include "taiyi/ops/cpu/attention_f32_kernels.h"
#include "taiyi/ops/cpu/cpu_isa.h"
#include "taiyi/ops/cpu/cpu_kernels.h"

namespace taiyi::ops::cpu {
namespace {

// Queries per block. Each block re-reads the head's K and V (8 MiB each in the VAE), doing
// `rows` multiply-adds per float read, so blocks should not be small; the block's scores
// (rows x Lk) should still stay in cache: 1 MiB, i.e. 64 rows at Lk = 4096. Measured on a
// 2-core Zen 3 (512 KiB L2): 16-row blocks were 5-10 % slower, 128-row blocks no faster.
int64_t query_block_rows(int64_t lk) {
  const int64_t target_floats = 256 * 1024;
  return std::clamp<int64_t>(target_floats / std::max<int64_t>(lk, 1), 32, 256);
}

// A leading dimension for dnnl_sgemm, which insists on ld >= columns even for a matrix with one
// row, where the stride is never used (and may be anything in a view).
int64_t leading_dim(int64_t row_stride, int64_t rows, int64_t cols) {
  return rows <= 1 ? std::max({row_stride, cols, int64_t{1}}) : row_stride;
}

}  // namespace

void attention_f32_sgemm(const Tensor& q, const Tensor& k, const Tensor& v, int heads, float scale, const Tensor& out) {
  const int64_t batch = q.size(0), lq = q.size(1), lk = k.size(1);
  const int64_t d = q.size(2) / heads, dv = v.size(2) / heads;
  const int64_t q_bs = q.stride(0), q_rs = leading_dim(q.stride(1), lq, d);
  const int64_t k_bs = k.stride(0), k_rs = leading_dim(k.stride(1), lk, d);
  const int64_t v_bs = v.stride(0), v_rs = leading_dim(v.stride(1), lk, dv);
  const int64_t o_rs = heads * dv, o_bs = lq * o_rs;
  const float* qp = q.data<float>();
  const float* kp = k.data<float>();
  const float* vp = v.data<float>();
  float* op = out.data<float>();

  const int64_t block = std::min(query_block_rows(lk), lq);
  const int64_t blocks_per_head = (lq + block - 1) / block;
  const int64_t tasks = batch * heads * blocks_per_head;
  int failed = 0;  // a dnnl_sgemm status; exceptions must not leave the parallel region

#pragma omp parallel if (tasks > 1)
  {
    std::vector<float> s(static_cast<size_t>(block * lk));
    std::vector<float> inv_sum(static_cast<size_t>(block));
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t b = task / (heads * blocks_per_head);
      const int64_t h = task / blocks_per_head % heads;
      const int64_t i0 = task % blocks_per_head * block;
      const int64_t rows = std::min(block, lq - i0);
      const float* q_blk = qp + b * q_bs + i0 * q_rs + h * d;
      const float* k_h = kp + b * k_bs + h * d;
      const float* v_h = vp + b * v_bs + h * dv;
      float* o_blk = op + b * o_bs + i0 * o_rs + h * dv;

      // dnnl_sgemm is row-major; inside a parallel region it runs on the calling thread only.
      dnnl_status_t st = dnnl_success;
      if (d > 0) {
        st = dnnl_sgemm('N', 'T', rows, lk, d, scale, q_blk, q_rs, k_h, k_rs, 0.0f, s.data(), lk);
      } else {
        std::fill(s.begin(), s.end(), 0.0f);
      }
      for (int64_t r = 0; r < rows; ++r) inv_sum[r] = 1.0f / exp_minus_max_f32(s.data() + r * lk, lk);
      if (dv > 0 && st == dnnl_success)
        st = dnnl_sgemm('N', 'N', rows, dv, lk, 1.0f, s.data(), lk, v_h, v_rs, 0.0f, o_blk, o_rs);
      if (st != dnnl_success) {
#pragma omp atomic write
        failed = static_cast<int>(st);
        continue;
      }
      for (int64_t r = 0; r < rows; ++r) {
        float* o_row = o_blk + r * o_rs;
        const float f = inv_sum[r];
        for (int64_t j = 0; j < dv; ++j) o_row[j] *= f;
      }
    }
  }
  if (failed)
    throw Error("attention: dnnl_sgemm failed with status " + std::to_string(failed) + " for q " + q.describe() +
                ", k " + k.describe() + ", v " + v.describe());
}

void attention_f32(const Tensor& q, const Tensor& k, const Tensor& v, int heads, float scale, const Tensor& out) {
  if (cpu_has_avx512f()) {
    attention_f32_avx512(q, k, v, heads, scale, out);
  } else if (cpu_has_avx2_fma()) {
    attention_f32_avx2(q, k, v, heads, scale, out);
  } else {
    attention_f32_sgemm(q, k, v, heads, scale, out);
  }
}

}  // namespace taiyi::ops::cpu
