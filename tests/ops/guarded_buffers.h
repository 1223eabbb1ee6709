// Guarded test buffers for prepared kernels: scratch and tensors followed by guard values (and
// filled with NaN) so that a kernel writing past its memory, or reading scratch before writing it,
// shows in the test.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "op_testing.h"
#include "taiyi/ops/prepared.h"
#include "taiyi/tensor/tensor.h"

namespace taiyi::ops_test {

constexpr size_t kGuardFloats = 64;
constexpr float kGuard = 12345.678f;

struct FreeBytes {
  void operator()(std::byte* p) const { std::free(p); }
};

// 64-byte aligned scratch of `bytes`, NaN-filled (so reading scratch before writing it shows), with
// kGuardFloats guard values after it.
struct Scratch {
  explicit Scratch(size_t bytes) : size(bytes) {
    const size_t total = (bytes + kGuardFloats * sizeof(float) + 63) / 64 * 64;
    mem.reset(static_cast<std::byte*>(std::aligned_alloc(64, total)));
    std::memset(mem.get(), 0xff, bytes);
    float* guard = reinterpret_cast<float*>(mem.get() + bytes);
    std::fill(guard, guard + kGuardFloats, kGuard);
  }
  bool guard_intact() const {
    const float* guard = reinterpret_cast<const float*>(mem.get() + size);
    return std::all_of(guard, guard + kGuardFloats, [](float g) { return g == kGuard; });
  }
  size_t size;
  std::unique_ptr<std::byte, FreeBytes> mem;
};

// A tensor of shape nchw stored densely in `layout`, followed by kGuardFloats guard values; filled
// from `values` (NCHW-shaped, any strides) or with NaN.
inline Tensor guarded_tensor(const Shape& nchw, ops::Layout layout, const Tensor& values = Tensor()) {
  const int64_t n = shape_numel(nchw);
  auto storage = Storage::allocate(static_cast<size_t>(n + kGuardFloats) * sizeof(float));
  float* p = reinterpret_cast<float*>(storage->data());
  std::fill(p, p + n, NAN);
  std::fill(p + n, p + n + kGuardFloats, kGuard);
  Tensor t = Tensor::from_storage(storage, 0, nchw, ops::layout_strides(nchw, layout), DType::F32);
  if (values.defined()) t.copy_from(values);
  return t;
}

inline bool tensor_guard_intact(const Tensor& t) {
  const float* p = reinterpret_cast<const float*>(t.storage()->data()) + t.numel();
  return std::all_of(p, p + kGuardFloats, [](float g) { return g == kGuard; });
}

inline const char* layout_name(ops::Layout l) { return l == ops::Layout::kNHWC ? "nhwc" : "nchw"; }

// A prepared convolution's fused residual in a test: none, a separate tensor, or the output's own
// memory (the epilogue then adds in place).
enum class Residual { kNone, kSeparate, kInPlace };

// fn(src, dst, residual) for every source and destination layout and residual kind, each under a
// trace that names them.
template <typename Fn>
void for_each_layout_and_residual(Fn&& fn) {
  for (ops::Layout src : {ops::Layout::kNCHW, ops::Layout::kNHWC})
    for (ops::Layout dst : {ops::Layout::kNCHW, ops::Layout::kNHWC})
      for (Residual r : {Residual::kNone, Residual::kSeparate, Residual::kInPlace}) {
        SCOPED_TRACE(std::string(layout_name(src)) + " -> " + layout_name(dst) + ", residual " +
                     std::to_string(static_cast<int>(r)));
        fn(src, dst, r);
      }
}

// A channels-last copy of the NCHW tensor t in dtype (the channels-last convolutions' tests).
inline Tensor nhwc(const Tensor& t, DType dtype) {
  Tensor out = Tensor::empty({t.size(0), t.size(2), t.size(3), t.size(1)}, dtype).permute({0, 3, 1, 2});
  out.copy_from(t);
  return out;
}

// Two prepared channels-last convolutions of one bf16 channels-last input xb, the first writing f32
// and the second bf16, each run into a fresh channels-last output of shape ys (NCHW order): the
// outputs, NCHW-contiguous.
struct F32AndBf16Out {
  Tensor f32, bf16;
};
inline F32AndBf16Out run_f32_and_bf16_out(const ops::PreparedOp& f32_out, const ops::PreparedOp& bf16_out,
                                          const Tensor& xb, const Shape& ys) {
  Tensor yf = nhwc(Tensor::zeros(ys), DType::F32), yb = nhwc(Tensor::zeros(ys), DType::BF16);
  Scratch scratch(std::max(f32_out.scratch_bytes(), bf16_out.scratch_bytes()));
  f32_out.run({xb}, yf, scratch.mem.get());
  bf16_out.run({xb}, yb, scratch.mem.get());
  return {yf.contiguous(), yb.contiguous()};
}

struct GuardedRun {
  Tensor y;                      // the output (NCHW-shaped, stored in the destination layout)
  std::vector<double> residual;  // the residual's values (NCHW order), empty without one
};

// Runs `op` on x_nchw stored in src_layout into a guarded output of shape ys in dst_layout, with a
// random residual (seed) when asked, from NaN-filled scratch; checks that nothing was written past
// the scratch or the output.
inline GuardedRun run_guarded(const ops::PreparedOp& op, const Tensor& x_nchw, ops::Layout src_layout, const Shape& ys,
                              ops::Layout dst_layout, Residual residual, uint32_t seed) {
  GuardedRun r;
  Tensor res;
  if (residual != Residual::kNone) {
    res = guarded_tensor(ys, dst_layout, random_tensor(ys, seed));
    r.residual = values(res);
  }
  const Tensor x = guarded_tensor(x_nchw.shape(), src_layout, x_nchw);
  Scratch scratch(op.scratch_bytes());
  r.y = residual == Residual::kInPlace ? res : guarded_tensor(ys, dst_layout);
  std::vector<Tensor> inputs = {x};
  if (residual != Residual::kNone) inputs.push_back(res);
  op.run(inputs, r.y, scratch.mem.get());
  EXPECT_TRUE(scratch.guard_intact()) << "wrote past the scratch";
  EXPECT_TRUE(tensor_guard_intact(r.y)) << "wrote past the output";
  return r;
}

}  // namespace taiyi::ops_test
