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

}  // namespace taiyi::ops_test
