// Prepared ops: a matrix-product op bound, at graph-compile time, to its input
// shape and its constant weights. The oneDNN primitive is created once and the
// weights are reordered once into the layout that primitive prefers (blocked for
// the direct convolution kernels), instead of on every call as in eager mode.
//
// run() reads its input x (inputs[0]; contiguous NCHW / row-major, or the layout
// it was prepared for) and writes the output, the same values eager mode computes.
// With a fused epilogue (Epilogue::residual), inputs[1] is a residual of the
// output's shape and memory order: out = (op(x) + residual) * scale; `out` may be
// the residual's own memory. `scratch` is caller-owned memory of at
// least scratch_bytes(), shared by all prepared ops of a graph (they run one at
// a time), so no call allocates.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "taiyi/ops/ops.h"

namespace taiyi::ops {

// The per-channel moments of a channels-last bf16 activation [n, c, h, w], summed by the kernel
// that writes it, for the GroupNorm prologue of the kernel that reads it next, which then needs no
// pass of its own over the activation for its statistics (graph/passes/link_norm_moments.cpp; at
// [1, 128, 512, 512] that pass reads 64 MiB). Per sample s and channel ch: d1 = sum of (x - k),
// d2 = sum of (x - k)^2 over the h w pixels, about a shift k per channel (the producer's bias).
// `ready`: the producer has written them in this run and the reader has not yet taken them.
struct ChannelMoments {
  int64_t n = 0, c = 0, pixels = 0;
  std::vector<float> shift;    // [c]
  std::vector<double> d1, d2;  // [n][c]
  const void* data = nullptr;  // the activation they are of: the reader checks that it reads this
  bool ready = false;
  // Set from `threads` threads' partial sums parts [thread][n][d1, d2][c] (a writer's run).
  void fill(int64_t n_, int64_t c_, int64_t pixels_, const float* k, const std::vector<double>& parts, int64_t threads,
            const void* data_) {
    n = n_, c = c_, pixels = pixels_;
    shift.assign(k, k + c);
    d1.assign(static_cast<size_t>(n * c), 0.0);
    d2.assign(static_cast<size_t>(n * c), 0.0);
    for (int64_t t = 0; t < threads; ++t)
      for (int64_t s = 0; s < n; ++s) {
        const double* p = parts.data() + (t * n + s) * 2 * c;
        for (int64_t ch = 0; ch < c; ++ch) {
          d1[static_cast<size_t>(s * c + ch)] += p[ch];
          d2[static_cast<size_t>(s * c + ch)] += p[c + ch];
        }
      }
    data = data_;
    ready = true;
  }
};

class PreparedOp {
 public:
  virtual ~PreparedOp() = default;
  virtual void run(const std::vector<Tensor>& inputs, const Tensor& out, std::byte* scratch) const = 0;
  virtual size_t scratch_bytes() const = 0;
  virtual size_t packed_weight_bytes() const = 0;
  virtual std::string describe() const = 0;  // e.g. "conv2d jit:avx2 nChw8c"
  virtual double flops() const = 0;          // per run, for flop_count()
  // ChannelMoments between two prepared ops (link_norm_moments): whether this op, from now on,
  // sums its output's moments into m on every run (write) or takes its GroupNorm prologue's
  // statistics from m where m is ready (read; computing them itself where not). A null m unlinks.
  virtual bool write_moments(const std::shared_ptr<ChannelMoments>&) const { return false; }
  virtual bool read_moments(const std::shared_ptr<ChannelMoments>&) const { return false; }
  // A bf16 output in 32-row blocks of AMX A tiles (write_tiles) for a linear that reads its input
  // so (read_tiles), the pair linked by link_linear_tiles; whether this op can, and from now on does
  // (false: back to rows).
  virtual bool write_tiles(bool) const { return false; }
  virtual bool read_tiles(bool) const { return false; }
};

// Compute precision of a prepared op: f32, or bf16 products with f32 accumulation and
// f32 inputs/outputs (inputs are rounded to bf16 on the way in, weights once).
// bf16 needs avx512_bf16 or AMX; bf16_supported() says whether oneDNN can run it here.
bool bf16_supported();

// Memory order of a prepared convolution's input or output, both dense: NCHW, or
// channels-last (NHWC memory for an NCHW-shaped tensor: strides (HWC, 1, WC, C)).
enum class Layout { kNCHW, kNHWC };
Strides layout_strides(const Shape& nchw_shape, Layout layout);

// What a prepared conv2d or linear does after the product and bias, in the same pass
// (oneDNN post-ops): add a residual (inputs[1] of run()) and multiply by a scale.
struct Epilogue {
  bool residual = false;
  float scale = 1.0f;
  // Linear only, instead of a residual: after the bias, gelu (exact, erf), or a product with
  // inputs[1] (of the output's shape, row-major): out = (x w^T + b) * inputs[1].
  PostOp post_op = PostOp::kNone;
  // The multiply post-op's factor: f32, or bf16 (with bf16 compute: graph/passes/bf16_gate.cpp).
  DType factor = DType::F32;
  // The residual's dtype: f32, or bf16 for a linear with bf16 compute (graph/passes/bf16_inputs.cpp:
  // the transformer's residual stream) or a convolution that writes bf16 (conv2d_writes_bf16: the
  // VAE's spatial residual stream).
  DType residual_dtype = DType::F32;
  // Convolution only (oneDNN's, conv2d_takes_bias_add), post_op kBiasAdd: inputs[1] of run() holds
  // one f32 value per output channel (any shape of Cout elements), added to the bias per call.
  // Linear only (our AMX kernel, linear_takes_layer_norm), layer_norm_eps > 0: the rows, after the
  // residual and rounded to bf16, then go through a LayerNorm over N (gamma and beta f32 [N] or
  // undefined) into the bf16 output (graph/passes/fuse_linear_layer_norm.cpp).
  float layer_norm_eps = 0;
  Tensor layer_norm_gamma = Tensor(), layer_norm_beta = Tensor();
};

// What a prepared convolution does to its input before the product, as it reads it
// (graph/passes/fuse_group_norm_conv.cpp): x -> silu(group_norm(x, groups, gamma, beta, eps)), the
// statistics per sample, the normalised input never written. Only the AMX Winograd kernel takes one
// (conv2d_takes_group_norm_silu).
struct Prologue {
  int64_t groups = 0;  // 0: none
  float eps = 0;
  Tensor gamma, beta;  // [Cin] f32, or undefined (1 and 0)
};

// conv2d of an x of shape x_shape with constant w (and bias, or undefined).
// src BF16: x is bf16 already (with compute bf16, where conv2d_takes_bf16_input says the kernel
// can read it: oneDNN's, which then needs no conversion pass per call). dst BF16: the output is
// written in bf16, where conv2d_writes_bf16 says so.
std::unique_ptr<PreparedOp> prepare_conv2d(const Shape& x_shape, const Tensor& w, const Tensor& bias,
                                           const Conv2dParams& p, DType compute = DType::F32,
                                           Layout src_layout = Layout::kNCHW, Layout dst_layout = Layout::kNCHW,
                                           const Epilogue& epilogue = {}, DType src = DType::F32,
                                           DType dst = DType::F32, const Prologue& prologue = {});
// Whether the kernel prepare_conv2d picks takes a GroupNorm+SiLU prologue of `groups` groups on an
// input of dtype src: the AMX Winograd kernel, channels-last, on bf16 input (the VAE's, written by
// bf16 convolutions).
// TAIYI_FUSE_NORM_CONV=0 says no (A/B runs).
bool conv2d_takes_group_norm_silu(const Shape& x_shape, const Tensor& w, const Conv2dParams& p, DType compute,
                                  Layout src_layout, Layout dst_layout, const Epilogue& epilogue, DType src,
                                  int64_t groups);
bool conv2d_takes_bf16_input(const Shape& x_shape, const Tensor& w, const Conv2dParams& p, DType compute,
                             Layout src_layout, Layout dst_layout, const Epilogue& epilogue);
// Whether that kernel can write its output in bf16 (dst BF16: rounded to nearest even as oneDNN
// stores it): oneDNN's, channels-last out, with no scale or split by input channels, and a residual
// only in bf16, added before the rounding; the AMX Winograd kernel likewise
// (graph/passes/bf16_inputs.cpp: a ResNet's first convolution, read only by a GroupNorm; a
// ResNet's output in the VAE's spatial residual stream).
// TAIYI_BF16_CONV_OUT=0 says no (A/B runs).
bool conv2d_writes_bf16(const Shape& x_shape, const Tensor& w, const Conv2dParams& p, DType compute, Layout src_layout,
                        Layout dst_layout, const Epilogue& epilogue, DType src);
// Whether a 3x3 convolution of an input upsampled 2x by nearest neighbour (up_shape: the upsampled
// shape, p without upsampling) is better computed from the input itself (Conv2dParams upsample 2:
// four 2x2 convolutions, 2.25x fewer products): with bf16 compute where oneDNN would run the
// 3x3 one (AMX), stride 1, padding 1, even sizes. TAIYI_FUSE_UPSAMPLE=0 says no (A/B runs).
bool conv2d_fuses_upsample(const Shape& up_shape, const Tensor& w, const Conv2dParams& p, DType compute);
// Whether the kernel prepare_conv2d picks takes a per-call bias (Epilogue post_op kBiasAdd): oneDNN's,
// whose bias is an argument of each call. Where it is with NCHW layouts, it is with any.
bool conv2d_takes_bias_add(const Shape& x_shape, const Tensor& w, const Conv2dParams& p, DType compute,
                           Layout src_layout, Layout dst_layout);
// Whether the kernel prepare_conv2d picks is fastest on NHWC activations (oneDNN's, the bf16
// kernels), not on NCHW (the f32 Winograd kernel, whose fast paths read and write NCHW rows of
// tiles and which gathers NHWC element by element: 42 against 30 ms at [2, 320, 64, 64] on the
// Xeon with AMX). graph/passes/channels_last_activations.cpp asks.
bool conv2d_prefers_channels_last(const Shape& x_shape, const Tensor& w, const Conv2dParams& p, DType compute);
// How a prepared op computes in bf16: on the CPU's bf16 instructions through oneDNN, or
// emulated (f32 kernels on operands rounded to bf16; for measuring bf16's error where the CPU has
// no bf16, see TAIYI_BF16_EMULATE in graph/passes/prepack_weights.cpp).
enum class Bf16Arithmetic { kNative, kEmulated };

// ops::attention(q, k, v, heads, scale) for inputs of these shapes (any strides: run() takes
// inputs [q, k, v]), with both matrix products in bf16 (f32 accumulation) and an f32 softmax.
// kNative needs bf16_supported(). Scratch is O(threads x block x Lk), never Lq x Lk per head.
bool prepared_attention_applicable(const Shape& q, const Shape& k, const Shape& v, int heads);
// Whether the native kernel prepare_attention_bf16 picks for this scale can also write its output
// in bf16 (the AMX and AVX512-BF16 kernels write the output tensor's dtype, f32 or bf16).
bool attention_bf16_writes_bf16(float scale);
// Whether that kernel also reads q, k and v in bf16 (the AMX kernel), each with element stride 1 and
// an even head size (head_dim): graph/passes/bf16_inputs.cpp then has the linears before it write bf16.
bool attention_bf16_reads_bf16(float scale, int64_t head_dim, int64_t element_stride);
std::unique_ptr<PreparedOp> prepare_attention_bf16(const Shape& q, const Shape& k, const Shape& v, int heads,
                                                   float scale, Bf16Arithmetic how);

// GEGLU (diffusers': hidden * gelu(gate), [hidden | gate] = x.chunk(2, -1)) of a bf16 x, contiguous,
// of shape x_shape, into a contiguous bf16 or f32 output: inputs [x]. geglu_bf16_supported(): the CPU
// runs bf16 and the kernel (avx512_bf16). geglu_bf16_preferred(): also the GEGLU projection is
// better left whole (bf16 output, this kernel after it) than split into two linears with oneDNN
// gelu and multiply post-ops (graph/passes/fuse_linear_gelu.cpp): on AMX, where the post-ops cost
// about as much as the products. TAIYI_GEGLU_KERNEL=0 says no (A/B runs).
bool geglu_bf16_supported();
bool geglu_bf16_preferred();
std::unique_ptr<PreparedOp> prepare_geglu_bf16(const Shape& x_shape);
// The same kernel's exact GELU of a bf16 x (contiguous, any shape) into a bf16 or f32 output of its
// shape; where geglu_bf16_preferred(), the linear before a GELU (BERT's intermediate dense) writes
// bf16 and this kernel follows instead of oneDNN's gelu post-op.
std::unique_ptr<PreparedOp> prepare_gelu_bf16(const Shape& x_shape);
// Whether the bf16 linear of an x of shape x_shape with w and bias computes a GELU after it in its
// own epilogue (our AMX linear, ops/cpu/linear_bf16_amx.cpp, reading and writing bf16): then
// graph/passes/fuse_linear_gelu.cpp fuses BERT's intermediate GELU into the linear rather than
// leaving the GELU kernel above after it. TAIYI_AMX_GELU=0 says no (A/B runs).
bool linear_gelu_in_epilogue_bf16(const Shape& x_shape, const Tensor& w, const Tensor& bias);
// Whether the bf16 linear (bf16 in and out) takes this epilogue, which carries the LayerNorm over its
// rows that follows it (Epilogue::layer_norm_eps > 0; a residual or none): our AMX linear, which
// normalises each thread's rows once it has written them, while they are in its L2.
// TAIYI_FUSE_LINEAR_LN=0 says no (A/B runs).
bool linear_takes_layer_norm_bf16(const Shape& x_shape, const Tensor& w, const Tensor& bias, const Epilogue& epilogue);

// linear of an x of shape x_shape ([..., K], rows contiguous) with constant w [N, K] and bias.
// With compute bf16, x may be bf16 already (src BF16: no rounding pass per call), and the output
// may be written in bf16 (dst BF16: rounded to nearest even as it is stored, after a residual
// is added in f32).
// src_columns: x's [M, K] rows are stored by columns (element (m, k) at k M + m; a [1, M, K]
// transposed view of [1, K, M], as the VAE's attention reads its GroupNorm output); oneDNN reads it
// so (or transposes it as it rounds it to bf16), with no copy first.
std::unique_ptr<PreparedOp> prepare_linear(const Shape& x_shape, const Tensor& w, const Tensor& bias,
                                           DType compute = DType::F32, const Epilogue& epilogue = {},
                                           DType src = DType::F32, DType dst = DType::F32, bool src_columns = false);
// Whether a linear's input of this shape and these strides is stored by columns as prepare_linear's
// src_columns means (and not also row-major).
bool linear_input_by_columns(const Shape& x_shape, const Strides& x_strides);

}  // namespace taiyi::ops
