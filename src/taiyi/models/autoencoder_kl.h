// AutoencoderKL as in diffusers 0.27 (models/autoencoders/autoencoder_kl.py and vae.py):
// Encoder (DownEncoderBlock2D x n, UNetMidBlock2D with attention) + quant_conv, and
// post_quant_conv + Decoder (UNetMidBlock2D, UpDecoderBlock2D x n).
//
//   auto vae = AutoencoderKL::load("taiyi/vae");
//   Tensor image = vae->decode(latents / vae->config().scaling_factor);   // raw, about [-1, 1]
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "taiyi/io/config.h"
#include "taiyi/nn/attention.h"
#include "taiyi/nn/resnet.h"

namespace taiyi::models {

struct AutoencoderKLConfig {
  int64_t in_channels = 3, out_channels = 3, latent_channels = 4;
  std::vector<int64_t> block_out_channels;
  int layers_per_block = 1;
  int norm_num_groups = 32;
  int64_t sample_size = 32;
  float scaling_factor = 0.18215f;
  bool use_quant_conv = true, use_post_quant_conv = true;
  bool mid_block_add_attention = true;

  static AutoencoderKLConfig from_config(const io::ConfigReader& c);
};

// UNetMidBlock2D without time embedding: resnet, (attention, resnet).
class VaeMidBlock {
 public:
  VaeMidBlock(const nn::Scope& s, int64_t channels, int groups, bool add_attention);
  Tensor operator()(const Tensor& x) const;

 private:
  std::vector<nn::ResnetBlock2D> resnets_;
  std::optional<nn::Attention> attention_;
};

// DownEncoderBlock2D (resample = downsample) or UpDecoderBlock2D (resample = upsample).
class VaeBlock {
 public:
  VaeBlock(const nn::Scope& s, int64_t in_channels, int64_t out_channels, int layers, int groups, bool down,
           bool resample);
  Tensor operator()(const Tensor& x) const;

 private:
  std::vector<nn::ResnetBlock2D> resnets_;
  std::optional<nn::Downsample2D> downsampler_;
  std::optional<nn::Upsample2D> upsampler_;
};

struct LatentDistribution {
  Tensor mean, std, logvar;  // logvar clamped to [-30, 20]; std = exp(logvar / 2)
};

class AutoencoderKL {
 public:
  explicit AutoencoderKL(const AutoencoderKLConfig& config);
  static std::unique_ptr<AutoencoderKL> load(const std::string& component_dir);
  static std::unique_ptr<AutoencoderKL> random(const std::string& component_dir, uint64_t seed = 0);

  // image [B, in_channels, H, W] in [-1, 1] -> latent distribution [B, latent_channels, H/8, W/8].
  LatentDistribution encode(const Tensor& image) const;
  // z [B, latent_channels, h, w] (already divided by scaling_factor) -> image [B, out_channels, 8h, 8w], unclamped.
  Tensor decode(const Tensor& z) const;

  const AutoencoderKLConfig& config() const { return config_; }
  nn::ParameterSet& parameters() { return params_; }
  const nn::ParameterSet& parameters() const { return params_; }

 private:
  AutoencoderKLConfig config_;
  nn::ParameterSet params_;
  // encoder
  nn::Conv2d enc_conv_in_, enc_conv_out_, quant_conv_;
  std::vector<VaeBlock> enc_blocks_;
  std::unique_ptr<VaeMidBlock> enc_mid_;
  nn::GroupNorm enc_norm_out_;
  // decoder
  nn::Conv2d post_quant_conv_, dec_conv_in_, dec_conv_out_;
  std::unique_ptr<VaeMidBlock> dec_mid_;
  std::vector<VaeBlock> dec_blocks_;
  nn::GroupNorm dec_norm_out_;
};

// Maps the pre-0.15 VAE attention names (query/key/value/proj_attn, and 1x1-conv
// shaped [C, C, 1, 1] weights from converted original checkpoints) to diffusers' names.
bool adapt_legacy_vae_weight(std::string& name, Tensor& t);

}  // namespace taiyi::models
