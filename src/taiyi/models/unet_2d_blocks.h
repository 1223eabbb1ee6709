// The UNet's down, mid and up blocks as in diffusers 0.27 (models/unets/unet_2d_blocks.py):
// CrossAttnDownBlock2D / DownBlock2D, UNetMidBlock2DCrossAttn, UpBlock2D / CrossAttnUpBlock2D.
// A cross-attention block is the plain block with a Transformer2DModel after each resnet,
// so one class serves both kinds of each.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "taiyi/nn/resnet.h"
#include "taiyi/nn/transformer_2d.h"

namespace taiyi::models {

struct UNetBlockOptions {
  std::string type;  // the diffusers class name, for messages
  int64_t in_channels = 0, out_channels = 0, prev_output_channels = 0, temb_channels = 0;
  int layers = 2;
  int groups = 32;
  float eps = 1e-5f;
  float output_scale_factor = 1.0f;
  bool resample = false;  // add_downsample / add_upsample
  int downsample_padding = 1;
  bool cross_attention = false;
  int heads = 8;
  int transformer_layers = 1;
  int64_t cross_attention_dim = 768;
  bool use_linear_projection = false;
};

class UNetDownBlock {
 public:
  UNetDownBlock(const nn::Scope& s, const UNetBlockOptions& o);
  // Appends each layer's output (and the downsampled output) to `skips`.
  Tensor operator()(const Tensor& x, const Tensor& temb, const Tensor& context, std::vector<Tensor>& skips) const;

 private:
  std::vector<nn::ResnetBlock2D> resnets_;
  std::vector<nn::Transformer2DModel> attentions_;
  std::optional<nn::Downsample2D> downsampler_;
};

class UNetMidBlock2DCrossAttn {
 public:
  UNetMidBlock2DCrossAttn(const nn::Scope& s, const UNetBlockOptions& o);
  Tensor operator()(const Tensor& x, const Tensor& temb, const Tensor& context) const;

 private:
  std::vector<nn::ResnetBlock2D> resnets_;
  std::vector<nn::Transformer2DModel> attentions_;
};

class UNetUpBlock {
 public:
  UNetUpBlock(const nn::Scope& s, const UNetBlockOptions& o);
  size_t num_resnets() const { return resnets_.size(); }
  // Consumes one skip per resnet from the back of `skips`.
  Tensor operator()(const Tensor& x, std::vector<Tensor>& skips, const Tensor& temb, const Tensor& context,
                    std::optional<std::pair<int64_t, int64_t>> upsample_size) const;

 private:
  std::vector<nn::ResnetBlock2D> resnets_;
  std::vector<nn::Transformer2DModel> attentions_;
  std::optional<nn::Upsample2D> upsampler_;
};

}  // namespace taiyi::models
