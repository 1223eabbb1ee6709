#include "taiyi/models/autoencoder_kl.h"

#include "taiyi/models/config_checks.h"

namespace taiyi::models {

static constexpr float kVaeEps = 1e-6f;  // diffusers hard-codes resnet_eps=1e-6 in the VAE

AutoencoderKLConfig AutoencoderKLConfig::from_config(const io::ConfigReader& c) {
  check_class_name(c, "AutoencoderKL");
  refuse_unless(c, "act_fn", "silu");
  refuse_unless(c, "latents_mean", nullptr);
  refuse_unless(c, "latents_std", nullptr);
  AutoencoderKLConfig cfg;
  cfg.block_out_channels = c.require<std::vector<int64_t>>("block_out_channels");
  const size_t n = cfg.block_out_channels.size();
  if (n == 0) c.fail("block_out_channels", "is empty");
  for (int64_t v : cfg.block_out_channels)
    if (v <= 0) c.fail("block_out_channels", "channels must be positive");
  block_types(c, "down_block_types", n, {"DownEncoderBlock2D"});
  block_types(c, "up_block_types", n, {"UpDecoderBlock2D"});
  cfg.in_channels = c.require<int64_t>("in_channels");
  cfg.out_channels = c.require<int64_t>("out_channels");
  cfg.latent_channels = c.require<int64_t>("latent_channels");
  cfg.layers_per_block = c.get<int>("layers_per_block", 1);
  cfg.norm_num_groups = c.get<int>("norm_num_groups", 32);
  cfg.sample_size = c.get<int64_t>("sample_size", 32);
  cfg.scaling_factor = c.get<float>("scaling_factor", 0.18215f);
  cfg.use_quant_conv = c.get<bool>("use_quant_conv", true);
  cfg.use_post_quant_conv = c.get<bool>("use_post_quant_conv", true);
  cfg.mid_block_add_attention = c.get<bool>("mid_block_add_attention", true);
  if (cfg.layers_per_block <= 0) c.fail("layers_per_block", "must be positive");
  return cfg;
}

VaeMidBlock::VaeMidBlock(const nn::Scope& s, int64_t channels, int groups, bool add_attention) {
  resnets_.emplace_back(s / "resnets" / 0, channels, channels, 0, groups, kVaeEps);
  if (add_attention) {
    nn::AttentionOptions o;
    o.query_dim = channels;
    o.heads = 1;
    o.dim_head = channels;
    o.bias = true;
    o.norm_groups = groups;
    o.norm_eps = kVaeEps;
    o.residual_connection = true;
    attention_.emplace(s / "attentions" / 0, o);
  }
  resnets_.emplace_back(s / "resnets" / 1, channels, channels, 0, groups, kVaeEps);
}

Tensor VaeMidBlock::operator()(const Tensor& x) const {
  Tensor h = resnets_[0](x, Tensor());
  if (attention_) h = (*attention_)(h);
  return resnets_[1](h, Tensor());
}

VaeBlock::VaeBlock(const nn::Scope& s, int64_t in_channels, int64_t out_channels, int layers, int groups, bool down,
                   bool resample) {
  for (int i = 0; i < layers; ++i)
    resnets_.emplace_back(s / "resnets" / i, i == 0 ? in_channels : out_channels, out_channels, 0, groups, kVaeEps);
  if (resample && down) downsampler_.emplace(s / "downsamplers" / 0, out_channels, 0);
  if (resample && !down) upsampler_.emplace(s / "upsamplers" / 0, out_channels);
}

Tensor VaeBlock::operator()(const Tensor& x) const {
  Tensor h = x;
  for (const auto& r : resnets_) h = r(h, Tensor());
  if (downsampler_) h = (*downsampler_)(h);
  if (upsampler_) h = (*upsampler_)(h);
  return h;
}

AutoencoderKL::AutoencoderKL(const AutoencoderKLConfig& config) : config_(config) {
  const auto& boc = config_.block_out_channels;
  const size_t n = boc.size();
  const int g = config_.norm_num_groups;
  const int64_t lat = config_.latent_channels;
  const nn::Scope root(params_);
  const nn::Scope enc = root / "encoder", dec = root / "decoder";

  enc_conv_in_ = nn::Conv2d(enc / "conv_in", config_.in_channels, boc[0], 3);
  int64_t out = boc[0];
  for (size_t i = 0; i < n; ++i) {
    const int64_t in = out;
    out = boc[i];
    enc_blocks_.emplace_back(enc / "down_blocks" / static_cast<int64_t>(i), in, out, config_.layers_per_block, g, true,
                             i + 1 < n);
  }
  enc_mid_ = std::make_unique<VaeMidBlock>(enc / "mid_block", boc.back(), g, config_.mid_block_add_attention);
  enc_norm_out_ = nn::GroupNorm(enc / "conv_norm_out", g, boc.back(), kVaeEps);
  enc_conv_out_ = nn::Conv2d(enc / "conv_out", boc.back(), 2 * lat, 3);
  if (config_.use_quant_conv) quant_conv_ = nn::Conv2d(root / "quant_conv", 2 * lat, 2 * lat, 1);

  if (config_.use_post_quant_conv) post_quant_conv_ = nn::Conv2d(root / "post_quant_conv", lat, lat, 1);
  dec_conv_in_ = nn::Conv2d(dec / "conv_in", lat, boc.back(), 3);
  dec_mid_ = std::make_unique<VaeMidBlock>(dec / "mid_block", boc.back(), g, config_.mid_block_add_attention);
  std::vector<int64_t> rev(boc.rbegin(), boc.rend());
  out = rev[0];
  for (size_t i = 0; i < n; ++i) {
    const int64_t prev = out;
    out = rev[i];
    dec_blocks_.emplace_back(dec / "up_blocks" / static_cast<int64_t>(i), prev, out, config_.layers_per_block + 1, g,
                             false, i + 1 < n);
  }
  dec_norm_out_ = nn::GroupNorm(dec / "conv_norm_out", g, boc[0], kVaeEps);
  dec_conv_out_ = nn::Conv2d(dec / "conv_out", boc[0], config_.out_channels, 3);
}

bool adapt_legacy_vae_weight(std::string& name, Tensor& t) {
  static const std::pair<const char*, const char*> kRenames[] = {
      {".query.", ".to_q."}, {".key.", ".to_k."}, {".value.", ".to_v."}, {".proj_attn.", ".to_out.0."}};
  if (name.find("mid_block.attentions.") == std::string::npos) return true;
  for (const auto& [from, to] : kRenames) {
    const size_t pos = name.find(from);
    if (pos != std::string::npos) {
      name.replace(pos, std::string(from).size(), to);
      break;
    }
  }
  // Original-format checkpoints hold these projections as 1x1 convolutions.
  const bool projection = name.find(".to_") != std::string::npos && name.ends_with(".weight");
  if (projection && t.ndim() == 4 && t.size(2) == 1 && t.size(3) == 1) t = t.reshape({t.size(0), t.size(1)});
  return true;
}

std::unique_ptr<AutoencoderKL> AutoencoderKL::load(const std::string& component_dir) {
  auto model = std::make_unique<AutoencoderKL>(from_config_file<AutoencoderKLConfig>(component_dir));
  model->params_.load(io::read_component_weights(component_dir), "AutoencoderKL", adapt_legacy_vae_weight);
  return model;
}

std::unique_ptr<AutoencoderKL> AutoencoderKL::random(const std::string& component_dir, uint64_t seed) {
  auto model = std::make_unique<AutoencoderKL>(from_config_file<AutoencoderKLConfig>(component_dir));
  model->params_.init_random(seed);
  return model;
}

LatentDistribution AutoencoderKL::encode(const Tensor& image) const {
  if (image.ndim() != 4 || image.size(1) != config_.in_channels)
    throw Error("vae encode: image must be [batch, " + std::to_string(config_.in_channels) +
                ", height, width], got " + image.describe());
  Tensor h = enc_conv_in_(image);
  for (const auto& b : enc_blocks_) h = b(h);
  h = (*enc_mid_)(h);
  h = enc_conv_out_(ops::silu(enc_norm_out_(h)));
  if (quant_conv_.present()) h = quant_conv_(h);
  const auto parts = ops::chunk(h, 2, 1);
  LatentDistribution d;
  d.mean = ops::contiguous(parts[0]);
  d.logvar = ops::clamp(parts[1], -30.0f, 20.0f);
  d.std = ops::exp(ops::scale(d.logvar, 0.5f));
  return d;
}

Tensor AutoencoderKL::decode(const Tensor& z) const {
  if (z.ndim() != 4 || z.size(1) != config_.latent_channels)
    throw Error("vae decode: latents must be [batch, " + std::to_string(config_.latent_channels) +
                ", height, width], got " + z.describe());
  Tensor h = post_quant_conv_.present() ? post_quant_conv_(z) : z;
  h = dec_conv_in_(h);
  h = (*dec_mid_)(h);
  for (const auto& b : dec_blocks_) h = b(h);
  return dec_conv_out_(ops::silu(dec_norm_out_(h)));
}

}  // namespace taiyi::models
