#include "taiyi/nn/resnet.h"

namespace taiyi::nn {

ResnetBlock2D::ResnetBlock2D(const Scope& s, int64_t in_channels, int64_t out_channels, int64_t temb_channels,
                             int groups, float eps, float output_scale_factor)
    : norm1_(s / "norm1", groups, in_channels, eps),
      norm2_(s / "norm2", groups, out_channels, eps),
      conv1_(s / "conv1", in_channels, out_channels, 3),
      conv2_(s / "conv2", out_channels, out_channels, 3),
      output_scale_factor_(output_scale_factor) {
  if (temb_channels > 0) time_emb_proj_ = Linear(s / "time_emb_proj", temb_channels, out_channels);
  if (in_channels != out_channels)
    conv_shortcut_ = Conv2d(s / "conv_shortcut", in_channels, out_channels, 1);
}

Tensor ResnetBlock2D::operator()(const Tensor& x, const Tensor& temb) const {
  Tensor h = conv1_(ops::silu(norm1_(x)));
  if (time_emb_proj_.present()) {
    if (!temb.defined()) throw Error("ResnetBlock2D: time embedding required");
    Tensor t = time_emb_proj_(ops::silu(temb));  // [B, C]
    h = ops::add(h, ops::reshape(t, {t.size(0), t.size(1), 1, 1}));
  }
  h = conv2_(ops::silu(norm2_(h)));
  const Tensor shortcut = conv_shortcut_.present() ? conv_shortcut_(x) : x;
  Tensor out = ops::add(shortcut, h);
  if (output_scale_factor_ != 1.0f) out = ops::scale(out, 1.0f / output_scale_factor_);
  return out;
}

static ops::Conv2dParams downsample_params(int padding) {
  ops::Conv2dParams p = ops::Conv2dParams::same(padding, 2);
  if (padding == 0) p.pad_bottom = p.pad_right = 1;  // F.pad(x, (0, 1, 0, 1))
  return p;
}

Downsample2D::Downsample2D(const Scope& s, int64_t channels, int padding)
    : conv_(s / "conv", channels, channels, 3, downsample_params(padding)) {}

Upsample2D::Upsample2D(const Scope& s, int64_t channels) : conv_(s / "conv", channels, channels, 3) {}

Tensor Upsample2D::operator()(const Tensor& x, std::optional<std::pair<int64_t, int64_t>> size) const {
  const int64_t oh = size ? size->first : 2 * x.size(2);
  const int64_t ow = size ? size->second : 2 * x.size(3);
  return conv_(ops::upsample_nearest(x, oh, ow));
}

}  // namespace taiyi::nn
