// The tensor layer: the one data type every other layer passes around.
//
// A Tensor is a view: shape, strides (in elements) and a byte offset into a
// Storage. Storage is shared (std::shared_ptr) and is either owned heap memory
// (64-byte aligned) or a borrowed range, such as a slice of an mmapped weight
// file, kept alive by a keep-alive handle. View methods (reshape of a
// contiguous tensor, permute, transpose, slice, unsqueeze) never copy;
// contiguous(), clone() and to() do.
//
//   Tensor x = Tensor::empty({2, 4, 8, 8});          // f32, uninitialised
//   Tensor y = x.permute({0, 2, 3, 1}).contiguous();  // NHWC copy
//   float* p = y.data<float>();
//
// Model code does not call these methods directly; it goes through the ops
// layer (ops/ops.h), which is where graph mode will record views too.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "taiyi/tensor/dtype.h"

namespace taiyi {

// Every user-facing failure (bad file, bad shape, bad flag) is an Error whose
// message names the thing at fault and what was expected.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

using Shape = std::vector<int64_t>;
using Strides = std::vector<int64_t>;

std::string shape_str(const Shape& s);  // "[2, 4, 8, 8]"
int64_t shape_numel(const Shape& s);
Strides contiguous_strides(const Shape& s);

class Storage {
 public:
  // Owned, 64-byte aligned, uninitialised.
  static std::shared_ptr<Storage> allocate(size_t bytes);
  // Borrowed: `data` stays valid as long as `keep_alive` lives.
  static std::shared_ptr<Storage> borrow(void* data, size_t bytes, std::shared_ptr<const void> keep_alive);
  // Borrowed from a read-only file mapping (a checkpoint): release_pages() may drop its pages
  // from memory, since the next access reads them back from the file.
  static std::shared_ptr<Storage> borrow_file_pages(void* data, size_t bytes, std::shared_ptr<const void> keep_alive);
  // Meta: a size and no bytes. Graph tracing computes with tensors over meta storages
  // (shapes, strides, dtypes only); reading their data throws.
  static std::shared_ptr<Storage> meta(size_t bytes);

  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  std::byte* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  bool owned() const { return owned_; }
  bool is_meta() const { return meta_; }
  bool file_backed() const { return file_backed_; }

  // For a file-backed storage: the whole pages inside [offset, offset + bytes) leave the
  // process's resident memory (madvise DONTNEED; their contents stay in the file and come back
  // on the next access). Graph mode calls it on weights it has packed into its own layout.
  // Any other storage is left alone. Returns the bytes released.
  size_t release_pages(size_t offset, size_t bytes) const;

 private:
  Storage() = default;
  std::byte* data_ = nullptr;
  size_t bytes_ = 0;
  bool owned_ = false;
  bool meta_ = false;
  bool file_backed_ = false;
  std::shared_ptr<const void> keep_alive_;
};

template <typename T>
constexpr DType dtype_of();
template <>
constexpr DType dtype_of<float>() { return DType::F32; }
template <>
constexpr DType dtype_of<int64_t>() { return DType::I64; }
template <>
constexpr DType dtype_of<int32_t>() { return DType::I32; }
template <>
constexpr DType dtype_of<uint8_t>() { return DType::U8; }

class Tensor {
 public:
  Tensor() = default;  // undefined: defined() is false

  static Tensor empty(const Shape& shape, DType dtype = DType::F32);
  static Tensor zeros(const Shape& shape, DType dtype = DType::F32);
  static Tensor full(const Shape& shape, float value);
  // View over existing storage; checks that every addressed byte lies inside it.
  static Tensor from_storage(std::shared_ptr<Storage> storage, size_t byte_offset, const Shape& shape,
                             const Strides& strides, DType dtype);
  template <typename T>
  static Tensor from_vector(const std::vector<T>& values, const Shape& shape);
  static Tensor scalar(float v) { return from_vector<float>({v}, {}); }

  bool defined() const { return storage_ != nullptr; }
  DType dtype() const { return dtype_; }
  const Shape& shape() const { return shape_; }
  const Strides& strides() const { return strides_; }
  int ndim() const { return static_cast<int>(shape_.size()); }
  int64_t size(int dim) const { return shape_[norm_dim(dim)]; }
  int64_t stride(int dim) const { return strides_[norm_dim(dim)]; }
  int64_t numel() const { return shape_numel(shape_); }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype_); }
  bool is_contiguous() const;
  const std::shared_ptr<Storage>& storage() const { return storage_; }
  size_t byte_offset() const { return offset_; }

  bool is_meta() const { return storage_ && storage_->is_meta(); }
  void* raw_data() const {
    if (storage_->is_meta()) throw_meta_access();
    return storage_->data() + offset_;
  }
  template <typename T>
  T* data() const {
    check_dtype(dtype_of<T>());
    return reinterpret_cast<T*>(raw_data());
  }
  uint16_t* data_u16() const;  // f16 or bf16 bit patterns

  // Element access for tests and small host-side logic; converts to double.
  double item(int64_t flat_index = 0) const;  // flat index in logical (row-major) order

  // Views (no copy).
  Tensor view(const Shape& shape) const;     // requires contiguous; one dim may be -1
  Tensor reshape(const Shape& shape) const;  // view if contiguous, else a contiguous copy
  Tensor permute(const std::vector<int>& dims) const;
  Tensor transpose(int a, int b) const;
  Tensor slice(int dim, int64_t start, int64_t end, int64_t step = 1) const;
  Tensor unsqueeze(int dim) const;
  Tensor squeeze(int dim) const;
  Tensor expand(const Shape& shape) const;  // broadcast view (stride 0)

  // Copies.
  Tensor contiguous() const;  // self if already contiguous
  Tensor clone() const;       // always a fresh contiguous copy
  Tensor to(DType dtype) const;
  void copy_from(const Tensor& src);  // same shape, any dtypes, any strides

  std::string describe() const;  // "f32[2, 4, 8, 8]"
  Shape resolve_shape(const Shape& shape) const;  // a reshape target with its -1 filled in; throws if impossible
  int norm_dim(int dim) const;   // negative dims count from the end; throws if out of range

 private:
  void check_dtype(DType t) const;
  [[noreturn]] void throw_meta_access() const;

  std::shared_ptr<Storage> storage_;
  size_t offset_ = 0;  // bytes
  Shape shape_;
  Strides strides_;
  DType dtype_ = DType::F32;
};

template <typename T>
Tensor Tensor::from_vector(const std::vector<T>& values, const Shape& shape) {
  static_assert(std::is_trivially_copyable_v<T>);
  Tensor t = empty(shape, dtype_of<T>());
  if (static_cast<int64_t>(values.size()) != t.numel())
    throw Error("Tensor::from_vector: " + std::to_string(values.size()) + " values for shape " + shape_str(shape));
  if (!values.empty()) std::memcpy(t.raw_data(), values.data(), values.size() * sizeof(T));
  return t;
}

// Iterates the logical (row-major) offsets of a strided view, in elements.
// Used by copies and reference loops; hot kernels use contiguous fast paths.
template <typename F>
void for_each_offset(const Shape& shape, const Strides& strides, F&& f) {
  const int nd = static_cast<int>(shape.size());
  const int64_t n = shape_numel(shape);
  if (n == 0) return;
  if (nd == 0) {
    f(int64_t{0}, int64_t{0});
    return;
  }
  std::vector<int64_t> idx(nd, 0);
  int64_t off = 0;
  const int64_t inner = shape[nd - 1], inner_stride = strides[nd - 1];
  for (int64_t i = 0; i < n; i += inner) {
    for (int64_t j = 0; j < inner; ++j) f(i + j, off + j * inner_stride);
    for (int d = nd - 2; d >= 0; --d) {
      if (++idx[d] < shape[d]) {
        off += strides[d];
        break;
      }
      off -= strides[d] * (shape[d] - 1);
      idx[d] = 0;
    }
  }
}

}  // namespace taiyi
