// Eager CPU implementation of the op set (ops.h): argument checks, output allocation,
// FLOP counting, and dispatch to the kernels in cpu/ (declared in cpu/cpu_kernels.h).
//
// Each op checks what it is given before any work and throws taiyi::Error naming
// itself and the shapes at fault. Compute ops are f32 only for now. Kernels that need
// contiguous inputs get them here (a copy only when the view is not contiguous).
#include "taiyi/ops/ops.h"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <optional>
#include <string>

#include "taiyi/ops/cpu/cpu_kernels.h"
#include "taiyi/ops/op_call.h"
#include "taiyi/ops/prepared.h"

namespace taiyi::ops {
namespace {

std::atomic<uint64_t> g_flops{0};

void add_flops(double flops) { g_flops.fetch_add(static_cast<uint64_t>(flops), std::memory_order_relaxed); }

[[noreturn]] void fail(const char* op, const std::string& msg) { throw Error(std::string(op) + ": " + msg); }

void require_defined(const char* op, const char* what, const Tensor& t) {
  if (!t.defined()) fail(op, std::string(what) + " is undefined");
}

void require_f32(const char* op, const char* what, const Tensor& t) {
  require_defined(op, what, t);
  if (t.dtype() != DType::F32)
    fail(op, std::string(what) + " " + t.describe() + " must be f32 (other dtypes are not supported yet)");
}

void require_rank(const char* op, const char* what, const Tensor& t, int rank) {
  if (t.ndim() != rank) fail(op, std::string(what) + " " + t.describe() + " must have rank " + std::to_string(rank));
}

void require_min_rank(const char* op, const char* what, const Tensor& t, int rank) {
  if (t.ndim() < rank) fail(op, std::string(what) + " " + t.describe() + " must have rank >= " + std::to_string(rank));
}

// An optional per-channel parameter (bias, gamma, beta): undefined, or f32 [c].
void require_vector_or_undefined(const char* op, const char* what, const Tensor& t, int64_t c, const Tensor& x) {
  if (!t.defined()) return;
  require_f32(op, what, t);
  if (t.ndim() != 1 || t.size(0) != c)
    fail(op, std::string(what) + " " + t.describe() + " must be [" + std::to_string(c) + "] for input " + x.describe());
}

const float* data_or_null(const Tensor& t) { return t.defined() ? t.data<float>() : nullptr; }

// Merges dims [begin, end) of t into one (size, stride) if one stride steps through them all.
std::optional<std::pair<int64_t, int64_t>> merged_dims(const Tensor& t, int begin, int end) {
  int64_t size = 1, stride = 1;
  bool first = true;
  for (int d = end - 1; d >= begin; --d) {
    if (t.size(d) == 1) continue;
    if (first) {
      stride = t.stride(d);
      first = false;
    } else if (t.stride(d) != stride * size) {
      return std::nullopt;
    }
    size *= t.size(d);
  }
  if (first) stride = t.ndim() > end ? t.stride(end) * t.size(end) : 1;  // all ones: any stride
  return std::make_pair(size, stride);
}

// t [d0, ..., dn-3, M, K] as a 3-D view [prod(d0..dn-3), M, K] (a copy only if the batch dims do not merge).
Tensor as_batched_matrices(const Tensor& t) {
  const int nd = t.ndim();
  Tensor src = t;
  auto batch = merged_dims(src, 0, nd - 2);
  if (!batch) {
    src = t.contiguous();
    batch = merged_dims(src, 0, nd - 2);
  }
  return Tensor::from_storage(src.storage(), src.byte_offset(), {batch->first, src.size(-2), src.size(-1)},
                              {batch->second, src.stride(-2), src.stride(-1)}, src.dtype());
}

// An op's output: the buffer the graph executor planned for it (run_op_into), else fresh memory.
Tensor make_output(const Shape& shape, DType dtype = DType::F32) {
  const Tensor* target = output_target();
  if (target && target->shape() == shape && target->dtype() == dtype && target->is_contiguous()) {
    Tensor t = *target;
    clear_output_target();  // one op call, one output
    return t;
  }
  return Tensor::empty(shape, dtype);
}

// Channels-last (NHWC memory order of an NCHW shape), as the graph's layout passes lay out 4-D
// activations (graph/passes/channels_last_activations.cpp).
bool is_channels_last(const Tensor& t) {
  return t.ndim() == 4 && !t.is_contiguous() && t.strides() == layout_strides(t.shape(), Layout::kNHWC);
}

// True when the executor planned a channels-last buffer for this op's output.
bool channels_last_target(const Shape& shape) {
  const Tensor* target = output_target();
  return target && target->shape() == shape && target->dtype() == DType::F32 && is_channels_last(*target);
}

// A channels-last f32 output: the planned buffer when it is one, else fresh memory.
Tensor make_channels_last_output(const Shape& shape) {
  if (channels_last_target(shape)) {
    Tensor t = *output_target();
    clear_output_target();
    return t;
  }
  return Tensor::from_storage(Storage::allocate(static_cast<size_t>(shape_numel(shape)) * sizeof(float)), 0, shape,
                              layout_strides(shape, Layout::kNHWC), DType::F32);
}

// The planned bf16 buffer of this shape and strides, taken (graph mode's bf16 inputs of bf16
// products, graph/passes/bf16_inputs.cpp: the op rounds as it writes); nullopt when there is none.
std::optional<Tensor> take_bf16_target(const Shape& shape, const Strides& strides) {
  const Tensor* target = output_target();
  if (!target || target->shape() != shape || target->dtype() != DType::BF16 || target->strides() != strides)
    return std::nullopt;
  Tensor t = *target;
  clear_output_target();
  return t;
}

const std::vector<int> kNchwToNhwc = {0, 2, 3, 1};

// While tracing, hands the checked call to the recorder instead of computing.
std::optional<Tensor> traced(OpKind kind, const std::vector<Tensor>& inputs, const OpAttrs& attrs, const Shape& out,
                             DType dtype = DType::F32) {
  Recorder* r = active_recorder();
  if (!r) return std::nullopt;
  return r->record(kind, inputs, attrs, meta_tensor(out, dtype));
}

// A view's metadata is computed on the (meta) input itself; the recorder gives it an identity.
std::optional<Tensor> traced_view(OpKind kind, const Tensor& x, const OpAttrs& attrs, const Tensor& view) {
  Recorder* r = active_recorder();
  if (!r) return std::nullopt;
  return r->record(kind, {x}, attrs, view);
}

Shape broadcast_shapes(const char* op, const Tensor& a, const Tensor& b) {
  const size_t nd = std::max(a.shape().size(), b.shape().size());
  Shape out(nd);
  for (size_t i = 0; i < nd; ++i) {
    const int64_t da = i < nd - a.shape().size() ? 1 : a.shape()[i - (nd - a.shape().size())];
    const int64_t db = i < nd - b.shape().size() ? 1 : b.shape()[i - (nd - b.shape().size())];
    if (da != db && da != 1 && db != 1)
      fail(op, "shapes " + a.describe() + " and " + b.describe() + " do not broadcast");
    out[i] = da == 1 ? db : da;
  }
  return out;
}

Tensor binary(const char* op, OpKind op_kind, cpu::BinaryOpF32 kind, const Tensor& a, const Tensor& b) {
  require_f32(op, "a", a);
  require_f32(op, "b", b);
  const Shape shape = broadcast_shapes(op, a, b);
  if (auto t = traced(op_kind, {a, b}, {}, shape)) return *t;
  if (channels_last_target(shape)) {
    // Into a channels-last buffer: the same loops over NHWC-ordered views, in which y is contiguous.
    Tensor y = make_channels_last_output(shape);
    cpu::binary_f32(kind, a.expand(shape).permute(kNchwToNhwc), b.expand(shape).permute(kNchwToNhwc),
                    y.permute(kNchwToNhwc));
    return y;
  }
  Tensor y = make_output(shape);
  cpu::binary_f32(kind, a.expand(shape), b.expand(shape), y);
  return y;
}

Tensor unary(const char* op, OpKind op_kind, cpu::UnaryOpF32 kind, const Tensor& x, float a = 0.0f, float b = 0.0f) {
  require_f32(op, "input", x);
  OpAttrs attrs;
  attrs.scale = a;
  attrs.lo = a;
  attrs.hi = b;
  if (auto t = traced(op_kind, {x}, attrs, x.shape())) return *t;
  const Tensor xc = x.contiguous();
  Tensor y = make_output(x.shape());
  cpu::unary_f32(kind, xc.data<float>(), y.data<float>(), y.numel(), a, b);
  return y;
}

}  // namespace

// ---- Runtime ----

void set_num_threads(int n) { omp_set_num_threads(n > 0 ? n : omp_get_num_procs()); }
int num_threads() { return omp_get_max_threads(); }
uint64_t flop_count() { return g_flops.load(std::memory_order_relaxed); }
void reset_flop_count() { g_flops.store(0, std::memory_order_relaxed); }
void add_flop_count(double flops) { add_flops(flops); }

// ---- Matrix products ----

Tensor conv2d(const Tensor& x, const Tensor& w, const Tensor& bias, const Conv2dParams& p) {
  constexpr const char* op = "conv2d";
  require_f32(op, "input", x);
  require_f32(op, "weight", w);
  require_rank(op, "input", x, 4);
  require_rank(op, "weight", w, 4);
  if (p.groups < 1) fail(op, "groups must be >= 1, got " + std::to_string(p.groups));
  if (p.stride_h < 1 || p.stride_w < 1 || p.dilation_h < 1 || p.dilation_w < 1)
    fail(op, "stride and dilation must be >= 1");
  if (p.pad_top < 0 || p.pad_left < 0 || p.pad_bottom < 0 || p.pad_right < 0) fail(op, "padding must be >= 0");
  if (p.upsample != 1) {
    if (p.upsample != 2) fail(op, "the input's upsampling factor must be 1 or 2, got " + std::to_string(p.upsample));
    Conv2dParams q = p;
    q.upsample = 1;
    return conv2d(upsample_nearest(x, 2 * x.size(2), 2 * x.size(3)), w, bias, q);
  }
  const int64_t n = x.size(0), cin = x.size(1), h = x.size(2), wd = x.size(3);
  const int64_t cout = w.size(0), kh = w.size(2), kw = w.size(3);
  if (cin != w.size(1) * p.groups) {
    std::string msg = "input " + x.describe() + " has " + std::to_string(cin) + " channels but weight " + w.describe() +
                      " expects " + std::to_string(w.size(1) * p.groups);
    if (p.groups > 1) msg += " (" + std::to_string(p.groups) + " groups)";
    fail(op, msg);
  }
  if (cin == 0 || kh == 0 || kw == 0) fail(op, "empty weight " + w.describe());
  if (cout % p.groups != 0)
    fail(op, "weight " + w.describe() + " has " + std::to_string(cout) + " output channels, not divisible by " +
                 std::to_string(p.groups) + " groups");
  require_vector_or_undefined(op, "bias", bias, cout, w);
  const int64_t span_h = h + p.pad_top + p.pad_bottom - p.dilation_h * (kh - 1) - 1;
  const int64_t span_w = wd + p.pad_left + p.pad_right - p.dilation_w * (kw - 1) - 1;
  if (span_h < 0 || span_w < 0)
    fail(op, "kernel of weight " + w.describe() + " (dilated) is larger than the padded input " + x.describe());
  const int64_t ho = span_h / p.stride_h + 1, wo = span_w / p.stride_w + 1;
  OpAttrs attrs;
  attrs.conv = p;
  if (auto t = traced(OpKind::kConv2d, {x, w, bias}, attrs, {n, cout, ho, wo})) return *t;
  Tensor y = make_output({n, cout, ho, wo});
  if (y.numel() == 0) return y;
  add_flops(2.0 * n * cout * ho * wo * (cin / p.groups) * kh * kw);
  cpu::conv2d_f32_dnnl(x.contiguous(), w.contiguous(), bias.defined() ? bias.contiguous() : bias, p, y);
  return y;
}

Tensor linear(const Tensor& x, const Tensor& w, const Tensor& bias) {
  constexpr const char* op = "linear";
  require_f32(op, "input", x);
  require_f32(op, "weight", w);
  require_min_rank(op, "input", x, 1);
  require_rank(op, "weight", w, 2);
  const int64_t k = x.size(-1), n = w.size(0);
  if (w.size(1) != k)
    fail(op, "input " + x.describe() + " has " + std::to_string(k) + " features but weight " + w.describe() +
                 " expects " + std::to_string(w.size(1)));
  require_vector_or_undefined(op, "bias", bias, n, w);
  Shape out_shape = x.shape();
  out_shape.back() = n;
  if (auto t = traced(OpKind::kLinear, {x, w, bias}, {}, out_shape)) return *t;
  Tensor y = make_output(out_shape);
  const int64_t m = k > 0 ? x.numel() / k : shape_numel(Shape(x.shape().begin(), x.shape().end() - 1));
  if (y.numel() == 0) return y;
  if (k == 0) {  // empty sum: bias or zeros
    float* py = y.data<float>();
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) py[i * n + j] = bias.defined() ? bias.data<float>()[j] : 0.0f;
    return y;
  }
  add_flops(2.0 * m * n * k);
  // x as [1, M, K]: one matrix if its leading dims merge (any view of contiguous rows does).
  Tensor xs = x;
  auto rows = merged_dims(xs, 0, x.ndim() - 1);
  if (!rows) {
    xs = x.contiguous();
    rows = merged_dims(xs, 0, x.ndim() - 1);
  }
  const Tensor a =
      Tensor::from_storage(xs.storage(), xs.byte_offset(), {1, m, k}, {m * k, rows->second, xs.stride(-1)}, DType::F32);
  const Tensor b = w.transpose(0, 1).unsqueeze(0);  // [1, K, N], strides (.., 1, K): no copy
  cpu::matmul_f32_dnnl(a, b, bias.defined() ? bias.contiguous() : bias, y.view({1, m, n}));
  return y;
}

Tensor matmul(const Tensor& a, const Tensor& b) {
  constexpr const char* op = "matmul";
  require_f32(op, "a", a);
  require_f32(op, "b", b);
  require_min_rank(op, "a", a, 2);
  require_min_rank(op, "b", b, 2);
  const int64_t m = a.size(-2), k = a.size(-1), n = b.size(-1);
  if (b.size(-2) != k)
    fail(op, "a " + a.describe() + " has " + std::to_string(k) + " columns but b " + b.describe() + " has " +
                 std::to_string(b.size(-2)) + " rows");
  const Shape batch_a(a.shape().begin(), a.shape().end() - 2);
  if (b.ndim() > 2 && Shape(b.shape().begin(), b.shape().end() - 2) != batch_a)
    fail(op, "batch dims of a " + a.describe() + " and b " + b.describe() + " differ (b may also be 2-D)");
  Shape out_shape = batch_a;
  out_shape.push_back(m);
  out_shape.push_back(n);
  if (auto t = traced(OpKind::kMatmul, {a, b}, {}, out_shape)) return *t;
  Tensor y = make_output(out_shape);
  if (y.numel() == 0) return y;
  if (k == 0) {
    std::fill_n(y.data<float>(), y.numel(), 0.0f);
    return y;
  }
  const int64_t batch = shape_numel(batch_a);
  add_flops(2.0 * batch * m * n * k);
  const Tensor b3 = b.ndim() == 2 ? b.unsqueeze(0) : as_batched_matrices(b);
  if (b.ndim() == 2) {
    // Shared b: fold the batch into the rows when a's rows are evenly spaced, for one larger product.
    if (auto rows = merged_dims(a, 0, a.ndim() - 1)) {
      const Tensor a3 = Tensor::from_storage(a.storage(), a.byte_offset(), {1, batch * m, k},
                                             {batch * m * k, rows->second, a.stride(-1)}, DType::F32);
      cpu::matmul_f32_dnnl(a3, b3, Tensor(), y.view({1, batch * m, n}));
      return y;
    }
  }
  cpu::matmul_f32_dnnl(as_batched_matrices(a), b3, Tensor(), y.view({batch, m, n}));
  return y;
}

// ---- Attention ----

Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, int heads, float scale) {
  constexpr const char* op = "attention";
  require_f32(op, "q", q);
  require_f32(op, "k", k);
  require_f32(op, "v", v);
  require_rank(op, "q", q, 3);
  require_rank(op, "k", k, 3);
  require_rank(op, "v", v, 3);
  const std::string shapes = "q " + q.describe() + ", k " + k.describe() + ", v " + v.describe();
  if (heads < 1) fail(op, "heads must be >= 1, got " + std::to_string(heads));
  if (k.size(0) != q.size(0) || v.size(0) != q.size(0)) fail(op, "batch sizes differ: " + shapes);
  if (v.size(1) != k.size(1)) fail(op, "k and v have different lengths: " + shapes);
  if (k.size(2) != q.size(2)) fail(op, "q and k have different channels: " + shapes);
  if (q.size(2) % heads != 0 || v.size(2) % heads != 0)
    fail(op, "channels are not divisible by " + std::to_string(heads) + " heads: " + shapes);
  if (k.size(1) == 0 && q.size(1) > 0) fail(op, "no keys: " + shapes);
  const int64_t b = q.size(0), lq = q.size(1), lk = k.size(1);
  OpAttrs attrs;
  attrs.heads = heads;
  attrs.scale = scale;
  if (auto t = traced(OpKind::kAttention, {q, k, v}, attrs, {b, lq, v.size(2)})) return *t;
  Tensor out = make_output({b, lq, v.size(2)});
  if (out.numel() == 0) return out;
  add_flops(2.0 * b * lq * lk * (q.size(2) + v.size(2)));
  // The kernel reads rows with unit stride and hands row strides to sgemm, which wants rows not to overlap.
  auto rows_ok = [](const Tensor& t) { return t.stride(2) == 1 && (t.size(1) <= 1 || t.stride(1) >= t.size(2)); };
  cpu::attention_f32(rows_ok(q) ? q : q.clone(), rows_ok(k) ? k : k.clone(), rows_ok(v) ? v : v.clone(), heads, scale,
                     out);
  return out;
}

// ---- Normalisation ----

namespace {

Tensor group_norm_impl(const char* op, OpKind kind, const Tensor& x, int groups, const Tensor& gamma,
                       const Tensor& beta, float eps) {
  // bf16 only over channels-last memory (graph mode: a bf16 convolution's output).
  if (!(x.dtype() == DType::BF16 && is_channels_last(x))) require_f32(op, "input", x);
  require_min_rank(op, "input", x, 2);
  const int64_t n = x.size(0), c = x.size(1);
  if (groups < 1 || c % groups != 0)
    fail(op, "input " + x.describe() + " has " + std::to_string(c) + " channels, not divisible by " +
                 std::to_string(groups) + " groups");
  require_vector_or_undefined(op, "gamma", gamma, c, x);
  require_vector_or_undefined(op, "beta", beta, c, x);
  OpAttrs attrs;
  attrs.groups = groups;
  attrs.eps = eps;
  if (auto t = traced(kind, {x, gamma, beta}, attrs, x.shape())) return *t;
  const Tensor g = gamma.defined() ? gamma.contiguous() : gamma, b = beta.defined() ? beta.contiguous() : beta;
  if (x.dtype() == DType::BF16) {
    std::optional<Tensor> yb = take_bf16_target(x.shape(), x.strides());
    const Tensor y = yb ? *yb : make_channels_last_output(x.shape());
    cpu::group_norm_nhwc_bf16(x.data_u16(), data_or_null(g), data_or_null(b), yb ? nullptr : y.data<float>(),
                              yb ? y.data_u16() : nullptr, n, c, x.size(2) * x.size(3), groups, eps,
                              kind == OpKind::kGroupNormSilu);
    return y;
  }
  if (auto y = is_channels_last(x) ? take_bf16_target(x.shape(), x.strides()) : std::nullopt) {
    cpu::group_norm_nhwc_f32_to_bf16(x.data<float>(), data_or_null(g), data_or_null(b), y->data_u16(), n, c,
                                     x.size(2) * x.size(3), groups, eps, kind == OpKind::kGroupNormSilu);
    return *y;
  }
  if (is_channels_last(x)) {
    // Channels-last in, channels-last out (graph mode's layout): no transposes.
    Tensor y = make_channels_last_output(x.shape());
    cpu::group_norm_nhwc_f32(x.data<float>(), data_or_null(g), data_or_null(b), y.data<float>(), n, c,
                             x.size(2) * x.size(3), groups, eps, kind == OpKind::kGroupNormSilu);
    return y;
  }
  const Tensor xc = x.contiguous();
  Tensor y = make_output(x.shape());
  const int64_t spatial = n * c > 0 ? x.numel() / (n * c) : 0;
  cpu::group_norm_f32(xc.data<float>(), data_or_null(g), data_or_null(b), y.data<float>(), n, c, spatial, groups, eps,
                      kind == OpKind::kGroupNormSilu);
  return y;
}

}  // namespace

Tensor group_norm(const Tensor& x, int groups, const Tensor& gamma, const Tensor& beta, float eps) {
  return group_norm_impl("group_norm", OpKind::kGroupNorm, x, groups, gamma, beta, eps);
}

Tensor group_norm_silu(const Tensor& x, int groups, const Tensor& gamma, const Tensor& beta, float eps) {
  return group_norm_impl("group_norm_silu", OpKind::kGroupNormSilu, x, groups, gamma, beta, eps);
}

Tensor layer_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, float eps) {
  constexpr const char* op = "layer_norm";
  if (x.dtype() == DType::BF16) {
    // bf16 in, bf16 out (graph mode: the transformer's residual stream, graph/passes/bf16_inputs.cpp).
    const int64_t c = x.ndim() > 0 ? x.size(-1) : 0;
    require_vector_or_undefined(op, "gamma", gamma, c, x);
    require_vector_or_undefined(op, "beta", beta, c, x);
    auto y = x.is_contiguous() ? take_bf16_target(x.shape(), contiguous_strides(x.shape())) : std::nullopt;
    if (!y) fail(op, "a bf16 input " + x.describe() + " needs a contiguous bf16 output planned for it (graph mode)");
    const Tensor g = gamma.defined() ? gamma.contiguous() : gamma, bt = beta.defined() ? beta.contiguous() : beta;
    cpu::layer_norm_bf16_to_bf16(x.data_u16(), data_or_null(g), data_or_null(bt), y->data_u16(),
                                 c > 0 ? x.numel() / c : 0, c, eps);
    return *y;
  }
  require_f32(op, "input", x);
  require_min_rank(op, "input", x, 1);
  const int64_t c = x.size(-1);
  require_vector_or_undefined(op, "gamma", gamma, c, x);
  require_vector_or_undefined(op, "beta", beta, c, x);
  OpAttrs attrs;
  attrs.eps = eps;
  if (auto t = traced(OpKind::kLayerNorm, {x, gamma, beta}, attrs, x.shape())) return *t;
  const Tensor xc = x.contiguous();
  const Tensor g = gamma.defined() ? gamma.contiguous() : gamma;
  const Tensor bt = beta.defined() ? beta.contiguous() : beta;
  const int64_t rows = c > 0 ? x.numel() / c : 0;
  if (auto y = take_bf16_target(x.shape(), contiguous_strides(x.shape()))) {
    cpu::layer_norm_f32_to_bf16(xc.data<float>(), data_or_null(g), data_or_null(bt), y->data_u16(), rows, c, eps);
    return *y;
  }
  Tensor y = make_output(x.shape());
  cpu::layer_norm_f32(xc.data<float>(), data_or_null(g), data_or_null(bt), y.data<float>(), rows, c, eps);
  return y;
}

Tensor softmax(const Tensor& x) {
  constexpr const char* op = "softmax";
  require_f32(op, "input", x);
  require_min_rank(op, "input", x, 1);
  if (auto t = traced(OpKind::kSoftmax, {x}, {}, x.shape())) return *t;
  const Tensor xc = x.contiguous();
  Tensor y = make_output(x.shape());
  const int64_t c = x.size(-1);
  cpu::softmax_f32(xc.data<float>(), y.data<float>(), c > 0 ? x.numel() / c : 0, c);
  return y;
}

// ---- Element-wise ----

Tensor silu(const Tensor& x) { return unary("silu", OpKind::kSilu, cpu::UnaryOpF32::kSilu, x); }
Tensor gelu(const Tensor& x) { return unary("gelu", OpKind::kGelu, cpu::UnaryOpF32::kGelu, x); }
Tensor exp(const Tensor& x) { return unary("exp", OpKind::kExp, cpu::UnaryOpF32::kExp, x); }
Tensor scale(const Tensor& x, float s) { return unary("scale", OpKind::kScale, cpu::UnaryOpF32::kScale, x, s); }
Tensor add_scalar(const Tensor& x, float s) {
  return unary("add_scalar", OpKind::kAddScalar, cpu::UnaryOpF32::kAddScalar, x, s);
}
Tensor clamp(const Tensor& x, float lo, float hi) {
  return unary("clamp", OpKind::kClamp, cpu::UnaryOpF32::kClamp, x, lo, hi);
}

Tensor geglu(const Tensor& x) {
  constexpr const char* op = "geglu";
  require_f32(op, "input", x);
  require_min_rank(op, "input", x, 1);
  const int64_t c = x.size(-1);
  if (c % 2 != 0) fail(op, "input " + x.describe() + " has an odd last dim");
  Shape out_shape = x.shape();
  out_shape.back() = c / 2;
  if (auto t = traced(OpKind::kGeglu, {x}, {}, out_shape)) return *t;
  const Tensor xc = x.contiguous();
  Tensor y = make_output(out_shape);
  if (y.numel() > 0) cpu::geglu_f32(xc.data<float>(), y.data<float>(), x.numel() / c, c / 2);
  return y;
}

Tensor add(const Tensor& a, const Tensor& b) { return binary("add", OpKind::kAdd, cpu::BinaryOpF32::kAdd, a, b); }
Tensor sub(const Tensor& a, const Tensor& b) { return binary("sub", OpKind::kSub, cpu::BinaryOpF32::kSub, a, b); }
Tensor mul(const Tensor& a, const Tensor& b) { return binary("mul", OpKind::kMul, cpu::BinaryOpF32::kMul, a, b); }

Tensor cast(const Tensor& x, DType dtype) {
  require_defined("cast", "input", x);
  OpAttrs attrs;
  attrs.dtype = dtype;
  if (auto t = traced(OpKind::kCast, {x}, attrs, x.shape(), dtype)) return *t;
  return x.dtype() == dtype ? x.contiguous() : x.to(dtype);
}

// ---- Shape ----

Tensor concat(const std::vector<Tensor>& xs, int dim) {
  constexpr const char* op = "concat";
  if (xs.empty()) fail(op, "no inputs");
  for (size_t i = 0; i < xs.size(); ++i) require_defined(op, ("input " + std::to_string(i)).c_str(), xs[i]);
  const Tensor& x0 = xs[0];
  if (x0.ndim() == 0) fail(op, "cannot concatenate scalars " + x0.describe());
  const int d = x0.norm_dim(dim);
  Shape out_shape = x0.shape();
  out_shape[d] = 0;
  std::vector<Tensor> parts;
  parts.reserve(xs.size());
  for (size_t i = 0; i < xs.size(); ++i) {
    const Tensor& x = xs[i];
    bool match = x.dtype() == x0.dtype() && x.ndim() == x0.ndim();
    for (int e = 0; match && e < x.ndim(); ++e) match = e == d || x.size(e) == x0.size(e);
    if (!match)
      fail(op, "input " + std::to_string(i) + " " + x.describe() + " does not match input 0 " + x0.describe() +
                   " outside dim " + std::to_string(d));
    out_shape[d] += x.size(d);
  }
  OpAttrs attrs;
  attrs.dim = d;
  if (auto t = traced(OpKind::kConcat, xs, attrs, out_shape, x0.dtype())) return *t;
  if (d == 1 && x0.dtype() == DType::F32 && out_shape.size() == 4) {
    if (auto y = take_bf16_target(out_shape, layout_strides(out_shape, Layout::kNHWC))) {
      // Into a channels-last bf16 buffer (graph mode: graph/passes/bf16_inputs.cpp), rounded.
      for (const Tensor& x : xs) parts.push_back(x.permute(kNchwToNhwc).contiguous());
      if (y->numel() > 0) cpu::concat_contiguous(parts, 3, y->permute(kNchwToNhwc));
      return *y;
    }
  }
  if (d == 1 && x0.dtype() == DType::F32 && channels_last_target(out_shape)) {
    // Channels into a channels-last buffer: rows of pixels, each input's channels side by side.
    Tensor y = make_channels_last_output(out_shape);
    for (const Tensor& x : xs) parts.push_back(x.permute(kNchwToNhwc).contiguous());
    if (y.numel() > 0) cpu::concat_contiguous(parts, 3, y.permute(kNchwToNhwc));
    return y;
  }
  for (const Tensor& x : xs) parts.push_back(x.contiguous());
  Tensor y = make_output(out_shape, x0.dtype());
  if (y.numel() > 0) cpu::concat_contiguous(parts, d, y);
  return y;
}

std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes, int dim) {
  constexpr const char* op = "split";
  require_defined(op, "input", x);
  const int d = x.norm_dim(dim);
  int64_t total = 0;
  std::string list;
  for (int64_t s : sizes) {
    if (s < 0) fail(op, "negative size " + std::to_string(s));
    total += s;
    list += (list.empty() ? "" : ", ") + std::to_string(s);
  }
  if (total != x.size(d))
    fail(op, "sizes [" + list + "] add up to " + std::to_string(total) + " but dim " + std::to_string(d) + " of " +
                 x.describe() + " is " + std::to_string(x.size(d)));
  std::vector<Tensor> out;
  int64_t at = 0;
  for (int64_t s : sizes) {
    out.push_back(slice(x, d, at, at + s));
    at += s;
  }
  return out;
}

// torch.chunk: pieces of ceil(size / n), the last one smaller; fewer than n pieces if size < n.
std::vector<Tensor> chunk(const Tensor& x, int n, int dim) {
  constexpr const char* op = "chunk";
  require_defined(op, "input", x);
  if (n < 1) fail(op, "number of chunks must be >= 1, got " + std::to_string(n));
  const int d = x.norm_dim(dim);
  const int64_t size = x.size(d), step = std::max<int64_t>((size + n - 1) / n, 1);
  std::vector<Tensor> out;
  for (int64_t at = 0; at < size; at += step) out.push_back(slice(x, d, at, std::min(at + step, size)));
  if (out.empty()) out.push_back(x);  // an empty dim gives one empty chunk, as torch
  return out;
}

Tensor upsample_nearest(const Tensor& x, int64_t out_h, int64_t out_w) {
  constexpr const char* op = "upsample_nearest";
  // bf16 only channels-last into a planned bf16 output (graph mode: the VAE's spatial residual stream).
  if (!(x.dtype() == DType::BF16 && is_channels_last(x))) require_f32(op, "input", x);
  require_rank(op, "input", x, 4);
  if (out_h < 1 || out_w < 1)
    fail(op, "output size " + std::to_string(out_h) + "x" + std::to_string(out_w) + " for input " + x.describe() +
                 " must be positive");
  if (x.size(2) == 0 || x.size(3) == 0) fail(op, "empty input " + x.describe());
  OpAttrs attrs;
  attrs.out_h = out_h;
  attrs.out_w = out_w;
  if (auto t = traced(OpKind::kUpsampleNearest, {x}, attrs, {x.size(0), x.size(1), out_h, out_w})) return *t;
  if (is_channels_last(x)) {
    const Shape ys = {x.size(0), x.size(1), out_h, out_w};
    if (auto y = take_bf16_target(ys, layout_strides(ys, Layout::kNHWC))) {
      cpu::upsample_nearest_nhwc_to_bf16(x, *y);
      return *y;
    }
    if (x.dtype() == DType::BF16)
      fail(op, "a bf16 input " + x.describe() + " needs a channels-last bf16 output planned for it (graph mode)");
    Tensor y = make_channels_last_output(ys);
    if (y.numel() > 0) cpu::upsample_nearest_nhwc_f32(x, y);
    return y;
  }
  const Tensor xc = x.contiguous();
  Tensor y = make_output({x.size(0), x.size(1), out_h, out_w});
  if (y.numel() > 0) cpu::upsample_nearest_f32(xc, y);
  return y;
}

Tensor embedding(const Tensor& table, const Tensor& ids) {
  constexpr const char* op = "embedding";
  require_f32(op, "table", table);
  require_rank(op, "table", table, 2);
  require_defined(op, "ids", ids);
  if (ids.dtype() != DType::I64 && ids.dtype() != DType::I32) fail(op, "ids must be i64 or i32, got " + ids.describe());
  const int64_t rows = table.size(0), dim = table.size(1), n = ids.numel();
  Shape out_shape = ids.shape();
  out_shape.push_back(dim);
  if (auto t = traced(OpKind::kEmbedding, {table, ids}, {}, out_shape)) return *t;
  const Tensor tc = table.contiguous(), ic = ids.contiguous();
  Tensor y = make_output(out_shape);
  const float* src = tc.data<float>();
  float* dst = y.data<float>();
  for (int64_t i = 0; i < n; ++i) {
    const int64_t id = ic.dtype() == DType::I64 ? ic.data<int64_t>()[i] : ic.data<int32_t>()[i];
    if (id < 0 || id >= rows) fail(op, "id " + std::to_string(id) + " is outside the table " + table.describe());
    std::copy_n(src + id * dim, dim, dst + i * dim);
  }
  return y;
}

Tensor timestep_embedding(const Tensor& t, int dim, bool flip_sin_to_cos, float freq_shift, float scale,
                          float max_period) {
  constexpr const char* op = "timestep_embedding";
  require_defined(op, "timesteps", t);
  require_rank(op, "timesteps", t, 1);
  if (dim < 1) fail(op, "embedding dim must be >= 1, got " + std::to_string(dim));
  OpAttrs attrs;
  attrs.dim = dim;
  attrs.flip_sin_to_cos = flip_sin_to_cos;
  attrs.freq_shift = freq_shift;
  attrs.scale = scale;
  attrs.max_period = max_period;
  if (auto traced_out = traced(OpKind::kTimestepEmbedding, {t}, attrs, {t.size(0), dim})) return *traced_out;
  std::vector<float> tf(static_cast<size_t>(t.size(0)));
  for (int64_t i = 0; i < t.size(0); ++i) tf[i] = static_cast<float>(t.item(i));  // torch: timesteps.float()
  Tensor y = make_output({t.size(0), dim});
  cpu::timestep_embedding_f32(tf, dim, flip_sin_to_cos, freq_shift, scale, max_period, y.data<float>());
  return y;
}

Tensor reshape(const Tensor& x, const Shape& shape) {
  require_defined("reshape", "input", x);
  OpAttrs attrs;
  attrs.shape = shape;
  if (active_recorder() && x.is_meta()) {
    // A view when the input is contiguous; else (a copy) a fresh contiguous output.
    const Tensor out = x.is_contiguous() ? x.view(shape) : meta_tensor(x.resolve_shape(shape), x.dtype());
    return *traced_view(OpKind::kReshape, x, attrs, out);
  }
  return x.reshape(shape);
}
Tensor permute(const Tensor& x, const std::vector<int>& dims) {
  require_defined("permute", "input", x);
  OpAttrs attrs;
  attrs.dims = dims;
  if (active_recorder() && x.is_meta()) return *traced_view(OpKind::kPermute, x, attrs, x.permute(dims));
  return x.permute(dims);
}
Tensor transpose(const Tensor& x, int a, int b) {
  require_defined("transpose", "input", x);
  std::vector<int> dims(x.ndim());
  for (int i = 0; i < x.ndim(); ++i) dims[i] = i;
  std::swap(dims[x.norm_dim(a)], dims[x.norm_dim(b)]);
  return permute(x, dims);
}
Tensor slice(const Tensor& x, int dim, int64_t start, int64_t end) {
  require_defined("slice", "input", x);
  const Tensor view = x.slice(dim, start, end);
  OpAttrs attrs;
  attrs.dim = x.norm_dim(dim);
  attrs.start = start;
  attrs.end = end;
  if (active_recorder() && x.is_meta()) return *traced_view(OpKind::kSlice, x, attrs, view);
  return view;
}
Tensor contiguous(const Tensor& x) {
  require_defined("contiguous", "input", x);
  if (x.is_contiguous()) return x;
  if (active_recorder() && x.is_meta()) return *traced(OpKind::kContiguous, {x}, {}, x.shape(), x.dtype());
  return x.contiguous();
}

}  // namespace taiyi::ops
