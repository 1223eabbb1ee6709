#include "taiyi/nn/attention.h"

#include <cmath>

namespace taiyi::nn {

static AttentionOptions self_attention(AttentionOptions o) {
  o.cross_attention_dim = 0;
  return o;
}

Attention::Attention(const Scope& s, const AttentionOptions& o) : o_(o) {
  const int64_t inner = o.heads * o.dim_head;
  const int64_t kv_dim = o.cross_attention_dim > 0 ? o.cross_attention_dim : o.query_dim;
  if (o.norm_groups > 0) {
    group_norm_ = GroupNorm(s / "group_norm", o.norm_groups, o.query_dim, o.norm_eps);
    has_group_norm_ = true;
  }
  to_q_ = Linear(s / "to_q", o.query_dim, inner, o.bias);
  to_k_ = Linear(s / "to_k", kv_dim, inner, o.bias);
  to_v_ = Linear(s / "to_v", kv_dim, inner, o.bias);
  to_out_ = Linear(s / "to_out" / 0, inner, o.query_dim, true);
}

Tensor Attention::operator()(const Tensor& x, const Tensor& context) const {
  const bool spatial = x.ndim() == 4;
  Tensor h = x;
  if (has_group_norm_) h = group_norm_(h);  // same statistics on [B, C, H, W] as on [B, C, H*W]
  if (spatial) h = ops::transpose(ops::reshape(h, {x.size(0), x.size(1), x.size(2) * x.size(3)}), 1, 2);
  const Tensor& kv_in = context.defined() ? context : h;
  const Tensor q = to_q_(h);
  const Tensor k = to_k_(kv_in);
  const Tensor v = to_v_(kv_in);
  const float scale = 1.0f / std::sqrt(static_cast<float>(o_.dim_head));
  Tensor out = to_out_(ops::attention(q, k, v, o_.heads, scale));
  // [B, H W, C] rows back to [B, C, H, W]: the rows are that tensor's channels-last memory, so a
  // reshape to [B, H, W, C] and a permute are views (transpose then reshape would copy).
  if (spatial) out = ops::permute(ops::reshape(out, {x.size(0), x.size(2), x.size(3), x.size(1)}), {0, 3, 1, 2});
  if (o_.residual_connection) out = ops::add(out, x);
  if (o_.rescale_output_factor != 1.0f) out = ops::scale(out, 1.0f / o_.rescale_output_factor);
  return out;
}

FeedForward::FeedForward(const Scope& s, int64_t dim, int64_t inner_dim)
    : proj_(s / "net" / 0 / "proj", dim, 2 * inner_dim), out_(s / "net" / 2, inner_dim, dim) {}

BasicTransformerBlock::BasicTransformerBlock(const Scope& s, int64_t dim, int heads, int64_t dim_head,
                                             int64_t cross_attention_dim)
    : norm1_(s / "norm1", dim, 1e-5f),
      norm2_(s / "norm2", dim, 1e-5f),
      norm3_(s / "norm3", dim, 1e-5f),
      attn1_(s / "attn1", self_attention({dim, 0, heads, dim_head})),
      attn2_(s / "attn2", {dim, cross_attention_dim, heads, dim_head}),
      ff_(s / "ff", dim, 4 * dim) {}

Tensor BasicTransformerBlock::operator()(const Tensor& x, const Tensor& context) const {
  Tensor h = ops::add(attn1_(norm1_(x)), x);
  h = ops::add(attn2_(norm2_(h), context), h);
  return ops::add(ff_(norm3_(h)), h);
}

}  // namespace taiyi::nn
