#include "taiyi/nn/transformer_2d.h"

namespace taiyi::nn {

Transformer2DModel::Transformer2DModel(const Scope& s, const Transformer2DOptions& o)
    : o_(o), norm_(s / "norm", o.norm_groups, o.in_channels, 1e-6f) {
  const int64_t inner = o.heads * o.dim_head;
  if (o.use_linear_projection) {
    proj_in_linear_ = Linear(s / "proj_in", o.in_channels, inner);
    proj_out_linear_ = Linear(s / "proj_out", inner, o.in_channels);
  } else {
    proj_in_conv_ = Conv2d(s / "proj_in", o.in_channels, inner, 1);
    proj_out_conv_ = Conv2d(s / "proj_out", inner, o.in_channels, 1);
  }
  blocks_.reserve(o.layers);
  for (int i = 0; i < o.layers; ++i)
    blocks_.emplace_back(s / "transformer_blocks" / i, inner, o.heads, o.dim_head, o.cross_attention_dim);
}

Tensor Transformer2DModel::operator()(const Tensor& x, const Tensor& context) const {
  const int64_t b = x.size(0), hgt = x.size(2), wid = x.size(3);
  const int64_t inner = o_.heads * o_.dim_head;
  Tensor h = norm_(x);
  if (!o_.use_linear_projection) h = proj_in_conv_(h);
  h = ops::reshape(ops::permute(h, {0, 2, 3, 1}), {b, hgt * wid, h.size(1)});
  if (o_.use_linear_projection) h = proj_in_linear_(h);
  for (const auto& block : blocks_) h = block(h, context);
  if (o_.use_linear_projection) h = proj_out_linear_(h);
  h = ops::contiguous(ops::permute(ops::reshape(h, {b, hgt, wid, inner}), {0, 3, 1, 2}));
  if (!o_.use_linear_projection) h = proj_out_conv_(h);
  return ops::add(h, x);
}

}  // namespace taiyi::nn
