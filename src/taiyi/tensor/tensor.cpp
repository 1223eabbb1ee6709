#include "taiyi/tensor/tensor.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <sstream>

namespace taiyi {

size_t dtype_size(DType t) {
  switch (t) {
    case DType::F32: return 4;
    case DType::F16: return 2;
    case DType::BF16: return 2;
    case DType::I64: return 8;
    case DType::I32: return 4;
    case DType::U8: return 1;
  }
  return 0;
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "f32";
    case DType::F16: return "f16";
    case DType::BF16: return "bf16";
    case DType::I64: return "i64";
    case DType::I32: return "i32";
    case DType::U8: return "u8";
  }
  return "?";
}

bool dtype_is_float(DType t) { return t == DType::F32 || t == DType::F16 || t == DType::BF16; }

std::string shape_str(const Shape& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) {
    if (i) r += ", ";
    r += std::to_string(s[i]);
  }
  return r + "]";
}

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) {
    if (d < 0) throw Error("negative dimension in shape " + shape_str(s));
    if (__builtin_mul_overflow(n, d, &n)) throw Error("shape " + shape_str(s) + " has too many elements");
  }
  return n;
}

Strides contiguous_strides(const Shape& s) {
  Strides st(s.size());
  int64_t acc = 1;
  for (int i = static_cast<int>(s.size()) - 1; i >= 0; --i) {
    st[i] = acc;
    acc *= std::max<int64_t>(s[i], 1);
  }
  return st;
}

// ---- Storage ----

std::shared_ptr<Storage> Storage::allocate(size_t bytes) {
  std::shared_ptr<Storage> s(new Storage());
  // Large blocks (activation arenas, packed weights, big tensors) start on a 2 MiB boundary and ask
  // for transparent huge pages (Linux's default THP mode is "madvise"): a streaming kernel then
  // walks 512x fewer pages, and first touch faults once per 2 MiB instead of per 4 KiB.
  constexpr size_t kHuge = size_t{2} << 20;
  const bool huge = bytes >= 4 * kHuge;
  const size_t align = huge ? kHuge : 64;
  const size_t rounded = (std::max<size_t>(bytes, 1) + align - 1) / align * align;
  void* p = std::aligned_alloc(align, rounded);
  if (!p) throw Error("out of memory allocating " + std::to_string(bytes) + " bytes");
#ifdef MADV_HUGEPAGE
  if (huge) madvise(p, rounded, MADV_HUGEPAGE);  // only advice
#endif
  s->data_ = static_cast<std::byte*>(p);
  s->bytes_ = bytes;
  s->owned_ = true;
  return s;
}

std::shared_ptr<Storage> Storage::borrow(void* data, size_t bytes, std::shared_ptr<const void> keep_alive) {
  std::shared_ptr<Storage> s(new Storage());
  s->data_ = static_cast<std::byte*>(data);
  s->bytes_ = bytes;
  s->owned_ = false;
  s->keep_alive_ = std::move(keep_alive);
  return s;
}

std::shared_ptr<Storage> Storage::borrow_file_pages(void* data, size_t bytes, std::shared_ptr<const void> keep_alive) {
  std::shared_ptr<Storage> s = borrow(data, bytes, std::move(keep_alive));
  s->file_backed_ = true;
  return s;
}

size_t Storage::release_pages(size_t offset, size_t bytes) const {
  if (!file_backed_ || offset >= bytes_) return 0;
  bytes = std::min(bytes, bytes_ - offset);
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const uintptr_t begin = reinterpret_cast<uintptr_t>(data_ + offset), end = begin + bytes;
  const uintptr_t first = (begin + page - 1) / page * page, last = end / page * page;  // whole pages only
  if (last <= first) return 0;
  if (madvise(reinterpret_cast<void*>(first), last - first, MADV_DONTNEED) != 0) return 0;  // only advice
  return last - first;
}

std::shared_ptr<Storage> Storage::meta(size_t bytes) {
  std::shared_ptr<Storage> s(new Storage());
  s->bytes_ = bytes;
  s->meta_ = true;
  return s;
}

Storage::~Storage() {
  if (owned_) std::free(data_);
}

// ---- Tensor ----

Tensor Tensor::empty(const Shape& shape, DType dtype) {
  for (int64_t d : shape)
    if (d < 0) throw Error("Tensor::empty: negative dimension in " + shape_str(shape));
  Tensor t;
  t.dtype_ = dtype;
  t.shape_ = shape;
  t.strides_ = contiguous_strides(shape);
  size_t bytes = 0;
  if (__builtin_mul_overflow(static_cast<size_t>(shape_numel(shape)), dtype_size(dtype), &bytes))
    throw Error("Tensor::empty: shape " + shape_str(shape) + " is too large");
  t.storage_ = Storage::allocate(bytes);
  return t;
}

Tensor Tensor::zeros(const Shape& shape, DType dtype) {
  Tensor t = empty(shape, dtype);
  std::memset(t.raw_data(), 0, t.nbytes());
  return t;
}

Tensor Tensor::full(const Shape& shape, float value) {
  Tensor t = empty(shape, DType::F32);
  std::fill_n(t.data<float>(), t.numel(), value);
  return t;
}

Tensor Tensor::from_storage(std::shared_ptr<Storage> storage, size_t byte_offset, const Shape& shape,
                            const Strides& strides, DType dtype) {
  if (!storage) throw Error("Tensor::from_storage: null storage");
  if (shape.size() != strides.size()) throw Error("Tensor::from_storage: shape and strides differ in rank");
  // Byte range addressed by the view: [offset + min_off, offset + max_off + elem).
  int64_t min_off = 0, max_off = 0;
  bool empty_view = false, overflow = false;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] < 0) throw Error("Tensor::from_storage: negative dimension in " + shape_str(shape));
    if (shape[i] == 0) empty_view = true;
    int64_t span = 0;
    overflow |= __builtin_mul_overflow(shape[i] - 1, strides[i], &span);
    overflow |= __builtin_add_overflow(span < 0 ? min_off : max_off, span, span < 0 ? &min_off : &max_off);
  }
  const int64_t es = static_cast<int64_t>(dtype_size(dtype));
  if (!empty_view) {
    int64_t lo = 0, hi = 0;
    overflow |= __builtin_mul_overflow(min_off, es, &lo) || __builtin_add_overflow(lo, static_cast<int64_t>(byte_offset), &lo);
    overflow |= __builtin_mul_overflow(max_off + 1, es, &hi) ||
                __builtin_add_overflow(hi, static_cast<int64_t>(byte_offset), &hi);
    if (overflow || byte_offset > storage->bytes() || lo < 0 || hi > static_cast<int64_t>(storage->bytes()))
      throw Error("Tensor::from_storage: view " + shape_str(shape) + " at byte offset " +
                  std::to_string(byte_offset) + " reaches outside its storage of " +
                  std::to_string(storage->bytes()) + " bytes");
  }
  Tensor t;
  t.storage_ = std::move(storage);
  t.offset_ = byte_offset;
  t.shape_ = shape;
  t.strides_ = strides;
  t.dtype_ = dtype;
  return t;
}

bool Tensor::is_contiguous() const {
  int64_t expected = 1;
  for (int i = ndim() - 1; i >= 0; --i) {
    if (shape_[i] == 1) continue;
    if (strides_[i] != expected) return false;
    expected *= shape_[i];
  }
  return true;
}

int Tensor::norm_dim(int dim) const {
  const int nd = ndim();
  const int d = dim < 0 ? dim + nd : dim;
  if (d < 0 || d >= nd)
    throw Error("dimension " + std::to_string(dim) + " out of range for tensor " + describe());
  return d;
}

void Tensor::check_dtype(DType t) const {
  if (!defined()) throw Error("access to an undefined tensor");
  if (t != dtype_)
    throw Error(std::string("tensor ") + describe() + " accessed as " + dtype_name(t));
}

void Tensor::throw_meta_access() const {
  throw Error("tensor " + describe() +
              " is a graph-mode trace value and has no data: model code must not read tensors while tracing");
}

uint16_t* Tensor::data_u16() const {
  if (dtype_ != DType::F16 && dtype_ != DType::BF16)
    throw Error("tensor " + describe() + " accessed as 16-bit float");
  return reinterpret_cast<uint16_t*>(raw_data());
}

static double load_as_double(const std::byte* p, DType t) {
  switch (t) {
    case DType::F32: {
      float v;
      std::memcpy(&v, p, 4);
      return v;
    }
    case DType::F16: {
      uint16_t v;
      std::memcpy(&v, p, 2);
      return f16_to_f32(v);
    }
    case DType::BF16: {
      uint16_t v;
      std::memcpy(&v, p, 2);
      return bf16_to_f32(v);
    }
    case DType::I64: {
      int64_t v;
      std::memcpy(&v, p, 8);
      return static_cast<double>(v);
    }
    case DType::I32: {
      int32_t v;
      std::memcpy(&v, p, 4);
      return v;
    }
    case DType::U8: return static_cast<double>(*reinterpret_cast<const uint8_t*>(p));
  }
  return 0;
}

double Tensor::item(int64_t flat_index) const {
  if (!defined()) throw Error("item() of an undefined tensor");
  if (flat_index < 0 || flat_index >= numel())
    throw Error("item(" + std::to_string(flat_index) + ") out of range for " + describe());
  int64_t off = 0, rem = flat_index;
  for (int d = ndim() - 1; d >= 0; --d) {
    off += (rem % shape_[d]) * strides_[d];
    rem /= shape_[d];
  }
  return load_as_double(static_cast<const std::byte*>(raw_data()) + off * static_cast<int64_t>(dtype_size(dtype_)),
                        dtype_);
}

Shape Tensor::resolve_shape(const Shape& shape) const {
  Shape out = shape;
  int infer = -1;
  int64_t known = 1;
  for (size_t i = 0; i < out.size(); ++i) {
    if (out[i] == -1) {
      if (infer >= 0) throw Error("reshape: more than one -1 in " + shape_str(shape));
      infer = static_cast<int>(i);
    } else if (out[i] < 0) {
      throw Error("reshape: negative dimension in " + shape_str(shape));
    } else {
      known *= out[i];
    }
  }
  if (infer >= 0) {
    if (known == 0 || numel() % known != 0)
      throw Error("reshape: cannot view " + describe() + " as " + shape_str(shape));
    out[infer] = numel() / known;
  }
  if (shape_numel(out) != numel()) throw Error("reshape: cannot view " + describe() + " as " + shape_str(shape));
  return out;
}

Tensor Tensor::view(const Shape& shape) const {
  if (!is_contiguous()) throw Error("view of non-contiguous tensor " + describe());
  Tensor t = *this;
  t.shape_ = resolve_shape(shape);
  t.strides_ = contiguous_strides(t.shape_);
  return t;
}

Tensor Tensor::reshape(const Shape& shape) const { return is_contiguous() ? view(shape) : contiguous().view(shape); }

Tensor Tensor::permute(const std::vector<int>& dims) const {
  if (static_cast<int>(dims.size()) != ndim())
    throw Error("permute: " + std::to_string(dims.size()) + " dims given for tensor " + describe());
  std::vector<bool> seen(ndim(), false);
  Tensor t = *this;
  for (int i = 0; i < ndim(); ++i) {
    const int d = norm_dim(dims[i]);
    if (seen[d]) throw Error("permute: repeated dimension");
    seen[d] = true;
    t.shape_[i] = shape_[d];
    t.strides_[i] = strides_[d];
  }
  return t;
}

Tensor Tensor::transpose(int a, int b) const {
  std::vector<int> dims(ndim());
  std::iota(dims.begin(), dims.end(), 0);
  std::swap(dims[norm_dim(a)], dims[norm_dim(b)]);
  return permute(dims);
}

Tensor Tensor::slice(int dim, int64_t start, int64_t end, int64_t step) const {
  const int d = norm_dim(dim);
  const int64_t n = shape_[d];
  if (step <= 0) throw Error("slice: step must be positive");
  if (start < 0) start += n;
  if (end < 0) end += n;
  start = std::clamp<int64_t>(start, 0, n);
  end = std::clamp<int64_t>(end, start, n);
  Tensor t = *this;
  t.offset_ += static_cast<size_t>(start * strides_[d]) * dtype_size(dtype_);
  t.shape_[d] = (end - start + step - 1) / step;
  t.strides_[d] = strides_[d] * step;
  return t;
}

Tensor Tensor::unsqueeze(int dim) const {
  const int nd = ndim();
  const int d = dim < 0 ? dim + nd + 1 : dim;
  if (d < 0 || d > nd) throw Error("unsqueeze: dimension out of range for " + describe());
  Tensor t = *this;
  const int64_t st = d < nd ? strides_[d] * shape_[d] : 1;
  t.shape_.insert(t.shape_.begin() + d, 1);
  t.strides_.insert(t.strides_.begin() + d, st);
  return t;
}

Tensor Tensor::squeeze(int dim) const {
  const int d = norm_dim(dim);
  if (shape_[d] != 1) throw Error("squeeze: dimension " + std::to_string(dim) + " of " + describe() + " is not 1");
  Tensor t = *this;
  t.shape_.erase(t.shape_.begin() + d);
  t.strides_.erase(t.strides_.begin() + d);
  return t;
}

Tensor Tensor::expand(const Shape& shape) const {
  if (shape.size() < shape_.size()) throw Error("expand: fewer dims than " + describe());
  Tensor t = *this;
  const size_t lead = shape.size() - shape_.size();
  t.shape_ = shape;
  t.strides_.assign(shape.size(), 0);
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i < lead) continue;
    const int64_t s = shape_[i - lead];
    if (s == shape[i]) t.strides_[i] = strides_[i - lead];
    else if (s != 1) throw Error("expand: cannot broadcast " + describe() + " to " + shape_str(shape));
  }
  return t;
}

void Tensor::copy_from(const Tensor& src) {
  if (src.shape_ != shape_)
    throw Error("copy: shape mismatch " + src.describe() + " -> " + describe());
  const size_t es_dst = dtype_size(dtype_), es_src = dtype_size(src.dtype_);
  std::byte* dst_base = static_cast<std::byte*>(raw_data());
  const std::byte* src_base = static_cast<const std::byte*>(src.raw_data());
  if (dtype_ == src.dtype_ && is_contiguous() && src.is_contiguous()) {
    std::memcpy(dst_base, src_base, nbytes());
    return;
  }
  // Gather source offsets in logical order, then write the destination in logical order.
  std::vector<int64_t> src_offs(static_cast<size_t>(numel()));
  for_each_offset(src.shape_, src.strides_, [&](int64_t i, int64_t off) { src_offs[i] = off; });
  const DType sd = src.dtype_, dd = dtype_;
  for_each_offset(shape_, strides_, [&](int64_t i, int64_t off) {
    const std::byte* s = src_base + src_offs[i] * static_cast<int64_t>(es_src);
    std::byte* d = dst_base + off * static_cast<int64_t>(es_dst);
    if (sd == dd) {
      std::memcpy(d, s, es_dst);
      return;
    }
    const double v = load_as_double(s, sd);
    switch (dd) {
      case DType::F32: {
        float f;
        if (sd == DType::F16) {
          uint16_t h;
          std::memcpy(&h, s, 2);
          f = f16_to_f32(h);
        } else if (sd == DType::BF16) {
          uint16_t h;
          std::memcpy(&h, s, 2);
          f = bf16_to_f32(h);
        } else {
          f = static_cast<float>(v);
        }
        std::memcpy(d, &f, 4);
        break;
      }
      case DType::F16: {
        uint16_t h = f32_to_f16(static_cast<float>(v));
        std::memcpy(d, &h, 2);
        break;
      }
      case DType::BF16: {
        uint16_t h = f32_to_bf16(static_cast<float>(v));
        std::memcpy(d, &h, 2);
        break;
      }
      case DType::I64: {
        int64_t x = static_cast<int64_t>(v);
        std::memcpy(d, &x, 8);
        break;
      }
      case DType::I32: {
        int32_t x = static_cast<int32_t>(v);
        std::memcpy(d, &x, 4);
        break;
      }
      case DType::U8: {
        uint8_t x = static_cast<uint8_t>(v);
        std::memcpy(d, &x, 1);
        break;
      }
    }
  });
}

Tensor Tensor::contiguous() const {
  if (is_contiguous()) return *this;
  return clone();
}

Tensor Tensor::clone() const {
  Tensor t = empty(shape_, dtype_);
  t.copy_from(*this);
  return t;
}

Tensor Tensor::to(DType dtype) const {
  if (dtype == dtype_) return *this;
  Tensor t = empty(shape_, dtype);
  const int64_t n = numel();
  if (is_contiguous()) {
    // Fast paths for the weight conversions that matter at load time.
    if (dtype_ == DType::F16 && dtype == DType::F32) {
      const uint16_t* s = data_u16();
      float* d = t.data<float>();
#pragma omp parallel for schedule(static)
      for (int64_t i = 0; i < n; ++i) d[i] = f16_to_f32(s[i]);
      return t;
    }
    if (dtype_ == DType::BF16 && dtype == DType::F32) {
      const uint16_t* s = data_u16();
      float* d = t.data<float>();
#pragma omp parallel for schedule(static)
      for (int64_t i = 0; i < n; ++i) d[i] = bf16_to_f32(s[i]);
      return t;
    }
    if (dtype_ == DType::F32 && dtype == DType::BF16) {
      const float* s = data<float>();
      uint16_t* d = t.data_u16();
#pragma omp parallel for schedule(static)
      for (int64_t i = 0; i < n; ++i) d[i] = f32_to_bf16(s[i]);
      return t;
    }
  }
  t.copy_from(*this);
  return t;
}

std::string Tensor::describe() const {
  if (!defined()) return "undefined";
  return std::string(dtype_name(dtype_)) + shape_str(shape_);
}

}  // namespace taiyi
