// UNet2DConditionModel as in diffusers 0.27 (models/unets/unet_2d_condition.py),
// built from its config.json, for the SD 1.x family (Taiyi included):
//
//   auto unet = UNet2DConditionModel::load("taiyi/unet");
//   Tensor eps = unet->forward(sample, timestep, encoder_hidden_states);
//
// Config keys absent from the file take diffusers' defaults; options this engine
// does not implement (class embeddings, added conditioning, ...) are refused
// with an error naming the key rather than silently ignored.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "taiyi/io/config.h"
#include "taiyi/models/unet_2d_blocks.h"
#include "taiyi/nn/embeddings.h"

namespace taiyi::models {

struct UNet2DConditionConfig {
  int64_t sample_size = 64;
  int64_t in_channels = 4, out_channels = 4;
  bool center_input_sample = false;
  bool flip_sin_to_cos = true;
  float freq_shift = 0;
  std::vector<std::string> down_block_types, up_block_types;
  std::string mid_block_type = "UNetMidBlock2DCrossAttn";  // or "" for none
  std::vector<int64_t> block_out_channels;
  std::vector<int64_t> layers_per_block;              // per down block
  int downsample_padding = 1;
  float mid_block_scale_factor = 1;
  int norm_num_groups = 32;
  float norm_eps = 1e-5f;
  std::vector<int64_t> cross_attention_dim;           // per down block
  std::vector<int64_t> transformer_layers_per_block;  // per down block
  std::vector<int64_t> reverse_transformer_layers_per_block;  // per up block
  std::vector<int64_t> num_attention_heads;           // per down block (SD1: from attention_head_dim)
  bool use_linear_projection = false;
  bool upcast_attention = false;  // changes nothing in f32
  float resnet_out_scale_factor = 1;
  int conv_in_kernel = 3, conv_out_kernel = 3;
  int64_t time_embedding_dim = 0;  // 0: 4 * block_out_channels[0]

  static UNet2DConditionConfig from_config(const io::ConfigReader& c);
};

class UNet2DConditionModel {
 public:
  explicit UNet2DConditionModel(const UNet2DConditionConfig& config);
  // Reads config.json and the weights of a component folder (e.g. "model/unet").
  static std::unique_ptr<UNet2DConditionModel> load(const std::string& component_dir);
  // Reads only config.json; parameters get seeded random values (benchmarks).
  static std::unique_ptr<UNet2DConditionModel> random(const std::string& component_dir, uint64_t seed = 0);

  // sample [B, in_channels, h, w]; timestep: 0-dim or [1] or [B], integer or float;
  // encoder_hidden_states [B, L, cross_attention_dim] -> noise prediction [B, out_channels, h, w].
  Tensor forward(const Tensor& sample, const Tensor& timestep, const Tensor& encoder_hidden_states) const;

  const UNet2DConditionConfig& config() const { return config_; }
  nn::ParameterSet& parameters() { return params_; }
  const nn::ParameterSet& parameters() const { return params_; }

 private:
  UNet2DConditionConfig config_;
  nn::ParameterSet params_;
  nn::Conv2d conv_in_, conv_out_;
  std::unique_ptr<nn::TimestepEmbedding> time_embedding_;
  std::vector<UNetDownBlock> down_blocks_;
  std::unique_ptr<UNetMidBlock2DCrossAttn> mid_block_;
  std::vector<UNetUpBlock> up_blocks_;
  nn::GroupNorm conv_norm_out_;
  int num_upsamplers_ = 0;
};

}  // namespace taiyi::models
