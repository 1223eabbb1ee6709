// Element-wise f32 kernels: unary maps (SiLU, exact GELU, exp, scale, add-scalar, clamp),
// GEGLU (diffusers' GEGLU: hidden * gelu(gate) for [hidden | gate] = proj(x).chunk(2, -1)),
// and binary add/sub/mul with numpy broadcasting.
//
// Binary ops take views already expanded to the output shape (stride 0 where broadcast)
// and coalesce dims first, so the common cases become one flat loop ([B,C,H,W] + same),
// a row loop with a per-row scalar ([B,C,H,W] + [B,C,1,1]) or a row loop with a shared
// vector ([..., C] + [C]). SiLU/GELU/GEGLU use the vectorisable approximations of
// vector_math_f32.h, compiled for AVX2+FMA and baseline x86-64 (cpu_isa.h).
#include <algorithm>
#include <cmath>
#include <cstring>

#include "taiyi/ops/cpu/cpu_isa.h"
#include "taiyi/ops/cpu/cpu_kernels.h"
#include "taiyi/ops/cpu/vector_math_f32.h"

namespace taiyi::ops::cpu {
namespace {

// Elements per parallel work item: large enough to amortise scheduling, small enough to
// split a 1-MB tensor across cores.
constexpr int64_t kChunk = 16384;

TAIYI_ALWAYS_INLINE void silu_body(const float* x, float* y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] = silu_approx_f32(x[i]);
}
TAIYI_ALWAYS_INLINE void gelu_body(const float* x, float* y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] = gelu_approx_f32(x[i]);
}
TAIYI_ALWAYS_INLINE void geglu_row_body(const float* x, float* y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] * gelu_approx_f32(x[n + i]);
}

TAIYI_TARGET_AVX2_FMA void silu_avx2(const float* x, float* y, int64_t n) { silu_body(x, y, n); }
void silu_generic(const float* x, float* y, int64_t n) { silu_body(x, y, n); }
TAIYI_TARGET_AVX2_FMA void gelu_avx2(const float* x, float* y, int64_t n) { gelu_body(x, y, n); }
void gelu_generic(const float* x, float* y, int64_t n) { gelu_body(x, y, n); }
TAIYI_TARGET_AVX2_FMA void geglu_row_avx2(const float* x, float* y, int64_t n) { geglu_row_body(x, y, n); }
void geglu_row_generic(const float* x, float* y, int64_t n) { geglu_row_body(x, y, n); }

void unary_chunk(UnaryOpF32 op, const float* x, float* y, int64_t n, float a, float b, bool avx2) {
  switch (op) {
    case UnaryOpF32::kSilu: return avx2 ? silu_avx2(x, y, n) : silu_generic(x, y, n);
    case UnaryOpF32::kGelu: return avx2 ? gelu_avx2(x, y, n) : gelu_generic(x, y, n);
    case UnaryOpF32::kExp:
      for (int64_t i = 0; i < n; ++i) y[i] = std::exp(x[i]);
      return;
    case UnaryOpF32::kScale:
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) y[i] = x[i] * a;
      return;
    case UnaryOpF32::kAddScalar:
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) y[i] = x[i] + a;
      return;
    case UnaryOpF32::kClamp:
      // torch.clamp order: max with lo first, then min with hi; NaN stays NaN.
      for (int64_t i = 0; i < n; ++i) {
        float v = x[i];
        v = v < a ? a : v;
        y[i] = v > b ? b : v;
      }
      return;
  }
}

struct AddOp {
  float operator()(float p, float q) const { return p + q; }
};
struct SubOp {
  float operator()(float p, float q) const { return p - q; }
};
struct MulOp {
  float operator()(float p, float q) const { return p * q; }
};

// One run of `n` outputs along the innermost (coalesced) dim.
template <class Op>
void binary_run(Op op, const float* a, int64_t sa, const float* b, int64_t sb, float* y, int64_t n) {
  if (sa == 1 && sb == 1) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) y[i] = op(a[i], b[i]);
  } else if (sa == 1 && sb == 0) {
    const float bv = *b;
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) y[i] = op(a[i], bv);
  } else if (sa == 0 && sb == 1) {
    const float av = *a;
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) y[i] = op(av, b[i]);
  } else {
    for (int64_t i = 0; i < n; ++i) y[i] = op(a[i * sa], b[i * sb]);
  }
}

template <class Op>
void binary_strided(Op op, const Tensor& a, const Tensor& b, const Tensor& y) {
  // Drop size-1 dims, then merge neighbours that both inputs step through as one
  // (y is contiguous, so it always can).
  Shape shape;
  Strides sa, sb;
  for (int d = 0; d < y.ndim(); ++d) {
    if (y.size(d) == 1) continue;
    if (!shape.empty() && sa.back() == a.stride(d) * y.size(d) && sb.back() == b.stride(d) * y.size(d)) {
      shape.back() *= y.size(d);
      sa.back() = a.stride(d);
      sb.back() = b.stride(d);
      continue;
    }
    shape.push_back(y.size(d));
    sa.push_back(a.stride(d));
    sb.push_back(b.stride(d));
  }
  const float* pa = a.data<float>();
  const float* pb = b.data<float>();
  float* py = y.data<float>();
  const int64_t total = y.numel();
  if (total == 0) return;
  if (shape.empty()) {
    *py = op(*pa, *pb);
    return;
  }
  const int nd = static_cast<int>(shape.size());
  const int64_t inner = shape[nd - 1], ia = sa[nd - 1], ib = sb[nd - 1];
  // One operand transposed against y (a channels-last view added to an NCHW tensor: the VAE
  // attention's output and its residual): 32 x 32 tiles, so that the transposed reads stay in a
  // few cache lines instead of striding through memory one element a line.
  if (nd == 2 && ((ia != 1 && sa[0] == 1) || (ib != 1 && sb[0] == 1)) && total >= kChunk) {
    constexpr int64_t kTile = 32;
    const int64_t rows = shape[0], tiles_r = (rows + kTile - 1) / kTile, tiles_c = (inner + kTile - 1) / kTile;
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < tiles_r * tiles_c; ++t) {
      const int64_t r0 = t / tiles_c * kTile, c0 = t % tiles_c * kTile;
      const int64_t r1 = std::min(rows, r0 + kTile), c1 = std::min(inner, c0 + kTile);
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t c = c0; c < c1; ++c) py[r * inner + c] = op(pa[r * sa[0] + c * ia], pb[r * sb[0] + c * ib]);
    }
    return;
  }
  const int64_t chunks = (total + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static) if (chunks > 1)
  for (int64_t c = 0; c < chunks; ++c) {
    int64_t pos = c * kChunk;
    const int64_t end = std::min(total, pos + kChunk);
    int64_t row = pos / inner, col = pos % inner;
    while (pos < end) {
      int64_t oa = 0, ob = 0, rem = row;
      for (int d = nd - 2; d >= 0; --d) {
        const int64_t i = rem % shape[d];
        rem /= shape[d];
        oa += i * sa[d];
        ob += i * sb[d];
      }
      const int64_t len = std::min(inner - col, end - pos);
      binary_run(op, pa + oa + col * ia, ia, pb + ob + col * ib, ib, py + pos, len);
      pos += len;
      col = 0;
      ++row;
    }
  }
}

}  // namespace

void unary_f32(UnaryOpF32 op, const float* x, float* y, int64_t n, float a, float b) {
  const bool avx2 = cpu_has_avx2_fma();
  const int64_t chunks = (n + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static) if (chunks > 1)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t begin = c * kChunk, len = std::min(kChunk, n - begin);
    unary_chunk(op, x + begin, y + begin, len, a, b, avx2);
  }
}

void geglu_f32(const float* x, float* y, int64_t rows, int64_t n) {
  const bool avx2 = cpu_has_avx2_fma();
#pragma omp parallel for schedule(static) if (rows > 1 && rows * n > kChunk)
  for (int64_t r = 0; r < rows; ++r) {
    if (avx2)
      geglu_row_avx2(x + r * 2 * n, y + r * n, n);
    else
      geglu_row_generic(x + r * 2 * n, y + r * n, n);
  }
}

void binary_f32(BinaryOpF32 op, const Tensor& a, const Tensor& b, const Tensor& y) {
  switch (op) {
    case BinaryOpF32::kAdd: return binary_strided(AddOp{}, a, b, y);
    case BinaryOpF32::kSub: return binary_strided(SubOp{}, a, b, y);
    case BinaryOpF32::kMul: return binary_strided(MulOp{}, a, b, y);
  }
}

void copy_residual_into(const Tensor& residual, const Tensor& out) {
  if (residual.shape() != out.shape() || residual.dtype() != out.dtype() ||
      (out.dtype() != DType::F32 && out.dtype() != DType::BF16))
    throw Error("fused residual: residual " + residual.describe() + " does not match the output " + out.describe());
  if (residual.raw_data() == out.raw_data() && residual.strides() == out.strides()) return;
  if (residual.strides() != out.strides()) {
    Tensor(out).copy_from(residual);  // a handle copy: the data is out's
    return;
  }
  const auto* src = static_cast<const std::byte*>(residual.raw_data());
  auto* dst = static_cast<std::byte*>(out.raw_data());
  const int64_t n = out.numel() * static_cast<int64_t>(dtype_size(out.dtype()));
  constexpr int64_t kBlock = 1 << 18;  // bytes
#pragma omp parallel for schedule(static) if (n > kBlock)
  for (int64_t b = 0; b < (n + kBlock - 1) / kBlock; ++b)
    std::memcpy(dst + b * kBlock, src + b * kBlock, static_cast<size_t>(std::min(n, (b + 1) * kBlock) - b * kBlock));
}

}  // namespace taiyi::ops::cpu
