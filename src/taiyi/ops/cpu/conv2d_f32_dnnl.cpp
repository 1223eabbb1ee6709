// 2-D convolution, f32, through oneDNN 2.6 (convolution_forward, direct algorithm).
//
// Semantics are torch.nn.functional.conv2d with asymmetric padding: padding_l is
// (pad_top, pad_left), padding_r is (pad_bottom, pad_right). Our tensors are NCHW /
// OIHW; oneDNN's fast f32 kernels (jit:avx2, jit:avx512_core) want blocked layouts
// (nChw8c / nChw16c and matching weights), so the primitive is created with
// format_tag::any and the user's tensors are reordered in and out. The weight
// reorder runs on every eager call; graph mode will pre-pack weights once.
#include <dnnl.hpp>
#include <string>
#include <unordered_map>

#include "taiyi/ops/cpu/cpu_kernels.h"
#include "taiyi/ops/cpu/dnnl_context.h"

namespace taiyi::ops::cpu {

namespace {

void run_conv2d(const Tensor& x, const Tensor& w, const Tensor& bias, const Conv2dParams& p, const Tensor& y) {
  using dnnl::memory;
  using tag = memory::format_tag;
  const auto f32 = memory::data_type::f32;
  const dnnl::engine& eng = dnnl_cpu_engine();
  dnnl::stream& strm = dnnl_cpu_stream();

  const int64_t cout = w.size(0), g = p.groups;
  const memory::dims src_dims = {x.size(0), x.size(1), x.size(2), x.size(3)};
  const memory::dims dst_dims = {y.size(0), y.size(1), y.size(2), y.size(3)};
  const memory::dims wei_dims = g == 1 ? memory::dims{cout, w.size(1), w.size(2), w.size(3)}
                                       : memory::dims{g, cout / g, w.size(1), w.size(2), w.size(3)};
  const memory::desc user_src_md(src_dims, f32, tag::nchw);
  const memory::desc user_dst_md(dst_dims, f32, tag::nchw);
  const memory::desc user_wei_md(wei_dims, f32, g == 1 ? tag::oihw : tag::goihw);
  const memory::desc bias_md = bias.defined() ? memory::desc({cout}, f32, tag::x) : memory::desc();

  // oneDNN counts dilation from 0 (0 = dense kernel).
  const dnnl::convolution_forward::desc desc(
      dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct, memory::desc(src_dims, f32, tag::any),
      memory::desc(wei_dims, f32, tag::any), bias_md, memory::desc(dst_dims, f32, tag::any), {p.stride_h, p.stride_w},
      {p.dilation_h - 1, p.dilation_w - 1}, {p.pad_top, p.pad_left}, {p.pad_bottom, p.pad_right});
  const dnnl::convolution_forward::primitive_desc pd(desc, eng);

  memory user_src = dnnl_wrap(user_src_md, x.data<float>());
  memory user_wei = dnnl_wrap(user_wei_md, w.data<float>());
  memory user_dst = dnnl_wrap(user_dst_md, y.data<float>());

  auto reordered = [&](memory user, const memory::desc& want) {
    if (user.get_desc() == want) return user;
    memory m(want, eng);
    dnnl::reorder(user, m).execute(strm, user, m);
    return m;
  };
  memory src = reordered(user_src, pd.src_desc());
  memory wei = reordered(user_wei, pd.weights_desc());
  memory dst = pd.dst_desc() == user_dst_md ? user_dst : memory(pd.dst_desc(), eng);

  std::unordered_map<int, memory> args = {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, wei}, {DNNL_ARG_DST, dst}};
  if (bias.defined()) args.insert({DNNL_ARG_BIAS, dnnl_wrap(bias_md, bias.data<float>())});
  dnnl::convolution_forward(pd).execute(strm, args);
  if (dst != user_dst) dnnl::reorder(dst, user_dst).execute(strm, dst, user_dst);
  strm.wait();
}

}  // namespace

void conv2d_f32_dnnl(const Tensor& x, const Tensor& w, const Tensor& bias, const Conv2dParams& p, const Tensor& y) {
  try {
    run_conv2d(x, w, bias, p, y);
  } catch (const dnnl::error& e) {
    throw Error(std::string("conv2d: oneDNN failed (") + e.what() + ") for input " + x.describe() + ", weight " +
                w.describe());
  }
}

}  // namespace taiyi::ops::cpu
