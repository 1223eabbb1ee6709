#include "taiyi/models/unet_2d_blocks.h"

namespace taiyi::models {

static nn::Transformer2DModel make_transformer(const nn::Scope& s, const UNetBlockOptions& o, int64_t channels) {
  if (channels % o.heads != 0)
    throw Error(s.prefix() + ": " + std::to_string(channels) + " channels cannot be split into " +
                std::to_string(o.heads) + " attention heads (check attention_head_dim / num_attention_heads)");
  nn::Transformer2DOptions t;
  t.heads = o.heads;
  t.dim_head = channels / o.heads;
  t.in_channels = channels;
  t.layers = o.transformer_layers;
  t.cross_attention_dim = o.cross_attention_dim;
  t.norm_groups = o.groups;
  t.use_linear_projection = o.use_linear_projection;
  return nn::Transformer2DModel(s, t);
}

UNetDownBlock::UNetDownBlock(const nn::Scope& s, const UNetBlockOptions& o) {
  for (int i = 0; i < o.layers; ++i) {
    const int64_t in = i == 0 ? o.in_channels : o.out_channels;
    resnets_.emplace_back(s / "resnets" / i, in, o.out_channels, o.temb_channels, o.groups, o.eps,
                          o.output_scale_factor);
    if (o.cross_attention) attentions_.push_back(make_transformer(s / "attentions" / i, o, o.out_channels));
  }
  if (o.resample) downsampler_.emplace(s / "downsamplers" / 0, o.out_channels, o.downsample_padding);
}

Tensor UNetDownBlock::operator()(const Tensor& x, const Tensor& temb, const Tensor& context,
                                 std::vector<Tensor>& skips) const {
  Tensor h = x;
  for (size_t i = 0; i < resnets_.size(); ++i) {
    h = resnets_[i](h, temb);
    if (!attentions_.empty()) h = attentions_[i](h, context);
    skips.push_back(h);
  }
  if (downsampler_) {
    h = (*downsampler_)(h);
    skips.push_back(h);
  }
  return h;
}

UNetMidBlock2DCrossAttn::UNetMidBlock2DCrossAttn(const nn::Scope& s, const UNetBlockOptions& o) {
  const int64_t c = o.in_channels;
  resnets_.emplace_back(s / "resnets" / 0, c, c, o.temb_channels, o.groups, o.eps, o.output_scale_factor);
  for (int i = 0; i < o.layers; ++i) {
    attentions_.push_back(make_transformer(s / "attentions" / i, o, c));
    resnets_.emplace_back(s / "resnets" / (i + 1), c, c, o.temb_channels, o.groups, o.eps, o.output_scale_factor);
  }
}

Tensor UNetMidBlock2DCrossAttn::operator()(const Tensor& x, const Tensor& temb, const Tensor& context) const {
  Tensor h = resnets_[0](x, temb);
  for (size_t i = 0; i < attentions_.size(); ++i) h = resnets_[i + 1](attentions_[i](h, context), temb);
  return h;
}

UNetUpBlock::UNetUpBlock(const nn::Scope& s, const UNetBlockOptions& o) {
  for (int i = 0; i < o.layers; ++i) {
    const int64_t skip = i == o.layers - 1 ? o.in_channels : o.out_channels;
    const int64_t in = i == 0 ? o.prev_output_channels : o.out_channels;
    resnets_.emplace_back(s / "resnets" / i, in + skip, o.out_channels, o.temb_channels, o.groups, o.eps,
                          o.output_scale_factor);
    if (o.cross_attention) attentions_.push_back(make_transformer(s / "attentions" / i, o, o.out_channels));
  }
  if (o.resample) upsampler_.emplace(s / "upsamplers" / 0, o.out_channels);
}

Tensor UNetUpBlock::operator()(const Tensor& x, std::vector<Tensor>& skips, const Tensor& temb,
                               const Tensor& context, std::optional<std::pair<int64_t, int64_t>> upsample_size) const {
  Tensor h = x;
  for (size_t i = 0; i < resnets_.size(); ++i) {
    if (skips.empty()) throw Error("internal: UNet up block ran out of skip connections");
    h = ops::concat({h, skips.back()}, 1);
    skips.pop_back();
    h = resnets_[i](h, temb);
    if (!attentions_.empty()) h = attentions_[i](h, context);
  }
  if (upsampler_) h = (*upsampler_)(h, upsample_size);
  return h;
}

}  // namespace taiyi::models
