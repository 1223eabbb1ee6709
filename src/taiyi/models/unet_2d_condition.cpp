#include "taiyi/models/unet_2d_condition.h"

#include <algorithm>

#include "taiyi/models/config_checks.h"

namespace taiyi::models {

UNet2DConditionConfig UNet2DConditionConfig::from_config(const io::ConfigReader& c) {
  check_class_name(c, "UNet2DConditionModel");
  for (const char* key : {"class_embed_type", "addition_embed_type", "addition_time_embed_dim", "encoder_hid_dim",
                          "encoder_hid_dim_type", "time_cond_proj_dim", "timestep_post_act", "time_embedding_act_fn",
                          "num_class_embeds", "cross_attention_norm", "projection_class_embeddings_input_dim"})
    refuse_unless(c, key, nullptr);
  for (const char* key : {"dual_cross_attention", "only_cross_attention", "resnet_skip_time_act",
                          "class_embeddings_concat", "mid_block_only_cross_attention"})
    refuse_unless(c, key, false);
  refuse_unless(c, "act_fn", "silu");
  refuse_unless(c, "resnet_time_scale_shift", "default");
  refuse_unless(c, "time_embedding_type", "positional");
  refuse_unless(c, "attention_type", "default");

  UNet2DConditionConfig cfg;
  cfg.block_out_channels = c.require<std::vector<int64_t>>("block_out_channels");
  const size_t n = cfg.block_out_channels.size();
  if (n == 0) c.fail("block_out_channels", "is empty");
  cfg.down_block_types = block_types(c, "down_block_types", n, {"CrossAttnDownBlock2D", "DownBlock2D"});
  cfg.up_block_types = block_types(c, "up_block_types", n, {"UpBlock2D", "CrossAttnUpBlock2D"});
  cfg.in_channels = c.require<int64_t>("in_channels");
  cfg.out_channels = c.require<int64_t>("out_channels");
  cfg.sample_size = c.get<int64_t>("sample_size", 64);
  cfg.center_input_sample = c.get<bool>("center_input_sample", false);
  cfg.flip_sin_to_cos = c.get<bool>("flip_sin_to_cos", true);
  cfg.freq_shift = c.get<float>("freq_shift", 0.0f);
  if (c.json().contains("mid_block_type") && c.json().at("mid_block_type").is_null()) {
    cfg.mid_block_type = "";
  } else {
    cfg.mid_block_type = c.get<std::string>("mid_block_type", "UNetMidBlock2DCrossAttn");
    if (cfg.mid_block_type != "UNetMidBlock2DCrossAttn")
      c.fail("mid_block_type", "'" + cfg.mid_block_type + "' is not supported (supported: UNetMidBlock2DCrossAttn)");
  }
  cfg.layers_per_block = c.int_per_block("layers_per_block", n, 2);
  cfg.downsample_padding = c.get<int>("downsample_padding", 1);
  cfg.mid_block_scale_factor = c.get<float>("mid_block_scale_factor", 1.0f);
  cfg.norm_num_groups = c.get<int>("norm_num_groups", 32);
  cfg.norm_eps = c.get<float>("norm_eps", 1e-5f);
  cfg.cross_attention_dim = c.int_per_block("cross_attention_dim", n, 1280);
  cfg.transformer_layers_per_block = c.int_per_block("transformer_layers_per_block", n, 1);
  std::vector<int64_t> reversed(cfg.transformer_layers_per_block.rbegin(), cfg.transformer_layers_per_block.rend());
  cfg.reverse_transformer_layers_per_block = c.int_per_block("reverse_transformer_layers_per_block", n, reversed);
  // The SD1 quirk: attention_head_dim holds the number of heads; num_attention_heads overrides it.
  cfg.num_attention_heads = c.has("num_attention_heads") ? c.int_per_block("num_attention_heads", n, 8)
                                                         : c.int_per_block("attention_head_dim", n, 8);
  cfg.use_linear_projection = c.get<bool>("use_linear_projection", false);
  cfg.upcast_attention = c.get<bool>("upcast_attention", false);
  cfg.resnet_out_scale_factor = c.get<float>("resnet_out_scale_factor", 1.0f);
  cfg.conv_in_kernel = c.get<int>("conv_in_kernel", 3);
  cfg.conv_out_kernel = c.get<int>("conv_out_kernel", 3);
  cfg.time_embedding_dim = c.get<int64_t>("time_embedding_dim", 0);
  for (int64_t v : cfg.block_out_channels)
    if (v <= 0) c.fail("block_out_channels", "channels must be positive");
  for (int64_t v : cfg.num_attention_heads)
    if (v <= 0) c.fail("attention_head_dim", "head counts must be positive");
  if (cfg.conv_in_kernel % 2 == 0 || cfg.conv_out_kernel % 2 == 0)
    c.fail("conv_in_kernel", "kernel sizes must be odd");
  return cfg;
}

UNet2DConditionModel::UNet2DConditionModel(const UNet2DConditionConfig& config) : config_(config) {
  const auto& boc = config_.block_out_channels;
  const size_t n = boc.size();
  const nn::Scope root(params_);
  const int64_t temb = config_.time_embedding_dim > 0 ? config_.time_embedding_dim : 4 * boc[0];
  conv_in_ = nn::Conv2d(root / "conv_in", config_.in_channels, boc[0], config_.conv_in_kernel);
  time_embedding_ = std::make_unique<nn::TimestepEmbedding>(root / "time_embedding", boc[0], temb);

  auto base = [&](const std::string& type) {
    UNetBlockOptions o;
    o.type = type;
    o.temb_channels = temb;
    o.groups = config_.norm_num_groups;
    o.eps = config_.norm_eps;
    o.output_scale_factor = config_.resnet_out_scale_factor;
    o.use_linear_projection = config_.use_linear_projection;
    o.cross_attention = type.rfind("CrossAttn", 0) == 0 || type == "UNetMidBlock2DCrossAttn";
    return o;
  };

  int64_t output_channel = boc[0];
  for (size_t i = 0; i < n; ++i) {
    UNetBlockOptions o = base(config_.down_block_types[i]);
    o.in_channels = output_channel;
    output_channel = boc[i];
    o.out_channels = output_channel;
    o.layers = static_cast<int>(config_.layers_per_block[i]);
    o.resample = i + 1 < n;
    o.downsample_padding = config_.downsample_padding;
    o.heads = static_cast<int>(config_.num_attention_heads[i]);
    o.transformer_layers = static_cast<int>(config_.transformer_layers_per_block[i]);
    o.cross_attention_dim = config_.cross_attention_dim[i];
    down_blocks_.emplace_back(root / "down_blocks" / static_cast<int64_t>(i), o);
  }

  if (!config_.mid_block_type.empty()) {
    UNetBlockOptions o = base(config_.mid_block_type);
    o.in_channels = o.out_channels = boc.back();
    o.layers = 1;
    o.output_scale_factor = config_.mid_block_scale_factor;
    o.heads = static_cast<int>(config_.num_attention_heads.back());
    o.transformer_layers = static_cast<int>(config_.transformer_layers_per_block.back());
    o.cross_attention_dim = config_.cross_attention_dim.back();
    mid_block_ = std::make_unique<UNetMidBlock2DCrossAttn>(root / "mid_block", o);
  }

  std::vector<int64_t> rev_channels(boc.rbegin(), boc.rend());
  std::vector<int64_t> rev_heads(config_.num_attention_heads.rbegin(), config_.num_attention_heads.rend());
  std::vector<int64_t> rev_layers(config_.layers_per_block.rbegin(), config_.layers_per_block.rend());
  std::vector<int64_t> rev_cross(config_.cross_attention_dim.rbegin(), config_.cross_attention_dim.rend());
  output_channel = rev_channels[0];
  for (size_t i = 0; i < n; ++i) {
    UNetBlockOptions o = base(config_.up_block_types[i]);
    o.prev_output_channels = output_channel;
    output_channel = rev_channels[i];
    o.out_channels = output_channel;
    o.in_channels = rev_channels[std::min(i + 1, n - 1)];
    o.layers = static_cast<int>(rev_layers[i]) + 1;
    o.resample = i + 1 < n;
    if (o.resample) ++num_upsamplers_;
    o.heads = static_cast<int>(rev_heads[i]);
    o.transformer_layers = static_cast<int>(config_.reverse_transformer_layers_per_block[i]);
    o.cross_attention_dim = rev_cross[i];
    up_blocks_.emplace_back(root / "up_blocks" / static_cast<int64_t>(i), o);
  }

  conv_norm_out_ = nn::GroupNorm(root / "conv_norm_out", config_.norm_num_groups, boc[0], config_.norm_eps);
  conv_out_ = nn::Conv2d(root / "conv_out", boc[0], config_.out_channels, config_.conv_out_kernel);
}

std::unique_ptr<UNet2DConditionModel> UNet2DConditionModel::load(const std::string& component_dir) {
  auto cfg = from_config_file<UNet2DConditionConfig>(component_dir);
  auto model = std::make_unique<UNet2DConditionModel>(cfg);
  model->params_.load(io::read_component_weights(component_dir), "UNet2DConditionModel");
  return model;
}

std::unique_ptr<UNet2DConditionModel> UNet2DConditionModel::random(const std::string& component_dir, uint64_t seed) {
  auto model = std::make_unique<UNet2DConditionModel>(from_config_file<UNet2DConditionConfig>(component_dir));
  model->params_.init_random(seed);
  return model;
}

Tensor UNet2DConditionModel::forward(const Tensor& sample, const Tensor& timestep,
                                     const Tensor& encoder_hidden_states) const {
  const auto& cfg = config_;
  if (sample.ndim() != 4 || sample.size(1) != cfg.in_channels)
    throw Error("unet: sample must be [batch, " + std::to_string(cfg.in_channels) + ", height, width], got " +
                sample.describe());
  const int64_t batch = sample.size(0);
  if (encoder_hidden_states.ndim() != 3 || encoder_hidden_states.size(0) != batch ||
      encoder_hidden_states.size(2) != cfg.cross_attention_dim[0])
    throw Error("unet: encoder_hidden_states must be [" + std::to_string(batch) + ", length, " +
                std::to_string(cfg.cross_attention_dim[0]) + "], got " + encoder_hidden_states.describe());
  Tensor t = timestep.ndim() == 0 ? ops::reshape(timestep, {1}) : timestep;
  if (t.ndim() != 1 || (t.size(0) != 1 && t.size(0) != batch))
    throw Error("unet: timestep must be a scalar or have one value per sample, got " + timestep.describe());

  Tensor x = cfg.center_input_sample ? ops::add_scalar(ops::scale(sample, 2.0f), -1.0f) : sample;
  // A single timestep stays [1, C]; the resnets broadcast it over the batch.
  const Tensor t_emb = ops::timestep_embedding(t, static_cast<int>(cfg.block_out_channels[0]), cfg.flip_sin_to_cos,
                                               cfg.freq_shift);
  const Tensor emb = (*time_embedding_)(t_emb);

  x = conv_in_(x);
  std::vector<Tensor> skips = {x};
  for (const auto& block : down_blocks_) x = block(x, emb, encoder_hidden_states, skips);
  if (mid_block_) x = (*mid_block_)(x, emb, encoder_hidden_states);

  // When the latent is not a multiple of 2^upsamplers, each level upsamples to its skip's exact size.
  const int64_t factor = int64_t{1} << num_upsamplers_;
  const bool forward_upsample_size = sample.size(2) % factor != 0 || sample.size(3) % factor != 0;
  for (size_t i = 0; i < up_blocks_.size(); ++i) {
    std::optional<std::pair<int64_t, int64_t>> size;
    const size_t consumed = up_blocks_[i].num_resnets();
    if (i + 1 < up_blocks_.size() && forward_upsample_size) {
      if (skips.size() < consumed + 1) throw Error("internal: UNet skip connections out of balance");
      const Tensor& next_skip = skips[skips.size() - consumed - 1];
      size = std::make_pair(next_skip.size(2), next_skip.size(3));
    }
    x = up_blocks_[i](x, skips, emb, encoder_hidden_states, size);
  }
  return conv_out_(ops::silu(conv_norm_out_(x)));
}

}  // namespace taiyi::models
