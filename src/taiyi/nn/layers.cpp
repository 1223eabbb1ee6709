#include "taiyi/nn/layers.h"

namespace taiyi::nn {

static const Tensor kNone;

static const Tensor& optional(const Parameter* p) { return p ? value_of(p) : kNone; }

Linear::Linear(const Scope& s, int64_t in, int64_t out, bool bias) : in_features(in), out_features(out) {
  weight_ = s.param("weight", {out, in}, Init::Weight, in);
  if (bias) bias_ = s.param("bias", {out}, Init::Bias, in);
}

Tensor Linear::operator()(const Tensor& x) const { return ops::linear(x, value_of(weight_), optional(bias_)); }

Conv2d::Conv2d(const Scope& s, int64_t in, int64_t out, int kernel, ops::Conv2dParams params, bool bias)
    : in_channels(in), out_channels(out), params_(params) {
  const int64_t fan_in = in * kernel * kernel;
  weight_ = s.param("weight", {out, in, kernel, kernel}, Init::Weight, fan_in);
  if (bias) bias_ = s.param("bias", {out}, Init::Bias, fan_in);
}

Tensor Conv2d::operator()(const Tensor& x) const {
  return ops::conv2d(x, value_of(weight_), optional(bias_), params_);
}

GroupNorm::GroupNorm(const Scope& s, int groups, int64_t channels, float eps) : groups_(groups), eps_(eps) {
  if (groups <= 0 || channels % groups != 0)
    throw Error(s.prefix() + ": GroupNorm with " + std::to_string(channels) + " channels cannot be split into " +
                std::to_string(groups) + " groups (check norm_num_groups in config.json)");
  weight_ = s.param("weight", {channels}, Init::Ones);
  bias_ = s.param("bias", {channels}, Init::Zeros);
}

Tensor GroupNorm::operator()(const Tensor& x) const {
  return ops::group_norm(x, groups_, value_of(weight_), value_of(bias_), eps_);
}

LayerNorm::LayerNorm(const Scope& s, int64_t dim, float eps) : eps_(eps) {
  weight_ = s.param("weight", {dim}, Init::Ones);
  bias_ = s.param("bias", {dim}, Init::Zeros);
}

Tensor LayerNorm::operator()(const Tensor& x) const {
  return ops::layer_norm(x, value_of(weight_), value_of(bias_), eps_);
}

Embedding::Embedding(const Scope& s, int64_t num, int64_t dim) {
  weight_ = s.param("weight", {num, dim}, Init::Normal);
}

}  // namespace taiyi::nn
