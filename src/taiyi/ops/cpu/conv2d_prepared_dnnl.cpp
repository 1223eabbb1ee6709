// Prepared 2-D convolution, f32, through oneDNN 2.6: the primitive and its blocked
// weights are made once (see ops/prepared.h); per call the NCHW input is reordered
// into the primitive's layout in caller scratch, and the result reordered back.
// Scratchpad mode "user" keeps oneDNN from allocating on each call too.
// A fused epilogue (residual add, scale) rides on oneDNN post-ops: the residual is
// copied into the output (unless it already is the output's memory) and summed in by
// the convolution itself when it writes the plain layout, else by the reorder back.
//
// A bf16 3x3 convolution with many input channels from channels-last memory (the UNet's decoder
// ResNets, whose conv1 reads the skip concat's 1280-2560 channels; its upsamplers) runs as several
// convolutions over slices of the input channels, each summing into the output (oneDNN's sum
// post-op): oneDNN 2.6's AMX kernel keeps each output block's weights for all of K = 9 Cin, which
// from ~1280 channels no longer fit its L2 (2 MiB a core), and its tile loads from further out are
// slow. Measured on the Xeon with AMX, bf16 NHWC input: [2,2560,16,16] -> 1280 25.7 ms whole,
// 11.7 ms as 4 x 640; [2,1920,32,32] -> 640 27.8 / 16.2 ms (3 x 640); [2,1280,16,16] -> 1280
// 7.8 / 5.8 ms; [2,640,64,64] -> 320 10.9 / 10.3 ms (not worth the slices' copies, so not split).
// Each slice is copied into dense bf16 scratch first (rounded, from f32 input; a strided source
// sends oneDNN to its reference kernel).
// A per-call bias (Epilogue post_op kBiasAdd: the time embedding of a ResNet block's conv1) is
// added to the constant bias into scratch before each call; oneDNN takes the bias per call.
// A bf16 convolution writing bf16 channels-last memory also adds a bf16 residual (the VAE's spatial
// residual stream, graph/passes/bf16_inputs.cpp): summed into the output it was copied into (or
// shares memory with) by the sum post-op, in f32, the sum rounded once. (An f32 residual into a
// bf16 output would take a binary post-op, with which oneDNN 2.6 leaves its brgconv kernels for
// slower ones: not offered.)
#include <omp.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <dnnl.hpp>
#include <string>
#include <unordered_map>
#include <vector>

#include "taiyi/ops/cpu/cpu_kernels.h"
#include "taiyi/ops/cpu/dnnl_context.h"
#include "taiyi/ops/cpu/prepared_kernels.h"
#include "taiyi/ops/prepared.h"

namespace taiyi::ops {

namespace {

using dnnl::memory;
using tag = memory::format_tag;

size_t round_up(size_t n) { return (n + 63) / 64 * 64; }

// Input channels per slice of a split convolution (see the top), or 0 for no split.
// TAIYI_CONV_SPLIT=0 turns splitting off (A/B runs).
int64_t split_channels(const Shape& xs, const Tensor& w, const Conv2dParams& p, DType compute, Layout src_layout,
                       Layout dst_layout, const Epilogue& epilogue, DType src) {
  static const bool off = [] {
    const char* e = std::getenv("TAIYI_CONV_SPLIT");
    return e != nullptr && std::string(e) == "0";
  }();
  const int64_t cin = xs[1];
  if (off || p.groups != 1 || compute != DType::BF16 || (src != DType::BF16 && src != DType::F32) ||
      src_layout != Layout::kNHWC || dst_layout != Layout::kNHWC || epilogue.scale != 1.0f ||
      w.size(2) * w.size(3) != 9)
    return 0;
  if (cin >= 1280 && cin % 640 == 0) return 640;
  if (cin >= 960 && cin % 320 == 0) return 320;
  return 0;
}

// A forward-inference direct convolution of these memory descriptors with p's geometry.
dnnl::convolution_forward::desc conv_desc(const memory::desc& src, const memory::desc& wei, const memory::desc& bias,
                                          const memory::desc& dst, const Conv2dParams& p) {
  return dnnl::convolution_forward::desc(dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct, src,
                                         wei, bias, dst, {p.stride_h, p.stride_w}, {p.dilation_h - 1, p.dilation_w - 1},
                                         {p.pad_top, p.pad_left}, {p.pad_bottom, p.pad_right});
}

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
                 Layout src_layout, Layout dst_layout, const Epilogue& epilogue, DType src, DType dst)
      : src_layout_(src_layout), epilogue_(epilogue), src_dtype_(src), dst_dtype_(dst) {
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
    const auto ddt = dst == DType::BF16 ? memory::data_type::bf16 : f32;
    user_dst_ = memory::desc(dst_dims, ddt, dst_layout == Layout::kNHWC ? tag::nhwc : tag::nchw);
    const memory::desc user_wei(wei_dims, f32, g == 1 ? tag::oihw : tag::goihw);
    bias_add_ = epilogue.post_op == PostOp::kBiasAdd;
    if (bias.defined() || bias_add_) bias_md_ = memory::desc({cout}, f32, tag::x);
    bias_add_bytes_ = bias_add_ ? round_up(static_cast<size_t>(cout) * sizeof(float)) : 0;
    flops_ = 2.0 * xs[0] * cout * ho * wo * (xs[1] / g) * w.size(2) * w.size(3);
    if (epilogue.residual && epilogue.residual_dtype != dst)
      throw Error("conv2d: the residual of the convolution of input " + shape_str(xs) + " is " +
                  dtype_name(epilogue.residual_dtype) + ", its output " + dtype_name(dst) + ": they must match");
    split_ = dst == DType::BF16 ? 0 : split_channels(xs, w, p, compute, src_layout, dst_layout, epilogue, src);
    if (split_ > 0) {
      prepare_split(xs, w, bias, p, epilogue, src_dims);
      return;
    }
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    const memory::desc any_src(src_dims, cdt, tag::any), any_wei(wei_dims, cdt, tag::any);
    pd_ = dnnl::convolution_forward::primitive_desc(
        conv_desc(any_src, any_wei, bias_md_, memory::desc(dst_dims, ddt, tag::any), p), attr, eng);
    const bool has_epilogue = epilogue.residual || epilogue.scale != 1.0f;
    // A residual into a bf16 output is summed by the convolution itself, into the output's layout.
    if (has_epilogue && ((epilogue.residual && dst == DType::BF16) || pd_.dst_desc() == user_dst_)) {
      // The convolution writes the output's own layout: the epilogue goes into its post-ops.
      dnnl::post_ops ops;
      if (epilogue.residual) ops.append_sum(1.0f);
      if (epilogue.scale != 1.0f) ops.append_eltwise(1.0f, dnnl::algorithm::eltwise_linear, epilogue.scale, 0.0f);
      attr.set_post_ops(ops);
      pd_ = dnnl::convolution_forward::primitive_desc(conv_desc(any_src, any_wei, bias_md_, user_dst_, p), attr, eng);
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
    describe_ = std::string("conv2d ") + (compute == DType::BF16 ? "bf16 " : "f32 ") + pd_.impl_info_str() + " " +
                format_name(pd_.src_desc()) + (src == DType::BF16 ? " bf16-in" : "") +
                (dst == DType::BF16 ? " bf16-out" : "") +
                (epilogue.residual ? (epilogue.residual_dtype == DType::BF16 ? " +bf16 residual" : " +residual") : "") +
                (bias_add_ ? " +bias input" : "");
  }

  void run(const std::vector<Tensor>& in, const Tensor& out, std::byte* scratch) const override {
    const dnnl::engine& eng = cpu::dnnl_cpu_engine();
    dnnl::stream& strm = cpu::dnnl_cpu_stream();
    // The traced layout: NCHW contiguous, or the channels-last view the layout pass arranged.
    const Tensor x = src_layout_ == Layout::kNCHW ? in[0].contiguous() : in[0];
    if (x.dtype() != src_dtype_)
      throw Error("conv2d: prepared for a " + std::string(dtype_name(src_dtype_)) + " input, given " + x.describe());
    if (out.dtype() != dst_dtype_)
      throw Error("conv2d: prepared for a " + std::string(dtype_name(dst_dtype_)) + " output, given " + out.describe());
    if (split_ > 0) return run_split(x, in, out, scratch);
    memory user_src = cpu::dnnl_wrap(user_src_, x.raw_data());
    if (epilogue_.residual) cpu::copy_residual_into(in.at(1), out);
    memory user_dst = cpu::dnnl_wrap(user_dst_, out.raw_data());
    memory src = src_reorder_ ? memory(pd_.src_desc(), eng, scratch) : user_src;
    memory dst = dst_reorder_ ? memory(pd_.dst_desc(), eng, scratch + src_bytes_) : user_dst;
    memory pad(pd_.scratchpad_desc(), eng, scratch + src_bytes_ + dst_bytes_);
    if (src_reorder_) to_blocked_.execute(strm, user_src, src);
    std::unordered_map<int, memory> args = {
        {DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, weights_}, {DNNL_ARG_DST, dst}, {DNNL_ARG_SCRATCHPAD, pad}};
    if (!bias_md_.is_zero()) args.insert({DNNL_ARG_BIAS, bias_memory(in, scratch)});
    conv_.execute(strm, args);
    if (dst_reorder_) to_plain_.execute(strm, dst, user_dst);
    strm.wait();
  }

  size_t scratch_bytes() const override { return src_bytes_ + dst_bytes_ + pad_bytes_ + bias_add_bytes_; }
  size_t packed_weight_bytes() const override {
    if (split_ == 0) return pd_.weights_desc().get_size();
    size_t bytes = 0;
    for (const auto& pd : part_pds_) bytes += pd.weights_desc().get_size();
    return bytes;
  }
  std::string describe() const override { return describe_; }
  double flops() const override { return flops_; }

 private:
  // One convolution per slice of split_ input channels, each into the output (NHWC f32): the
  // first adds the bias (and sums into a residual already copied there), the others sum.
  void prepare_split(const Shape& xs, const Tensor& w, const Tensor& bias, const Conv2dParams& p,
                     const Epilogue& epilogue, const memory::dims& src_dims) {
    const dnnl::engine& eng = cpu::dnnl_cpu_engine();
    dnnl::stream& strm = cpu::dnnl_cpu_stream();
    const auto bf16 = memory::data_type::bf16, f32 = memory::data_type::f32;
    const int64_t cin = xs[1], cout = w.size(0), kh = w.size(2), kw = w.size(3);
    part_src_ = memory::desc({src_dims[0], split_, src_dims[2], src_dims[3]}, bf16, tag::nhwc);
    const Tensor wc = w.contiguous();
    size_t pad = 0;
    for (int64_t c0 = 0; c0 < cin; c0 += split_) {
      dnnl::primitive_attr attr;
      attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
      if (c0 > 0 || epilogue.residual) {
        dnnl::post_ops ops;
        ops.append_sum(1.0f);
        attr.set_post_ops(ops);
      }
      part_pds_.emplace_back(conv_desc(part_src_, memory::desc({cout, split_, kh, kw}, bf16, tag::any),
                                       c0 == 0 ? bias_md_ : memory::desc(), user_dst_, p),
                             attr, eng);
      part_convs_.emplace_back(part_pds_.back());
      // This slice of the weights: [Cout, split, kh, kw] at input channel c0 of [Cout, Cin, kh, kw].
      const memory::desc user_wei({cout, split_, kh, kw}, f32, memory::dims{cin * kh * kw, kh * kw, kw, 1});
      memory user_w = cpu::dnnl_wrap(user_wei, const_cast<float*>(wc.data<float>()) + c0 * kh * kw);
      part_weights_.emplace_back(part_pds_.back().weights_desc(), eng);
      dnnl::reorder(user_w, part_weights_.back()).execute(strm, user_w, part_weights_.back());
      pad = std::max(pad, part_pds_.back().scratchpad_desc().get_size());
    }
    strm.wait();
    if (bias.defined()) bias_ = bias.contiguous();
    pd_ = part_pds_.front();
    src_bytes_ = round_up(part_src_.get_size());
    pad_bytes_ = round_up(pad);
    describe_ = std::string("conv2d bf16 ") + pd_.impl_info_str() + " nhwc" +
                (src_dtype_ == DType::BF16 ? " bf16-in" : "") + (epilogue.residual ? " +residual" : "") +
                (bias_add_ ? " +bias input" : "") + " split " + std::to_string(cin / split_) + "x" +
                std::to_string(split_);
  }

  // Per slice: its channels copied into dense scratch (a strided source would send oneDNN to its
  // reference kernel), then its convolution.
  void run_split(const Tensor& x, const std::vector<Tensor>& in, const Tensor& out, std::byte* scratch) const {
    const dnnl::engine& eng = cpu::dnnl_cpu_engine();
    dnnl::stream& strm = cpu::dnnl_cpu_stream();
    if (epilogue_.residual) cpu::copy_residual_into(in.at(1), out);
    memory user_dst = cpu::dnnl_wrap(user_dst_, out.raw_data());
    memory part_src(part_src_, eng, scratch);
    const int64_t pixels = x.size(0) * x.size(2) * x.size(3), cin = x.size(1);
    auto* dst = reinterpret_cast<uint16_t*>(scratch);
    for (size_t k = 0; k < part_convs_.size(); ++k) {
      const int64_t c0 = static_cast<int64_t>(k) * split_;
      if (x.dtype() == DType::BF16) {
        const auto* xp = static_cast<const uint16_t*>(x.raw_data());
#pragma omp parallel for schedule(static)
        for (int64_t px = 0; px < pixels; ++px)
          std::memcpy(dst + px * split_, xp + px * cin + c0, static_cast<size_t>(split_) * sizeof(uint16_t));
      } else {
        // An f32 input (the upsamplers' convolutions) is rounded to bf16 as it is copied, as
        // oneDNN's own reorder would.
        const float* xp = x.data<float>();
#pragma omp parallel for schedule(static)
        for (int64_t px = 0; px < pixels; ++px) cpu::round_to_bf16(xp + px * cin + c0, dst + px * split_, split_);
      }
      std::unordered_map<int, memory> args = {
          {DNNL_ARG_SRC, part_src},
          {DNNL_ARG_WEIGHTS, part_weights_[k]},
          {DNNL_ARG_DST, user_dst},
          {DNNL_ARG_SCRATCHPAD, memory(part_pds_[k].scratchpad_desc(), eng, scratch + src_bytes_)}};
      if (k == 0 && !bias_md_.is_zero()) args.insert({DNNL_ARG_BIAS, bias_memory(in, scratch)});
      part_convs_[k].execute(strm, args);
      strm.wait();
    }
  }

  // The bias of this call: the constant one, or with a per-call bias added (Epilogue post_op
  // kBiasAdd, inputs[1]: the time embedding), summed into the last bias_add_bytes_ of scratch.
  memory bias_memory(const std::vector<Tensor>& in, std::byte* scratch) const {
    if (!bias_add_) return cpu::dnnl_wrap(bias_md_, bias_.data<float>());
    const Tensor add = in.at(1).contiguous();
    const int64_t cout = bias_md_.dims()[0];
    if (add.dtype() != DType::F32 || add.numel() != cout)
      throw Error("conv2d: the bias to add " + add.describe() + " is not one f32 value for each of the " +
                  std::to_string(cout) + " output channels");
    const float* a = add.data<float>();
    const float* b = bias_.defined() ? bias_.data<float>() : nullptr;
    auto* sum = reinterpret_cast<float*>(scratch + src_bytes_ + dst_bytes_ + pad_bytes_);
    for (int64_t c = 0; c < cout; ++c) sum[c] = (b ? b[c] : 0.0f) + a[c];
    return cpu::dnnl_wrap(bias_md_, sum);
  }

  int64_t split_ = 0;
  memory::desc part_src_;
  std::vector<dnnl::convolution_forward::primitive_desc> part_pds_;
  std::vector<dnnl::convolution_forward> part_convs_;
  std::vector<memory> part_weights_;
  Layout src_layout_;
  Epilogue epilogue_;
  DType src_dtype_, dst_dtype_;
  memory::desc user_src_, user_dst_, bias_md_;
  dnnl::convolution_forward::primitive_desc pd_;
  dnnl::convolution_forward conv_;
  dnnl::reorder to_blocked_, to_plain_;
  memory weights_;
  Tensor bias_;
  bool src_reorder_ = false, dst_reorder_ = false, bias_add_ = false;
  size_t src_bytes_ = 0, dst_bytes_ = 0, pad_bytes_ = 0, bias_add_bytes_ = 0;
  double flops_ = 0;
  std::string describe_;
};

}  // namespace

Strides layout_strides(const Shape& s, Layout layout) {
  if (layout == Layout::kNCHW || s.size() != 4) return contiguous_strides(s);
  return {s[1] * s[2] * s[3], 1, s[3] * s[1], s[1]};
}

bool conv2d_dnnl_writes_bf16(const Shape& x_shape, const Tensor& w, const Conv2dParams& p, DType compute,
                             Layout src_layout, Layout dst_layout, const Epilogue& epilogue, DType src) {
  return compute == DType::BF16 && dst_layout == Layout::kNHWC && epilogue.scale == 1.0f &&
         (!epilogue.residual || epilogue.residual_dtype == DType::BF16) &&
         split_channels(x_shape, w, p, compute, src_layout, dst_layout, epilogue, src) == 0;
}

std::unique_ptr<PreparedOp> prepare_conv2d_dnnl(const Shape& x_shape, const Tensor& w, const Tensor& bias,
                                                const Conv2dParams& p, DType compute, Layout src_layout,
                                                Layout dst_layout, const Epilogue& epilogue, DType src, DType dst) {
  if (dst != DType::F32 && !conv2d_dnnl_writes_bf16(x_shape, w, p, compute, src_layout, dst_layout, epilogue, src))
    throw Error("conv2d: oneDNN's prepared convolution writes f32 here, not " + std::string(dtype_name(dst)) +
                ", for input " + shape_str(x_shape));
  try {
    return std::make_unique<PreparedConv2d>(x_shape, w, bias, p, compute, src_layout, dst_layout, epilogue, src, dst);
  } catch (const dnnl::error& e) {
    throw Error(std::string("conv2d: oneDNN could not prepare a convolution (") + e.what() + ") for input " +
                shape_str(x_shape) + ", weight " + w.describe());
  }
}

}  // namespace taiyi::ops
