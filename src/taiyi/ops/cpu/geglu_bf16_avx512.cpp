// Prepared GEGLU in bf16 (graph mode, --dtype bf16, graph/passes/bf16_geglu.cpp): diffusers' GEGLU,
// hidden * gelu(gate) for [hidden | gate] = proj(x).chunk(2, -1), reading the projection's bf16
// output and writing bf16 (the feed-forward's output linear reads it). The same kernel without the
// gate is the plain GELU (BERT's intermediate activation). On AMX the plain projection
// with a bf16 output runs at the products' speed, where oneDNN's gelu and multiply post-ops on the
// two halves (graph/passes/fuse_linear_gelu.cpp) cost about as much as the products themselves.
//
// Per 16 values, in f32: the exact GELU (gelu16 in bf16_pairs_avx512.h), the product with the
// hidden half rounded to bf16 as it is stored (nearest even), or stored in f32.
#if defined(__x86_64__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "taiyi/ops/cpu/bf16_pairs_avx512.h"
#include "taiyi/ops/cpu/cpu_isa.h"
#include "taiyi/ops/cpu/prepared_kernels.h"

namespace taiyi::ops::cpu {

namespace {

// GEGLU (gated: [hidden | gate] rows of 2N values in, N out) or GELU (N in, N out).
class GegluBf16 : public PreparedOp {
 public:
  GegluBf16(const Shape& x, bool gated)
      : rows_(x.back() > 0 ? shape_numel(x) / x.back() : 0), n_(gated ? x.back() / 2 : x.back()), gated_(gated) {}

  void run(const std::vector<Tensor>& in, const Tensor& out, std::byte*) const override {
    const Tensor& x = in.at(0);
    const int64_t in_row = gated_ ? 2 * n_ : n_;
    if (x.dtype() != DType::BF16 || (out.dtype() != DType::BF16 && out.dtype() != DType::F32) || !x.is_contiguous() ||
        !out.is_contiguous() || x.numel() != rows_ * in_row || out.numel() != rows_ * n_)
      throw Error(std::string(gated_ ? "geglu" : "gelu") + ": the bf16 kernel was prepared for " +
                  std::to_string(rows_) + " rows of " + std::to_string(in_row) +
                  " bf16 values (to bf16 or f32), given " + x.describe() + " -> " + out.describe());
    if (out.dtype() == DType::BF16) {
      run_avx512(x.data_u16(), out.data_u16(), nullptr);
    } else {
      run_avx512(x.data_u16(), nullptr, out.data<float>());
    }
  }
  size_t scratch_bytes() const override { return 0; }
  size_t packed_weight_bytes() const override { return 0; }
  std::string describe() const override { return gated_ ? "geglu bf16 avx512" : "gelu bf16 avx512"; }
  double flops() const override { return 0.0; }

 private:
  // Into y (bf16) or, where y is null, yf (f32).
  TAIYI_TARGET_AVX512_BF16 void run_avx512(const uint16_t* x, uint16_t* y, float* yf) const {
    // Rows in blocks of about 32 K values a task.
    const int64_t rows_per_task = std::max<int64_t>(1, 32768 / std::max<int64_t>(n_, 1));
    const int64_t tasks = (rows_ + rows_per_task - 1) / rows_per_task;
    const int64_t in_row = gated_ ? 2 * n_ : n_;
#pragma omp parallel for schedule(static)
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t r1 = std::min(rows_, (task + 1) * rows_per_task);
      for (int64_t r = task * rows_per_task; r < r1; ++r) {
        const uint16_t* hidden = x + r * in_row;  // (the GELU's input where not gated)
        const uint16_t* gate = gated_ ? hidden + n_ : hidden;
        for (int64_t j = 0; j < n_; j += 16) {
          // Software prefetch 2 KiB past the next row's values (the hardware prefetchers of the Xeon
          // VMs this was measured on held the kernel at ~10 GB/s: 6.2 ms without, 2.4 ms with, at
          // [8192, 2560] -> [8192, 1280]).
          if ((j & 31) == 0) {
            _mm_prefetch(reinterpret_cast<const char*>(hidden + j + in_row + 1024), _MM_HINT_T0);
            if (gated_) _mm_prefetch(reinterpret_cast<const char*>(gate + j + in_row + 1024), _MM_HINT_T0);
          }
          const __mmask16 m = first_lanes(n_ - j);
          const __m512 g = gelu16(load_bf16x16(gate + j, m));
          const __m512 v = gated_ ? _mm512_mul_ps(load_bf16x16(hidden + j, m), g) : g;
          if (y) {
            _mm256_mask_storeu_epi16(y + r * n_ + j, m, (__m256i)_mm512_cvtneps_pbh(v));
          } else {
            _mm512_mask_storeu_ps(yf + r * n_ + j, m, v);
          }
        }
      }
    }
  }

  int64_t rows_, n_;
  bool gated_;
};

}  // namespace

bool geglu_bf16_avx512_applicable() { return cpu_has_avx512_bf16(); }

std::unique_ptr<PreparedOp> prepare_geglu_bf16_avx512(const Shape& x) {
  if (!cpu_has_avx512_bf16()) throw Error("geglu: the bf16 kernel needs a CPU with avx512_bf16");
  if (x.empty() || x.back() % 2 != 0)
    throw Error("geglu: the bf16 kernel needs an input whose last dim is even, not " + shape_str(x));
  return std::make_unique<GegluBf16>(x, true);
}

std::unique_ptr<PreparedOp> prepare_gelu_bf16_avx512(const Shape& x) {
  if (!cpu_has_avx512_bf16()) throw Error("gelu: the bf16 kernel needs a CPU with avx512_bf16");
  if (x.empty()) throw Error("gelu: the bf16 kernel needs an input of at least one dim");
  return std::make_unique<GegluBf16>(x, false);
}

}  // namespace taiyi::ops::cpu

#else  // not x86

#include "taiyi/ops/cpu/prepared_kernels.h"

namespace taiyi::ops::cpu {
bool geglu_bf16_avx512_applicable() { return false; }
std::unique_ptr<PreparedOp> prepare_geglu_bf16_avx512(const Shape& x) {
  throw Error("geglu: the bf16 kernel needs an x86 CPU with avx512_bf16, not available for " + shape_str(x));
}
std::unique_ptr<PreparedOp> prepare_gelu_bf16_avx512(const Shape& x) {
  throw Error("gelu: the bf16 kernel needs an x86 CPU with avx512_bf16, not available for " + shape_str(x));
}
}  // namespace taiyi::ops::cpu

#endif
