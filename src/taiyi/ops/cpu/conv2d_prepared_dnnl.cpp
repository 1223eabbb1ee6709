// Prepared 2-D convolution, f32, through oneDNN 2.6: the primitive and its blocked
// weights are made once (see ops/prepared.h); per call the NCHW input is reordered
// into the primitive's layout in caller scratch, and the result reordered back.
// Scratchpad mode "user" keeps oneDNN from allocating on each call too.
// A fused epilogue (residual add, scale) rides on oneDNN post-ops: the residual is
// copied into the output (unless it already is the output's memory) and summed in by
// the convolution itself when it writes the plain layout, else by the reorder back.
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

std::string format_name(const memory::desc& md) {
  // oneDNN 2.6 has no public tag query; report the plain cases and "blocked" otherwise.
  const memory::dims d = md.dims();
  if (md == memory::desc(d, md.data_type(), tag::nchw)) return "nchw";
  if (md == memory::desc(d, md.data_type(), tag::nhwc)) return "nhwc";
  if (md == memory::desc(d, md.data_type(), tag::nChw8c)) return "nChw8c";
  if (md == memory::desc(d, md.data_type(), tag::nChw16c)) return "nChw16c";
  if (md == memory::desc(d, md.data_type(), tag::nChw32c)) return "nChw32c";
  return "blocked";
}

class PreparedConv2d : public PreparedOp {
 public:
  PreparedConv2d(const Shape& xs, const Tensor& w, const Tensor& bias, const Conv2dParams& p, DType compute,
                 Layout src_layout, Layout dst_layout, const Epilogue& epilogue, DType src)
      : src_layout_(src_layout), epilogue_(epilogue), src_dtype_(src) {
    const auto f32 = memory::data_type::f32;
    const auto cdt = compute == DType::BF16 ? memory::data_type::bf16 : f32;
    const dnnl::engine& eng = cpu::dnnl_cpu_engine();
    const int64_t cout = w.size(0), g = p.groups;
    const int64_t ho = (xs[2] + p.pad_top + p.pad_bottom - p.dilation_h * (w.size(2) - 1) - 1) / p.stride_h + 1;
    const int64_t wo = (xs[3] + p.pad_left + p.pad_right - p.dilation_w * (w.size(3) - 1) - 1) / p.stride_w + 1;
    const memory::dims src_dims = {xs[0], xs[1], xs[2], xs[3]};
    const memory::dims dst_dims = {xs[0], cout, ho, wo};
    const memory::dims wei_dims = g == 1 ? memory::dims{cout, w.size(1), w.size(2), w.size(3)}
                                         : memory::dims{g, cout / g, w.size(1), w.size(2), w.size(3)};
    user_src_ = memory::desc(src_dims, src == DType::BF16 ? memory::data_type::bf16 : f32,
                             src_layout == Layout::kNHWC ? tag::nhwc : tag::nchw);
    user_dst_ = memory::desc(dst_dims, f32, dst_layout == Layout::kNHWC ? tag::nhwc : tag::nchw);
    const memory::desc user_wei(wei_dims, f32, g == 1 ? tag::oihw : tag::goihw);
    if (bias.defined()) bias_md_ = memory::desc({cout}, f32, tag::x);
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    auto conv_desc = [&](const memory::desc& dst) {
      return dnnl::convolution_forward::desc(dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct,
                                             memory::desc(src_dims, cdt, tag::any),
                                             memory::desc(wei_dims, cdt, tag::any), bias_md_, dst,
                                             {p.stride_h, p.stride_w}, {p.dilation_h - 1, p.dilation_w - 1},
                                             {p.pad_top, p.pad_left}, {p.pad_bottom, p.pad_right});
    };
    pd_ = dnnl::convolution_forward::primitive_desc(conv_desc(memory::desc(dst_dims, f32, tag::any)), attr, eng);
    const bool has_epilogue = epilogue.residual || epilogue.scale != 1.0f;
    if (has_epilogue && pd_.dst_desc() == user_dst_) {
      // The convolution writes the output's own layout: the epilogue goes into its post-ops.
      dnnl::post_ops ops;
      if (epilogue.residual) ops.append_sum(1.0f);
      if (epilogue.scale != 1.0f) ops.append_eltwise(1.0f, dnnl::algorithm::eltwise_linear, epilogue.scale, 0.0f);
      attr.set_post_ops(ops);
      pd_ = dnnl::convolution_forward::primitive_desc(conv_desc(user_dst_), attr, eng);
    }
    conv_ = dnnl::convolution_forward(pd_);
    // Weights: reordered once into memory this object owns.
    const Tensor wc = w.contiguous();
    weights_ = memory(pd_.weights_desc(), eng);
    dnnl::stream& strm = cpu::dnnl_cpu_stream();
    memory user_w = cpu::dnnl_wrap(user_wei, wc.data<float>());
    dnnl::reorder(user_w, weights_).execute(strm, user_w, weights_);
    if (bias.defined()) bias_ = bias.contiguous();
    strm.wait();
    // Scratch layout: [src in the primitive's layout][dst in its layout][oneDNN scratchpad].
    src_reorder_ = pd_.src_desc() != user_src_;
    dst_reorder_ = pd_.dst_desc() != user_dst_;
    src_bytes_ = src_reorder_ ? round_up(pd_.src_desc().get_size()) : 0;
    dst_bytes_ = dst_reorder_ ? round_up(pd_.dst_desc().get_size()) : 0;
    pad_bytes_ = round_up(pd_.scratchpad_desc().get_size());
    if (src_reorder_) to_blocked_ = dnnl::reorder(dnnl::reorder::primitive_desc(eng, user_src_, eng, pd_.src_desc()));
    if (dst_reorder_) {
      // The reorder back carries the epilogue: out = scale * conv + scale * out (out holding the residual).
      dnnl::primitive_attr rattr;
      if (epilogue.scale != 1.0f) rattr.set_output_scales(0, {epilogue.scale});
      if (epilogue.residual) {
        dnnl::post_ops ops;
        ops.append_sum(epilogue.scale);
        rattr.set_post_ops(ops);
      }
      to_plain_ = dnnl::reorder(dnnl::reorder::primitive_desc(eng, pd_.dst_desc(), eng, user_dst_, rattr));
    }
    flops_ = 2.0 * xs[0] * cout * ho * wo * (xs[1] / g) * w.size(2) * w.size(3);
    describe_ = std::string("conv2d ") + (compute == DType::BF16 ? "bf16 " : "f32 ") + pd_.impl_info_str() + " " +
                format_name(pd_.src_desc()) + (src == DType::BF16 ? " bf16-in" : "") +
                (epilogue.residual ? " +residual" : "");
  }

  void run(const std::vector<Tensor>& in, const Tensor& out, std::byte* scratch) const override {
    const dnnl::engine& eng = cpu::dnnl_cpu_engine();
    dnnl::stream& strm = cpu::dnnl_cpu_stream();
    // The traced layout: NCHW contiguous, or the channels-last view the layout pass arranged.
    const Tensor x = src_layout_ == Layout::kNCHW ? in[0].contiguous() : in[0];
    if (x.dtype() != src_dtype_)
      throw Error("conv2d: prepared for a " + std::string(dtype_name(src_dtype_)) + " input, given " + x.describe());
    memory user_src = cpu::dnnl_wrap(user_src_, x.raw_data());
    if (epilogue_.residual) cpu::copy_residual_into(in.at(1), out);
    memory user_dst = cpu::dnnl_wrap(user_dst_, out.data<float>());
    memory src = src_reorder_ ? memory(pd_.src_desc(), eng, scratch) : user_src;
    memory dst = dst_reorder_ ? memory(pd_.dst_desc(), eng, scratch + src_bytes_) : user_dst;
    memory pad(pd_.scratchpad_desc(), eng, scratch + src_bytes_ + dst_bytes_);
    if (src_reorder_) to_blocked_.execute(strm, user_src, src);
    std::unordered_map<int, memory> args = {
        {DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, weights_}, {DNNL_ARG_DST, dst}, {DNNL_ARG_SCRATCHPAD, pad}};
    if (bias_.defined()) args.insert({DNNL_ARG_BIAS, cpu::dnnl_wrap(bias_md_, bias_.data<float>())});
    conv_.execute(strm, args);
    if (dst_reorder_) to_plain_.execute(strm, dst, user_dst);
    strm.wait();
  }

  size_t scratch_bytes() const override { return src_bytes_ + dst_bytes_ + pad_bytes_; }
  size_t packed_weight_bytes() const override { return pd_.weights_desc().get_size(); }
  std::string describe() const override { return describe_; }
  double flops() const override { return flops_; }

 private:
  Layout src_layout_;
  Epilogue epilogue_;
  DType src_dtype_;
  memory::desc user_src_, user_dst_, bias_md_;
  dnnl::convolution_forward::primitive_desc pd_;
  dnnl::convolution_forward conv_;
  dnnl::reorder to_blocked_, to_plain_;
  memory weights_;
  Tensor bias_;
  bool src_reorder_ = false, dst_reorder_ = false;
  size_t src_bytes_ = 0, dst_bytes_ = 0, pad_bytes_ = 0;
  double flops_ = 0;
  std::string describe_;
};

}  // namespace

Strides layout_strides(const Shape& s, Layout layout) {
  if (layout == Layout::kNCHW || s.size() != 4) return contiguous_strides(s);
  return {s[1] * s[2] * s[3], 1, s[3] * s[1], s[1]};
}

std::unique_ptr<PreparedOp> prepare_conv2d_dnnl(const Shape& x_shape, const Tensor& w, const Tensor& bias,
                                                const Conv2dParams& p, DType compute, Layout src_layout,
                                                Layout dst_layout, const Epilogue& epilogue, DType src) {
  try {
    return std::make_unique<PreparedConv2d>(x_shape, w, bias, p, compute, src_layout, dst_layout, epilogue, src);
  } catch (const dnnl::error& e) {
    throw Error(std::string("conv2d: oneDNN could not prepare a convolution (") + e.what() + ") for input " +
                shape_str(x_shape) + ", weight " + w.describe());
  }
}

}  // namespace taiyi::ops
