// Prepared linear (x @ w^T + bias) through oneDNN 2.6's matmul: the primitive is made
// once for the traced input shape and strides (see ops/prepared.h).
//
// f32: the weight [N, K] is handed over as it is, a transposed [K, N] view (on AVX2
// oneDNN's gemm runs that faster than its packed layout). bf16: the weight is
// converted and packed once into the layout oneDNN picks; each call rounds the input
// rows to bf16 in caller scratch; the output and the accumulation stay f32.
// A fused epilogue is a post-op sum of the residual (copied into the output unless it
// is the output's memory; a binary_add of it for a bf16 output) and an eltwise_linear scale; or, instead of the
// residual, a post-op eltwise_gelu_erf or a binary_mul by a second input of the output's shape (f32, or bf16 with bf16
// compute: the GEGLU's gate, graph/passes/bf16_gate.cpp). In bf16, an input
// that is bf16 already goes straight to the matmul, and a bf16 output is rounded as oneDNN stores it
// (graph/passes/bf16_inputs.cpp lays such values out).
#include <dnnl.hpp>
#include <string>
#include <unordered_map>

#include "taiyi/ops/cpu/cpu_kernels.h"
#include "taiyi/ops/cpu/dnnl_context.h"
#include "taiyi/ops/cpu/prepared_kernels.h"
#include "taiyi/ops/prepared.h"

namespace taiyi::ops {

namespace {

using dnnl::memory;
using tag = memory::format_tag;

size_t round_up(size_t n) { return (n + 63) / 64 * 64; }

class PreparedLinear : public PreparedOp {
 public:
  PreparedLinear(const Shape& xs, const Tensor& w, const Tensor& bias, DType compute, const Epilogue& epilogue,
                 DType src, DType dst, bool src_columns)
      : src_columns_(src_columns),
        bf16_(compute == DType::BF16),
        residual_(epilogue.residual),
        post_op_(epilogue.post_op),
        src_bf16_(src == DType::BF16),
        dst_bf16_(dst == DType::BF16),
        factor_dtype_(epilogue.factor) {
    if (post_op_ != PostOp::kNone && residual_)
      throw Error("linear: a fused residual and a gelu or multiply post-op cannot be combined");
    if ((src_bf16_ || dst_bf16_ || factor_dtype_ == DType::BF16) && !bf16_)
      throw Error("linear: a bf16 input, output or factor needs bf16 compute");
    if (factor_dtype_ != DType::F32 && factor_dtype_ != DType::BF16)
      throw Error("linear: the multiply post-op's factor is f32 or bf16");
    if ((src != DType::F32 && !src_bf16_) || (dst != DType::F32 && !dst_bf16_))
      throw Error("linear: inputs and outputs are f32 or bf16");
    const auto f32 = memory::data_type::f32, bf16 = memory::data_type::bf16;
    const dnnl::engine& eng = cpu::dnnl_cpu_engine();
    k_ = xs.back();
    n_ = w.size(0);
    m_ = k_ > 0 ? shape_numel(xs) / k_ : 0;
    user_src_ = memory::desc({m_, k_}, src_bf16_ ? bf16 : f32, src_columns ? tag::ba : tag::ab);
    dst_ = memory::desc({m_, n_}, dst_bf16_ ? bf16 : f32, tag::ab);
    // The binary post-op's second input (inputs[1] of run()): the multiply's factor, or the residual
    // added into a bf16 output or read in bf16 (BERT's bf16 residual stream into its last f32 sum).
    src1_dtype_ = post_op_ == PostOp::kMultiply ? factor_dtype_ : epilogue.residual_dtype;
    if (src1_dtype_ != DType::F32 && src1_dtype_ != DType::BF16)
      throw Error("linear: the residual or factor is f32 or bf16");
    if (src1_dtype_ == DType::BF16 && !bf16_) throw Error("linear: a bf16 residual needs bf16 compute");
    // A residual of the output's dtype is summed into the output it was copied into, or shares
    // memory with (oneDNN's sum post-op, bf16 too: ~5 % of a [8192, 320] x [320, 320] product
    // where the binary post-op takes ~25 %); a residual of the other dtype is a binary post-op's
    // input.
    binary_residual_ = residual_ && (dst_bf16_ != (src1_dtype_ == DType::BF16));
    src1_ = memory::desc({m_, n_}, src1_dtype_ == DType::BF16 ? bf16 : f32, tag::ab);
    if (bias.defined()) {
      bias_md_ = memory::desc({1, n_}, f32, tag::ab);
      bias_ = bias.contiguous();
    }
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    if (epilogue.residual || epilogue.scale != 1.0f || post_op_ != PostOp::kNone) {
      dnnl::post_ops ops;
      // The residual: summed into the output (in f32; a bf16 output rounded once, as it is
      // stored), or added as a binary post-op's input.
      if (epilogue.residual && !binary_residual_) ops.append_sum(1.0f);
      if (binary_residual_) ops.append_binary(dnnl::algorithm::binary_add, src1_);
      if (post_op_ == PostOp::kGelu) ops.append_eltwise(1.0f, dnnl::algorithm::eltwise_gelu_erf, 0.0f, 0.0f);
      if (post_op_ == PostOp::kMultiply) ops.append_binary(dnnl::algorithm::binary_mul, src1_);
      if (epilogue.scale != 1.0f) ops.append_eltwise(1.0f, dnnl::algorithm::eltwise_linear, epilogue.scale, 0.0f);
      attr.set_post_ops(ops);
    }
    const memory::desc user_wei({k_, n_}, f32, tag::ba);  // w [N, K] row-major = [K, N] transposed
    w_ = w.contiguous();
    if (bf16_) {
      src_ = memory::desc({m_, k_}, bf16, tag::ab);
      pd_ = dnnl::matmul::primitive_desc(
          dnnl::matmul::desc(src_, memory::desc({k_, n_}, bf16, tag::any), bias_md_, dst_), attr, eng);
      weights_ = memory(pd_.weights_desc(), eng);
      memory user_w = cpu::dnnl_wrap(user_wei, w_.data<float>());
      dnnl::stream& strm = cpu::dnnl_cpu_stream();
      dnnl::reorder(user_w, weights_).execute(strm, user_w, weights_);
      strm.wait();
      w_ = Tensor();                    // the packed copy is all the primitive needs
      if (!src_bf16_ || src_columns) {  // rounded to bf16 (and turned to rows) per call
        to_bf16_ = dnnl::reorder(dnnl::reorder::primitive_desc(eng, user_src_, eng, src_));
        src_bytes_ = round_up(src_.get_size());
      }
    } else {
      src_ = user_src_;
      pd_ = dnnl::matmul::primitive_desc(dnnl::matmul::desc(src_, user_wei, bias_md_, dst_), attr, eng);
      weights_ = cpu::dnnl_wrap(user_wei, w_.data<float>());
    }
    matmul_ = dnnl::matmul(pd_);
    pad_bytes_ = round_up(pd_.scratchpad_desc().get_size());
    describe_ = std::string("linear ") + (bf16_ ? "bf16 " : "f32 ") + pd_.impl_info_str() +
                (src_bf16_ ? " bf16-in" : "") + (dst_bf16_ ? " bf16-out" : "") + (src_columns ? " x^T" : "") +
                (residual_ ? " +residual" : "") + (post_op_ == PostOp::kGelu ? " +gelu" : "") +
                (post_op_ == PostOp::kMultiply ? (factor_dtype_ == DType::BF16 ? " *bf16 input" : " *input") : "");
  }

  void run(const std::vector<Tensor>& in, const Tensor& out, std::byte* scratch) const override {
    const dnnl::engine& eng = cpu::dnnl_cpu_engine();
    dnnl::stream& strm = cpu::dnnl_cpu_stream();
    const Tensor x = src_columns_ ? in[0] : in[0].contiguous();
    if (src_columns_ && !linear_input_by_columns(x.shape(), x.strides()))
      throw Error("linear: prepared for an input stored by columns, given " + x.describe());
    if (!out.is_contiguous()) throw Error("linear: the output " + out.describe() + " is not contiguous");
    if (x.dtype() != (src_bf16_ ? DType::BF16 : DType::F32) || out.dtype() != (dst_bf16_ ? DType::BF16 : DType::F32))
      throw Error("linear: prepared for " + std::string(src_bf16_ ? "bf16" : "f32") + " -> " +
                  (dst_bf16_ ? "bf16" : "f32") + ", given " + x.describe() + " -> " + out.describe());
    memory user_src = cpu::dnnl_wrap(user_src_, x.raw_data());
    const bool round_input = bf16_ && (!src_bf16_ || src_columns_);
    memory src = round_input ? memory(src_, eng, scratch) : user_src;
    if (round_input) to_bf16_.execute(strm, user_src, src);
    if (residual_ && !binary_residual_) cpu::copy_residual_into(in.at(1), out);
    std::unordered_map<int, memory> args = {
        {DNNL_ARG_SRC, src},
        {DNNL_ARG_WEIGHTS, weights_},
        {DNNL_ARG_DST, cpu::dnnl_wrap(dst_, out.raw_data())},
        {DNNL_ARG_SCRATCHPAD, memory(pd_.scratchpad_desc(), eng, scratch + src_bytes_)}};
    if (bias_.defined()) args.insert({DNNL_ARG_BIAS, cpu::dnnl_wrap(bias_md_, bias_.data<float>())});
    Tensor src1;
    if (binary_residual_ || post_op_ == PostOp::kMultiply) {
      src1 = in.at(1).contiguous();
      if (src1.shape() != out.shape() || src1.dtype() != src1_dtype_)
        throw Error(std::string("linear: the ") + (residual_ ? "residual " : "multiply post-op's input ") +
                    src1.describe() + " does not match the output " + out.describe());
      args.insert({DNNL_ARG_ATTR_MULTIPLE_POST_OP(0) | DNNL_ARG_SRC_1, cpu::dnnl_wrap(src1_, src1.raw_data())});
    }
    matmul_.execute(strm, args);
    strm.wait();
  }

  size_t scratch_bytes() const override { return src_bytes_ + pad_bytes_; }
  size_t packed_weight_bytes() const override { return bf16_ ? pd_.weights_desc().get_size() : 0; }
  std::string describe() const override { return describe_; }
  double flops() const override { return 2.0 * m_ * n_ * k_; }

 private:
  bool src_columns_;
  bool bf16_, residual_, binary_residual_ = false;
  PostOp post_op_;
  bool src_bf16_, dst_bf16_;
  DType factor_dtype_;
  int64_t m_ = 0, k_ = 0, n_ = 0;
  DType src1_dtype_ = DType::F32;
  memory::desc user_src_, src_, dst_, src1_, bias_md_;
  dnnl::matmul::primitive_desc pd_;
  dnnl::matmul matmul_;
  dnnl::reorder to_bf16_;
  memory weights_;
  Tensor w_, bias_;
  size_t src_bytes_ = 0, pad_bytes_ = 0;
  std::string describe_;
};

}  // namespace

bool linear_input_by_columns(const Shape& x_shape, const Strides& x_strides) {
  const size_t r = x_shape.size();
  if (r < 2 || x_strides.size() != r) return false;
  int64_t lead = 1;
  for (size_t i = 0; i + 2 < r; ++i) lead *= x_shape[i];
  const int64_t m = x_shape[r - 2], k = x_shape[r - 1];
  return lead == 1 && m > 1 && k > 1 && x_strides[r - 2] == 1 && x_strides[r - 1] == m;
}

std::unique_ptr<PreparedOp> prepare_linear_dnnl(const Shape& x_shape, const Tensor& w, const Tensor& bias,
                                                DType compute, const Epilogue& epilogue, DType src, DType dst,
                                                bool src_columns) {
  if (epilogue.layer_norm_eps > 0)
    throw Error("linear: oneDNN's matmul takes no LayerNorm epilogue (input " + shape_str(x_shape) + ", weight " +
                w.describe() + "): only the AMX linear does (ops::linear_takes_layer_norm_bf16)");
  try {
    return std::make_unique<PreparedLinear>(x_shape, w, bias, compute, epilogue, src, dst, src_columns);
  } catch (const dnnl::error& e) {
    throw Error(std::string("linear: oneDNN could not prepare a matmul (") + e.what() + ") for input " +
                shape_str(x_shape) + ", weight " + w.describe());
  }
}

bool bf16_supported() {
  static const bool supported = [] {
    // Native bf16 only: oneDNN 2.6 also runs bf16 on plain AVX512_CORE by emulating the
    // conversions, slower than f32; that, a CPU with neither AMX nor avx512_bf16, or a cap by
    // ONEDNN_MAX_CPU_ISA below AVX512_CORE_BF16 means the f32 fallback.
    if (dnnl::get_effective_cpu_isa() < dnnl::cpu_isa::avx512_core_bf16) return false;
    try {
      const auto bf16 = memory::data_type::bf16;
      const dnnl::matmul::desc d(memory::desc({64, 64}, bf16, tag::ab), memory::desc({64, 64}, bf16, tag::any),
                                 memory::desc({64, 64}, memory::data_type::f32, tag::ab));
      const dnnl::matmul::primitive_desc pd(d, cpu::dnnl_cpu_engine());
      return std::string(pd.impl_info_str()).rfind("ref", 0) != 0;  // a reference kernel is no bf16 support
    } catch (const dnnl::error&) {
      return false;
    }
  }();
  return supported;
}

}  // namespace taiyi::ops
