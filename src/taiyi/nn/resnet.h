// ResnetBlock2D, Downsample2D and Upsample2D as in diffusers 0.27
// (models/resnet.py, models/downsampling.py, models/upsampling.py), for the
// configurations SD 1.x uses: GroupNorm + SiLU, optional time embedding added
// after conv1 ("default" time-scale shift), 1x1 conv shortcut when channels change.
#pragma once

#include <optional>

#include "taiyi/nn/layers.h"

namespace taiyi::nn {

class ResnetBlock2D {
 public:
  // temb_channels <= 0: no time embedding (the VAE).
  ResnetBlock2D(const Scope& s, int64_t in_channels, int64_t out_channels, int64_t temb_channels, int groups,
                float eps, float output_scale_factor = 1.0f);
  // temb [B or 1, temb_channels] or undefined.
  Tensor operator()(const Tensor& x, const Tensor& temb) const;

 private:
  GroupNorm norm1_, norm2_;
  Conv2d conv1_, conv2_, conv_shortcut_;
  Linear time_emb_proj_;
  float output_scale_factor_;
};

class Downsample2D {
 public:
  // padding 1: conv stride 2 pad 1 (UNet). padding 0: pad right/bottom by one, then conv stride 2 (VAE encoder).
  Downsample2D(const Scope& s, int64_t channels, int padding);
  Tensor operator()(const Tensor& x) const { return conv_(x); }

 private:
  Conv2d conv_;
};

class Upsample2D {
 public:
  Upsample2D(const Scope& s, int64_t channels);
  // Nearest x2, or to `size` (h, w) when the UNet's latent is not a multiple of 2^levels.
  Tensor operator()(const Tensor& x, std::optional<std::pair<int64_t, int64_t>> size = std::nullopt) const;

 private:
  Conv2d conv_;
};

}  // namespace taiyi::nn
